"""SDP errors, each carrying the SIP status a UAS should answer with.

A malformed body is a 400 (RFC 3261 §21.4.1); an offer we understand but cannot accept is a
488 Not Acceptable Here with a Warning header naming the reason (RFC 3261 §21.4.26, §20.43).
"""

from __future__ import annotations

from telepath.errors import ProtocolError

#: RFC 3261 §20.43 warn-codes used for media negotiation failures.
WARN_INCOMPATIBLE_ADDRESS_FORMAT = 301  # "Incompatible network address formats" (IPv6, a name)
WARN_INCOMPATIBLE_TRANSPORT = 302  # "Incompatible transport protocol" (e.g. RTP/SAVP only)
WARN_MEDIA_TYPE_NOT_AVAILABLE = 304  # "Media type not available" (e.g. no audio stream at all)
WARN_INCOMPATIBLE_MEDIA_FORMAT = 305  # "Incompatible media format" (no common codec)

_WARN_TEXT: dict[int, str] = {
    WARN_INCOMPATIBLE_ADDRESS_FORMAT: "Incompatible network address formats",
    WARN_INCOMPATIBLE_TRANSPORT: "Incompatible transport protocol",
    WARN_MEDIA_TYPE_NOT_AVAILABLE: "Media type not available",
    WARN_INCOMPATIBLE_MEDIA_FORMAT: "Incompatible media format",
}


class SdpError(ProtocolError):
    """A session description is malformed or violates RFC 4566 / RFC 3264.

    Attributes:
        status_hint: the SIP status to answer with (400 Bad Request by default).
    """

    def __init__(self, message: str, status_hint: int = 400) -> None:
        super().__init__(message, status_hint=status_hint)


class NoCommonCodec(SdpError):
    """The offer is well formed but nothing in it can be accepted (answer 488).

    Attributes:
        status_hint: always 488 (Not Acceptable Here, RFC 3261 §21.4.26).
        warn_code: the RFC 3261 §20.43 warn-code: 301, 302, 304 or 305.
        agent: the warn-agent used for :attr:`warning`.
        detail: what to change, appended to the warn-text (SRTP refusals), or None.
        warning: a ready-to-use SIP ``Warning`` header value, e.g.
            ``305 telepath "Incompatible media format"``.
    """

    def __init__(
        self,
        message: str,
        *,
        warn_code: int = WARN_INCOMPATIBLE_MEDIA_FORMAT,
        agent: str = "telepath",
        detail: str | None = None,
    ) -> None:
        super().__init__(message, status_hint=488)
        self.warn_code = warn_code
        self.agent = agent
        self.detail = detail

    @property
    def warn_text(self) -> str:
        """The RFC 3261 §20.43 text for :attr:`warn_code`, then ``: detail`` when there is one
        (the warn-text is free text; the detail tells a caller's operator what to change)."""
        text = _WARN_TEXT.get(self.warn_code, "Incompatible media format")
        return text if self.detail is None else f"{text}: {self.detail}"

    @property
    def warning(self) -> str:
        """The ``Warning`` header value with :attr:`agent` as the warn-agent."""
        return self.warning_header(self.agent)

    def warning_header(self, agent: str) -> str:
        """A ``Warning`` header value: ``warn-code SP warn-agent SP warn-text`` (§20.43).

        ``agent`` is our host (or host:port, or a pseudonym); the text is a quoted-string.
        """
        text = self.warn_text.replace("\\", "\\\\").replace('"', '\\"')
        return f'{self.warn_code} {agent} "{text}"'
