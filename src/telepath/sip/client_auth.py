"""Answering a Digest challenge as a client (RFC 3261 §22.2-22.4, RFC 7616 §3.4, RFC 8760).

Pure: header values in, a header value out. Used where Telepath itself is challenged: its
outbound registrations (``sip/registration.py``) and the ``telepath call`` dialler.

What it does with a 401/407's challenges (one ``WWW-Authenticate``/``Proxy-Authenticate`` value
each): picks the most preferred algorithm it supports (SHA-256, then MD5; RFC 8760 §2.4 lets a
server offer several, most preferred first, and a client use the first it supports), answers
with ``qop=auth`` when the challenge offers it (with a fresh ``cnonce`` and ``nc=00000001``
for a new challenge) or in RFC 2069 form when it offers no ``qop``, and echoes ``opaque``.
:func:`answer` answers one known challenge again, with the next nonce count — a request
challenged by a proxy (407) and then by the server behind it (401) carries both answers, and
the same ``nc`` with the same nonce is a replay to a server that checks counts (RFC 7616 §3.4).
``-sess`` algorithms, ``auth-int`` only and other schemes are not answered (None): the caller
reports the challenge as one it cannot meet.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from telepath.sip.auth import (
    Algorithm,
    AuthHeaderError,
    digest_response,
    parse_scheme_params,
    quote_string,
)

__all__ = ["Challenge", "answer", "answer_challenge", "parse_challenge"]

_PREFERENCE: tuple[Algorithm, ...] = ("SHA-256", "MD5")


@dataclass(frozen=True, slots=True)
class Challenge:
    """One Digest challenge (RFC 7616 §3.3)."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()  # the qop-options offered; empty: RFC 2069 form
    opaque: str | None = None
    stale: bool = False


def parse_challenge(value: str) -> Challenge | None:
    """A ``WWW-Authenticate``/``Proxy-Authenticate`` value, or None if it is not a usable
    Digest challenge (another scheme, bad syntax, no realm or nonce)."""
    try:
        scheme, params = parse_scheme_params(value)
    except AuthHeaderError:
        return None
    if scheme != "digest" or "realm" not in params or "nonce" not in params:
        return None
    qop = tuple(q.strip().lower() for q in params.get("qop", "").split(",") if q.strip())
    return Challenge(
        realm=params["realm"],
        nonce=params["nonce"],
        algorithm=params.get("algorithm", "MD5").upper(),
        qop=qop,
        opaque=params.get("opaque"),
        stale=params.get("stale", "").lower() == "true",
    )


def _ha1(algorithm: Algorithm, username: str, realm: str, password: str) -> str:
    """``H(username:realm:password)`` (RFC 7616 §3.4.2), as ``secrets.digest.compute_ha1``
    stores it for the server side — which the pure core may not import. Over the bytes the
    server sent: a realm that is not UTF-8 is header text with surrogates (``message.py``)."""
    name = "sha256" if algorithm == "SHA-256" else "md5"
    text = f"{username}:{realm}:{password}"
    return hashlib.new(name, text.encode("utf-8", "surrogateescape")).hexdigest()


def answer_challenge(
    values: list[str], *, method: str, uri: str, username: str, password: str
) -> tuple[str, Challenge] | None:
    """The ``Authorization`` (or ``Proxy-Authorization``) value answering the best challenge
    among ``values``, and that challenge; None when none can be answered."""
    challenges = [c for c in map(parse_challenge, values) if c is not None]
    for algorithm in _PREFERENCE:
        for challenge in challenges:
            if challenge.algorithm != algorithm or (challenge.qop and "auth" not in challenge.qop):
                continue
            value = answer(challenge, method=method, uri=uri, username=username, password=password)
            return value, challenge
    return None


def answer(
    challenge: Challenge, *, method: str, uri: str, username: str, password: str, nc: int = 1
) -> str:
    """The credentials answering ``challenge`` (one :func:`answer_challenge` chose) as the
    ``nc``-th request with its nonce; ``nc`` goes only into the ``qop`` form."""
    algorithm: Algorithm = "SHA-256" if challenge.algorithm == "SHA-256" else "MD5"
    ha1 = _ha1(algorithm, username, challenge.realm, password)
    parts = [
        f"username={quote_string(username)}",
        f"realm={quote_string(challenge.realm)}",
        f"nonce={quote_string(challenge.nonce)}",
        f"uri={quote_string(uri)}",
    ]
    if challenge.qop:
        cnonce = secrets.token_hex(8)
        count = f"{nc:08x}"
        response = digest_response(
            algorithm,
            ha1,
            nonce=challenge.nonce,
            method=method,
            uri=uri,
            qop="auth",
            nc=count,
            cnonce=cnonce,
        )
        parts += [
            f"response={quote_string(response)}",
            f"algorithm={algorithm}",
            f"cnonce={quote_string(cnonce)}",
            "qop=auth",
            f"nc={count}",
        ]
    else:
        response = digest_response(algorithm, ha1, nonce=challenge.nonce, method=method, uri=uri)
        parts += [f"response={quote_string(response)}", f"algorithm={algorithm}"]
    if challenge.opaque is not None:
        parts.append(f"opaque={quote_string(challenge.opaque)}")
    return "Digest " + ", ".join(parts)
