"""The contract between call control and an AI agent bridge.

One bridge serves one call. Call control builds it (``telepath.bridges.registry.create_bridge``)
when the call is answered and then:

1. ``await bridge.start(meta, playout=...)`` opens the provider session. It raises a
   ``BridgeError`` (reason ``connection_failed``) when the agent cannot be reached, the handshake
   is rejected (HTTP 401/403/404 on the upgrade) or nothing answers within the connect timeout.
2. ``await bridge.send_audio(payload)`` for every inbound RTP payload: G.711 in the call's codec,
   normally 20 ms (160 bytes). The bridge converts only when the provider needs another format.
   A G.722 call to a bridge that ``accepts_wideband`` is a *wideband* call
   (``CallMetadata.wideband``): 16 kHz PCM16 both ways instead of G.711.
3. ``async for event in bridge.events()`` consumes ``AgentEvent`` objects (below) until exactly
   one *terminal* event (``AgentHangup``, ``AgentError`` or ``AgentDisconnected``), after which the
   iterator ends. A bridge never ends its stream silently and never hangs: drops, malformed
   frames and provider errors all become a terminal event with a reason.
4. ``send_dtmf``, ``notify_mark`` and ``send_transfer_result`` as the call goes on, and finally
   ``await bridge.close(reason)`` (idempotent; always call it).

The per-frame fast path. A call moves a frame each way every 20 ms; going through a task for each
(``send_audio`` awaited by a pump task, ``AgentAudio`` queued for another) costs a task wake-up
per frame per direction, which the calls benchmark showed to be a large share of the gateway's
CPU per call. So call control may instead, once the call is up:

- call ``bridge.send_audio_nowait(payload)`` straight from the RTP receive path. It never waits
  and never raises; it returns False when the frame was dropped because the agent is not
  reading (the socket's send buffer is full) — real-time audio is dropped, not queued;
- ``bridge.set_audio_sink(sink)``: the bridge may then hand ``AgentAudio`` to ``sink``
  synchronously, from the socket's receive callback, instead of through ``events()``. It does so
  only when nothing is queued in ``events()`` ahead of that audio, so the order of audio, marks
  and clears is the agent's order either way. Other events always go through ``events()``.

Playout and barge-in. ``AgentAudio`` arrives faster than real time; call control queues it and
paces it out as RTP. ``AgentClear`` means "drop everything queued for the caller now" (barge-in).
For OpenAI's ``conversation.item.truncate`` the bridge must know how much of an answer the
caller actually heard. **Decision:** call control passes a ``PlayoutProgress`` callable to
``start``; it returns the milliseconds of agent audio actually sent as RTP *since the last
``AgentClear`` was applied* (call control resets its counter to 0 when it flushes). The bridge
reads it synchronously at the moment the provider reports the barge-in, before emitting
``AgentClear``, and maps it onto its own per-item byte counts (clamped to what it received for
that item). A pull callback is exact at the instant it matters and costs nothing per frame; a
push API would be one frame stale. Without a callback the bridge uses ``RealTimePlayout``, which
models the caller's playout as a real-time FIFO fed by the emitted ``AgentAudio``.

Marks (custom agents). ``AgentMark(name)`` is placed in the playout queue in order; when
playout reaches it, or when an ``AgentClear`` drops it, call control calls
``await bridge.notify_mark(name)`` so the agent receives the echo (Twilio semantics).

Hang-up. ``AgentHangup`` means "let the queued audio finish, then send BYE". ``AgentTransfer``
asks for a SIP REFER; call control reports the outcome with ``send_transfer_result``.
"""

from __future__ import annotations

import asyncio
import enum
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from telepath.errors import TelepathError

if TYPE_CHECKING:
    from telepath.bridges.http_client import SharedHttpClient

__all__ = [
    "TERMINAL_EVENTS",
    "AgentAudio",
    "AgentBridge",
    "AgentClear",
    "AgentConnected",
    "AgentDisconnected",
    "AgentReconnected",
    "AgentError",
    "AgentEvent",
    "AgentHangup",
    "AgentMark",
    "AgentTranscript",
    "AgentTransfer",
    "BridgeAuthError",
    "BridgeConnectError",
    "BridgeError",
    "BridgeProtocolError",
    "BridgeReason",
    "CallMetadata",
    "Codec",
    "CustomConfig",
    "ElevenLabsConfig",
    "OpenAIConfig",
    "PlayoutProgress",
    "ProviderConfig",
    "ProviderError",
    "RealTimePlayout",
    "is_terminal",
]

Codec = Literal["pcmu", "pcma"]
"""The call's G.711 law, as negotiated in SDP (PCMU or PCMA, 8 kHz)."""

BYTES_PER_MS = 8  # G.711 at 8 kHz: one byte per sample


class BridgeReason(enum.StrEnum):
    """Why a bridge session ended; values are the product's disconnect-reason vocabulary.

    Call control maps them 1:1 onto ``telepath.calls.model.DisconnectReason`` by value, both
    ways: every reason a call can end with is here (all but ``lost``, which only a sweep of a
    dead process's calls gives), so the agent's ``stop`` says what the record says.
    """

    CONNECTION_FAILED = "connection_failed"  # never connected (timeout, refused, 401/403/404)
    AI_PROVIDER_ERROR = "ai_provider_error"  # error event, drop or malformed frame mid-call
    AGENT_HANGUP = "agent_hangup"  # the agent asked to end the call
    SESSION_LIMIT = "session_limit"  # the provider's maximum session length was reached
    CALLER_HANGUP = "caller_hangup"  # call control closed the bridge because the caller left
    TRANSFERRED = "transferred"
    MEDIA_TIMEOUT = "media_timeout"  # no RTP from the caller for the inactivity timeout
    CARRIER_ERROR = "carrier_error"  # a SIP-level failure towards the carrier
    SHUTDOWN = "shutdown"
    MAX_DURATION = "max_duration"  # the gateway's call duration limit
    TRUNK_DELETED = "trunk_deleted"  # the trunk was deleted or deactivated mid-call
    UNKNOWN = "unknown"


# --- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenAIConfig:
    """OpenAI Realtime (GA) settings of a trunk.

    Attributes:
        api_key: the trunk's OpenAI key (sent as ``Authorization: Bearer``).
        model: realtime model id, e.g. ``gpt-realtime``.
        voice: output voice (``marin``, ``cedar``, ``alloy`` ..., or a custom ``voice_...`` id).
        realtime_url: WebSocket base URL; ``?model=`` is appended
            (``TELEPATH_OPENAI_REALTIME_URL``).
        session_limit_s: when to end the call politely, before the provider's 60-minute cap.
        goodbye_timeout_s: how long the agent may take to say goodbye at the session limit.
    """

    api_key: str = field(repr=False)
    model: str = "gpt-realtime-2.1"
    voice: str = "marin"
    realtime_url: str = "wss://api.openai.com/v1/realtime"
    session_limit_s: float = 55 * 60
    goodbye_timeout_s: float = 15.0


@dataclass(frozen=True, slots=True)
class ElevenLabsConfig:
    """ElevenLabs Conversational AI settings of a trunk.

    Attributes:
        api_key: ``xi-api-key`` used to get a signed URL; ``None`` for a public agent.
        agent_id: the ElevenLabs agent id.
        api_base: REST base URL (``TELEPATH_ELEVENLABS_API_BASE``).
        ws_url: conversation WebSocket URL for public agents (``TELEPATH_ELEVENLABS_WS_URL``).
        http: the gateway's kept-open client for the signed-URL request
            (``bridges/http_client.py``); ``None``: a client per request.
    """

    api_key: str | None = field(repr=False)
    agent_id: str
    api_base: str = "https://api.elevenlabs.io"
    ws_url: str = "wss://api.elevenlabs.io/v1/convai/conversation"
    http: SharedHttpClient | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class CustomConfig:
    """A custom WebSocket agent of a trunk.

    Attributes:
        endpoint: the agent's ``wss://`` URL (``ws://`` only when insecure URLs are allowed).
        protocol: ``telepath`` (docs/custom-agent-protocol.md) or ``twilio`` (Media Streams).
        headers: extra HTTP headers for the WebSocket handshake (e.g. ``Authorization``).
        reconnect_s: how long to dial the agent again after a dropped connection (the
            telepath protocol's ``start.reconnect``; the trunk's ``custom_reconnect``); 0: a
            drop ends the call.
        allow_insecure: a ``ws://`` endpoint may be dialled (TELEPATH_ALLOW_INSECURE_AGENT_URLS,
            as it is when the call is placed, not as it was when the trunk was saved); else
            such a connection fails, never attempted (``connection_failed``).
    """

    endpoint: str
    protocol: Literal["telepath", "twilio"] = "telepath"
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    reconnect_s: float = 0.0
    allow_insecure: bool = False


ProviderConfig = OpenAIConfig | ElevenLabsConfig | CustomConfig


@dataclass(frozen=True, slots=True)
class CallMetadata:
    """What a bridge is told about the call when it starts.

    Attributes:
        call_id: Telepath's call id (``call_...``).
        trunk_id: the trunk the call arrived on.
        caller: calling party, E.164 (``+14155550123``) or the SIP user part.
        called: called party, E.164 or SIP user part.
        codec: negotiated G.711 law of the RTP leg.
        sample_rate: RTP clock rate (8000 for G.711).
        system_prompt: the trunk's system prompt, if any.
        sip_call_id: the SIP Call-ID, passed to agents that want it (never logged).
        sip_headers: the INVITE headers the trunk forwards (``forward_sip_headers``), by the
            configured name; only those present (never logged).
        wideband: a G.722 call to a bridge whose ``accepts_wideband`` is True: caller audio
            comes as 16 kHz PCM16 frames (640 bytes per 20 ms) instead of G.711, and the
            bridge's ``AgentAudio`` is 16 kHz PCM16 too (whatever the agent itself speaks), so
            both directions keep the 50-7000 Hz band where the agent has it.
    """

    call_id: str
    trunk_id: str
    caller: str
    called: str
    codec: Codec = "pcmu"
    sample_rate: int = 8000
    system_prompt: str | None = None
    sip_call_id: str | None = None
    sip_headers: dict[str, str] = field(default_factory=dict, repr=False)
    wideband: bool = False


# --- events ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgentConnected:
    """The provider session is up and audio may flow."""

    provider: str
    session_id: str | None = None


@dataclass(frozen=True, slots=True)
class AgentReconnected:
    """The agent's connection dropped and a new one took over the session (custom agents
    with ``custom_reconnect``); audio flows again.

    Attributes:
        provider: the bridge's provider.
        count: reconnects in this call so far.
        dropped: messages to the agent lost so far because the backlog was full.
    """

    provider: str
    count: int
    dropped: int = 0


@dataclass(slots=True)  # not frozen: built per 20 ms frame (frozen costs 3x)
class AgentAudio:
    """Agent speech for the caller, in the call's codec (16 kHz PCM16 little-endian on a
    ``CallMetadata.wideband`` call); any length (call control re-frames).

    ``segment`` names the provider item it belongs to (OpenAI item id, ElevenLabs event id).
    """

    payload: bytes
    segment: str | None = None


@dataclass(frozen=True, slots=True)
class AgentClear:
    """Barge-in: drop all queued agent audio now, and echo pending marks."""


@dataclass(frozen=True, slots=True)
class AgentMark:
    """A named point in the agent's audio; echo it with ``notify_mark`` when played or dropped."""

    name: str


@dataclass(frozen=True, slots=True)
class AgentTranscript:
    """A final transcript line (kept at DEBUG level only: it is PII)."""

    role: Literal["caller", "agent"]
    text: str


@dataclass(frozen=True, slots=True)
class AgentTransfer:
    """The agent asks to transfer the caller to ``target``, as the agent wrote it (call
    control checks that it is a ``sip:``, ``sips:`` or ``tel:`` URI)."""

    target: str
    request_id: str


@dataclass(frozen=True, slots=True)
class AgentHangup:
    """Terminal: the agent ended the call; drain queued audio, then hang up."""

    reason: BridgeReason = BridgeReason.AGENT_HANGUP


@dataclass(frozen=True, slots=True)
class AgentError:
    """Terminal: the session failed.

    Attributes:
        reason: vocabulary reason for the call record.
        message: static, key-free description for logs and ``error_message``.
        retryable: whether a new session might succeed (timeouts, 5xx, rate limits).
        code: the provider's error code or WebSocket close code, when there was one.
    """

    reason: BridgeReason
    message: str
    retryable: bool = False
    code: str | None = None


@dataclass(frozen=True, slots=True)
class AgentDisconnected:
    """Terminal: the session ended without an error (after ``close``, or a normal close)."""

    reason: BridgeReason
    code: int | None = None


AgentEvent = (
    AgentConnected
    | AgentReconnected
    | AgentAudio
    | AgentClear
    | AgentMark
    | AgentTranscript
    | AgentTransfer
    | AgentHangup
    | AgentError
    | AgentDisconnected
)
TERMINAL_EVENTS = (AgentHangup, AgentError, AgentDisconnected)


def is_terminal(event: AgentEvent) -> bool:
    """True for the events that end a bridge's event stream."""
    return isinstance(event, TERMINAL_EVENTS)


# --- errors ----------------------------------------------------------------------------------


class BridgeError(TelepathError):
    """A bridge failure, with the call-record reason and whether a retry could help.

    Attributes:
        reason: vocabulary reason (``connection_failed``, ``ai_provider_error`` ...).
        retryable: True for transient causes (timeouts, refused connections, 429/5xx).
        code: provider error code or HTTP status, when known.
    """

    def __init__(
        self, message: str, *, reason: BridgeReason, retryable: bool, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.retryable = retryable
        self.code = code

    def to_event(self) -> AgentError:
        """The terminal event that reports this error."""
        return AgentError(self.reason, str(self), self.retryable, self.code)


class BridgeConnectError(BridgeError):
    """The agent could not be reached (timeout, refused, TLS, HTTP error on the upgrade)."""

    def __init__(self, message: str, *, retryable: bool, code: str | None = None) -> None:
        super().__init__(
            message, reason=BridgeReason.CONNECTION_FAILED, retryable=retryable, code=code
        )


class BridgeAuthError(BridgeConnectError):
    """The provider rejected the credentials or the agent (HTTP 401/403/404): never retried."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message, retryable=False, code=code)


class BridgeProtocolError(BridgeError):
    """The peer sent something its protocol does not allow (malformed frame, bad shape)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason=BridgeReason.AI_PROVIDER_ERROR, retryable=False)


class ProviderError(BridgeError):
    """The provider reported an error event that ends the session."""

    def __init__(self, message: str, *, retryable: bool = False, code: str | None = None) -> None:
        super().__init__(
            message, reason=BridgeReason.AI_PROVIDER_ERROR, retryable=retryable, code=code
        )


# --- playout ---------------------------------------------------------------------------------

PlayoutProgress = Callable[[], int]
"""Milliseconds of agent audio sent to the caller since the last ``AgentClear`` was applied."""


class RealTimePlayout:
    """Estimates playout when call control supplies no ``PlayoutProgress``.

    Models the caller's playout as a FIFO drained in real time: each emitted chunk starts
    when the previous one ends (or now, if playout was idle).

    Args:
        now: monotonic clock in seconds (defaults to the running loop's ``time``).
    """

    def __init__(self, now: Callable[[], float] | None = None) -> None:
        self._now = now or (lambda: asyncio.get_running_loop().time())
        self._emitted_ms = 0.0
        self._busy_until = 0.0

    def emitted(self, ms: float) -> None:
        """Record ``ms`` of audio handed to call control."""
        now = self._now()
        self._busy_until = max(self._busy_until, now) + ms / 1000
        self._emitted_ms += ms

    def cleared(self) -> None:
        """Record that queued audio was dropped (barge-in)."""
        self._emitted_ms = 0.0
        self._busy_until = 0.0

    def __call__(self) -> int:
        """Milliseconds played since the last clear."""
        pending_ms = max(0.0, self._busy_until - self._now()) * 1000
        return round(max(0.0, self._emitted_ms - pending_ms))


# --- the interface ---------------------------------------------------------------------------


class AgentBridge(ABC):
    """One call's session with an AI agent. See the module docstring for the life cycle."""

    provider: str = ""
    #: True if the bridge can run a wideband call (``CallMetadata.wideband``): a G.722
    #: caller's full band then reaches an agent that takes 16 kHz (or more) audio, and such an
    #: agent's audio reaches the caller in full.
    accepts_wideband: bool = False

    @abstractmethod
    async def start(self, meta: CallMetadata, playout: PlayoutProgress | None = None) -> None:
        """Open the provider session and send the call's configuration.

        Args:
            meta: the call's metadata (codec, numbers, system prompt).
            playout: milliseconds of agent audio played since the last applied ``AgentClear``.

        Raises:
            BridgeConnectError: the agent could not be reached (reason ``connection_failed``).
            BridgeAuthError: the handshake was rejected with 401/403/404.
        """

    @abstractmethod
    async def send_audio(self, payload: bytes) -> None:
        """Forward caller audio (G.711 in the call's codec, normally 20 ms = 160 bytes; 16 kHz
        PCM16, 640 bytes, when ``CallMetadata.wideband``).

        Never raises for a closed session: a failure is reported as a terminal event.
        """

    @abstractmethod
    def send_audio_nowait(self, payload: bytes) -> bool:
        """``send_audio`` without waiting: False when the frame was dropped (agent not reading).

        Never raises; a closed session counts as sent (its end is reported by ``events()``).
        """

    def set_audio_sink(self, sink: Callable[[AgentAudio], None] | None) -> None:
        """Let the bridge deliver ``AgentAudio`` to ``sink`` directly (see the module docstring).

        The default keeps every event in ``events()``.
        """
        return None

    @abstractmethod
    def events(self) -> AsyncIterator[AgentEvent]:
        """Agent events, in order, ending after the first terminal event."""

    @abstractmethod
    async def send_dtmf(self, digit: str) -> None:
        """Tell the agent the caller pressed ``digit`` (``0-9``, ``*``, ``#``, ``A-D``)."""

    async def notify_mark(self, name: str) -> None:
        """Report that playout reached (or a clear dropped) the ``AgentMark`` named ``name``."""
        return None

    async def send_transfer_result(
        self, request_id: str, ok: bool, detail: str | None = None, *, ending: bool = False
    ) -> None:
        """Report the outcome of an ``AgentTransfer`` (REFER accepted or failed).

        ``ending``: the transfer succeeded and the call ends with it (the bridge's ``close``
        follows at once): the agent is told, but not asked to say anything more.
        """
        return None

    @abstractmethod
    async def close(self, reason: BridgeReason = BridgeReason.CALLER_HANGUP) -> None:
        """End the session (idempotent). The event stream ends with ``AgentDisconnected``."""
