from __future__ import annotations

import pytest

from telepath.rtp.dtmf import (
    DtmfDecoder,
    DtmfKey,
    TelephoneEvent,
    encode_dtmf,
    event_for_key,
    key_for_event,
)
from telepath.rtp.errors import RtpError
from telepath.rtp.packet import RtpPacket

from .captures import load_capture

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("capture", "key"),
    [("dtmf_2833_1", "1"), ("dtmf_2833_5", "5"), ("dtmf_2833_pound", "#"), ("dtmf_2833_star", "*")],
)
def test_sipp_capture_decodes_to_one_press(capture: str, key: str) -> None:
    decoder = DtmfDecoder()
    digits = []
    packets = [RtpPacket.parse(d) for d in load_capture(capture)]
    assert packets[0].marker
    for packet in packets:
        digits += decoder.feed(packet.timestamp, packet.payload)
    assert len(digits) == 1
    (digit,) = digits
    assert digit.key == DtmfKey(key)
    assert digit.duration_ms == 280.0  # 2240 units at 8 kHz
    assert digit.volume == 10
    assert digit.ended_cleanly
    assert digit.timestamp == packets[0].timestamp
    assert decoder.retransmissions == 2  # the end packet was sent three times


def test_payload_round_trip_and_fields() -> None:
    payload = RtpPacket.parse(load_capture("dtmf_2833_pound")[-1]).payload
    event = TelephoneEvent.parse(payload)
    assert event == TelephoneEvent(event=11, end=True, volume=10, duration=2240)
    assert bytes(event) == payload


def test_short_payload_is_rejected() -> None:
    with pytest.raises(RtpError, match="shorter than 4 bytes"):
        TelephoneEvent.parse(b"\x01\x02")


def test_lost_end_packets_still_report_once_when_next_event_starts() -> None:
    decoder = DtmfDecoder()
    assert decoder.feed(1000, bytes(TelephoneEvent(3, False, 10, 160))) == []
    assert decoder.active == DtmfKey.D3
    assert decoder.feed(1000, bytes(TelephoneEvent(3, False, 10, 320))) == []
    (first,) = decoder.feed(5000, bytes(TelephoneEvent(4, False, 10, 160)))
    assert (first.key, first.duration_ms, first.ended_cleanly) == ("3", 40.0, False)
    (second,) = decoder.feed(5000, bytes(TelephoneEvent(4, True, 12, 800)))
    assert (second.key, second.volume, second.ended_cleanly) == ("4", 12, True)
    assert decoder.expire() == []


def test_expire_reports_an_event_that_never_ended() -> None:
    decoder = DtmfDecoder()
    decoder.feed(0, bytes(TelephoneEvent(10, False, 10, 480)))
    (digit,) = decoder.expire()
    assert digit.key == DtmfKey.STAR
    assert not digit.ended_cleanly
    assert decoder.active is None


def test_reordered_update_does_not_shrink_duration() -> None:
    decoder = DtmfDecoder()
    decoder.feed(0, bytes(TelephoneEvent(1, False, 10, 640)))
    decoder.feed(0, bytes(TelephoneEvent(1, False, 10, 320)))  # arrives late
    (digit,) = decoder.expire()
    assert digit.duration_ms == 80.0


def test_non_dtmf_events_are_ignored() -> None:
    decoder = DtmfDecoder()
    assert decoder.feed(0, bytes(TelephoneEvent(32, True, 10, 160))) == []  # fax ANS tone
    assert decoder.ignored == 1


def test_encoder_packets_decode_back() -> None:
    packets = encode_dtmf("#", duration_ms=100, ptime_ms=20, volume=7)
    assert [p.marker for p in packets] == [True] + [False] * (len(packets) - 1)
    assert [p.end for p in packets] == [False] * 4 + [True] * 3
    events = [TelephoneEvent.parse(p.payload) for p in packets]
    assert [e.duration for e in events] == [160, 320, 480, 640, 800, 800, 800]
    decoder = DtmfDecoder()
    digits = [d for p in packets for d in decoder.feed(4242, p.payload)]
    assert len(digits) == 1
    assert (digits[0].key, digits[0].duration_ms, digits[0].volume) == ("#", 100.0, 7)


def test_one_packet_press_has_marker_on_end_packet() -> None:
    packets = encode_dtmf("9", duration_ms=20)
    assert [(p.marker, p.end) for p in packets] == [(True, True), (False, True), (False, True)]


def test_key_mapping() -> None:
    assert event_for_key("a") == 12
    assert key_for_event(11) == DtmfKey.POUND
    assert key_for_event(16) is None
    with pytest.raises(ValueError):
        event_for_key("x")
    with pytest.raises(ValueError, match="at least one packet time"):
        encode_dtmf("1", duration_ms=10)
