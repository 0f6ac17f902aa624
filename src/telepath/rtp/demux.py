"""Telling STUN from RTP and RTCP on one UDP port (RFC 7983 §7, after RFC 5764 §5.1.2).

The first byte decides: 0-3 is STUN (its first two bits are zero, RFC 8489 §5), 128-191 is
RTP/RTCP (version 2). A call's RTP and RTCP sockets see STUN when call control asked a STUN
server for their public mapping (``transport/stun.py``) and an answer to a retransmitted
request arrives after media took the socket over: it is neither media nor malformed media.
"""

from __future__ import annotations

__all__ = ["STUN_COOKIE", "is_stun"]

STUN_COOKIE = b"\x21\x12\xa4\x42"  # RFC 8489 §5: the magic cookie, bytes 4-7 of every message


def is_stun(packet: bytes) -> bool:
    """Whether ``packet`` can be a STUN message: a 20-byte header at least, the first byte
    0-3 and the magic cookie."""
    return len(packet) >= 20 and packet[0] < 4 and packet[4:8] == STUN_COOKIE
