"""Digest authentication for a UAS (RFC 3261 §22.4, RFC 7616, RFC 8760). Pure: no I/O.

Theory of operation
-------------------
The caller owns the SIP messages; this module only sees header *values*:

1. A request arrives without credentials. The UAS answers 401 (or 407 as a proxy) with one
   ``WWW-Authenticate`` (``Proxy-Authenticate``) header per value of
   :meth:`DigestAuthenticator.challenge_headers`: SHA-256 first, then MD5, because RFC 8760 §2.4
   says a server offering several algorithms sends one challenge per algorithm, most preferred
   first. Both challenges carry the same nonce.
2. The client retries with ``Authorization``; the caller runs :func:`parse_authorization` on the
   value (an :class:`AuthHeaderError` means "answer 400") and hands the result to
   :meth:`DigestAuthenticator.verify`, with a function returning the stored HA1 for
   ``(username, algorithm)`` (the trunk store keeps HA1s, see ``telepath.secrets.digest``).
3. The :class:`AuthResult` tells the caller what to do: ``OK`` proceed; ``STALE`` and ``REPLAY``
   re-challenge with ``stale=true`` (the client re-signs silently, RFC 7616 §3.3: the nonce is
   invalid, the digest for it right); ``FAILED`` is refused and counts a failure in
   :mod:`telepath.sip.defence` — toward the address the nonce was sent to
   (:attr:`AuthOutcome.issuer`); ``UNKNOWN_NONCE`` re-challenge, not counted; ``MALFORMED``
   answer 400.

Nonces are stateless (no table of issued nonces, so challenges cost no memory and a flood of
unauthenticated requests cannot grow state)::

    head  = ts_ms[8] || random[8] || ip[16]
    nonce = base64url(head || HMAC-SHA256(secret, head || realm)[:16])

``ip`` is the IP address the challenge was sent to (the request's source; not the port, which
NATs and SBCs change between requests), packed in 16 bytes so the nonce has one length: an
IPv4 address as IPv4-mapped IPv6, so an IPv4 caller on a dual-stack socket is the same address
on an IPv4 one; all zeros when the caller gives none. The MAC covers it, so it cannot be
changed.

A nonce is good from any address: a carrier's SBC cluster may send each request from another
node. (Were it good from its address only, the retry from another node would be re-challenged
with a nonce for that node, the next retry would leave from yet another, and the client would
never get in — nor a wrong password ever get its 403.) The digest is checked wherever the
answer comes from, and :attr:`AuthOutcome.issuer` names the address the nonce was sent to: a
``FAILED`` counts toward *its* ban, not the packet's source's. Over UDP a forger could
otherwise fetch a challenge from its own address and answer it wrongly under a carrier's source
address, each answer counted toward the carrier's ban; now each counts toward the forger's own
address. Nor is this an oracle: every wrong guess over a nonce counts toward the address that
fetched it, wherever it is sent from, so a guesser gains nothing over guessing from there.

``ts_ms`` is the injected :class:`~telepath.clock.Clock` in milliseconds (monotonic, so it is only
meaningful within one process; a nonce with a valid MAC but a timestamp in the future, e.g. issued
before a reboot with a persistent secret, is treated as expired). The only state is the replay
table: the highest ``nc`` seen per nonce, recorded only after a *correct* response, so only
authenticated peers can grow it, and it is bounded (see :class:`DigestAuthenticator`).

With several SIP worker processes, each mints nonces with its own secret and also knows its
siblings' (``sibling_secrets``): a correct answer to a sibling's nonce — a client re-using a
nonce on a call another worker owns — is ``STALE``, so the client re-signs with a nonce of
this worker, instead of a failure that would count towards a ban. A sibling's nonce names the
address it was sent to in the same way.

Decisions
---------
* **qop-less responses** (RFC 2069 compatibility, RFC 7616 §3.4.1 without qop) are accepted
  because some SIP phones still send them, but each nonce then authenticates exactly one request:
  without ``nc`` there is nothing else to stop a replay. We always *offer* ``qop="auth"``.
* **``-sess`` algorithms** (``MD5-sess``, ``SHA-256-sess``) and anything else we did not offer
  (``SHA-512-256``, ``qop=auth-int``) give ``MALFORMED``: we never offer them, so a client sending
  them is broken, and a 400 is more useful to its operator than an endless 401 loop.
* **No ``opaque``**: all server state lives in the nonce. A client echoing some ``opaque`` anyway
  is not penalised.
* **No user enumeration**: an unknown username is verified against a dummy HA1 with the same
  hashing work, and the outcome is identical to a wrong password.
* The ``uri`` parameter is hashed as sent; checking it against the Request-URI (RFC 3261 §22.4
  suggests it) is left to the caller, which has the request.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import re
import secrets
import struct
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from telepath.clock import Clock
from telepath.errors import ProtocolError

__all__ = [
    "Algorithm",
    "AuthHeaderError",
    "AuthOutcome",
    "AuthResult",
    "DigestAuthenticator",
    "DigestCredentials",
    "digest_response",
    "parse_authorization",
    "parse_scheme_params",
    "quote_string",
    "redact_authorization",
]

Algorithm = Literal["SHA-256", "MD5"]

#: Algorithms we offer, in RFC 8760 §2.4 preference order (most preferred first).
OFFERED_ALGORITHMS: tuple[Algorithm, ...] = ("SHA-256", "MD5")

#: Header values longer than this are rejected outright (a real one is well under 1 KiB).
MAX_HEADER_LENGTH = 8192

_HASH_NAMES: dict[Algorithm, str] = {"MD5": "md5", "SHA-256": "sha256"}

# Nonce layout (see module docstring).
_TS_LEN = 8
_RAND_LEN = 8  # with the millisecond timestamp: unique, and the MAC makes it unforgeable
_IP_LEN = 16  # the address it was sent to, IPv4 as IPv4-mapped IPv6: one nonce length
_HEAD_LEN = _TS_LEN + _RAND_LEN + _IP_LEN
_SIBLING = -(1 << 62)  # "issued" time of a sibling worker's nonce: never ours to accept
_MAC_LEN = 16  # 128 bits of HMAC-SHA256 is plenty against forgery (RFC 2104 §5 truncation)
_NONCE_RAW_LEN = _HEAD_LEN + _MAC_LEN  # 48 bytes -> 64 base64url chars, no padding
_NONCE_TEXT_LEN = 64

# RFC 7230 §3.2.6 token (RFC 7616 §3.4 auth-param names and unquoted values use it), ASCII only.
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Linear whitespace, including the CRLF of a folded header line (RFC 3261 §7.3.1).
_LWS_RE = re.compile(r"[ \t\r\n]*")
# Tolerant unquoted value: anything up to a comma, whitespace or quote (SIPp sends
# ``algorithm=MD5,...`` and ``nc=00000001`` unquoted; some phones leave uri unquoted).
_BARE_VALUE_RE = re.compile(r"[^,\s\"]+")
_NC_RE = re.compile(r"[0-9A-Fa-f]{1,8}")  # RFC 7616 §3.4: nc-value = 8LHEX; we take 1..8, any case
_HEX_RE = re.compile(r"[0-9A-Fa-f]+")


class AuthHeaderError(ProtocolError):
    """An ``Authorization``/``Proxy-Authorization`` value is not a usable Digest credential.

    The UAS answers 400 (``status_hint``); the message never contains credential values.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, status_hint=400)


@dataclass(frozen=True, slots=True)
class DigestCredentials:
    """A parsed Digest ``Authorization`` header (RFC 7616 §3.4, RFC 3261 §22.4).

    Parameters:
        username: the ``username`` parameter (unescaped).
        realm: the ``realm`` the client answered.
        nonce: the server nonce echoed back.
        uri: the ``uri`` (digest-uri) parameter, hashed verbatim.
        response: the hex digest the client computed.
        algorithm: as sent (``MD5`` when absent, RFC 7616 §3.4); matched case-insensitively by
            :meth:`DigestAuthenticator.verify`, which rejects what it does not support.
        cnonce: client nonce, required with ``qop``.
        nc: nonce count as an integer, required with ``qop``.
        qop: quality of protection as sent (``auth``), or ``None`` for RFC 2069 style.
        opaque: echoed ``opaque``, if any (we never send one).
        nc_value: ``nc`` exactly as sent, since the response hash covers the text; when ``None``
            it is derived from ``nc`` as eight lower-case hex digits.
    """

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    cnonce: str | None = None
    nc: int | None = None
    qop: str | None = None
    opaque: str | None = None
    nc_value: str | None = None

    def nc_text(self) -> str | None:
        """Return the nonce count as it enters the response hash (RFC 7616 §3.4.1)."""
        if self.nc_value is not None:
            return self.nc_value
        return None if self.nc is None else f"{self.nc:08x}"


_REQUIRED = ("username", "realm", "nonce", "uri", "response")


def _skip_lws(value: str, pos: int) -> int:
    """Return the index of the first non-LWS character at or after ``pos``."""
    match = _LWS_RE.match(value, pos)
    return pos if match is None else match.end()


def _parse_params(value: str, pos: int) -> dict[str, str]:
    """Parse ``#auth-param`` (RFC 7235 §2.1) starting at ``pos``; names are lower-cased."""
    params: dict[str, str] = {}
    end = len(value)
    while True:
        pos = _skip_lws(value, pos)
        # Tolerate empty list elements (``a=1,,b=2``, trailing comma), RFC 7230 §7.
        while pos < end and value[pos] == ",":
            pos = _skip_lws(value, pos + 1)
        if pos >= end:
            return params
        name_match = _TOKEN_RE.match(value, pos)
        if name_match is None:
            raise AuthHeaderError("expected a parameter name")
        name = name_match.group().lower()
        pos = _skip_lws(value, name_match.end())
        if pos >= end or value[pos] != "=":
            raise AuthHeaderError(f"parameter {name!r} has no value")
        pos = _skip_lws(value, pos + 1)
        if pos < end and value[pos] == '"':
            param_value, pos = _parse_quoted(value, pos)
        else:
            bare = _BARE_VALUE_RE.match(value, pos)
            if bare is None:
                raise AuthHeaderError(f"parameter {name!r} has an empty value")
            param_value, pos = bare.group(), bare.end()
        if name in params:
            # Ambiguous: which one did the client hash? RFC 7616 §3.4 allows each at most once.
            raise AuthHeaderError(f"parameter {name!r} appears twice")
        params[name] = param_value
        pos = _skip_lws(value, pos)
        if pos < end and value[pos] != ",":
            raise AuthHeaderError(f"expected ',' after parameter {name!r}")


def _parse_quoted(value: str, pos: int) -> tuple[str, int]:
    """Parse a quoted-string at ``value[pos] == '"'`` (RFC 3261 §25.1); return (text, next pos).

    ``\\x`` quoted-pairs are unescaped. Linear time: one pass, no backtracking.
    """
    out: list[str] = []
    i = pos + 1
    end = len(value)
    while i < end:
        ch = value[i]
        if ch == '"':
            return "".join(out), i + 1
        if ch == "\\":
            if i + 1 >= end:
                break
            out.append(value[i + 1])
            i += 2
            continue
        out.append(ch)
        i += 1
    raise AuthHeaderError("unterminated quoted-string")


def parse_scheme_params(value: str) -> tuple[str, dict[str, str]]:
    """Split a credentials or challenge value into its lower-cased scheme and its
    ``#auth-param`` list (RFC 7235 §2.1; names lower-cased, quoted values unescaped).

    Raises:
        AuthHeaderError: too long, no scheme, or bad parameter syntax.
    """
    if len(value) > MAX_HEADER_LENGTH:
        raise AuthHeaderError("header value too long")
    scheme = _scheme(value)
    if scheme is None:
        raise AuthHeaderError("no scheme")
    return scheme[0], _parse_params(value, scheme[1])


def _scheme(value: str) -> tuple[str, int] | None:
    """The lower-cased auth scheme leading ``value`` and where its parameters start."""
    match = _TOKEN_RE.match(value, _skip_lws(value, 0))
    if match is None:
        return None
    after = match.end()
    if after < len(value) and value[after] not in " \t\r\n":
        return None
    return match.group().lower(), after


def parse_authorization(value: str) -> DigestCredentials:
    """Parse an ``Authorization``/``Proxy-Authorization`` header value (RFC 7616 §3.4).

    Tolerant of what real clients send: quoted or bare values, any parameter order, extra
    whitespace (including folded lines), a case-insensitive ``Digest`` scheme and parameter names,
    and quoted-pair escapes. Unknown parameters are ignored.

    Raises:
        AuthHeaderError: for anything else (wrong scheme, syntax errors, duplicated or missing
            required parameters, a bad ``nc``). No other exception escapes, whatever the input.
    """
    if len(value) > MAX_HEADER_LENGTH:
        raise AuthHeaderError("header value too long")
    scheme = _scheme(value)
    if scheme is None or scheme[0] != "digest":
        raise AuthHeaderError("not a Digest credential")
    params = _parse_params(value, scheme[1])

    missing = [name for name in _REQUIRED if name not in params]
    if missing:
        raise AuthHeaderError(f"missing parameter(s): {', '.join(missing)}")

    nc: int | None = None
    nc_value = params.get("nc")
    if nc_value is not None:
        if _NC_RE.fullmatch(nc_value) is None:
            raise AuthHeaderError("nc is not 1-8 hex digits")
        nc = int(nc_value, 16)
        if nc == 0:
            raise AuthHeaderError("nc starts at 00000001")  # RFC 7616 §3.4

    return DigestCredentials(
        username=params["username"],
        realm=params["realm"],
        nonce=params["nonce"],
        uri=params["uri"],
        response=params["response"],
        algorithm=params.get("algorithm", "MD5"),
        cnonce=params.get("cnonce"),
        nc=nc,
        qop=params.get("qop"),
        opaque=params.get("opaque"),
        nc_value=nc_value,
    )


def _b(text: str) -> bytes:
    # Header text that came from bytes via surrogateescape must still hash deterministically.
    return text.encode("utf-8", "surrogatepass")


def digest_response(
    algorithm: Algorithm,
    ha1: str,
    *,
    nonce: str,
    method: str,
    uri: str,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
) -> str:
    """Return the expected ``response`` (lower-case hex), RFC 7616 §3.4.1 / RFC 2617 §3.2.2.1.

    ``HA2 = H(method ":" uri)``; with ``qop`` the response is
    ``H(HA1 ":" nonce ":" nc ":" cnonce ":" qop ":" HA2)``, without it (RFC 2069)
    ``H(HA1 ":" nonce ":" HA2)``. ``nc`` is the text as sent (eight hex digits).
    """
    name = _HASH_NAMES[algorithm]
    ha2 = hashlib.new(name, _b(f"{method}:{uri}")).hexdigest()
    if qop is None:
        data = f"{ha1}:{nonce}:{ha2}"
    else:
        data = f"{ha1}:{nonce}:{nc or ''}:{cnonce or ''}:{qop}:{ha2}"
    return hashlib.new(name, _b(data)).hexdigest()


class AuthResult(StrEnum):
    """What :meth:`DigestAuthenticator.verify` concluded, and so what the UAS answers.

    Parameters:
        OK: credentials valid; proceed.
        STALE: the response is correct but the nonce expired: re-challenge with ``stale=true``.
        FAILED: a wrong response to a nonce of ours (wrong password, unknown user, wrong realm):
            refused (403) and counted as an authentication failure.
        REPLAY: a correct response reusing a nonce (count) already seen: re-challenge with
            ``stale=true``, as for ``STALE`` — the nonce is spent, the digest right (RFC 7616
            §3.3). A qop-less client reusing its last answer for the next call does this; a
            replayed capture proves nothing about a password, so it is no failure.
        UNKNOWN_NONCE: a nonce we never issued (forged, tampered, another server's): re-challenge
            and count nothing. No guess was made: the sender saw no challenge of ours and
            learns nothing from the answer; counted, a made-up nonce under a carrier's forged
            UDP source got the carrier banned. (A nonce of ours answered wrongly from another
            address is ``FAILED``, counted toward the address it was sent to: see
            :attr:`AuthOutcome.issuer`.)
        MALFORMED: credentials we never offered (``-sess``, unknown algorithm, ``auth-int``) or
            a qop without nc/cnonce: answer 400.
    """

    OK = "ok"
    STALE = "stale"
    FAILED = "failed"
    UNKNOWN_NONCE = "unknown_nonce"
    REPLAY = "replay"
    MALFORMED = "malformed"


@dataclass(frozen=True, slots=True)
class AuthOutcome:
    """The result of one verification.

    Parameters:
        result: the verdict.
        username: the username the client claimed (the same for unknown users and wrong
            passwords), ``None`` only for ``MALFORMED``.
        algorithm: the algorithm used, ``None`` only for ``MALFORMED``.
        issuer: the IP address the nonce was sent to (the module docstring), for ``OK``,
            ``STALE``, ``REPLAY`` and ``FAILED``: a ``FAILED`` counts toward its ban, not the
            request's source's. Spelt as the ``source`` given to
            :meth:`DigestAuthenticator.verify` is: that very string for the same address, else
            as the socket it came through writes addresses (an IPv4 one ``::ffff:``-mapped when
            ``source`` is IPv6: a dual-stack socket). ``None`` when the nonce was sent to no
            address, and for ``UNKNOWN_NONCE`` and ``MALFORMED``.
    """

    result: AuthResult
    username: str | None
    algorithm: Algorithm | None
    issuer: str | None = None


def _normalise_algorithm(name: str) -> Algorithm | None:
    upper = name.strip().upper()
    if upper == "MD5":
        return "MD5"
    if upper == "SHA-256":
        return "SHA-256"
    return None  # including MD5-sess / SHA-256-sess, see the module docstring


def quote_string(text: str) -> str:
    """Render ``text`` as a quoted-string (RFC 3261 §25.1)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# Marks a nonce used qop-less: any further use of it is a replay, whatever its nc.
_NONCE_SPENT = 1 << 32


# The address of a nonce sent to none (``::``, never a request's source).
_NO_ADDRESS = bytes(_IP_LEN)


def _packed_ip(source: str | None) -> bytes:
    """The address a nonce carries: 16 bytes, an IPv4 address IPv4-mapped (so an IPv4 caller
    on a dual-stack socket is the same address); ``None`` and text that is no IP address
    :data:`_NO_ADDRESS`."""
    if source is None:
        return _NO_ADDRESS
    try:
        address = ipaddress.ip_address(source)
    except ValueError:
        return _NO_ADDRESS
    if isinstance(address, ipaddress.IPv4Address):
        return bytes(10) + b"\xff\xff" + address.packed  # IPv4-mapped, RFC 4291 §2.5.5.2
    return address.packed


def _issuer(ip: bytes, source: str | None) -> str | None:
    """The address a nonce carries, spelt as ``source`` (the request's source) is: that very
    string for the same address, so the guard's key for it is unchanged; otherwise as the
    socket ``source`` came through writes addresses — an IPv4 one ``::ffff:``-mapped when
    ``source`` is IPv6 text (a dual-stack socket), plain otherwise."""
    if ip == _NO_ADDRESS:
        return None
    if source is not None and _packed_ip(source) == ip:
        return source
    address = ipaddress.IPv6Address(ip)
    mapped = address.ipv4_mapped
    if mapped is None:
        return str(address)
    return f"::ffff:{mapped}" if source is not None and ":" in source else str(mapped)


class DigestAuthenticator:
    """Issues Digest challenges and verifies responses for one realm.

    Args:
        realm: the protection realm (RFC 3261 §22.1); HA1s are only valid for this realm.
        secret: HMAC key for nonces; at least 16 bytes. Keep it stable across restarts if nonces
            should survive them (they will still be reported stale, see the module docstring).
        clock: monotonic time source, in seconds.
        nonce_ttl_s: a nonce older than this gives ``STALE``.
        max_tracked_nonces: bound on the replay table. If it is ever exceeded, the oldest
            entries are dropped and every untracked nonce issued no later than the newest dropped
            one is treated as stale, so eviction never opens a replay window.
    """

    def __init__(
        self,
        realm: str,
        secret: bytes,
        clock: Clock,
        *,
        nonce_ttl_s: float = 300.0,
        max_tracked_nonces: int = 100_000,
        algorithms: tuple[Algorithm, ...] = OFFERED_ALGORITHMS,
        sibling_secrets: tuple[bytes, ...] = (),
    ) -> None:
        if not algorithms or any(a not in OFFERED_ALGORITHMS for a in algorithms):
            raise ValueError(f"algorithms must be a non-empty subset of {OFFERED_ALGORITHMS}")
        self.algorithms = algorithms
        if len(secret) < 16:
            raise ValueError("nonce secret must be at least 16 bytes")
        if nonce_ttl_s <= 0 or max_tracked_nonces < 1:
            raise ValueError("nonce_ttl_s and max_tracked_nonces must be positive")
        self.realm = realm
        self._secret = secret
        # Other SIP worker processes' secrets: a correct answer to one of their nonces is
        # STALE here (re-challenged with our own), never a failure, and never accepted — only
        # the issuer's replay table can tell a replay (``cli/workers.py``).
        self._siblings = sibling_secrets
        self._clock = clock
        self._ttl_ms = int(nonce_ttl_s * 1000)
        self._max_tracked = max_tracked_nonces
        # nonce -> (issued_ms, highest nc seen), in first-use order; first use happens after
        # issue, so the front is (roughly) the oldest and expires first.
        self._seen: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._evicted_floor_ms: int | None = None
        # Per-instance key for dummy HA1s of unknown users (never equals a real HA1).
        self._dummy_key = hmac.new(secret, b"telepath-dummy-ha1", hashlib.sha256).digest()

    # -- nonces -----------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self._clock.now() * 1000)

    def _mac(self, head: bytes, key: bytes) -> bytes:
        # head holds the address: a nonce moved to another one is a nonce we never issued
        return hmac.new(key, head + _b(self.realm), hashlib.sha256).digest()[:_MAC_LEN]

    def _new_nonce(self, source: str | None) -> str:
        ts = struct.pack(">q", self._now_ms())
        head = ts + secrets.token_bytes(_RAND_LEN) + _packed_ip(source)
        raw = head + self._mac(head, self._secret)
        return base64.urlsafe_b64encode(raw).decode("ascii")

    def _open_nonce(self, nonce: str) -> tuple[int, bytes] | None:
        """Return the issue time and the packed address of a nonce we minted, or ``None`` if
        it is not ours/tampered.

        A sibling's nonce (``sibling_secrets``) gives ``_SIBLING`` for its issue time.
        """
        if len(nonce) != _NONCE_TEXT_LEN:
            return None
        try:
            raw = base64.urlsafe_b64decode(nonce.encode("ascii"))
        except (UnicodeEncodeError, binascii.Error, ValueError):
            return None
        if len(raw) != _NONCE_RAW_LEN:
            return None
        head, mac = raw[:_HEAD_LEN], raw[_HEAD_LEN:]
        ip = head[_TS_LEN + _RAND_LEN :]
        for key in (self._secret, *self._siblings):
            if not hmac.compare_digest(mac, self._mac(head, key)):
                continue
            if key is not self._secret:
                return _SIBLING, ip
            (issued_ms,) = struct.unpack(">q", head[:_TS_LEN])
            return int(issued_ms), ip
        return None

    def _is_expired(self, issued_ms: int, now_ms: int) -> bool:
        age = now_ms - issued_ms
        return age < 0 or age > self._ttl_ms

    # -- public API -------------------------------------------------------------------------

    @property
    def nonce_ttl_s(self) -> float:
        """How long a nonce of ours stays good (then ``STALE``)."""
        return self._ttl_ms / 1000

    def new_nonce(self, *, source: str | None = None) -> str:
        """Return a fresh nonce sent to the IP address ``source`` (the request's source, where
        the challenge goes; ``None`` for none), for :meth:`challenge_headers` when the caller
        keeps it. It is good from any address; :meth:`verify` names ``source`` as its
        :attr:`~AuthOutcome.issuer`."""
        return self._new_nonce(source)

    def challenge_headers(
        self,
        *,
        stale: bool = False,
        algorithms: Sequence[Algorithm] | None = None,
        nonce: str | None = None,
        source: str | None = None,
    ) -> list[str]:
        """Return ``WWW-Authenticate``/``Proxy-Authenticate`` values for a 401/407.

        One challenge per algorithm, in the configured order of preference — by default SHA-256
        first then MD5 (RFC 8760 §2.4) — sharing a fresh nonce sent to the IP address
        ``source`` (``nonce``, from :meth:`new_nonce`, when given), each offering ``qop="auth"``
        (RFC 7616 §3.3). ``stale=True`` tells the client its
        previous credentials were right but the nonce expired, so it can retry without asking
        the user (RFC 7616 §3.3).
        """
        nonce = self._new_nonce(source) if nonce is None else nonce
        values = []
        for algorithm in algorithms or self.algorithms:
            value = (
                f"Digest realm={quote_string(self.realm)}, nonce={quote_string(nonce)}, "
                f'algorithm={algorithm}, qop="auth"'
            )
            if stale:
                value += ", stale=true"
            values.append(value)
        return values

    def verify(
        self,
        creds: DigestCredentials,
        *,
        method: str,
        ha1_lookup: Callable[[str, Algorithm], str | None],
        source: str | None = None,
    ) -> AuthOutcome:
        """Check ``creds`` for a request with ``method`` (RFC 3261 §22.4, RFC 7616 §3.4) from
        the IP address ``source`` (any port left out).

        ``ha1_lookup(username, algorithm)`` returns the stored lower-case hex HA1
        (``H(username:realm:password)`` with the same algorithm) or ``None`` for an unknown
        user. Only a correct response ever changes state (the replay table). The nonce is good
        from any ``source``; it only spells :attr:`AuthOutcome.issuer`, the address the nonce
        was sent to.
        """
        algorithm = _normalise_algorithm(creds.algorithm)
        if algorithm is None:
            return AuthOutcome(AuthResult.MALFORMED, None, None)
        qop: str | None = None
        if creds.qop is not None:
            if creds.qop.strip().lower() != "auth":
                return AuthOutcome(AuthResult.MALFORMED, None, None)  # auth-int: never offered
            if creds.nc is None or creds.cnonce is None:
                # RFC 7616 §3.4: cnonce and nc MUST be sent with qop.
                return AuthOutcome(AuthResult.MALFORMED, None, None)
            qop = creds.qop
        opened = self._open_nonce(creds.nonce)
        if opened is None:  # forged, truncated or another server's nonce
            return AuthOutcome(AuthResult.UNKNOWN_NONCE, creds.username, algorithm)
        issued_ms, ip = opened
        issuer = _issuer(ip, source)
        failed = AuthOutcome(AuthResult.FAILED, creds.username, algorithm, issuer)
        if creds.realm != self.realm:
            return failed  # HA1 is bound to our realm; another realm can never verify

        stored = ha1_lookup(creds.username, algorithm)
        # Unknown user: same hashing work against an HA1 nobody knows, then the same outcome.
        ha1 = stored if stored is not None else self._dummy_ha1(creds.username, algorithm)
        expected = digest_response(
            algorithm,
            ha1.lower(),
            nonce=creds.nonce,
            method=method,
            uri=creds.uri,
            qop=qop,
            nc=creds.nc_text(),
            cnonce=creds.cnonce,
        )
        matches = hmac.compare_digest(_b(expected), _b(creds.response.lower()))
        if not matches or stored is None:
            return failed

        now_ms = self._now_ms()
        if issued_ms == _SIBLING or self._is_expired(issued_ms, now_ms):
            return AuthOutcome(AuthResult.STALE, creds.username, algorithm, issuer)
        if not self._record_use(creds.nonce, issued_ms, creds.nc if qop else None, now_ms):
            return AuthOutcome(AuthResult.REPLAY, creds.username, algorithm, issuer)
        return AuthOutcome(AuthResult.OK, creds.username, algorithm, issuer)

    def _dummy_ha1(self, username: str, algorithm: Algorithm) -> str:
        digest = hmac.new(self._dummy_key, _b(f"{algorithm}:{username}"), hashlib.sha256)
        return digest.hexdigest()[: 32 if algorithm == "MD5" else 64]

    def _record_use(self, nonce: str, issued_ms: int, nc: int | None, now_ms: int) -> bool:
        """Record a correct use of ``nonce``; return ``False`` if it is a replay.

        With qop the nonce count must strictly increase (RFC 7616 §3.4, §5.12); without qop a
        nonce authenticates once.
        """
        entry = self._seen.get(nonce)
        if entry is None:
            if self._evicted_floor_ms is not None and issued_ms <= self._evicted_floor_ms:
                return False  # may have been used and evicted: refuse rather than risk a replay
            highest = 0
        else:
            highest = entry[1]
        count = _NONCE_SPENT if nc is None else nc
        if count <= highest or highest == _NONCE_SPENT:
            return False
        self._seen[nonce] = (issued_ms, count)
        if entry is None:
            self._evict(now_ms)
        return True

    def _evict(self, now_ms: int) -> None:
        while self._seen:
            oldest_nonce, (issued_ms, _) = next(iter(self._seen.items()))
            if self._is_expired(issued_ms, now_ms):
                del self._seen[oldest_nonce]  # expired nonces are STALE anyway; no need to track
            elif len(self._seen) > self._max_tracked:
                del self._seen[oldest_nonce]
                floor = self._evicted_floor_ms
                self._evicted_floor_ms = issued_ms if floor is None else max(floor, issued_ms)
            else:
                return

    def tracked_nonces(self) -> int:
        """Return how many nonces the replay table holds (for metrics and tests)."""
        return len(self._seen)

    def redact(self, header_value: str) -> str:
        """Return ``header_value`` with secrets hidden; see :func:`redact_authorization`."""
        return redact_authorization(header_value)


_REDACT_RE = re.compile(
    r"(?<![\w-])(response|cnonce|nonce)([ \t]*=[ \t]*)(\"(?:[^\"\\]|\\.|\\$)*\"?|[^,\s]*)",
    re.IGNORECASE | re.DOTALL,
)


def redact_authorization(value: str) -> str:
    """Replace ``response``, ``cnonce`` and ``nonce`` values with ``"<redacted>"`` for traces.

    Works on any text (it does not parse), so it is safe on garbage and on full SIP messages;
    it covers ``WWW-Authenticate`` challenges too.
    """
    return _REDACT_RE.sub(lambda m: f'{m.group(1)}{m.group(2)}"<redacted>"', value)
