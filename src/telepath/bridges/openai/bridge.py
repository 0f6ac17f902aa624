"""OpenAI Realtime (GA) bridge: G.711 passes through both ways as ``audio/pcmu``/``audio/pcma``.

Session: ``wss://.../v1/realtime?model=...`` with ``Authorization: Bearer``; ``session.update``
with ``type: "realtime"``, the call's G.711 format in and out, the trunk's system prompt as
``instructions``, server VAD and two function tools, ``end_call`` and ``transfer_call``.

Wideband calls (``CallMetadata.wideband``, a G.722 caller): the session is ``audio/pcm`` at
24 kHz both ways, the only PCM rate the service takes (``reference/providers.md`` §2), so the
caller's 50-7000 Hz reach the model and its voice reaches the caller beyond 3.4 kHz. The bridge
resamples 16 <-> 24 kHz through the project's low-pass FIR; 24 kHz PCM16 is six times the bytes
of G.711 on the provider's wire (48 against 8 kB/s each way).

Barge-in (``reference/providers.md`` §2.7): on ``input_audio_buffer.speech_started`` the bridge
reads the playout progress, emits ``AgentClear`` and sends ``conversation.item.truncate`` for
each assistant item the clear cut short with ``audio_end_ms`` = what the caller heard of that
item, clamped to the audio received for it (``conversation.item.delete`` when nothing was
heard). That is not only the newest item: audio comes faster than real time, so a digit's or a
tool's answer can arrive while an earlier item is still playing, and that one is where the
caller stopped listening. Late deltas are dropped: those of an interrupted item, and any of
the response active at the barge-in (server VAD's ``interrupt_response`` cancels it), even one
whose first delta comes only after ``speech_started`` — no item of it was cut, yet it is as
stale as the rest: such an item is deleted at its first dropped delta, as any unheard one.

Responses (``reference/providers.md`` §2.8): the service runs one response at a time and
refuses a ``response.create`` while one is active (``conversation_already_has_active_response``).
The bridge follows ``response.created``/``response.done`` and holds a ``response.create`` it
needs (a DTMF digit, a tool's result, the session-limit goodbye) until the active response is
done; one refused in a race with a response the service started itself (server VAD) is sent
again after that one. Function calls are acted on at their response's ``response.done``, and
only when it completed: the service also completes the arguments of a call whose response the
caller interrupted, and that hang-up or transfer was decided before the caller spoke.

Errors: an ``error`` event answering one of our best-effort requests (truncate, delete) or a
benign code is logged and ignored; any other ``error`` and a
``failed`` response end the session with ``ai_provider_error``. ``session_expired`` and the
1001 close at the 60-minute cap end it with ``session_limit``; before that the bridge asks the
agent to say goodbye at ``session_limit_s`` and then hangs up.
"""

from __future__ import annotations

import asyncio
import binascii
import json
import logging
from collections import deque
from dataclasses import dataclass
from urllib.parse import quote

from telepath.bridges.audio import AudioConverter, WireFormat, b64_decode, b64_encode
from telepath.bridges.base import (
    BYTES_PER_MS,
    AgentAudio,
    AgentClear,
    AgentConnected,
    AgentError,
    AgentEvent,
    AgentHangup,
    AgentTranscript,
    AgentTransfer,
    BridgeConnectError,
    BridgeError,
    BridgeProtocolError,
    BridgeReason,
    CallMetadata,
    OpenAIConfig,
    PlayoutProgress,
    ProviderError,
    RealTimePlayout,
)
from telepath.bridges.openai import events as ev
from telepath.bridges.ws import WebSocketBridge, stop_task

__all__ = ["END_CALL_TOOL", "TRANSFER_CALL_TOOL", "OpenAIRealtimeBridge"]

logger = logging.getLogger(__name__)

END_CALL_TOOL = ev.FunctionTool(
    name="end_call",
    description="Hang up the phone call. Say goodbye to the caller before calling this.",
    parameters={"type": "object", "properties": {}, "required": []},
)
TRANSFER_CALL_TOOL = ev.FunctionTool(
    name="transfer_call",
    description="Transfer the caller to another number or SIP address.",
    parameters={
        "type": "object",
        "properties": {
            "target": {
                "type": "string",
                "description": "Destination as a tel: or sip: URI, e.g. tel:+14155550123",
            }
        },
        "required": ["target"],
    },
)
BENIGN_ERROR_CODES = frozenset(
    {"response_cancel_not_active", "conversation_already_has_active_response"}
)
RETRYABLE_ERROR_TYPES = frozenset({"server_error", "rate_limit_exceeded", "tokens", "requests"})
#: The session's format on a wideband call: ``audio/pcm`` takes only 24 kHz.
PCM_24K = WireFormat("pcm16", 24000)
#: ``metadata`` of the session-limit goodbye's response, to know its ``response.done``.
GOODBYE_METADATA = {"telepath": "session_limit_goodbye"}
GOODBYE_INSTRUCTIONS = (
    "The call has reached its maximum length. Tell the caller briefly that you have to end "
    "the call now and say goodbye."
)
#: Assistant items since the last clear whose place in the playout is kept. The service runs
#: one response at a time and the bridge asks for the next only when one is done, so more
#: still queued at once would be minutes of speech; an older one has long been played.
MAX_TRACKED_ITEMS = 16


@dataclass(slots=True)
class _Item:
    """An assistant item's audio: where it starts in the playout and how much came."""

    id: str
    offset_ms: float  # agent audio emitted (since the last clear) before it began
    received_ms: float = 0.0
    done: bool = False  # response.output_audio.done seen for it


class OpenAIRealtimeBridge(WebSocketBridge):
    """Bridge to an OpenAI Realtime session (GA protocol only).

    Args:
        config: the trunk's OpenAI settings.
        connect_timeout_s: bound on the upgrade and on waiting for ``session.updated``.
    """

    provider = "openai"
    accepts_wideband = True  # audio/pcm at 24 kHz both ways for a G.722 caller

    def __init__(self, config: OpenAIConfig, *, connect_timeout_s: float = 10.0) -> None:
        super().__init__(connect_timeout_s=connect_timeout_s)
        self.config = config
        self._meta: CallMetadata | None = None
        self._converter: AudioConverter | None = None  # wideband calls only
        self._bytes_per_ms: float = BYTES_PER_MS  # of the session's audio format
        self._playout: PlayoutProgress = RealTimePlayout()
        self._estimator: RealTimePlayout | None = None
        self._ready: asyncio.Future[None] | None = None
        self._seq = 0
        self._session_update_id = ""
        self._best_effort_ids: set[str] = set()
        self._items: deque[_Item] = deque(maxlen=MAX_TRACKED_ITEMS)  # since the last clear
        self._emitted_ms = 0.0  # agent audio emitted since the last clear
        self._interrupted: set[str] = set()  # items cut at a barge-in
        self._cut_responses: set[str] = set()  # active at a barge-in, until their response.done
        self._goodbye_pending = False
        self._response_id: str | None = None  # the service's active response
        self._starting = False  # a response.create of ours not yet followed by response.created
        self._creates: dict[str, ev.ResponseParams | None] = {}  # our creates, by event id
        self._wanted: ev.ResponseParams | None = None  # a create held for the active response
        self._want = False
        self._calls: dict[str, list[ev.FunctionCallArgumentsDone]] = {}  # by response id
        self._timer: asyncio.Task[None] | None = None

    # --- AgentBridge -----------------------------------------------------------------------

    async def start(self, meta: CallMetadata, playout: PlayoutProgress | None = None) -> None:
        """Connect, configure the session and wait for ``session.updated``."""
        self._meta = meta
        if meta.wideband:
            self._converter = AudioConverter(meta.codec, PCM_24K, wideband=True)
            self._bytes_per_ms = PCM_24K.bytes_per_ms
        if playout is None:
            self._estimator = RealTimePlayout()
            self._playout = self._estimator
        else:
            self._playout = playout
        self._ready = asyncio.get_running_loop().create_future()
        self._ready.add_done_callback(_retrieve)
        sep = "&" if "?" in self.config.realtime_url else "?"
        url = f"{self.config.realtime_url}{sep}model={quote(self.config.model, safe='')}"
        await self._open(url, {"Authorization": f"Bearer {self.config.api_key}"})
        await self._send_event(self._session_update(meta))
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), self.connect_timeout_s)
        except TimeoutError:
            await self._fail_start(
                BridgeConnectError("no session.updated from OpenAI", retryable=True, code="timeout")
            )
        except BridgeError as err:
            await self._fail_start(err)
        await self._request_response()
        self._timer = asyncio.create_task(self._session_limit(), name="openai-session-limit")

    def _audio_message(self, payload: bytes) -> str | None:
        """One caller frame (the session's G.711 format, or 16 kHz PCM16 on a wideband call,
        resampled to 24 kHz here) as an append event."""
        if self._ready is None or not self._ready.done():
            return None
        if self._converter is not None:
            payload = self._converter.to_agent(payload)
        return ev.input_audio_append_json(b64_encode(payload))

    async def send_dtmf(self, digit: str) -> None:
        """Tell the model about a key press as a user text item, and let it respond."""
        text = f"[The caller pressed the {digit} key on the phone keypad.]"
        item = ev.MessageItem(role="user", content=[ev.InputText(text=text)])
        await self._send_event(ev.ConversationItemCreate(event_id=self._next_id(), item=item))
        await self._request_response()

    async def send_transfer_result(
        self, request_id: str, ok: bool, detail: str | None = None, *, ending: bool = False
    ) -> None:
        """Answer the ``transfer_call`` function call and let the model speak about it.

        Decision: ``ending`` (the transfer worked, the call ends and the session closes next)
        sends nothing. A ``response.create`` would be a billed response nobody hears, and the
        function's output alone is read by no later response: the session and its
        conversation end with the socket.
        """
        if ending:
            return
        output = json.dumps({"ok": ok, "detail": detail or ("transferred" if ok else "failed")})
        item = ev.FunctionCallOutputItem(call_id=request_id, output=output)
        await self._send_event(ev.ConversationItemCreate(event_id=self._next_id(), item=item))
        await self._request_response()

    async def close(self, reason: BridgeReason = BridgeReason.CALLER_HANGUP) -> None:
        """Stop the session timer and close the socket."""
        if self._timer is not None:
            await stop_task(self._timer)
        await super().close(reason)

    # --- outgoing helpers ------------------------------------------------------------------

    def _next_id(self) -> str:
        self._seq += 1
        return f"evt_telepath_{self._seq}"

    def _best_effort_id(self) -> str:
        event_id = self._next_id()
        self._best_effort_ids.add(event_id)
        return event_id

    async def _send_event(self, event: ev.ClientEvent) -> None:
        await self._send(event.to_json())

    async def _request_response(self, params: ev.ResponseParams | None = None) -> None:
        """Send ``response.create`` now, or once the active (or starting) response is done."""
        if self._response_id is not None or self._starting:
            self._want = True
            self._wanted = params or self._wanted  # the goodbye's instructions win
            return
        event_id = self._next_id()
        self._creates[event_id] = params
        if len(self._creates) > 32:  # an error answers within moments: keep the latest only
            del self._creates[next(iter(self._creates))]
        self._starting = True
        await self._send_event(ev.ResponseCreate(event_id=event_id, response=params))

    async def _send_wanted(self) -> None:
        if self._want and not self.finished:
            params, self._want, self._wanted = self._wanted, False, None
            await self._request_response(params)

    def _session_update(self, meta: CallMetadata) -> ev.SessionUpdate:
        fmt = _session_format(meta)
        self._session_update_id = self._next_id()
        session = ev.Session(
            instructions=meta.system_prompt,
            audio=ev.SessionAudio(
                input=ev.AudioInput(format=fmt, noise_reduction=ev.NoiseReduction()),
                output=ev.AudioOutput(format=fmt, voice=ev.output_voice(self.config.voice)),
            ),
            tools=[END_CALL_TOOL, TRANSFER_CALL_TOOL],
        )
        return ev.SessionUpdate(event_id=self._session_update_id, session=session)

    async def _session_limit(self) -> None:
        await asyncio.sleep(self.config.session_limit_s)
        if self.finished:
            return
        logger.info("openai bridge: session limit reached, asking the agent to say goodbye")
        self._goodbye_pending = True
        params = ev.ResponseParams(instructions=GOODBYE_INSTRUCTIONS, metadata=GOODBYE_METADATA)
        await self._request_response(params)
        await asyncio.sleep(self.config.goodbye_timeout_s)
        self._finish(AgentHangup(BridgeReason.SESSION_LIMIT))

    # --- incoming --------------------------------------------------------------------------

    async def _handle_text(self, text: str) -> None:
        event = ev.parse_server_event(text)
        if event is None:
            return
        match event:
            case ev.ResponseOutputAudioDelta():
                await self._on_audio(event)
            case ev.SpeechStarted():
                await self._on_speech_started()
            case ev.ResponseOutputAudioDone():
                for item in self._items:
                    if item.id == event.item_id:
                        item.done = True
            case ev.SessionUpdated():
                await self._on_session_updated(event)
            case ev.ResponseCreated():
                self._on_response_created(event)
            case ev.FunctionCallArgumentsDone():
                self._calls.setdefault(event.response_id, []).append(event)
            case ev.ResponseDone():
                await self._on_response_done(event)
            case ev.ErrorEvent():
                await self._on_error(event)
            case ev.ResponseOutputAudioTranscriptDone():
                await self._emit(AgentTranscript("agent", event.transcript))
            case ev.InputTranscriptionCompleted():
                await self._emit(AgentTranscript("caller", event.transcript))
            case _:
                pass

    async def _on_session_updated(self, event: ev.SessionUpdated) -> None:
        if self._ready is None or self._ready.done() or self._meta is None:
            return
        expected = _session_format(self._meta)
        audio = event.session.get("audio") or {}
        for direction in ("input", "output"):
            fmt = (audio.get(direction) or {}).get("format") or {}
            # providers.md §2.3: only audio/pcm has a rate (24 kHz only); a G.711 format has
            # none, so a rate echoed for one (8000) says nothing against it.
            wrong_rate = expected.type == "audio/pcm" and fmt.get("rate", 24000) != 24000
            if fmt.get("type") != expected.type or wrong_rate:
                raise BridgeProtocolError("OpenAI session does not use the call's audio format")
        self._ready.set_result(None)
        await self._emit(AgentConnected(self.provider))

    async def _on_audio(self, event: ev.ResponseOutputAudioDelta) -> None:
        if event.item_id in self._interrupted:
            return  # late audio of an answer the caller already talked over
        if event.response_id in self._cut_responses:
            # An item of the response the caller talked over that began only after it: none
            # of it is played, so it goes from the conversation too (providers.md §2.7: an
            # unheard item is deleted), or the model would remember saying it.
            self._interrupted.add(event.item_id)
            await self._send_event(
                ev.ConversationItemDelete(event_id=self._best_effort_id(), item_id=event.item_id)
            )
            return
        try:
            payload = b64_decode(event.delta)
        except binascii.Error:
            raise BridgeProtocolError("malformed audio delta: not base64") from None
        if not self._items or self._items[-1].id != event.item_id:
            self._items.append(_Item(event.item_id, self._emitted_ms))
        ms = len(payload) / self._bytes_per_ms
        self._items[-1].received_ms += ms
        self._emitted_ms += ms
        if self._estimator is not None:
            self._estimator.emitted(ms)
        if self._converter is not None:
            payload = self._converter.from_agent(payload)
            if not payload:
                return
        await self._emit(AgentAudio(payload, event.item_id))

    async def _on_speech_started(self) -> None:
        played_total = self._playout()
        if self._converter is not None:  # the next item starts on a whole sample, no filter tail
            self._converter.restart_from_agent()
        await self._emit(AgentClear())
        if self._response_id is not None:
            self._cut_responses.add(self._response_id)
        items = list(self._items)
        self._items.clear()
        self._emitted_ms = 0.0
        if self._estimator is not None:
            self._estimator.cleared()
        for item in items:
            await self._cut(item, played_total)

    async def _cut(self, item: _Item, played_total: float) -> None:
        """Truncate ``item`` at what the caller heard of it, or delete it if nothing was."""
        heard = min(max(0.0, played_total - item.offset_ms), item.received_ms)
        if item.done and heard >= item.received_ms:
            return  # complete and fully played before the caller spoke: nothing to cut
        self._interrupted.add(item.id)
        if heard < 1:
            # truncating at 0 ms is rejected by the service; drop the unheard item instead
            await self._send_event(
                ev.ConversationItemDelete(event_id=self._best_effort_id(), item_id=item.id)
            )
            return
        await self._send_event(
            ev.ConversationItemTruncate(
                event_id=self._best_effort_id(), item_id=item.id, audio_end_ms=int(heard)
            )
        )

    async def _on_function_call(self, event: ev.FunctionCallArgumentsDone) -> None:
        if event.name == "end_call":
            self._finish(AgentHangup(BridgeReason.AGENT_HANGUP))
            return
        if event.name == "transfer_call":
            target = _transfer_target(event.arguments)
            if target is not None:
                await self._emit(AgentTransfer(target, event.call_id))
                return
            await self.send_transfer_result(
                event.call_id, False, "target must be a sip: or tel: URI"
            )
            return
        output = json.dumps({"error": f"unknown function {event.name}"})
        item = ev.FunctionCallOutputItem(call_id=event.call_id, output=output)
        await self._send_event(ev.ConversationItemCreate(event_id=self._next_id(), item=item))
        await self._request_response()

    def _on_response_created(self, event: ev.ResponseCreated) -> None:
        response_id = event.response.get("id")
        self._response_id = response_id if isinstance(response_id, str) else "unknown"
        # Ours, or one the service started itself (server VAD) — then ours is refused as
        # conversation_already_has_active_response and _on_error holds it for this one's end.
        self._starting = False

    async def _on_response_done(self, event: ev.ResponseDone) -> None:
        response = event.response
        if response.id is None or response.id == self._response_id:
            self._response_id = None
        self._cut_responses.discard(response.id or "")  # its last event: no more deltas
        calls = self._calls.pop(response.id or "", [])
        if response.status == "completed":
            for call in calls:
                await self._on_function_call(call)
        elif calls:
            logger.info(
                "openai bridge: %d function call(s) of a %s response not acted on",
                len(calls),
                response.status,
            )
        if response.status == "failed":
            error = response.status_details.error if response.status_details else None
            kind = error.type if error and error.type else None
            code = (error.code if error else None) or kind
            raise ProviderError(
                "OpenAI response failed", retryable=kind in RETRYABLE_ERROR_TYPES, code=code
            )
        if self._goodbye_pending and response.metadata == GOODBYE_METADATA:
            self._finish(AgentHangup(BridgeReason.SESSION_LIMIT))
            return
        await self._send_wanted()

    async def _on_error(self, event: ev.ErrorEvent) -> None:
        error = event.error
        if error.code == "session_expired":
            self._finish(AgentHangup(BridgeReason.SESSION_LIMIT))
            return
        if error.event_id is not None and error.event_id in self._creates:
            params = self._creates[error.event_id]
            self._starting = False
            if error.code == "conversation_already_has_active_response":
                # Raced a response the service started itself: send it again after that one.
                self._want = True
                self._wanted = params or self._wanted
                return
        if error.event_id in self._best_effort_ids or error.code in BENIGN_ERROR_CODES:
            logger.debug("openai bridge: ignoring error %s", error.code)
            return
        raise ProviderError(
            "OpenAI reported an error",
            retryable=error.type in RETRYABLE_ERROR_TYPES,
            code=error.code or error.type,
        )

    def _on_remote_close(self, code: int | None, reason: str) -> AgentEvent:
        if self._ready is not None and not self._ready.done():
            return AgentError(
                BridgeReason.CONNECTION_FAILED,
                "OpenAI closed the session during setup",
                True,
                str(code) if code is not None else "1006",
            )
        if code == 1001 and "maximum duration" in reason:
            return AgentHangup(BridgeReason.SESSION_LIMIT)
        return super()._on_remote_close(code, reason)

    def _finish(self, event: AgentEvent) -> None:
        ready = self._ready
        if ready is not None and not ready.done():
            if isinstance(event, AgentError):
                err: BridgeError = BridgeError(
                    event.message, reason=event.reason, retryable=event.retryable, code=event.code
                )
            else:
                err = BridgeConnectError("OpenAI session ended during setup", retryable=False)
            ready.set_exception(err)
        super()._finish(event)


def _session_format(meta: CallMetadata) -> ev.PcmuFormat | ev.PcmaFormat | ev.PcmFormat:
    """The session's audio format, both ways: the call's G.711 law, or 24 kHz PCM when wideband."""
    if meta.wideband:
        return ev.PcmFormat()
    return ev.PcmuFormat() if meta.codec == "pcmu" else ev.PcmaFormat()


def _retrieve(fut: asyncio.Future[None]) -> None:
    """Mark a setup failure as seen even when ``start`` timed out first."""
    if not fut.cancelled():
        fut.exception()


def _transfer_target(arguments: str) -> str | None:
    try:
        args = json.loads(arguments)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python recurses
        return None
    target = args.get("target") if isinstance(args, dict) else None
    # The scheme in any case (RFC 3986 §3.1, RFC 3261 §19.1.4): "TEL:…" and "Sip:…" are what
    # call control's sip.uri.transfer_target takes (it parses the whole URI).
    if isinstance(target, str) and target[:5].lower().startswith(("sip:", "sips:", "tel:")):
        return target
    return None
