"""Which SIP worker process owns a datagram: a hash of its Call-ID (RFC 3261 §8.1.1.4, §20.8).

Every message of a call — the INVITE, its retransmissions, the authenticated retry (same
Call-ID, next CSeq: §22.2), ACK, BYE, CANCEL and the responses to our own requests — carries the
call's Call-ID, so hashing it sends the whole dialog, and every transaction in it, to one
process. Only the header section is searched, and only for the Call-ID; the message is parsed
in full by the worker that owns it. A message without a Call-ID (a keep-alive CRLF, garbage) is
handled where it was read, so its error response is still sent.

Hand-written: it is a few lines over ``re`` and ``zlib``, and a full parse here would double
the parsing cost of every forwarded datagram.
"""

from __future__ import annotations

import re
import zlib

__all__ = ["call_id_of", "owner_of"]

# §7.3.1: field names are case-insensitive and may be followed by whitespace before the colon;
# §7.3.3 / §20.8: "i" is the compact form of Call-ID. The value is a word (§25.1: no LWS inside).
_CALL_ID = re.compile(rb"(?im)^(?:call-id|i)[ \t]*:[ \t]*([^\s]+)")
_HEAD_END = b"\r\n\r\n"


def call_id_of(datagram: bytes) -> bytes | None:
    """The Call-ID of a SIP message, or None when its header section has none."""
    end = datagram.find(_HEAD_END)
    match = _CALL_ID.search(datagram, 0, end if end >= 0 else len(datagram))
    return match.group(1) if match else None


def owner_of(call_id: bytes, workers: int) -> int:
    """The index (``0 .. workers - 1``) of the worker that owns ``call_id``.

    CRC-32 rather than ``hash()``: the same in every process (no hash randomisation) and
    evenly spread over the random strings carriers use as Call-IDs.
    """
    return zlib.crc32(call_id) % workers
