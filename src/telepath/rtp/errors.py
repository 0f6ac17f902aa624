"""Errors raised by the pure RTP core.

Every parse failure is a :class:`telepath.errors.ProtocolError` so the transport can count and
drop the datagram uniformly; the message says precisely what was wrong (tests assert it verbatim).
"""

from __future__ import annotations

from telepath.errors import ProtocolError


class RtpError(ProtocolError):
    """A malformed or unsupported RTP packet or payload."""


class RtcpError(RtpError):
    """A malformed RTCP packet."""
