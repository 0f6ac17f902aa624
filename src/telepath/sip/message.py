"""SIP requests and responses as plain objects, and their serialization (RFC 3261 §7).

:class:`Headers` keeps header fields in order, matches names case-insensitively and maps the
compact forms (§7.3.3, plus those registered later) to full names, so ``v:`` and ``Via:`` are the
same field. Typed views (``Via``, ``NameAddr``, ``CSeq``) are parsed on demand from the text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, TypeVar

from telepath.sip.errors import SipParseError
from telepath.sip.headers import (
    CSeq,
    NameAddr,
    Via,
    parse_cseq,
    parse_name_addr,
    parse_via,
    split_list,
)
from telepath.sip.status import reason_phrase
from telepath.sip.uri import SipUri

_T = TypeVar("_T")

# RFC 3261 §7.3.3 and the IANA SIP parameters registry "compact form" column.
COMPACT_FORMS: dict[str, str] = {
    "a": "Accept-Contact",
    "b": "Referred-By",
    "c": "Content-Type",
    "d": "Request-Disposition",
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "n": "Identity-Info",
    "o": "Event",
    "r": "Refer-To",
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",
    "v": "Via",
    "x": "Session-Expires",
    "y": "Identity",
}

_SPECIAL_CASE = {
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "www-authenticate": "WWW-Authenticate",
    "mime-version": "MIME-Version",
    "rack": "RAck",
    "rseq": "RSeq",
}

#: Headers whose value is a comma-separated list (RFC 3261 §7.3.1) that :meth:`get_all` splits.
LIST_HEADERS = frozenset(
    {
        "via",
        "contact",
        "route",
        "record-route",
        "allow",
        "supported",
        "require",
        "proxy-require",
        "unsupported",
        "accept",
        "accept-encoding",
        "accept-language",
        "allow-events",
        "content-encoding",
        "in-reply-to",
    }
)

#: Headers that may appear at most once in a request (RFC 3261 §20 and RFC 4475 ``multi01``).
SINGLE_HEADERS = frozenset(
    {"to", "from", "call-id", "cseq", "max-forwards", "content-length", "content-type"}
)


#: Longest field name cached: every name read is canonicalised, the router's of messages
#: never parsed too, and 1,024 names of 64 KB held the cache at ~130 MB.
_CACHED_NAME_MAX = 64


def canonical_name(name: str) -> str:
    """``v`` → ``Via``, ``call-id`` → ``Call-ID``, ``x-foo-bar`` → ``X-Foo-Bar``."""
    if len(name) > _CACHED_NAME_MAX:
        return _canonical_name(name)
    return _canonical_name_cached(name)


def _canonical_name(name: str) -> str:
    lower = name.lower()
    if len(lower) == 1 and lower in COMPACT_FORMS:
        return COMPACT_FORMS[lower]
    if lower in _SPECIAL_CASE:
        return _SPECIAL_CASE[lower]
    return "-".join(part[:1].upper() + part[1:] for part in lower.split("-"))


_canonical_name_cached = lru_cache(maxsize=1024)(_canonical_name)


class Headers:
    """Ordered, multi-valued, case-insensitive header fields."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = [(canonical_name(k), v) for k, v in items]

    def get(self, name: str) -> str | None:
        """The first value of ``name`` (full or compact), or None."""
        key = canonical_name(name)
        for k, v in self._items:
            if k == key:
                return v
        return None

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, comma lists split for list headers."""
        key = canonical_name(name)
        values = [v for k, v in self._items if k == key]
        if key.lower() in LIST_HEADERS:
            return [item for v in values for item in split_list(v) if item]
        return values

    def count(self, name: str) -> int:
        """How many header lines carry ``name``."""
        key = canonical_name(name)
        return sum(1 for k, _ in self._items if k == key)

    def add(self, name: str, value: str) -> None:
        """Append a header line."""
        self._items.append((canonical_name(name), value))

    def set(self, name: str, value: str) -> None:
        """Replace every ``name`` line by one with ``value`` (kept at the first one's place)."""
        key = canonical_name(name)
        out: list[tuple[str, str]] = []
        placed = False
        for k, v in self._items:
            if k == key:
                if not placed:
                    out.append((key, value))
                    placed = True
            else:
                out.append((k, v))
        if not placed:
            out.append((key, value))
        self._items = out

    def remove(self, name: str) -> None:
        """Delete every ``name`` line."""
        key = canonical_name(name)
        self._items = [(k, v) for k, v in self._items if k != key]

    def copy(self) -> Headers:
        """A shallow copy."""
        h = Headers()
        h._items = list(self._items)
        return h

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __repr__(self) -> str:
        return f"Headers({len(self._items)} fields)"


@dataclass
class _Message:
    headers: Headers
    body: bytes

    # Typed views are parsed once per message (the UA reads From/To/Via/CSeq many times).
    # Whoever changes ``headers`` afterwards calls :meth:`forget_parsed`.
    def _memo(self, key: str, parse: Callable[[], _T]) -> _T:
        cache: dict[str, Any] | None = self.__dict__.get("_parsed")
        if cache is None:
            cache = self.__dict__["_parsed"] = {}
        if key not in cache:
            cache[key] = parse()
        value: _T = cache[key]
        return value

    def forget_parsed(self) -> None:
        """Drop the typed views after changing ``headers``."""
        self.__dict__.pop("_parsed", None)

    @property
    def call_id(self) -> str:
        """The Call-ID (empty if absent; requests are validated by the parser)."""
        return (self.headers.get("Call-ID") or "").strip()

    @property
    def cseq(self) -> CSeq:
        """The parsed CSeq."""
        return self._memo("cseq", lambda: parse_cseq(self._required("CSeq")))

    @property
    def from_(self) -> NameAddr:
        """The parsed From."""
        return self._memo("from", lambda: parse_name_addr(self._required("From")))

    @property
    def to(self) -> NameAddr:
        """The parsed To."""
        return self._memo("to", lambda: parse_name_addr(self._required("To")))

    @property
    def vias(self) -> list[Via]:
        """Every Via, topmost first."""
        return [parse_via(v) for v in self.headers.get_all("Via")]

    @property
    def top_via(self) -> Via:
        """The topmost Via."""
        return self._memo("top_via", self._parse_top_via)

    def _parse_top_via(self) -> Via:
        values = self.headers.get_all("Via")
        if not values:
            raise SipParseError("missing Via")
        return parse_via(values[0])

    @property
    def content_type(self) -> str | None:
        """The media type, lower-case, without parameters."""
        value = self.headers.get("Content-Type")
        return None if value is None else value.split(";", 1)[0].strip().lower()

    def _required(self, name: str) -> str:
        value = self.headers.get(name)
        if value is None:
            raise SipParseError(f"missing {name}")
        return value

    def _serialize(self, start_line: str) -> bytes:
        lines = [start_line]
        for k, v in self.headers:
            if k != "Content-Length":
                lines.append(f"{k}: {v}")
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + self.body


@dataclass
class Request(_Message):
    """A SIP request."""

    method: str = "OPTIONS"
    uri: SipUri = field(default_factory=lambda: SipUri("sip", None, "invalid"))

    def to_bytes(self) -> bytes:
        """Wire form, with a correct Content-Length."""
        return self._serialize(f"{self.method} {self.uri} SIP/2.0")

    def __repr__(self) -> str:
        return f"Request({self.method} call_id={self.call_id!r})"


@dataclass
class Response(_Message):
    """A SIP response."""

    status: int = 200
    reason: str = "OK"

    def to_bytes(self) -> bytes:
        """Wire form, with a correct Content-Length."""
        return self._serialize(f"SIP/2.0 {self.status} {self.reason}")

    def __repr__(self) -> str:
        return f"Response({self.status} call_id={self.call_id!r})"


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> Response:
    """A response to ``request`` per RFC 3261 §8.2.6.2: Via, From, Call-ID, CSeq copied; To
    copied, with ``to_tag`` added when the request's To has none (never for 100 Trying)."""
    out = Headers()
    for name in ("Via",):
        for value in request.headers.get_all(name):
            out.add(name, value)
    from_value = request.headers.get("From")
    if from_value is not None:
        out.add("From", from_value)
    to_value = request.headers.get("To")
    if to_value is not None:
        if to_tag is not None and status > 100 and _tag_of(to_value) is None:
            to_value = f"{to_value};tag={to_tag}"
        out.add("To", to_value)
    out.add("Call-ID", request.call_id)
    cseq = request.headers.get("CSeq")
    if cseq is not None:
        out.add("CSeq", cseq)
    if status == 100 and request.headers.get("Timestamp") is not None:
        out.add("Timestamp", request.headers.get("Timestamp") or "")  # §8.2.6.1
    for k, v in headers:
        out.add(k, v)
    return Response(out, body, status, reason or reason_phrase(status))


def _tag_of(value: str) -> str | None:
    try:
        return parse_name_addr(value).tag
    except SipParseError:
        return None
