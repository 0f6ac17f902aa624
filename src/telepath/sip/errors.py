"""Errors of the SIP core. Each carries the status a UAS should answer with (``status_hint``).

A parse error on a request becomes that status (400, 413, 416, 505…) when the message is
well-formed enough to answer; a parse error on a response is dropped (RFC 3261 §18.1.2).
"""

from __future__ import annotations

from typing import Any

from telepath.errors import ProtocolError


class SipParseError(ProtocolError):
    """Bytes that are not a valid SIP message (RFC 3261 §7, §25).

    Attributes:
        request: the request as far as it could be read (start line and raw header fields), so
            the transport can answer ``status_hint``; None when the bytes were not a request
            or too broken to answer.
    """

    def __init__(self, message: str, status_hint: int = 400, request: Any = None) -> None:
        super().__init__(message, status_hint)
        self.request = request


class SipTransactionError(ProtocolError):
    """A message that does not fit the transaction or dialog state it claims."""
