"""SIP, SIPS and tel URIs (RFC 3261 §19.1, §25.1; RFC 3966), parsed and formatted.

Parsing keeps the text escaped as received (``%40`` stays ``%40``) so a URI formats back to the
same bytes; :func:`unescape` decodes a part when it is compared or shown.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote

from telepath.sip.errors import SipParseError

# RFC 3261 §25.1: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")
# hostname / IPv4address (RFC 3261 §25.1 `hostname`, `IPv4address`); IPv6reference is bracketed.
_HOSTNAME = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?\.)*[A-Za-z0-9][A-Za-z0-9\-]*\.?"
)
_IPV6REF = re.compile(r"\[[0-9A-Fa-f:.]+\]")
# Characters allowed in a URI at all (unreserved, reserved, escaped): no whitespace, no <>"{}|\^`.
_URI_CHARS = re.compile(r"[A-Za-z0-9\-_.!~*'()%;/?:@&=+$,\[\]#]+")

SIP_SCHEMES = frozenset({"sip", "sips"})


def unescape(text: str) -> str:
    """Decode %HH escapes (RFC 3261 §19.1.2), leaving malformed ones as they are."""
    return unquote(text, errors="replace")


@dataclass(frozen=True, slots=True)
class SipUri:
    """A parsed URI. For ``tel:`` the number is in ``user`` and ``host`` is empty; for other
    schemes (allowed in To/From, RFC 3261 §20.20) ``opaque`` holds everything after the colon.
    """

    scheme: str
    user: str | None
    host: str
    port: int | None = None
    params: tuple[tuple[str, str | None], ...] = ()
    headers: str | None = None
    password: str | None = None
    opaque: str | None = None

    def param(self, name: str) -> str | None:
        """The value of a URI parameter ("" for a flag parameter, None if absent)."""
        lname = name.lower()
        for key, value in self.params:
            if key.lower() == lname:
                return "" if value is None else value
        return None

    @property
    def is_sip(self) -> bool:
        """True for sip: and sips: URIs."""
        return self.scheme in SIP_SCHEMES

    @property
    def user_unescaped(self) -> str | None:
        """The user part with %HH escapes decoded."""
        return None if self.user is None else unescape(self.user)

    @property
    def host_port(self) -> str:
        """``host[:port]`` as written."""
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        if self.opaque is not None:
            return f"{self.scheme}:{self.opaque}"
        out = [self.scheme, ":"]
        if self.scheme == "tel":
            out.append(self.user or "")
        else:
            if self.user is not None:
                out.append(self.user)
                if self.password is not None:
                    out.append(":" + self.password)
                out.append("@")
            out.append(self.host_port)
        for key, value in self.params:
            out.append(f";{key}" if value is None else f";{key}={value}")
        if self.headers is not None:
            out.append("?" + self.headers)
        return "".join(out)


def _split_params(text: str) -> tuple[tuple[str, str | None], ...]:
    params: list[tuple[str, str | None]] = []
    for part in text.split(";"):
        if not part:
            raise SipParseError("empty URI parameter")
        key, eq, value = part.partition("=")
        if not key:
            raise SipParseError("URI parameter without a name")
        params.append((key, value if eq else None))
    return tuple(params)


#: Longest URI text cached. A cache entry keeps its text and the parts parsed from it: 4,096
#: URIs of 64 KB (a Request-URI stays cached when its request is then rejected) held ~500 MB.
_CACHED_URI_MAX = 256


def parse_uri(text: str) -> SipUri:
    """Parse a URI; raise :class:`SipParseError` (status 400) when it is malformed.

    Embedded whitespace is never allowed (RFC 4475 §3.1.2.7 ``lwsruri``). Cached: a carrier's
    messages repeat the same URIs (Request-URI, From/To without their tags, Contact), and a
    ``SipUri`` is immutable. Failures are not cached, nor URIs longer than a carrier's.
    """
    if len(text) > _CACHED_URI_MAX:
        return _parse_uri(text)
    return _parse_uri_cached(text)


def _parse_uri(text: str) -> SipUri:
    if not text or not _URI_CHARS.fullmatch(text):
        raise SipParseError(f"malformed URI {text[:80]!r}")
    scheme, colon, rest = text.partition(":")
    if not colon or not _SCHEME.fullmatch(scheme) or not rest:
        raise SipParseError(f"malformed URI {text[:80]!r}")
    scheme = scheme.lower()
    if scheme == "tel":
        number, _, params = rest.partition(";")
        if not number:
            raise SipParseError("tel URI without a number")
        return SipUri("tel", number, "", params=_split_params(params) if params else ())
    if scheme not in SIP_SCHEMES:
        return SipUri(scheme, None, "", opaque=rest)

    headers: str | None = None
    at = rest.find("@")
    userinfo: str | None = None
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
    qmark = rest.find("?")
    if qmark >= 0:
        rest, headers = rest[:qmark], rest[qmark + 1 :]
    hostport, _, params = rest.partition(";")
    host, port = _split_hostport(hostport)
    user: str | None = None
    password: str | None = None
    if userinfo is not None:
        user, pcolon, pw = userinfo.partition(":")
        if not user:
            raise SipParseError("empty user part in URI")
        password = pw if pcolon else None
    return SipUri(
        scheme,
        user,
        host,
        port,
        _split_params(params) if params else (),
        headers,
        password,
    )


_parse_uri_cached = lru_cache(maxsize=4096)(_parse_uri)


def uri_host(host: str) -> str:
    """``host`` (a name or an address, as sockets give it) as a SIP URI or a Via sent-by
    writes it: an IPv6 address in brackets (RFC 3261 §25.1 IPv6reference)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _split_hostport(hostport: str) -> tuple[str, int | None]:
    if hostport.startswith("["):
        end = hostport.find("]")
        host, rest = hostport[: end + 1], hostport[end + 1 :]
        if end < 0 or not _IPV6REF.fullmatch(host):
            raise SipParseError("malformed IPv6 reference")
    else:
        host, colon, port_text = hostport.partition(":")
        rest = ":" + port_text if colon else ""
        if not _HOSTNAME.fullmatch(host):
            raise SipParseError(f"malformed host {host[:80]!r}")
    if not rest:
        return host, None
    if not rest.startswith(":") or not rest[1:].isdigit() or len(rest) > 6:
        raise SipParseError("malformed port")
    port = int(rest[1:])
    if port > 65535:
        raise SipParseError("port out of range")
    return host, port


def transfer_target(text: str) -> SipUri:
    """``text`` as the target of a transfer (a REFER's Refer-To, RFC 3515 §2.1): a sip, sips or
    tel URI, parsed whole.

    It comes from an agent — a language model a caller can talk into anything: nothing of it
    may be written into a request unparsed (a CR LF in it added headers of its choosing, or a
    whole second request on a stream connection).

    Raises:
        SipParseError: not such a URI.
    """
    uri = parse_uri(text)
    if uri.scheme not in ("sip", "sips", "tel") or (uri.scheme != "tel" and not uri.host):
        raise SipParseError(f"not a sip, sips or tel URI: {uri.scheme}")
    return uri
