"""SDP security descriptions for media streams, SDES (RFC 4568): the ``a=crypto`` attribute.

Grammar (RFC 4568 §9.1; §4 for the fields)::

    a=crypto:<tag> <crypto-suite> <key-params> [<session-param> ...]
    key-params = key-param *(";" key-param)
    key-param  = "inline:" <base64 key||salt> ["|" lifetime] ["|" MKI ":" MKI-length]
    lifetime   = ["2^"] 1*DIGIT

What we accept (an offered line we cannot honour is skipped, and the answerer picks another,
RFC 4568 §6.1; when none is left the stream is not acceptable):

- the suites of :data:`telepath.rtp.srtp_keys.SUITES` (AES-CM with HMAC-SHA1, RFC 4568 §6.2;
  AES-GCM, RFC 7714 §12);
- exactly one key, without an MKI: an MKI is only needed to switch between several master
  keys mid-stream, which SIP peers do not do in practice and our SRTP binding cannot;
- any lifetime at or above 2^20 packets (over 5 hours at 50 packets/s; we never re-key
  within a call, and a call lasts at most ``TELEPATH_CALL_MAX_DURATION_S``);
- no session parameters: each one changes what SRTP does (unencrypted or unauthenticated
  media, a key-derivation rate, FEC order) and RFC 4568 §6.3 says a line whose parameters the
  answerer does not support is not accepted.

Hand-written: the attribute is one line of text; no maintained Python library parses it.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass

from telepath.rtp.srtp_keys import SUITES, SrtpSuite

__all__ = ["CryptoAttribute", "format_crypto", "parse_crypto", "usable_crypto"]

#: The least key lifetime we accept, in packets (see the module docstring).
MIN_LIFETIME = 2**20

_CRYPTO = re.compile(r"([0-9]{1,9})[ \t]+([A-Za-z0-9_]+)[ \t]+(\S+)((?:[ \t]+\S+)*)[ \t]*")
_LIFETIME = re.compile(r"(2\^)?([0-9]{1,20})")


@dataclass(frozen=True, slots=True)
class CryptoAttribute:
    """One ``a=crypto`` line whose key we can use.

    Attributes:
        tag: the line's tag (the answer repeats it, RFC 4568 §6.1).
        suite: the crypto suite.
        key: master key || master salt, decoded.
    """

    tag: int
    suite: SrtpSuite
    key: bytes

    def __repr__(self) -> str:  # never print key material
        return f"CryptoAttribute({self.tag}, {self.suite.name})"


def _lifetime_ok(text: str) -> bool:
    match = _LIFETIME.fullmatch(text)
    if match is None:
        return False
    value = int(match.group(2))
    if match.group(1):
        return value >= 20
    return value >= MIN_LIFETIME


def parse_crypto(value: str) -> CryptoAttribute | None:
    """An ``a=crypto`` value we can honour, or None (malformed, or not one we support)."""
    match = _CRYPTO.fullmatch(value.strip(" \t"))
    if match is None:
        return None
    tag_text, suite_name, key_params, session_params = match.groups()
    suite = SUITES.get(suite_name.upper())
    if suite is None or session_params.strip():
        return None
    if ";" in key_params or not key_params[:7].lower() == "inline:":
        return None  # several keys (they need MKIs) or a key method other than inline
    key_text, *extra = key_params[7:].split("|")
    if len(extra) > 1 or (extra and ":" in extra[0]) or (extra and not _lifetime_ok(extra[0])):
        return None  # an MKI, or a lifetime too short for a call
    try:
        key = base64.b64decode(key_text, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(key) != suite.key_length:
        return None
    return CryptoAttribute(int(tag_text), suite, key)


def usable_crypto(
    values: list[str], accept: Callable[[SrtpSuite], bool] = lambda suite: True
) -> CryptoAttribute | None:
    """The first of a stream's ``a=crypto`` values that we can honour and whose suite
    ``accept`` takes (the offerer lists them in its order of preference, RFC 4568 §5.1), or
    None."""
    for value in values:
        found = parse_crypto(value)
        if found is not None and accept(found.suite):
            return found
    return None


def format_crypto(tag: int, suite: SrtpSuite, key: bytes) -> str:
    """The value of our ``a=crypto`` line: the tag, the suite and our key inline (RFC 4568
    §9.1); no lifetime (the suite's default applies) and no MKI."""
    if len(key) != suite.key_length:
        raise ValueError(f"{suite.name} needs a {suite.key_length}-octet key")
    return f"{tag} {suite.name} inline:{base64.b64encode(key).decode('ascii')}"
