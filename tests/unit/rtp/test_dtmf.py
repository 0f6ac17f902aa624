from __future__ import annotations

import pytest

from telepath.rtp.dtmf import (
    MAX_DURATION,
    DtmfDecoder,
    DtmfDigit,
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


def _segment(
    decoder: DtmfDecoder, timestamp: int, event: int, durations: list[int]
) -> list[DtmfDigit]:
    """Feed one event segment's updates (no E bit) at ``timestamp``; the digits that came out."""
    out: list[DtmfDigit] = []
    for duration in durations:
        out += decoder.feed(timestamp, bytes(TelephoneEvent(event, False, 10, duration)))
    return out


FULL_SEGMENT = [*range(160, MAX_DURATION, 160), MAX_DURATION]  # 8.19 s, ending at 0xFFFF


@pytest.mark.parametrize("start", [1000, 0xFFFFFFFF - 100], ids=["plain", "timestamp-wraps"])
def test_a_press_longer_than_the_duration_field_is_one_digit(start: int) -> None:
    """RFC 4733 §2.5.1.3: past 0xFFFF units the sender sends duration 0xFFFF, then goes on with
    the same event in a new segment whose timestamp is the previous one plus 0xFFFF. That is
    one press, its duration the sum: it was reported as two (the first "not ended cleanly")."""
    decoder = DtmfDecoder()
    assert _segment(decoder, start, 5, FULL_SEGMENT) == []
    second = (start + MAX_DURATION) & 0xFFFFFFFF
    assert _segment(decoder, second, 5, [160, 320, 480]) == []
    assert decoder.active == DtmfKey.D5
    # a copy of the first segment's last packet, arriving late: not a new press either
    assert _segment(decoder, start, 5, [MAX_DURATION]) == []
    end = bytes(TelephoneEvent(5, True, 10, 800))
    (digit,) = decoder.feed(second, end)
    assert decoder.feed(second, end) == decoder.feed(second, end) == []
    assert (digit.key, digit.timestamp, digit.ended_cleanly) == (DtmfKey.D5, start, True)
    assert digit.duration_ms == (MAX_DURATION + 800) / 8
    assert decoder.expire() == []


def test_a_press_of_three_segments_and_no_end_packet_is_one_digit_on_expiry() -> None:
    decoder = DtmfDecoder()
    for i in range(3):
        assert (
            _segment(decoder, 1000 + i * MAX_DURATION, 1, FULL_SEGMENT[: 410 if i < 2 else 5]) == []
        )
    (digit,) = decoder.expire()
    assert (digit.key, digit.timestamp, digit.ended_cleanly) == (DtmfKey.D1, 1000, False)
    assert digit.duration_ms == (2 * MAX_DURATION + 800) / 8


@pytest.mark.parametrize(
    ("event", "offset"),
    [(6, MAX_DURATION), (5, MAX_DURATION - 160), (5, MAX_DURATION + 160)],
    ids=["other-key", "earlier", "later"],
)
def test_only_the_same_key_at_exactly_plus_0xffff_continues_a_press(
    event: int, offset: int
) -> None:
    """Anything else after a press whose end packets were lost is a new press."""
    decoder = DtmfDecoder()
    _segment(decoder, 1000, 5, FULL_SEGMENT)
    (first,) = _segment(decoder, 1000 + offset, event, [160])
    assert (first.key, first.duration_ms, first.ended_cleanly) == (
        DtmfKey.D5,
        MAX_DURATION / 8,
        False,
    )
    (second,) = decoder.expire()
    assert (second.timestamp, second.duration_ms) == (1000 + offset, 20.0)


def test_a_new_segment_s_first_packet_may_end_the_press_and_the_next_press_starts_afresh() -> None:
    """The end packet may be the first of the new segment that arrives; the press after the long
    one carries none of its duration."""
    decoder = DtmfDecoder()
    _segment(decoder, 1000, 2, FULL_SEGMENT)
    (long,) = decoder.feed(1000 + MAX_DURATION, bytes(TelephoneEvent(2, True, 10, 320)))
    assert (long.key, long.duration_ms, long.ended_cleanly) == (DtmfKey.D2, 8231.875, True)
    (short,) = decoder.feed(90000, bytes(TelephoneEvent(2, True, 10, 800)))
    assert (short.key, short.timestamp, short.duration_ms) == (DtmfKey.D2, 90000, 100.0)
