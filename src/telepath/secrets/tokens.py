"""Identifiers and API keys.

Identifiers are ``<prefix>_<26 Crockford base32 characters>``: 48 bits of millisecond time then
80 random bits (ULID layout, lower-case), so they sort by creation and cannot be guessed.
API keys are ``sk_live_`` + 32 random bytes; only their SHA-256 is stored (the key carries 256 bits
of entropy, so a slow password hash would add nothing).
"""

from __future__ import annotations

import hashlib
import secrets
import string
import time
from typing import Final

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
API_KEY_PREFIX = "sk_live_"


def new_id(prefix: str) -> str:
    """Return a new time-sortable identifier such as ``conn_01jd...``."""
    value = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return f"{prefix}_{''.join(reversed(chars))}"


def new_api_key() -> str:
    """Return a new plaintext API key (shown once, never stored)."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """Return the stored form of an API key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


_PASSWORD_ALPHABET = string.ascii_letters + string.digits + "!@#%^*-_=+"


def new_sip_password(length: int = 24) -> str:
    """Return a strong SIP password containing every character class."""
    while True:
        pw = "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(length))
        if (
            any(c.islower() for c in pw)
            and any(c.isupper() for c in pw)
            and any(c.isdigit() for c in pw)
            and any(not c.isalnum() for c in pw)
        ):
            return pw


#: A key hint shows at most this share of the key: the first 3 and last 4 characters of a
#: short key were most of it (``sk-...1234`` of ``sk-abc1234``, found by review).
HINT_SHARE_MAX: Final = 4  # a quarter


def mask_secret(value: str) -> str:
    """Return a hint that identifies a secret without revealing it, showing at most a quarter
    of it: ``sk-...c123`` (its first 3 and last 4 characters) from 28 characters on, which
    real provider keys have; ``...c123`` (the last 4) from 16; ``****`` below."""
    if len(value) >= 7 * HINT_SHARE_MAX:
        return f"{value[:3]}...{value[-4:]}"
    if len(value) >= 4 * HINT_SHARE_MAX:
        return f"...{value[-4:]}"
    return "****"
