"""SRTP/SRTCP contexts (RFC 3711) over libsrtp: both directions, and what must be dropped."""

from __future__ import annotations

import os

import pytest

from telepath.rtp.packet import RtpPacket, pack_rtp
from telepath.rtp.rtcp import RtcpReceiverReport, parse_compound, serialize_compound
from telepath.rtp.srtp import SrtpContext, SrtpError
from telepath.rtp.srtp_keys import SUITES, SrtpKeys

pytestmark = pytest.mark.unit

SHA1_80 = SUITES["AES_CM_128_HMAC_SHA1_80"]
SHA1_32 = SUITES["AES_CM_128_HMAC_SHA1_32"]


def pair(suite: str = "AES_CM_128_HMAC_SHA1_80") -> tuple[SrtpContext, SrtpContext]:
    """Two ends of one stream: each protects with its own key and reads with the other's."""
    a, b = os.urandom(30), os.urandom(30)
    s = SUITES[suite]
    return SrtpContext(SrtpKeys(s, 1, a, b)), SrtpContext(SrtpKeys(s, 1, b, a))


def rtp(seq: int, payload: bytes = b"\xff" * 160) -> bytes:
    return pack_rtp(0, seq, seq * 160, 0x1234ABCD, payload, False)


@pytest.mark.parametrize(("suite", "tag"), [(SHA1_80.name, 10), (SHA1_32.name, 4)])
def test_rtp_round_trip_encrypts_and_appends_the_tag(suite: str, tag: int) -> None:
    us, peer = pair(suite)
    plain = rtp(1, bytes(range(160)))
    sealed = us.protect(plain)
    assert len(sealed) == len(plain) + tag  # RFC 3711 §4.2: the authentication tag
    assert sealed[:12] == plain[:12]  # the header stays in the clear (§3.1)
    assert bytes(range(160)) not in sealed  # the payload does not
    assert peer.unprotect(sealed) == plain
    assert RtpPacket.parse(peer.unprotect(us.protect(rtp(2)))).sequence_number == 2


def test_rtcp_round_trip() -> None:
    us, peer = pair()
    plain = serialize_compound([RtcpReceiverReport(0x1234ABCD, [])])
    sealed = us.protect_rtcp(plain)
    assert sealed != plain and len(sealed) > len(plain)  # E flag + index, then the tag (§3.4)
    assert parse_compound(peer.unprotect_rtcp(sealed)) == parse_compound(plain)


def test_forged_replayed_and_foreign_packets_are_refused() -> None:
    us, peer = pair()
    sealed = us.protect(rtp(7))
    flipped = bytearray(sealed)
    flipped[20] ^= 1
    with pytest.raises(SrtpError):
        peer.unprotect(bytes(flipped))  # authentication fails (§3.3 step 5)
    assert peer.unprotect(sealed) == rtp(7)
    with pytest.raises(SrtpError):
        peer.unprotect(sealed)  # the same index again: a replay (§3.3.2)
    with pytest.raises(SrtpError):
        peer.unprotect(rtp(8))  # plain RTP has no valid tag
    stranger, _ = pair()
    with pytest.raises(SrtpError):
        peer.unprotect(stranger.protect(rtp(9)))  # another key
    with pytest.raises(SrtpError):
        peer.unprotect(b"\x80")
    with pytest.raises(SrtpError):
        peer.unprotect_rtcp(serialize_compound([RtcpReceiverReport(1, [])]))
    assert peer.unprotect(us.protect(rtp(10))) == rtp(10)  # and the stream goes on


def test_keys_are_checked_and_never_printed() -> None:
    key = os.urandom(30)
    with pytest.raises(ValueError, match="30-octet"):
        SrtpContext(SrtpKeys(SHA1_80, 1, key, key[:16]))
    keys = SrtpKeys(SHA1_80, 3, key, key)
    assert key.hex() not in repr(keys) and repr(key) not in repr(keys)
    assert repr(keys) == "SrtpKeys(AES_CM_128_HMAC_SHA1_80, tag=3)"


@pytest.mark.parametrize("size", [0, 1, 11, 12, 1503, 1504, 9000, 65507])
def test_any_datagram_is_authentic_or_srtp_error(size: int) -> None:
    """Whatever arrives on a media port (libsrtp's binding works in a 1500-octet buffer and
    raises ValueError past it) ends as SrtpError, which the receive path counts and drops."""
    _, peer = pair()
    data = (b"\x80" + os.urandom(size))[:size]
    with pytest.raises(SrtpError):
        peer.unprotect(data)
    with pytest.raises(SrtpError):
        peer.unprotect_rtcp(data)
