"""HA1 values for SIP digest authentication (RFC 8760 §2, RFC 7616 §3.4.2).

The trunk store keeps ``H(username ":" realm ":" password)`` for MD5 and SHA-256 instead of the
password, which is exactly what a digest verifier needs and nothing more. Because the realm is part
of the hash, changing ``TELEPATH_SIP_DOMAIN`` invalidates stored HA1 values: the README documents
that a realm change needs every trunk's password rotated.
"""

from __future__ import annotations

import hashlib
from typing import Literal

DigestAlgorithm = Literal["MD5", "SHA-256"]

_HASHES = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


def compute_ha1(algorithm: DigestAlgorithm, username: str, realm: str, password: str) -> str:
    """Return the lower-case hex HA1 for ``algorithm`` (RFC 7616 §3.4.2, non-session form)."""
    data = f"{username}:{realm}:{password}".encode()
    return _HASHES[algorithm](data).hexdigest()
