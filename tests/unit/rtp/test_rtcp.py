from __future__ import annotations

import pytest

from telepath.rtp.errors import RtcpError
from telepath.rtp.rtcp import (
    SDES_CNAME,
    RtcpBye,
    RtcpPacket,
    RtcpReceiverReport,
    RtcpReportBlock,
    RtcpSdes,
    RtcpSenderReport,
    RtcpSourceDescription,
    RtcpUnknown,
    last_sr_fields,
    ntp_from_unix,
    ntp_middle32,
    parse_compound,
    serialize_compound,
)

pytestmark = pytest.mark.unit

BLOCK = RtcpReportBlock(
    ssrc=0xCAFEBABE,
    fraction_lost=64,
    packets_lost=-3,
    highest_sequence=0x0001_0005,
    jitter=80,
    lsr=0x12345678,
    dlsr=65536,
)

# An SR with one report block, built by hand from RFC 3550 §6.4.1's layout.
SR_BYTES = bytes.fromhex(
    "81c8000c"  # V=2 RC=1 PT=200 length=12 words
    "11223344"  # SSRC of sender
    "e7a1b2c3d4e5f607"  # NTP timestamp
    "0000a000"  # RTP timestamp
    "00000032"  # packet count 50
    "00001f40"  # octet count 8000
    "cafebabe"
    "40"
    "fffffd"
    "00010005"
    "00000050"
    "12345678"
    "00010000"
)


def test_sender_report_parses_and_round_trips() -> None:
    (sr,) = parse_compound(SR_BYTES)
    assert isinstance(sr, RtcpSenderReport)
    assert sr.ssrc == 0x11223344
    assert sr.ntp_timestamp == 0xE7A1B2C3D4E5F607
    assert sr.rtp_timestamp == 0xA000
    assert (sr.packet_count, sr.octet_count) == (50, 8000)
    assert sr.reports == [BLOCK]
    assert bytes(sr) == SR_BYTES


def test_compound_rr_sdes_bye_round_trip() -> None:
    packets: list[RtcpPacket] = [
        RtcpReceiverReport(ssrc=7, reports=[BLOCK]),
        RtcpSdes([RtcpSourceDescription(7, [(SDES_CNAME, b"telepath@example")])]),
        RtcpBye([7], reason=b"call ended"),
    ]
    data = serialize_compound(packets)
    parsed = parse_compound(data)
    assert parsed == packets
    assert serialize_compound(parsed) == data
    assert len(data) % 4 == 0


@pytest.mark.parametrize("cname", [b"", b"a", b"ab", b"abc", b"abcd", b"abcde"])
def test_sdes_null_termination_aligns_every_length(cname: bytes) -> None:
    sdes = RtcpSdes([RtcpSourceDescription(1, [(SDES_CNAME, cname)]), RtcpSourceDescription(2)])
    data = bytes(sdes)
    assert len(data) % 4 == 0
    assert parse_compound(data) == [sdes]


def test_unknown_types_and_padding_are_kept_verbatim() -> None:
    app = RtcpUnknown(packet_type=204, count=1, body=b"\x00\x00\x00\x07name\x01\x02\x03\x04")
    padded = RtcpBye([9], padding=b"\x00\x00\x00\x04")
    data = bytes(app) + bytes(padded)
    parsed = parse_compound(data)
    assert parsed == [app, padded]
    assert serialize_compound(parsed) == data


def test_ntp_helpers() -> None:
    ntp = ntp_from_unix(0.5)
    assert ntp >> 32 == 2_208_988_800
    assert ntp & 0xFFFFFFFF == 1 << 31
    assert ntp_middle32(0x1122334455667788) == 0x33445566


@pytest.mark.parametrize(
    ("delay_s", "expected"),
    [
        (0.0, (0x12345678, 0)),
        (1.5, (0x12345678, 98304)),  # 1.5 s in 1/65536 s
        (65535.99998, (0x12345678, 0xFFFFFFFE)),  # the longest delay DLSR can say
        (65536.0, (0, 0)),  # 2^32 units: no longer fits the 32-bit field
        (10 * 86400.0, (0, 0)),  # a peer silent for days
        (-0.5, (0, 0)),  # no delay can be negative
    ],
)
def test_lsr_and_dlsr_are_zero_when_the_delay_does_not_fit(
    delay_s: float, expected: tuple[int, int]
) -> None:
    # RFC 3550 §6.4.1: DLSR is 32 bits of 1/65536 s; an SR older than that is as good as none,
    # LSR and DLSR 0 (it raised struct.error at packing, and the session's close with it).
    lsr, dlsr = last_sr_fields(0x12345678, delay_s)
    assert (lsr, dlsr) == expected
    block = RtcpReportBlock(ssrc=1, lsr=lsr, dlsr=dlsr)
    assert RtcpReportBlock.parse(bytes(block)) == block


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x80\xc8", "RTCP packet length is less than 4 bytes"),
        (b"", "RTCP packet length is less than 4 bytes"),
        (bytes.fromhex("40c90001deadbeef"), "RTCP packet has invalid version 1"),
        (bytes.fromhex("80c90005deadbeef"), "RTCP packet length is invalid"),
        (bytes.fromhex("81c90001deadbeef"), "RTCP receiver report report block count is invalid"),
        (bytes.fromhex("80c80001deadbeef"), "RTCP sender report length is invalid"),
        (bytes.fromhex("82cb0001deadbeef"), "RTCP bye length is invalid"),
        (bytes.fromhex("81cb0002deadbeef05000000"), "RTCP bye reason length is invalid"),
        (bytes.fromhex("81ca0001deadbeef"), "RTCP SDES item is truncated"),
        (bytes.fromhex("a0cb000100000000"), "RTCP packet padding length is invalid"),
    ],
)
def test_invalid_rtcp_raises_precise_errors(data: bytes, message: str) -> None:
    with pytest.raises(RtcpError) as excinfo:
        parse_compound(data)
    assert str(excinfo.value) == message
