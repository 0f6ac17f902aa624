"""Validation of a trunk's ``registration`` object: the carrier's registrar that Telepath
registers with as a SIP client (RFC 3261 §10.2), and the credentials it registers with.

Order of checks, as for the trunk body: an object -> no unknown keys -> types -> required keys
-> values. Errors name the key (``registration.registrar``) with the trunk body's codes.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import Any, Final

from telepath.api.errors import ApiError

KEYS: Final = (
    "registrar",
    "username",
    "password",
    "auth_username",
    "domain",
    "outbound_proxy",
    "expires",
)
REGISTRAR_MAX = 255
DOMAIN_MAX = 255
USERNAME_MAX = 64
PASSWORD_MAX = 128
EXPIRES_MIN, EXPIRES_MAX, EXPIRES_DEFAULT = 60, 86_400, 300

# What RFC 3261 §25.1 allows unescaped in a URI's user part (unreserved and user-unreserved
# characters) but ; and ?, which many parsers take for the start of parameters or headers: the
# username goes into the address-of-record as it is, never %-escaped.
USERNAME: Final = re.compile(rf"[A-Za-z0-9\-_.!~*'()&=+$,/]{{1,{USERNAME_MAX}}}")
# RFC 3261 §25.1 hostname: dot-separated labels, the last starting with a letter.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
HOSTNAME: Final = re.compile(rf"(?:{_LABEL}\.)*[a-z](?:[a-z0-9-]{{0,61}}[a-z0-9])?")
# sip:hostport[;params][?headers], before the host is checked.
REGISTRAR_URI: Final = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*):(?P<rest>[^;?]*)(?P<params>;[^?]*)?(?P<headers>\?.*)?",
    re.IGNORECASE,
)

REGISTRAR_FORM = (
    "registration.registrar must be a SIP URI of the registrar: sip:host or sip:host:port"
)
UDP_ONLY = (
    "registration.registrar must be a sip: URI over UDP, TCP (transport=tcp) or TLS "
    "(transport=tls, or a sips: URI)"
)
# An outbound proxy's loose-routing flag (RFC 3261 §19.1.1): taken and dropped, as it is
# always sent (the Route header is "<proxy;lr>").
_LR: Final = re.compile(r";lr(?=;|\?|$)", re.IGNORECASE)


@dataclass(frozen=True)
class RegistrationInput:
    """A validated ``registration`` object. ``password`` is plaintext (in memory only), or None
    when omitted: a PATCH then keeps the stored one."""

    registrar: str
    username: str
    password: str | None = field(repr=False)
    auth_username: str | None
    domain: str | None
    expires: int
    outbound_proxy: str | None = None


def _bad(code: str, message: str) -> ApiError:
    return ApiError(400, code, message)


def parse_registration(value: dict[str, Any]) -> RegistrationInput:
    """Validate and normalise a ``registration`` object (its type already checked)."""
    for key in value:
        if key not in KEYS:
            raise _bad("unknown_field", f"Unknown field: registration.{key[:64]}")
    for key, item in value.items():
        if item is None:
            continue
        if key == "expires":
            if not isinstance(item, int) or isinstance(item, bool):
                raise _bad("invalid_field_type", "registration.expires must be an integer")
        elif not isinstance(item, str):
            raise _bad("invalid_field_type", f"registration.{key} must be a string")
    for key in ("registrar", "username"):
        item = value.get(key)
        if item is None or not item.strip():
            raise _bad("missing_required_field", f"registration.{key} is required")
    auth_username = value.get("auth_username")
    domain = value.get("domain")
    proxy = value.get("outbound_proxy")
    expires = value.get("expires")
    password = value.get("password")
    if password is not None:
        _check_password(password)
    if expires is not None and not EXPIRES_MIN <= expires <= EXPIRES_MAX:
        raise _bad(
            "invalid_field",
            f"registration.expires must be an integer from {EXPIRES_MIN} to {EXPIRES_MAX}",
        )
    registrar = normalize_registrar(value["registrar"])
    outbound_proxy = None if proxy is None else normalize_proxy(proxy)
    if (
        registrar.startswith("sips:")
        and outbound_proxy is not None
        and not (outbound_proxy.startswith("sips:") or outbound_proxy.endswith(";transport=tls"))
    ):
        # every hop to a sips: URI is TLS (RFC 3261 §26.2): the REGISTER's first hop is the proxy
        raise _bad(
            "invalid_field",
            "registration.outbound_proxy must be reached over TLS (a sips: URI or "
            "transport=tls) when the registrar is a sips: URI (RFC 3261 §26.2)",
        )
    return RegistrationInput(
        registrar=registrar,
        username=_check_username(value["username"], "username"),
        password=password,
        auth_username=(
            None if auth_username is None else _check_username(auth_username, "auth_username")
        ),
        domain=None if domain is None else normalize_domain(domain),
        expires=EXPIRES_DEFAULT if expires is None else expires,
        outbound_proxy=outbound_proxy,
    )


def _check_username(value: str, key: str) -> str:
    if not USERNAME.fullmatch(value):
        raise _bad(
            "invalid_field",
            f"registration.{key} must be 1-{USERNAME_MAX} of the characters SIP allows as "
            "they are in a user part: letters, digits and - _ . ! ~ * ' ( ) & = + $ , /",
        )
    return value


def _check_password(value: str) -> None:
    if not 1 <= len(value) <= PASSWORD_MAX or any(unicodedata.category(c) == "Cc" for c in value):
        raise _bad(
            "invalid_field",
            f"registration.password must be 1-{PASSWORD_MAX} characters, "
            "without control characters",
        )


def normalize_proxy(value: str) -> str:
    """An outbound proxy (RFC 3261 §8.1.2: every REGISTER goes to it, with a Route header
    naming it): a URI of the registrar's form, ``;lr`` allowed (and dropped: always sent)."""
    try:
        return normalize_registrar(_LR.sub("", value))
    except ApiError as exc:
        message = exc.message.replace(
            "registration.registrar", "registration.outbound_proxy"
        ).replace("the registrar", "the outbound proxy")
        raise _bad(exc.code, message.replace(" (RFC 3261 §10.2)", "")) from None


def normalize_registrar(value: str) -> str:
    """``SIP:Registrar.Example.COM:5060;transport=UDP`` → ``sip:registrar.example.com:5060;
    transport=udp`` (the same for TCP and TLS; ``SIPS:`` → ``sips:``). A transport given is
    kept: it is the user's choice, which DNS NAPTR records must not override (RFC 3263 §4.1).

    The registrar is named by a ``sip:`` or ``sips:`` URI without a user part (RFC 3261 §10.2:
    "the userinfo and @ components MUST NOT be present"), parameters other than
    ``transport=udp|tcp|tls`` (none for ``sips:``) or headers.
    """
    if len(value) > REGISTRAR_MAX:
        raise _bad(
            "invalid_field", f"registration.registrar must be at most {REGISTRAR_MAX} characters"
        )
    match = None if any(c.isspace() for c in value) else REGISTRAR_URI.fullmatch(value)
    if match is None:
        raise _bad("invalid_field", REGISTRAR_FORM)
    scheme = match["scheme"].lower()
    if scheme not in ("sip", "sips"):
        raise _bad("invalid_field", REGISTRAR_FORM)
    if "@" in match["rest"]:
        raise _bad(
            "invalid_field",
            "registration.registrar must not have a user part: the registrar is "
            "sip:host[:port] (RFC 3261 §10.2)",
        )
    transport = _check_registrar_params(match["params"], match["headers"])
    if scheme == "sips" and transport is not None:
        raise _bad("invalid_field", BAD_PARAMS)  # sips: is TLS already (§19.1.2)
    param = "" if transport is None else f";transport={transport}"
    return f"{scheme}:" + _hostport(match["rest"]) + param


BAD_PARAMS = (
    "registration.registrar may have no URI parameters but transport=udp, tcp or tls "
    "(none with sips:), and no headers"
)


def _check_registrar_params(params: str | None, headers: str | None) -> str | None:
    """Only ``;transport=udp|tcp|tls`` (case-insensitive, RFC 3261 §19.1.4), and no headers;
    the transport, lower-case, if given."""
    parts = (params or "").split(";")[1:]
    transports = [
        v.lower() for n, _, v in (p.partition("=") for p in parts) if n.lower() == "transport"
    ]
    if any(t not in ("udp", "tcp", "tls") for t in transports):
        raise _bad("invalid_field", UDP_ONLY)
    if headers is not None or len(parts) > 1 or len(parts) > len(transports):
        raise _bad("invalid_field", BAD_PARAMS)
    return transports[0] if transports else None


def _hostport(value: str) -> str:
    """``host[:port]`` of a registrar URI, normalised (lower case, canonical addresses)."""
    if value.startswith("["):
        end = value.find("]") + 1
        raw_host, rest = (value, "") if end == 0 else (value[:end], value[end:])
        if rest and not rest.startswith(":"):
            raise _bad("invalid_field", REGISTRAR_FORM)
        sep, port = rest[:1], rest[1:]
    else:
        raw_host, sep, port = value.partition(":")
    if not raw_host or ":" in port:
        raise _bad("invalid_field", REGISTRAR_FORM)
    if sep and not (re.fullmatch(r"[0-9]{1,5}", port) and 1 <= int(port) <= 65535):
        raise _bad("invalid_field", "registration.registrar has an invalid port (1-65535)")
    host = _host(raw_host)
    if host is None:
        raise _bad(
            "invalid_field",
            "registration.registrar has an invalid host: a DNS name, an IPv4 address or [IPv6]",
        )
    return f"{host}:{int(port)}" if sep else host


def normalize_domain(value: str) -> str:
    """The address-of-record's domain: a DNS name or an IP address, lower case; an IPv6
    address in brackets, as in a SIP URI (``sip:user@[2001:db8::1]``)."""
    host = None
    if len(value) <= DOMAIN_MAX:
        host = _host(f"[{value}]" if ":" in value and not value.startswith("[") else value)
    if host is None:
        raise _bad(
            "invalid_field",
            "registration.domain must be a DNS name or an IP address, without scheme, user or port",
        )
    return host


def _host(value: str) -> str | None:
    """``value`` as a SIP URI host, normalised (lower case, canonical addresses), or None."""
    if value.startswith("["):
        if not value.endswith("]") or "%" in value:
            return None
        try:
            return f"[{IPv6Address(value[1:-1]).compressed}]"
        except ValueError:
            return None
    host = value.lower()
    if re.fullmatch(r"[0-9.]+", host):
        try:
            return str(IPv4Address(host))
        except ValueError:
            return None
    if len(host) > 253 or not HOSTNAME.fullmatch(host):
        return None
    return host
