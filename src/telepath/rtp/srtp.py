"""SRTP and SRTCP (RFC 3711) for one call: protect what we send, authenticate and decrypt what
we receive, with the keys settled by SDP security descriptions (RFC 4568, ``sdp/crypto.py``).

The cryptography is libsrtp 2 (the reference implementation, as Asterisk, FreeSWITCH, baresip
and aiortc use it) through ``pylibsrtp``, a small maintained binding with wheels that bundle
libsrtp; nothing here is hand-written crypto. This module only maps the SDES suite names
(``srtp_keys.py``) to libsrtp's profiles and keeps a call's two directions apart: bytes in,
bytes out, no I/O.

Each direction has its own master key: ours protects what we send (the key in our SDP), the
peer's authenticates and decrypts what it sends (the key in its SDP), RFC 4568 §6.1. Inbound,
libsrtp checks the authentication tag and the replay window (RFC 3711 §3.3.2): a forged,
corrupted or replayed packet raises :class:`SrtpError` and must be dropped.
"""

from __future__ import annotations

from collections.abc import Callable

from pylibsrtp import Error, Policy, Session

from telepath.rtp.errors import RtpError
from telepath.rtp.srtp_keys import SrtpKeys

__all__ = ["SrtpContext", "SrtpError"]


class SrtpError(RtpError):
    """A packet failed SRTP/SRTCP authentication, the replay check, or was too short."""


#: libsrtp's profile for each suite of :data:`telepath.rtp.srtp_keys.SUITES`.
_PROFILES: dict[str, int] = {
    "AES_CM_128_HMAC_SHA1_80": Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
    "AEAD_AES_128_GCM": Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
    "AEAD_AES_256_GCM": Policy.SRTP_PROFILE_AEAD_AES_256_GCM,
}


def _session(key: bytes, ssrc_type: int, keys: SrtpKeys) -> Session:
    return Session(Policy(key=key, ssrc_type=ssrc_type, srtp_profile=_PROFILES[keys.suite.name]))


def _checked(unprotect: Callable[[bytes], bytes], packet: bytes, what: str) -> bytes:
    try:
        return unprotect(packet)
    except (Error, ValueError) as exc:  # ValueError: past the binding's 1500-octet buffer
        raise SrtpError(f"{what} packet rejected: {exc}") from None


class SrtpContext:
    """The two SRTP sessions of one stream (RFC 3711 §3.2.3: a cryptographic context per
    direction). ``SSRC_ANY_*`` lets each side pick or change its SSRC freely (a re-INVITE, an
    SBC restart), as SDES leaves the SSRCs unsignalled."""

    __slots__ = ("keys", "_rx", "_tx")

    def __init__(self, keys: SrtpKeys) -> None:
        for key in (keys.local_key, keys.remote_key):
            if len(key) != keys.suite.key_length:
                raise ValueError(f"{keys.suite.name} needs a {keys.suite.key_length}-octet key")
        self.keys = keys
        self._tx = _session(keys.local_key, Policy.SSRC_ANY_OUTBOUND, keys)
        self._rx = _session(keys.remote_key, Policy.SSRC_ANY_INBOUND, keys)

    def rekey(self, keys: SrtpKeys) -> None:
        """Take the keys of a later offer/answer (a re-INVITE, RFC 4568 §7.1.4): the peer's key
        may change, and its direction starts afresh; ours and the suite must stay — a new
        outbound context with the same master key would repeat its keystream from index 0
        (RFC 3711 §9.1)."""
        if keys.suite != self.keys.suite or keys.local_key != self.keys.local_key:
            raise ValueError("our SRTP key and suite stay the same for the whole call")
        if len(keys.remote_key) != keys.suite.key_length:
            raise ValueError(f"{keys.suite.name} needs a {keys.suite.key_length}-octet key")
        if keys.remote_key != self.keys.remote_key:
            self._rx = _session(keys.remote_key, Policy.SSRC_ANY_INBOUND, keys)
        self.keys = keys

    def protect(self, packet: bytes) -> bytes:
        """An RTP packet as SRTP (encrypted payload, authentication tag appended). Ours are at
        most 172 octets; the binding takes up to ~1,350 (ValueError past that)."""
        return self._tx.protect(packet)

    def unprotect(self, packet: bytes) -> bytes:
        """An SRTP packet authenticated and decrypted back to RTP.

        Raises:
            SrtpError: forged, corrupted, replayed, or not SRTP at all.
        """
        return _checked(self._rx.unprotect, packet, "SRTP")

    def protect_rtcp(self, packet: bytes) -> bytes:
        """A compound RTCP packet as SRTCP (RFC 3711 §3.4: encrypted, index, tag)."""
        return self._tx.protect_rtcp(packet)

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        """An SRTCP packet authenticated and decrypted back to compound RTCP.

        Raises:
            SrtpError: forged, corrupted, replayed, or not SRTCP at all.
        """
        return _checked(self._rx.unprotect_rtcp, packet, "SRTCP")
