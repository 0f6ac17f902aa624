"""Typed views of the header values the UAS reads: Via, name-addr (From/To/Contact/Route),
CSeq, Retry-After, Subscription-State and generic parameter lists (RFC 3261 §20, grammar in §25.1).

Values arrive already unfolded (the parser replaces CRLF + WSP by a single space). Every parser
here raises only :class:`SipParseError`, so a bad header becomes a 400, never a crash.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from telepath.sip.errors import SipParseError
from telepath.sip.uri import SipUri, parse_uri

# RFC 3261 §25.1 token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_LWS = " \t"
# gen-value = token / host / quoted-string; host may be an IPv6 reference.
_PARAM_VALUE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~:\[\]]+")


Params = tuple[tuple[str, str | None], ...]


def param_value(params: Params, name: str) -> str | None:
    """The value of ``name`` in ``params`` ("" for a flag, None when absent)."""
    lname = name.lower()
    for key, value in params:
        if key.lower() == lname:
            return "" if value is None else value
    return None


def format_params(params: Params) -> str:
    """``;a=b;c`` for ``(("a","b"),("c",None))``."""
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


def split_list(value: str) -> list[str]:
    """Split a comma-separated header value (RFC 3261 §7.3.1) outside quotes and ``<…>``."""
    if "," not in value and '"' not in value:  # the usual case: one item, nothing to scan
        return [value.strip(_LWS)]
    items: list[str] = []
    depth = 0
    quoted = False
    escaped = False
    start = 0
    for i, ch in enumerate(value):
        if quoted:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "<":
            depth += 1
        elif ch == ">":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            items.append(value[start:i].strip(_LWS))
            start = i + 1
    if quoted:
        raise SipParseError("unterminated quoted string")
    items.append(value[start:].strip(_LWS))
    return items


def _read_quoted(text: str, pos: int) -> tuple[str, int]:
    """Read a quoted-string starting at ``text[pos] == '"'``; return (raw with quotes, end)."""
    i = pos + 1
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == '"':
            return text[pos : i + 1], i + 1
        i += 1
    raise SipParseError("unterminated quoted string")


def parse_params(text: str) -> Params:
    """Parse ``*( SEMI generic-param )`` (RFC 3261 §25.1), allowing LWS around ``;`` and ``=``.

    ``text`` starts at the first ``;`` (or is empty). Empty parameters (``;;``) are an error
    (RFC 4475 §3.1.2.1 ``badinv01``).
    """
    params: list[tuple[str, str | None]] = []
    i = 0
    n = len(text)
    while True:
        while i < n and text[i] in _LWS:
            i += 1
        if i >= n:
            return tuple(params)
        if text[i] != ";":
            raise SipParseError(f"unexpected {text[i]!r} in parameters")
        i += 1
        while i < n and text[i] in _LWS:
            i += 1
        m = TOKEN.match(text, i)
        if not m:
            raise SipParseError("empty or malformed parameter name")
        name = m.group(0)
        i = m.end()
        while i < n and text[i] in _LWS:
            i += 1
        value: str | None = None
        if i < n and text[i] == "=":
            i += 1
            while i < n and text[i] in _LWS:
                i += 1
            if i < n and text[i] == '"':
                value, i = _read_quoted(text, i)
            else:
                vm = _PARAM_VALUE.match(text, i)
                if not vm:
                    raise SipParseError(f"parameter {name!r} without a value")
                value = vm.group(0)
                i = vm.end()
        params.append((name, value))


@dataclass(frozen=True, slots=True)
class Via:
    """One Via value: ``SIP/2.0/UDP host:port;branch=…;rport`` (RFC 3261 §20.42, RFC 3581)."""

    transport: str
    host: str
    port: int | None
    params: Params

    @property
    def branch(self) -> str | None:
        """The branch parameter (transaction id when it starts with ``z9hG4bK``)."""
        return param_value(self.params, "branch")

    @property
    def received(self) -> str | None:
        """The ``received`` parameter."""
        return param_value(self.params, "received")

    @property
    def rport(self) -> str | None:
        """The ``rport`` parameter: "" when requested, a number once filled in."""
        return param_value(self.params, "rport")

    def with_received(self, ip: str, port: int) -> Via:
        """RFC 3261 §18.2.1 and RFC 3581 §4: add ``received`` and fill ``rport``."""
        params = [(k, v) for k, v in self.params if k.lower() != "received"]
        if self.rport is not None:
            params = [(k, str(port) if k.lower() == "rport" else v) for k, v in params]
        if self.rport is not None or ip != self.host:
            params.append(("received", ip))
        return replace(self, params=tuple(params))

    def __str__(self) -> str:
        port = "" if self.port is None else f":{self.port}"
        return f"SIP/2.0/{self.transport} {self.host}{port}{format_params(self.params)}"


_VIA_PROTOCOL = re.compile(
    r"[ \t]*SIP[ \t]*/[ \t]*2\.0[ \t]*/[ \t]*([A-Za-z0-9\-.!%*_+`'~]+)[ \t]+", re.IGNORECASE
)
_SENT_BY = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-.]+)(?:[ \t]*:[ \t]*([0-9]{1,5}))?")


def parse_via(value: str) -> Via:
    """Parse one via-parm (already split from a comma list)."""
    m = _VIA_PROTOCOL.match(value)
    if not m:
        raise SipParseError("malformed Via sent-protocol")
    transport = m.group(1).upper()
    h = _SENT_BY.match(value, m.end())
    if not h:
        raise SipParseError("malformed Via sent-by")
    port = int(h.group(2)) if h.group(2) else None
    if port is not None and port > 65535:
        raise SipParseError("Via port out of range")
    return Via(transport, h.group(1), port, parse_params(value[h.end() :]))


@dataclass(frozen=True, slots=True)
class NameAddr:
    """``"Display" <uri>;params`` or ``uri;params`` (RFC 3261 §20.10, §20.20, §20.39)."""

    uri: SipUri
    display_name: str | None = None
    params: Params = ()
    bracketed: bool = True

    @property
    def tag(self) -> str | None:
        """The ``tag`` parameter (dialog identifier, §19.3)."""
        return param_value(self.params, "tag")

    def with_tag(self, tag: str) -> NameAddr:
        """A copy with ``tag`` set."""
        params = tuple((k, v) for k, v in self.params if k.lower() != "tag") + (("tag", tag),)
        return replace(self, params=params)

    def __str__(self) -> str:
        name = f"{self.display_name} " if self.display_name else ""
        return f"{name}<{self.uri}>{format_params(self.params)}"


def parse_name_addr(value: str) -> NameAddr:
    """Parse a From/To/Contact/Route value.

    RFC 3261 §20.10: an addr-spec containing ``,``, ``?`` or ``;`` must be in ``<…>``; a bare
    addr-spec's ``;params`` are header parameters. No LWS inside ``<…>`` (RFC 4475 ``badaspec``);
    an unquoted display name is tokens and LWS only (``baddn``).
    """
    text = value.strip(_LWS)
    display: str | None = None
    if text.startswith('"'):
        display, end = _read_quoted(text, 0)
        rest = text[end:].lstrip(_LWS)
        if not rest.startswith("<"):
            raise SipParseError("display name without <uri>")
        text = rest
    lt = text.find("<")
    if lt >= 0:
        before = text[:lt].strip(_LWS)
        if before:
            if display is not None or not all(TOKEN.fullmatch(w) for w in before.split()):
                raise SipParseError("malformed display name")
            display = before
        gt = text.find(">", lt)
        if gt < 0:
            raise SipParseError("missing '>' in name-addr")
        uri_text = text[lt + 1 : gt]
        if uri_text != uri_text.strip(_LWS):
            raise SipParseError("whitespace inside <addr-spec>")
        return NameAddr(parse_uri(uri_text), display, parse_params(text[gt + 1 :]), True)
    semi = text.find(";")
    uri_text = text if semi < 0 else text[:semi]
    uri_text = uri_text.rstrip(_LWS)
    if any(ch in uri_text for ch in ",?") or any(ch in uri_text for ch in _LWS):
        raise SipParseError("addr-spec with reserved characters must be enclosed in <>")
    if ":" not in uri_text:
        raise SipParseError("malformed addr-spec")
    params = parse_params(text[len(uri_text) :].lstrip(_LWS)) if semi >= 0 else ()
    return NameAddr(parse_uri(uri_text), None, params, False)


@dataclass(frozen=True, slots=True)
class CSeq:
    """``CSeq: 4711 INVITE`` (RFC 3261 §20.16); the number is below 2**31 (§8.1.1.5)."""

    seq: int
    method: str

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


_CSEQ = re.compile(r"[ \t]*([0-9]{1,10})[ \t]+([A-Za-z0-9\-.!%*_+`'~]+)[ \t]*")


def parse_cseq(value: str) -> CSeq:
    """Parse a CSeq value."""
    m = _CSEQ.fullmatch(value)
    if not m:
        raise SipParseError("malformed CSeq")
    seq = int(m.group(1))
    if seq >= 2**31:
        raise SipParseError("CSeq number out of range")
    return CSeq(seq, m.group(2))


_DELTA_SECONDS = re.compile(r"[ \t]*([0-9]+)[ \t]*")
MAX_DELTA_SECONDS = 2**32 - 1  # RFC 3261 §20.19, §20.23: no delta-seconds is larger


def parse_retry_after(value: str) -> int:
    """The seconds of a Retry-After value (RFC 3261 §20.33; §25.1: ``delta-seconds
    [ comment ] *( SEMI retry-param )``): ``120 (I'm in a meeting);duration=3600`` is 120.
    The comment is skipped, the parameters only checked."""
    m = _DELTA_SECONDS.match(value)
    if not m:
        raise SipParseError("malformed Retry-After")
    rest = value[m.end() :]
    if rest.startswith("("):
        rest = rest[_comment_end(rest) :]
    parse_params(rest)
    return delta_seconds(m.group(1))


@dataclass(frozen=True, slots=True)
class SubscriptionState:
    """A Subscription-State value (RFC 6665 §8.2.3, grammar §8.4): ``active;expires=60``."""

    state: str  # lower-cased: active, pending, terminated or an extension
    expires: int | None  # seconds the subscription has left, when given


def parse_subscription_state(value: str) -> SubscriptionState:
    """``substate-value *( SEMI subexp-params )``; a malformed ``expires`` counts as absent."""
    m = TOKEN.match(value.strip(" \t"))
    if not m:
        raise SipParseError("malformed Subscription-State")
    rest = value.strip(" \t")[m.end() :]
    expires = param_value(parse_params(rest), "expires")
    digits = _DELTA_SECONDS.fullmatch(expires) if expires else None
    return SubscriptionState(m.group(0).lower(), delta_seconds(digits.group(1)) if digits else None)


def delta_seconds(digits: str) -> int:
    """ASCII ``digits`` as seconds, 2**32-1 at most (RFC 3261 §10.2 allows that for larger
    ones): thousands of digits from a peer never reach ``int()``, which refuses them."""
    digits = digits.lstrip("0") or "0"
    return min(int(digits), MAX_DELTA_SECONDS) if len(digits) <= 10 else MAX_DELTA_SECONDS


def _comment_end(text: str) -> int:
    """Where the comment at ``text[0] == "("`` ends (§25.1: ``comment`` nests, and takes
    quoted pairs)."""
    depth = 0
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise SipParseError("unterminated comment")
