"""Which SIP worker process owns a datagram: a hash of its Call-ID (RFC 3261 §8.1.1.4, §20.8).

Every message of a call — the INVITE, its retransmissions, the authenticated retry (same
Call-ID, next CSeq: §22.2), ACK, BYE, CANCEL and the responses to our own requests — carries the
call's Call-ID, so hashing it sends the whole dialog, and every transaction in it, to one
process. Only the header section is searched, and only for the Call-ID; the message is parsed
in full by the worker that owns it.

The Call-ID routed is always the one the parser reads (:func:`~telepath.sip.parser.parse_message`,
whose Call-ID is what dialogs and transactions are matched on): a message the router read
otherwise — CRLFs before the start line (§7.5), a folded field (§7.3.1) — reached the front,
which answered a BYE of another worker's call 481 and left the call up. So a message routed to
no worker has no Call-ID the parser would match to a call either (none, or an empty one: a
keep-alive CRLF, garbage); it is handled where it was read, so its error response is still
sent.

Hand-written: a few lines over ``re`` and ``zlib``. A full parse here would double the parsing
cost of every forwarded datagram; one regular expression reads the usual Call-ID (one word on
its line), the parser's own reading (:func:`~telepath.sip.parser.read_call_id`) the rest.
"""

from __future__ import annotations

import re
import zlib

from telepath.sip.parser import read_call_id

__all__ = ["call_id_of", "owner_of"]

# The first Call-ID field, as the parser finds it: after a line end (a header line always
# follows the start line's; a literal, which the engine scans for: ~1.7x faster than ``^`` in
# multi-line mode), the full or compact (§7.3.3, §20.8: "i") name in any case, then blanks or
# folds (§7.3.1; the parser unfolds before the colon too) and the colon. Group 1 is the value
# only when it is one word of visible ASCII alone on its line (blanks around it, no fold after
# it: §25.1 callid is such a word), i.e. exactly what the parser reads; otherwise it is None
# and the parser's reading decides.
_CALL_ID = re.compile(
    rb"(?i)\n(?:call-id|i)(?:[ \t]|\r?\n[ \t])*:"
    rb"(?:[ \t]*([!-~]+)[ \t]*(?=\r?\n(?![ \t])|\Z))?"
)
_HEAD_END = b"\r\n\r\n"
_LINE_ENDS = (b"\r", b"\n")


def call_id_of(datagram: bytes) -> bytes | None:
    """The Call-ID of a SIP message as the parser reads it, or None when it has none (or an
    empty one). Run on every datagram the front reads: one search for the usual message."""
    start = 0
    if datagram.startswith(_LINE_ENDS):  # §7.5: CRLFs before the start line are ignored
        start = len(datagram) - len(datagram.lstrip(b"\r\n"))
    end = datagram.find(_HEAD_END, start)
    match = _CALL_ID.search(datagram, start, end if end >= 0 else len(datagram))
    if match is None:
        return None
    call_id = match.group(1)
    if call_id is None:  # folded, not one word, or odd whitespace: the parser's reading
        call_id = read_call_id(datagram).encode("utf-8", "surrogateescape")
    return call_id or None


def owner_of(call_id: bytes, workers: int) -> int:
    """The index (``0 .. workers - 1``) of the worker that owns ``call_id``.

    CRC-32 rather than ``hash()``: the same in every process (no hash randomisation) and
    evenly spread over the random strings carriers use as Call-IDs.
    """
    return zlib.crc32(call_id) % workers
