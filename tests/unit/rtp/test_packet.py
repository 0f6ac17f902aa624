from __future__ import annotations

import pytest

from telepath.errors import ProtocolError
from telepath.rtp.errors import RtpError
from telepath.rtp.packet import RtpPacket, is_rtcp, pack_rtp

from .captures import load_capture

pytestmark = pytest.mark.unit


def test_pcma_capture_fields_and_exact_round_trip() -> None:
    packets = load_capture("g711a")
    first = RtpPacket.parse(packets[0])
    assert first.payload_type == 8
    assert first.marker is True
    assert len(first.payload) == 240
    assert first.csrc == []
    assert first.extension_profile is None
    for data in packets:
        assert bytes(RtpPacket.parse(data)) == data
    second = RtpPacket.parse(packets[1])
    assert second.sequence_number == (first.sequence_number + 1) & 0xFFFF
    assert second.timestamp - first.timestamp == 240
    assert not second.marker


def test_dtmf_capture_round_trip() -> None:
    for data in load_capture("dtmf_2833_pound"):
        packet = RtpPacket.parse(data)
        assert packet.payload_type == 101
        assert bytes(packet) == data


def test_csrc_extension_and_padding_round_trip() -> None:
    packet = RtpPacket(
        payload_type=0,
        sequence_number=65535,
        timestamp=0xFFFFFFFF,
        ssrc=0x12345678,
        payload=b"\xff" * 160,
        marker=True,
        csrc=[1, 2, 3],
        extension_profile=0xBEDE,
        extension=b"\x10\xab\x00\x00",
        padding=b"\x01\x02\x03",  # non-zero filler survives
    )
    data = bytes(packet)
    assert data[0] == 0x80 | 0x20 | 0x10 | 3
    assert data[1] == 0x80
    parsed = RtpPacket.parse(data)
    assert parsed == packet
    assert bytes(parsed) == data


def test_pack_rtp_matches_full_serializer() -> None:
    fast = pack_rtp(8, 7, 1600, 42, b"\xd5" * 160, True)
    assert fast == bytes(RtpPacket(8, 7, 1600, 42, b"\xd5" * 160, marker=True))


@pytest.mark.parametrize("marker", [False, True])
@pytest.mark.parametrize("payload_type", [0, 8, 101, 127])
def test_plain_packets_parse_the_same_on_the_short_path(marker: bool, payload_type: int) -> None:
    # A plain header (0x80) takes a shortcut; the same packet with an empty header extension
    # takes the full path: every field must agree.
    plain = pack_rtp(payload_type, 65535, 0xFFFFFFFF, 0xCAFEBABE, b"\x7f" * 160, marker)
    extended = bytes([0x90]) + plain[1:12] + b"\xbe\xde\x00\x00" + plain[12:]
    short, full = RtpPacket.parse(plain), RtpPacket.parse(extended)
    assert short == RtpPacket(payload_type, 65535, 0xFFFFFFFF, 0xCAFEBABE, b"\x7f" * 160, marker)
    assert (short.payload_type, short.marker, short.payload) == (
        full.payload_type,
        full.marker,
        full.payload,
    )
    assert short.marker is marker
    assert bytes(short) == plain


HEADER = bytes.fromhex("80000001000000a000000001")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x80\x00\x00", "RTP packet length is less than 12 bytes"),
        (b"\x40" + HEADER[1:], "RTP packet has invalid version 1"),
        (b"\x82" + HEADER[1:] + b"\x00\x00\x00\x01", "RTP packet has truncated CSRC"),
        (b"\x90" + HEADER[1:] + b"\xbe\xde", "RTP packet has truncated extension profile / length"),
        (
            b"\x90" + HEADER[1:] + b"\xbe\xde\x00\x02\x00\x00\x00\x00",
            "RTP packet has truncated extension value",
        ),
        (b"\xa0" + HEADER[1:] + b"\xff\x00", "RTP packet padding length is invalid"),
        (b"\xa0" + HEADER[1:] + b"\xff\x09", "RTP packet padding length is invalid"),
    ],
)
def test_invalid_packets_raise_precise_errors(data: bytes, message: str) -> None:
    with pytest.raises(RtpError) as excinfo:
        RtpPacket.parse(data)
    assert str(excinfo.value) == message
    assert isinstance(excinfo.value, ProtocolError)


def test_serializer_validates_fields() -> None:
    with pytest.raises(RtpError, match="more than 15 CSRC"):
        bytes(RtpPacket(0, 0, 0, 0, csrc=list(range(16))))
    with pytest.raises(RtpError, match="multiple of 4"):
        bytes(RtpPacket(0, 0, 0, 0, extension_profile=1, extension=b"\x00"))
    with pytest.raises(RtpError, match="padding length is invalid"):
        bytes(RtpPacket(0, 0, 0, 0, padding=b"\x00\x05"))


def test_is_rtcp_demultiplexes_rfc5761() -> None:
    assert is_rtcp(bytes.fromhex("80c80006"))
    assert not is_rtcp(load_capture("g711a")[0])
