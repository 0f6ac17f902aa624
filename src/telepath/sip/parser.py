"""Bytes → :class:`Request` / :class:`Response` (RFC 3261 §7 and §25), and stream framing.

Written by hand because no maintained Python SIP parser is sans-IO, strict where RFC 4475 asks
and fast enough (``../shared/reference/sip-stack.md``). Datagram mode lets Content-Length bound
the body and ignores extra octets (§18.3); :class:`StreamFramer` cuts TCP/TLS byte streams into
messages by Content-Length, which is mandatory there (§18.3, §20.14).
"""

from __future__ import annotations

import re

from telepath.sip.errors import SipParseError
from telepath.sip.headers import TOKEN, parse_cseq, parse_name_addr, parse_via
from telepath.sip.message import (
    COMPACT_FORMS,
    SINGLE_HEADERS,
    Headers,
    Request,
    Response,
    canonical_name,
)
from telepath.sip.uri import SipUri, parse_uri

#: Largest message accepted on any transport (a UDP datagram's payload cannot exceed 65,507).
MAX_MESSAGE_SIZE = 65_535
MAX_HEADER_FIELDS = 256

# RFC 3261 §25.1: Request-Line = Method SP Request-URI SP SIP-Version CRLF — exactly one SP
# (RFC 4475 §3.1.2.8 `lwsstart`, §3.1.2.9 `trws`); §7.1: the SIP-Version is case-insensitive.
_REQUEST_LINE = re.compile(r"([A-Za-z0-9\-.!%*_+`'~]+) ([^ \t]+) ((?i:SIP)/[0-9]+\.[0-9]+)")
# Status-Line = SIP-Version SP Status-Code SP Reason-Phrase (reason may be empty, `noreason`).
_STATUS_LINE = re.compile(r"SIP/2\.0 ([1-6][0-9]{2}) (.*)", re.IGNORECASE | re.DOTALL)
_SIP_VERSION = re.compile(r"SIP/2\.0", re.IGNORECASE)
_DIGITS = re.compile(r"[0-9]+")
_CRLF_RUN = re.compile(rb"[\r\n]+")
_PING = re.compile(rb"\r\n\r\n")

_SCHEMES_WE_ROUTE = frozenset({"sip", "sips", "tel"})


def _split_head_body(data: bytes) -> tuple[bytes, bytes]:
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        return data[:end], data[end + 4 :]
    end = data.find(b"\n\n")  # bare-LF leniency: some test tools and old phones send it
    if end >= 0:
        return data[:end], data[end + 2 :]
    return data.rstrip(b"\r\n"), b""


def _header_lines(head: str) -> list[str]:
    """Split and unfold (§7.3.1: a line starting with SP/HT continues the previous one; the
    line break and the whitespace around it read as one SP).

    A field's lines are gathered and joined once: adding each to the line unfolded so far
    copied it, and a 64 KB datagram of 21,000 folds cost ~70 ms (the front reads every
    datagram's Call-ID this way, before any rate limit).
    """
    raws = head.replace("\r\n", "\n").split("\n")
    if "\n " not in head and "\n\t" not in head:
        return raws  # nothing folded: the usual message
    lines: list[str] = []
    field: list[str] = []  # the field being read: its first line, then its continuations
    for raw in raws:
        if raw[:1] in (" ", "\t") and field:
            field.append(raw.strip(" \t"))
        else:
            if field:
                lines.append(_unfold(field))
            field = [raw]
    if field:
        lines.append(_unfold(field))
    return lines


def _unfold(field: list[str]) -> str:
    """One field from its lines (continuations stripped): a whitespace-only continuation adds
    nothing but, as the last one, the SP of its fold."""
    if len(field) == 1:
        return field[0]
    return " ".join([field[0].rstrip(" \t"), *filter(None, field[1:-1]), field[-1]])


def _parse_headers(lines: list[str]) -> tuple[Headers, SipParseError | None]:
    """The header fields, and the first fault found in them (None: none). A request with a
    fault is still answered (§8.2, §21): the fields read — of the first
    :data:`MAX_HEADER_FIELDS` lines, bad lines left out — are what its answer copies."""
    fault = None
    if len(lines) > MAX_HEADER_FIELDS:
        fault = SipParseError("too many header fields", 513)
        lines = lines[:MAX_HEADER_FIELDS]
    items: list[tuple[str, str]] = []
    for line in lines:
        if not line:
            continue
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        if not colon or not TOKEN.fullmatch(name):
            fault = fault or SipParseError(f"malformed header line {line[:40]!r}")
            continue
        items.append((name, value.strip(" \t")))
    return Headers(items), fault


def _content_length(headers: Headers) -> int | None:
    values = {v.strip() for v in headers.get_all("Content-Length")}
    if not values:
        return None
    if len(values) > 1 or headers.count("Content-Length") > 1:
        raise SipParseError("multiple Content-Length values")  # RFC 4475 §3.3.11 `mcl01`
    value = values.pop()
    if not _DIGITS.fullmatch(value) or len(value) > 10:
        raise SipParseError("invalid Content-Length")  # `scalar02`, `scalarlg`
    return int(value)


def parse_message(data: bytes) -> Request | Response:
    """Parse one datagram (or one framed stream message)."""
    if len(data) > MAX_MESSAGE_SIZE:
        raise SipParseError("message too large", 513)
    data = data.lstrip(b"\r\n")  # §7.5: ignore CRLFs before the start line
    if not data:
        raise SipParseError("empty message")
    head_bytes, body = _split_head_body(data)
    head = head_bytes.decode("utf-8", "surrogateescape")
    lines = _header_lines(head)
    start = lines[0]
    if start.startswith("SIP/") or start[:4].upper() == "SIP/":
        return _parse_response(start, lines[1:], body)
    return _parse_request(start, lines[1:], body)


def read_call_id(data: bytes) -> str:
    """The Call-ID :func:`parse_message` reads from ``data`` (``call_id``: its first Call-ID
    field, unfolded and stripped), or "" when it has none; nothing else is parsed or checked.

    For the router of SIP worker processes (:mod:`telepath.sip.routing`), whose fast path
    leaves it the messages whose Call-ID is not a plain word: it must read the Call-ID as the
    parser does, or messages of one call would reach two processes. Same steps, same helpers:
    CRLFs before the start line skipped (§7.5), the header section split and unfolded
    (§7.3.1), a field name compared in its canonical form (§7.3.3 compact ``i``).
    """
    head, _ = _split_head_body(data.lstrip(b"\r\n"))
    return _first_field(head, "Call-ID") or ""


def _first_field(head: bytes, name: str) -> str | None:
    """The value of the first ``name`` field (canonical) in a header section, stripped, as
    :func:`parse_message` reads it: unfolded (§7.3.1), its name in any form (§7.3.3).

    A name is compared in lower case with ``name``'s and its compact form's — what
    ``canonical_name`` maps to ``name``, without canonicalising each: the framer reads every
    head a stream brings, before any rate limit, and one of 5,000 distinct names cost 5,000
    cache misses (and filled the cache of the parser's names with the sender's)."""
    wanted = _SPELLINGS.get(name) or _spellings(name)
    lines = _header_lines(head.decode("utf-8", "surrogateescape"))
    for line in lines[1:]:
        field, colon, value = line.partition(":")
        if colon and field.rstrip(" \t").lower() in wanted:
            return value.strip()
    return None


def _spellings(name: str) -> frozenset[str]:
    """The lower-case names ``canonical_name`` maps to ``name``: its own and its compact form."""
    return frozenset(
        {name.lower()} | {short for short, full in COMPACT_FORMS.items() if full == name}
    )


_SPELLINGS = {name: _spellings(name) for name in ("Call-ID", "Content-Length")}


def _bounded_body(headers: Headers, body: bytes, request: Request | None) -> bytes:
    try:
        length = _content_length(headers)
    except SipParseError as exc:
        exc.request = request
        raise
    if length is None:
        return body
    if length > len(body):
        raise SipParseError("Content-Length larger than the body", 400, request)  # `clerr`
    return body[:length]  # §18.3: octets after the body are discarded (`dblreq`)


def _parse_response(start: str, lines: list[str], body: bytes) -> Response:
    m = _STATUS_LINE.fullmatch(start)
    if not m:
        raise SipParseError("malformed Status-Line")  # `bigcode`, bad versions
    headers, fault = _parse_headers(lines)
    if fault is not None:
        raise fault
    body = _bounded_body(headers, body, None)
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        if headers.get(name) is None:
            raise SipParseError(f"response without {name}")
    parse_cseq(headers.get("CSeq") or "")
    return Response(headers, body, int(m.group(1)), m.group(2))


def _parse_request(start: str, lines: list[str], body: bytes) -> Request:
    m = _REQUEST_LINE.fullmatch(start)
    if not m:
        raise SipParseError("malformed Request-Line")
    method, uri_text, version = m.groups()
    headers, fault = _parse_headers(lines)
    # Keep what we read so far: the transport answers with the status, §8.2 / §21.
    placeholder = Request(headers, b"", method, SipUri("sip", None, "invalid"))
    if fault is not None:
        fault.request = placeholder
        raise fault
    if not _SIP_VERSION.fullmatch(version):
        raise SipParseError(f"unsupported version {version}", 505, placeholder)  # `badvers`
    try:
        uri = parse_uri(uri_text)
    except SipParseError as exc:
        exc.request = placeholder
        raise
    request = Request(headers, b"", method, uri)
    request.body = _bounded_body(headers, body, request)
    try:
        validate_request(request)
    except SipParseError as exc:
        exc.request = request
        raise
    return request


def validate_request(request: Request) -> None:
    """RFC 3261 §8.1.1 mandatory fields and the checks RFC 4475 expects of a parser."""
    headers = request.headers
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        if headers.get(name) is None:
            raise SipParseError(f"missing {name}")  # RFC 4475 §3.3.1 `insuf`
    names = [name for name, _ in headers]  # canonical names, one pass
    for name in SINGLE_HEADERS:
        if names.count(canonical_name(name)) > 1:
            raise SipParseError(f"{canonical_name(name)} appears more than once")  # `multi01`
    if request.uri.scheme not in _SCHEMES_WE_ROUTE:
        raise SipParseError(f"unsupported URI scheme {request.uri.scheme}", 416)  # `unkscm`
    if request.uri.headers is not None:
        raise SipParseError("headers are not allowed in a Request-URI")  # §19.1.5 `escruri`
    # The memoized views: what is parsed to validate is what the UA core reads afterwards.
    if request.cseq.method != request.method:
        raise SipParseError("CSeq method does not match the request method")  # `mismatch01`
    vias = headers.get_all("Via")
    if not vias:
        raise SipParseError("missing Via")
    request.top_via  # noqa: B018 - parses and keeps the first
    for via in vias[1:]:
        parse_via(via)
    if not request.call_id:
        raise SipParseError("empty Call-ID")
    request.from_  # noqa: B018 - parse and keep
    request.to  # noqa: B018
    for contact in headers.get_all("Contact"):
        if contact.strip() != "*":
            parse_name_addr(contact)
        elif request.method != "REGISTER":
            raise SipParseError("Contact: * is a REGISTER's only")  # §10.2.2, §20.10
    if request.method == "INVITE" and request.to.tag is None:
        # Only a dialog-creating INVITE's Record-Route makes a route set (§12.1.1); a
        # re-INVITE's (To tag: in-dialog) does not change it and is ignored (§12.2).
        for route in headers.get_all("Record-Route"):
            _check_record_route(route)
    # The length first: past 4,300 digits int() raises ValueError, which no caller catches.
    max_forwards = headers.get("Max-Forwards")
    if max_forwards is not None and (
        not _DIGITS.fullmatch(max_forwards) or len(max_forwards) > 10 or int(max_forwards) > 255
    ):
        raise SipParseError("invalid Max-Forwards")  # §20.22: 0-255 (`scalarlg`)
    expires = headers.get("Expires")
    if expires is not None and (
        not _DIGITS.fullmatch(expires) or len(expires) > 10 or int(expires) >= 2**32
    ):
        raise SipParseError("invalid Expires")  # §20.19 (`scalarlg`)
    date = headers.get("Date")
    if date is not None and not date.rstrip().endswith("GMT"):
        raise SipParseError("Date must be in GMT")  # §20.17 (`baddate`)
    for name in ("Require", "Supported", "Proxy-Require", "Allow"):
        for item in headers.get_all(name):
            if not TOKEN.fullmatch(item):
                raise SipParseError(f"malformed {name}")


def _check_record_route(value: str) -> None:
    """Raise :class:`SipParseError` unless ``value`` is a rec-route (RFC 3261 §20.30: a
    name-addr, in ``<>``, then rr-params). An INVITE's Record-Route becomes the route set of its
    dialog (§12.1.1), which each of our requests in it follows (§12.2.1.1): one that does not
    parse could never route our BYE, so the INVITE is refused (§16.12.1 keeps the values as
    the proxies wrote them; a UAS cannot repair one)."""
    try:
        rec_route = parse_name_addr(value)
    except SipParseError as exc:
        raise SipParseError(f"malformed Record-Route: {exc}") from None
    if not rec_route.bracketed:
        raise SipParseError("malformed Record-Route: its URI must be in <>")


class StreamFramer:
    """Cuts a TCP/TLS byte stream into messages (RFC 3261 §18.3).

    ``feed`` returns the complete messages found so far; partial data waits for more. CRLF
    keep-alives between messages (RFC 5626 §3.5.1) are skipped, and double-CRLF pings counted
    in :attr:`pings` (the transport answers each with a single-CRLF pong). A missing
    Content-Length or an oversized message raises :class:`SipParseError`: the connection cannot
    be resynchronised and must be closed.

    ``pair_across_reads``: a double CRLF split between two reads is a ping too. Only for a
    connection on which we send no pings (one accepted from a client), so no single-CRLF pongs
    can come on it: see :meth:`_skip_keepalive`.
    """

    def __init__(
        self, max_size: int = MAX_MESSAGE_SIZE, *, pair_across_reads: bool = False
    ) -> None:
        self._buffer = bytearray()
        self._max = max_size
        self._pair = pair_across_reads
        # The end of the last read's CRLF run that a ping may still complete (at most 3
        # octets, none of a counted ping); empty once anything else came.
        self._tail = b""
        self._searched = 0  # how far the buffer is known to hold no CRLFCRLF (less 3 octets)
        self._length: int | None = None  # the length of the message being read, once known
        self.keepalives = 0
        self.pings = 0
        # Set when the stream broke after messages were framed from the same data: those are
        # returned first (the caller handles them, then closes); any later feed raises it.
        self.error: SipParseError | None = None

    @property
    def pending(self) -> int:
        """Bytes buffered but not yet framed."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return the complete messages it finished. Raises
        :class:`SipParseError` when the stream cannot be framed — unless messages were framed
        from ``data`` before the fault: they are returned, and :attr:`error` set."""
        if self.error is not None:
            raise self.error
        self._buffer += data
        out: list[bytes] = []
        try:
            self._frame(out)
        except SipParseError as exc:
            if not out:
                raise
            self.error = exc
        return out

    def _frame(self, out: list[bytes]) -> None:
        while True:
            if self._length is None:
                self._skip_keepalive()
                if not self._buffer:
                    return
                self._length = self._message_length()
                if self._length is None:
                    return
            if len(self._buffer) < self._length:
                return
            out.append(bytes(self._buffer[: self._length]))
            del self._buffer[: self._length]
            self._length = None
            self._searched = 0

    def _skip_keepalive(self) -> None:
        """Drop the CRLFs before a message (§7.5), counting a keep-alive and the pings in them.
        Only those: stripping the buffer copied all of it, once an octet while a message came
        an octet at a time.

        RFC 5626 §4.4.1: each double CRLF is a ping owed one pong — two in one read are two.
        By default CRLFs are not paired across reads: on a connection we ping ourselves (an
        outbound registration's, calls/registrations.py) the registrar's single-CRLF pongs may
        come a read each, and two read as one ping would be answered — a pong answered is a
        protocol error (§4.4.1). With ``pair_across_reads`` (a connection accepted from a
        client, which we never ping, so it sends no pongs) the CRLFs that end a read pair with
        those that start the next, so a ping TCP split across reads is answered: unanswered,
        a client keeping its flow alive (§4.4.1) takes it for dead."""
        tail, self._tail = self._tail, b""
        run = _CRLF_RUN.match(self._buffer)
        if run is None:
            return
        self.keepalives += 1
        text = tail + run.group()
        counted = 0  # where the last ping ends: what is before it is spent
        for ping in _PING.finditer(text):
            self.pings += 1
            counted = ping.end()
        if self._pair and run.end() == len(self._buffer):  # nothing after it yet
            self._tail = text[max(counted, len(text) - 3) :]
        del self._buffer[: run.end()]

    def _message_length(self) -> int | None:
        """The length of the message the buffer starts with (head, CRLFCRLF, Content-Length
        octets), or None while its head is incomplete. The search for the head's end resumes
        where the last one stopped: a message sent an octet at a time is read once, not once
        an octet (quadratic: ~2.6 s of CPU for 64 KB)."""
        end = self._buffer.find(b"\r\n\r\n", self._searched)
        if end < 0:
            if len(self._buffer) > self._max:
                raise SipParseError("header block too large", 513)
            self._searched = max(0, len(self._buffer) - 3)  # CRLFCRLF may straddle the next
            return None
        # read as the parser reads it: a folded one (§7.3.1) closed the connection
        value = _first_field(bytes(self._buffer[:end]), "Content-Length")
        if value is None:
            raise SipParseError("Content-Length is required on stream transports")
        if not _DIGITS.fullmatch(value) or len(value) > 10:
            raise SipParseError("invalid Content-Length")
        total = end + 4 + int(value)
        if total > self._max:
            raise SipParseError("message too large", 513)
        return total
