"""SRTP crypto suites and a stream's keys, as SDP security descriptions (RFC 4568) name them:
plain data shared by SDP negotiation (``sdp/crypto.py``) and the SRTP contexts (``srtp.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KEY_MATERIAL", "SUITES", "SrtpKeys", "SrtpSuite"]


@dataclass(frozen=True, slots=True)
class SrtpSuite:
    """An SDES crypto suite (RFC 4568 §6.2).

    Attributes:
        name: the suite's name in ``a=crypto``.
        key_length: master key + master salt, in octets (the ``inline:`` value decoded).
    """

    name: str
    key_length: int


#: The suites we accept (among an offer's, its own order decides; we offer only the first
#: unless told otherwise).
#: - RFC 4568 §6.2.1/§6.2.2: AES in counter mode with a 128-bit key and a 112-bit salt (30
#:   octets), HMAC-SHA1 tags of 80 or 32 bits. The 80-bit one is the suite every SDES
#:   implementation has (RFC 3711 §5's default).
#: - RFC 7714 §12 (AES-GCM, an AEAD with a 16-octet tag and no separate HMAC): a 128- or
#:   256-bit key and a 96-bit salt, so 28 or 44 octets. The 96-bit salt enters the key
#:   derivation of RFC 3711 §4.3 as a 112-bit salt with two zero octets appended (RFC 7714
#:   erratum 4938), as libsrtp and libre do it.
SUITES: dict[str, SrtpSuite] = {
    s.name: s
    for s in (
        SrtpSuite("AES_CM_128_HMAC_SHA1_80", 30),
        SrtpSuite("AES_CM_128_HMAC_SHA1_32", 30),
        SrtpSuite("AEAD_AES_128_GCM", 28),
        SrtpSuite("AEAD_AES_256_GCM", 44),
    )
}

#: Octets of random key material that cover every suite: a suite takes the first
#: ``key_length`` of them, so a call can draw its key before it knows the suite.
KEY_MATERIAL = max(s.key_length for s in SUITES.values())


@dataclass(frozen=True, slots=True)
class SrtpKeys:
    """What an SDES offer/answer settled for one stream.

    Attributes:
        suite: the crypto suite both sides use.
        tag: the ``a=crypto`` tag the answer repeated (RFC 4568 §6.1).
        local_key: our master key || salt: we protect with it, the peer decrypts.
        remote_key: the peer's master key || salt: we decrypt with it.
    """

    suite: SrtpSuite
    tag: int
    local_key: bytes
    remote_key: bytes

    def __repr__(self) -> str:  # never print key material
        return f"SrtpKeys({self.suite.name}, tag={self.tag})"
