"""A local fake of the OpenAI Realtime API (GA WebSocket protocol).

It validates every client event strictly against ``telepath.bridges.openai.events`` (unknown
types, unknown fields, a ``session.update`` without ``type: "realtime"`` ...): each violation is
answered with an ``error`` event, as the real service does, and recorded in
``protocol_errors``. Everything received is kept in ``received`` (decoded JSON), everything
sent in ``sent``, so tests can check both against the official SDK types.

Behaviour switches (constructor arguments):

* ``agent``: ``"tone"`` answers each ``response.create`` with ``response_ms`` of a sine at
  ``tone_hz`` in the session's format (G.711, or PCM16 at 24 kHz for ``audio/pcm``); ``"echo"``
  streams caller audio straight back as one long response; ``"silent"`` sends no audio.
* ``barge_in_after_ms``: in a tone response, after that much audio, send
  ``input_audio_buffer.speech_started``, two late deltas of the interrupted item, then
  ``response.done`` (cancelled, ``turn_detected``).
* ``end_call``: after the first response's audio, call the ``end_call`` function.
* ``transfer_to``: after the first response's audio, call ``transfer_call`` with this target.
* ``function``: after the first response's audio, call this ``(name, arguments)`` function.
* ``cancel_after_function``: the caller talks right after that function call: the response
  ends ``cancelled`` (``turn_detected``), as the service reports an interrupted tool call.
* ``own_response_on_item``: a ``conversation.item.create`` starts a response of the service's
  own at once (as server VAD does when the caller has just spoken), racing the client's next
  ``response.create``.
* ``vad_turn``: after a barge-in's ``speech_started`` and the cut response's ``response.done``,
  the caller's turn ends as server VAD (``create_response``) ends it: ``speech_stopped``,
  ``committed``, ``conversation.item.added``/``.done`` of the user's audio item, then a response
  of the service's own (once: ``barge_in_after_ms`` is cleared for it).
* ``chunk_delay_s``: wall-clock pause after each 100 ms of a tone response's audio (0: as
  fast as the socket takes it), so a response stays active for a while.

Responses run as the service runs them: one at a time, beside the client's events. A
``response.create`` while one is active is answered with the service's
``conversation_already_has_active_response`` error and counted in ``overlapping_creates``; a
function call's response stays active for ``FUNCTION_DONE_DELAY_S`` after the call, then
the call's ``response.output_item.done``; its ``response.done`` lists the call in ``output``.
Each response carries the events of ``reference/providers.md`` §2.4: ``response.created``,
``rate_limits.updated``, ``response.output_item.added``, ``conversation.item.added``,
``response.content_part.added``, the audio deltas, ``response.output_audio_transcript.delta``,
``response.output_audio.done``, ``response.output_audio_transcript.done``,
``response.content_part.done``, ``response.output_item.done``, ``conversation.item.done`` and
``response.done`` with ``usage`` (a cut response: no transcript, its item ``incomplete``).
``metadata`` of a ``response.create`` comes back on that response's ``response.created`` and
``response.done``. A ``response.cancel`` ends the active response with ``response.done``
(cancelled, ``client_cancelled``) after the chunk in flight; with none active it is answered
with ``response_cancel_not_active``.
* ``after_setup``: once ``session.updated`` is sent: ``"error"`` (an ``error`` event),
  ``"failed_response"`` (``response.done`` with status ``failed``), ``"drop"`` (abort TCP),
  ``"malformed"`` (a non-JSON frame), ``"session_expired"`` (error + close 1001), ``"close"``
  (close 1011), ``"close-normal"`` (close 1000, no word of why).
* ``echo_rate``: ``session.updated`` shows this ``rate`` in both audio formats, G.711 too
  (whose GA format objects have no ``rate``).
* ``setup``: ``"reject_session"`` answers ``session.update`` with an ``error``; ``"silent"``
  never answers it.
* ``reject_status`` / ``handshake_delay_s``: see ``FakeAgentServer``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
from typing import Any, Literal

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from telepath.bridges.base import BridgeProtocolError
from telepath.bridges.openai import events as ev
from telepath.testing.tones import sine_g711, sine_pcm16
from telepath.testing.ws_server import FakeAgentServer, json_response

__all__ = ["FakeOpenAIRealtime"]

CHUNK_MS = 100
FUNCTION_DONE_DELAY_S = 0.05
TURN_MS = 600  # how long the caller talks in a replayed server-VAD turn (vad_turn)
TRANSCRIPT = "Hello from the fake agent."
RATE_LIMITS = [
    {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
    {"name": "tokens", "limit": 40000, "remaining": 39000, "reset_seconds": 1.5},
]


class FakeOpenAIRealtime(FakeAgentServer):
    """Fake OpenAI Realtime server; ``url`` is the value for ``OpenAIConfig.realtime_url``."""

    ws_path = "/v1/realtime"

    def __init__(
        self,
        *,
        agent: Literal["tone", "echo", "silent"] = "tone",
        tone_hz: float = 440.0,
        response_ms: int = 1000,
        barge_in_after_ms: int | None = None,
        end_call: bool = False,
        transfer_to: str | None = None,
        function: tuple[str, str] | None = None,
        cancel_after_function: bool = False,
        chunk_delay_s: float = 0.0,
        own_response_on_item: bool = False,
        vad_turn: bool = False,
        after_setup: str | None = None,
        setup: str | None = None,
        echo_rate: int | None = None,
        reject_status: int | None = None,
        handshake_delay_s: float = 0.0,
    ) -> None:
        super().__init__(reject_status=reject_status, handshake_delay_s=handshake_delay_s)
        self.agent = agent
        self.tone_hz = tone_hz
        self.response_ms = response_ms
        self.barge_in_after_ms = barge_in_after_ms
        self.end_call = end_call
        self.transfer_to = transfer_to
        self.function = function
        self.cancel_after_function = cancel_after_function
        self.chunk_delay_s = chunk_delay_s
        self.own_response_on_item = own_response_on_item
        self.vad_turn = vad_turn
        self.overlapping_creates = 0
        self.after_setup = after_setup
        self.setup = setup
        self.echo_rate = echo_rate
        self.received: list[dict[str, Any]] = []
        self.sent: list[dict[str, Any]] = []
        self.caller_audio = bytearray()
        self.session: dict[str, Any] | None = None
        self.item_audio_ms: dict[str, float] = {}
        self._ids = itertools.count(1)
        self._responses = 0
        self._active: asyncio.Task[None] | None = None
        self._cancel = False  # a response.cancel for the active response
        self._turn: tuple[str, int] | None = None  # vad_turn: (user item, audio_start_ms)

    def check_handshake(self, request: Request) -> Response | None:
        """Require ``?model=`` and a Bearer token, refuse the retired beta header."""
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or len(auth) <= len("Bearer "):
            return json_response(401, {"error": {"code": "invalid_api_key"}})
        if "model=" not in request.path:
            return json_response(400, {"error": {"code": "missing_model"}})
        if "OpenAI-Beta" in request.headers:
            self.violation("OpenAI-Beta header sent")
        return None

    # --- plumbing --------------------------------------------------------------------------

    def _id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids)}"

    async def _send(self, ws: ServerConnection, event: dict[str, Any]) -> None:
        event.setdefault("event_id", self._id("event"))
        self.sent.append(event)
        await ws.send(json.dumps(event))

    async def _error(
        self, ws: ServerConnection, code: str, message: str, event_id: str | None = None
    ) -> None:
        error = {
            "type": "invalid_request_error",
            "code": code,
            "message": message,
            "param": None,
            "event_id": event_id,
        }
        await self._send(ws, {"type": "error", "error": error})

    @property
    def _format(self) -> str:
        if self.session is None:
            return "audio/pcmu"
        return str(self.session["audio"]["output"]["format"]["type"])

    @property
    def _bytes_per_ms(self) -> int:
        return 48 if self._format == "audio/pcm" else 8  # PCM16 at 24 kHz, or G.711

    def _tone(self, ms: int, start_ms: int) -> bytes:
        """``ms`` of the agent's tone from ``start_ms`` on, in the session's output format."""
        if self._format == "audio/pcm":
            return sine_pcm16(self.tone_hz, ms, 24000, phase=start_ms * 24)
        codec: Literal["pcmu", "pcma"] = "pcma" if self._format == "audio/pcma" else "pcmu"
        return sine_g711(self.tone_hz, ms, codec, phase=start_ms * 8)

    # --- session ---------------------------------------------------------------------------

    async def handle(self, ws: ServerConnection) -> None:
        """Run one Realtime session."""
        session = {"type": "realtime", "object": "realtime.session", "id": self._id("sess")}
        await self._send(ws, {"type": "session.created", "session": session})
        try:
            await self._serve(ws)
        finally:
            active = self._active
            if active is not None and not active.done():
                active.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await active

    async def _serve(self, ws: ServerConnection) -> None:
        echo_item: str | None = None
        async for message in ws:
            try:
                event = ev.parse_client_event(message)
            except BridgeProtocolError as exc:
                self.violation(str(exc))
                await self._error(ws, "invalid_value", str(exc))
                continue
            self.received.append(json.loads(message))
            match event:
                case ev.SessionUpdate():
                    if await self._on_session_update(ws, event):
                        return
                case ev.InputAudioBufferAppend():
                    chunk = base64.b64decode(event.audio)
                    self.caller_audio += chunk
                    if self.agent == "echo" and self.session is not None:
                        echo_item = echo_item or self._id("item")
                        await self._delta(ws, "resp_echo", echo_item, chunk)
                case ev.ResponseCreate():
                    await self._on_response_create(ws, event)
                case ev.ConversationItemTruncate():
                    await self._on_truncate(ws, event)
                case ev.ConversationItemCreate():
                    idle = self._active is None or self._active.done()
                    if self.own_response_on_item and idle:
                        self._active = asyncio.create_task(self._run_response(ws, None))
                case ev.ConversationItemDelete():
                    await self._send(
                        ws, {"type": "conversation.item.deleted", "item_id": event.item_id}
                    )
                case ev.ResponseCancel():
                    if self._active is not None and not self._active.done():
                        self._cancel = True  # it ends cancelled (client_cancelled) at once
                    else:
                        await self._error(ws, "response_cancel_not_active", "no active response")
                case _:
                    pass

    async def _on_session_update(self, ws: ServerConnection, event: ev.SessionUpdate) -> bool:
        session = event.session
        if session.audio.input.format.type != session.audio.output.format.type:
            self.violation("input and output formats differ")
        if self.setup == "silent":
            return False
        if self.setup == "reject_session":
            await self._error(ws, "invalid_value", "Invalid session", event.event_id)
            return False
        self.session = session.model_dump(exclude_none=True)
        if self.echo_rate is not None:
            for direction in ("input", "output"):
                self.session["audio"][direction]["format"]["rate"] = self.echo_rate
        await self._send(ws, {"type": "session.updated", "session": self.session})
        return await self._after_setup(ws)

    async def _after_setup(self, ws: ServerConnection) -> bool:
        match self.after_setup:
            case "error":
                await self._error(ws, "invalid_api_key", "The key was revoked")
            case "failed_response":
                details = {
                    "type": "failed",
                    "error": {"type": "server_error", "code": "server_error", "message": "boom"},
                }
                response = {
                    "object": "realtime.response",
                    "id": self._id("resp"),
                    "status": "failed",
                    "status_details": details,
                    "output": [],
                }
                await self._send(ws, {"type": "response.done", "response": response})
            case "drop":
                self.drop(ws)
                return True
            case "malformed":
                await ws.send("{not json")
            case "session_expired":
                await self._error(ws, "session_expired", "Your session hit the maximum duration")
                await ws.close(1001, "Your session hit the maximum duration of 60 minutes.")
                return True
            case "close":
                await ws.close(1011, "internal error")
                return True
            case "close-normal":
                await ws.close(1000)
                return True
        return False

    # --- responses -------------------------------------------------------------------------

    async def _on_response_create(self, ws: ServerConnection, event: ev.ResponseCreate) -> None:
        if self._active is not None and not self._active.done():
            self.overlapping_creates += 1
            message = (
                "Conversation already has an active response in progress. Wait until the "
                "response is finished before creating a new one."
            )
            await self._error(
                ws, "conversation_already_has_active_response", message, event.event_id
            )
            return
        metadata = event.response.metadata if event.response is not None else None
        self._active = asyncio.create_task(self._run_response(ws, metadata))

    async def _run_response(self, ws: ServerConnection, metadata: dict[str, str] | None) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self._respond(ws, metadata)
            turn, self._turn = self._turn, None
            if turn is not None:  # vad_turn: the caller's turn ends, server VAD answers it
                await self._caller_turn(ws, *turn)
                self.barge_in_after_ms = None  # the turn is replayed once
                await self._respond(ws, None)

    async def _speech_started(self, ws: ServerConnection, audio_start_ms: int) -> None:
        item = self._id("item")
        if self.vad_turn:
            self._turn = (item, audio_start_ms)
        await self._send(
            ws,
            {
                "type": "input_audio_buffer.speech_started",
                "audio_start_ms": audio_start_ms,
                "item_id": item,
            },
        )

    async def _caller_turn(self, ws: ServerConnection, item_id: str, start_ms: int) -> None:
        """The end of the caller's turn as server VAD reports it (providers.md §2.4)."""
        await self._send(
            ws,
            {
                "type": "input_audio_buffer.speech_stopped",
                "audio_end_ms": start_ms + TURN_MS,
                "item_id": item_id,
            },
        )
        await self._send(ws, {"type": "input_audio_buffer.committed", "item_id": item_id})
        for kind in ("conversation.item.added", "conversation.item.done"):
            item = {
                "id": item_id,
                "object": "realtime.item",
                "type": "message",
                "role": "user",
                "status": "completed",
                "content": [{"type": "input_audio", "transcript": None}],
            }
            await self._send(ws, {"type": kind, "item": item})

    async def _delta(self, ws: ServerConnection, response_id: str, item: str, audio: bytes) -> None:
        ms = len(audio) / self._bytes_per_ms
        self.item_audio_ms[item] = self.item_audio_ms.get(item, 0.0) + ms
        await self._send(
            ws,
            {
                "type": "response.output_audio.delta",
                "response_id": response_id,
                "item_id": item,
                "output_index": 0,
                "content_index": 0,
                "delta": base64.b64encode(audio).decode("ascii"),
            },
        )

    async def _respond(self, ws: ServerConnection, metadata: dict[str, str] | None) -> None:
        self._responses += 1
        self._cancel = False
        response_id, item = self._id("resp"), self._id("item")
        response: dict[str, Any] = {
            "object": "realtime.response",
            "id": response_id,
            "status": "in_progress",
        }
        if metadata is not None:
            response["metadata"] = metadata
        await self._send(ws, {"type": "response.created", "response": response})
        await self._send(ws, {"type": "rate_limits.updated", "rate_limits": RATE_LIMITS})
        ids = {"response_id": response_id, "item_id": item, "output_index": 0}
        part = {**ids, "content_index": 0}
        if self.agent == "tone":
            added = _message(item, "in_progress", None)
            await self._send(
                ws,
                {
                    "type": "response.output_item.added",
                    "response_id": response_id,
                    "output_index": 0,
                    "item": added,
                },
            )
            await self._send(ws, {"type": "conversation.item.added", "item": dict(added)})
            await self._send(
                ws,
                {
                    "type": "response.content_part.added",
                    **part,
                    "part": {"type": "audio", "transcript": ""},
                },
            )
        status, reason = "completed", None
        if self.agent == "tone":
            for sent_ms in range(0, self.response_ms, CHUNK_MS):
                if self.barge_in_after_ms is not None and sent_ms >= self.barge_in_after_ms:
                    await self._barge_in(ws, response_id, item, sent_ms)
                    status, reason = "cancelled", "turn_detected"
                    break
                await self._delta(ws, response_id, item, self._tone(CHUNK_MS, sent_ms))
                await asyncio.sleep(self.chunk_delay_s)
                if self._cancel:
                    status, reason = "cancelled", "client_cancelled"
                    break
        output: list[dict[str, Any]] = []
        transcript = TRANSCRIPT if status == "completed" else ""
        if status == "completed" and self.agent == "tone":
            await self._send(
                ws, {"type": "response.output_audio_transcript.delta", **part, "delta": transcript}
            )
            await self._send(ws, {"type": "response.output_audio.done", **part})
            await self._send(
                ws,
                {"type": "response.output_audio_transcript.done", **part, "transcript": transcript},
            )
        if self.agent == "tone":
            await self._send(
                ws,
                {
                    "type": "response.content_part.done",
                    **part,
                    "part": {"type": "audio", "transcript": transcript},
                },
            )
            message = _message(
                item, "completed" if status == "completed" else "incomplete", transcript
            )
            output.append(message)
            await self._output_item_done(ws, response_id, 0, message)
        if status == "completed":
            calls = await self._maybe_call_function(ws, response_id) if self._responses == 1 else []
            output += calls
            if calls and self.cancel_after_function:
                await self._speech_started(ws, self.response_ms)
                status, reason = "cancelled", "turn_detected"
        if status == "completed" and self._cancel:  # cancelled during a function call
            status, reason = "cancelled", "client_cancelled"
        done: dict[str, Any] = {
            "object": "realtime.response",
            "id": response_id,
            "status": status,
            "output": output,
            "usage": {"total_tokens": 60, "input_tokens": 20, "output_tokens": 40},
        }
        if metadata is not None:
            done["metadata"] = metadata
        if reason is not None:
            done["status_details"] = {"type": status, "reason": reason}
        await self._send(ws, {"type": "response.done", "response": done})

    async def _barge_in(
        self, ws: ServerConnection, response_id: str, item: str, sent_ms: int
    ) -> None:
        await self._speech_started(ws, sent_ms)
        for n in range(2):  # late audio the gateway must drop
            chunk = self._tone(CHUNK_MS, sent_ms + n * CHUNK_MS)
            await self._delta(ws, response_id, item, chunk)

    async def _maybe_call_function(
        self, ws: ServerConnection, response_id: str
    ) -> list[dict[str, Any]]:
        """Call the configured function; the response's ``output`` items for it."""
        if self.end_call:
            name, arguments = "end_call", "{}"
        elif self.transfer_to is not None:
            name, arguments = "transfer_call", json.dumps({"target": self.transfer_to})
        elif self.function is not None:
            name, arguments = self.function
        else:
            return []
        item_id, call_id = self._id("item"), self._id("call")
        added = {
            "id": item_id,
            "object": "realtime.item",
            "type": "function_call",
            "status": "in_progress",
            "call_id": call_id,
            "name": name,
            "arguments": "",
        }
        await self._send(
            ws,
            {
                "type": "response.output_item.added",
                "response_id": response_id,
                "output_index": 1,
                "item": added,
            },
        )
        await self._send(ws, {"type": "conversation.item.added", "item": dict(added)})
        await self._send(
            ws,
            {
                "type": "response.function_call_arguments.done",
                "response_id": response_id,
                "item_id": item_id,
                "output_index": 1,
                "call_id": call_id,
                "name": name,
                "arguments": arguments,
            },
        )
        await asyncio.sleep(FUNCTION_DONE_DELAY_S)
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "function_call",
            "status": "completed",
            "call_id": call_id,
            "name": name,
            "arguments": arguments,
        }
        await self._output_item_done(ws, response_id, 1, item)
        return [item]

    async def _output_item_done(
        self, ws: ServerConnection, response_id: str, index: int, item: dict[str, Any]
    ) -> None:
        """``response.output_item.done`` then ``conversation.item.done`` for ``item``."""
        await self._send(
            ws,
            {
                "type": "response.output_item.done",
                "response_id": response_id,
                "output_index": index,
                "item": item,
            },
        )
        await self._send(ws, {"type": "conversation.item.done", "item": dict(item)})

    async def _on_truncate(self, ws: ServerConnection, event: ev.ConversationItemTruncate) -> None:
        have = self.item_audio_ms.get(event.item_id)
        if have is None:
            await self._error(ws, "item_not_found", "Item not found", event.event_id)
            return
        if event.audio_end_ms <= 0:
            # providers.md §2.7: what the service answers to a truncate at 0 ms
            message = "Only model output audio messages can be truncated"
            await self._error(ws, "unsupported_content_type", message, event.event_id)
            self.violation("truncate at 0 ms (delete the item instead)")
            return
        if event.audio_end_ms > have:
            message = (
                f"Audio content of {have:.0f}ms is already shorter than {event.audio_end_ms}ms"
            )
            await self._error(ws, "invalid_value", message, event.event_id)
            self.violation("truncate beyond the audio sent")
            return
        await self._send(
            ws,
            {
                "type": "conversation.item.truncated",
                "item_id": event.item_id,
                "content_index": event.content_index,
                "audio_end_ms": event.audio_end_ms,
            },
        )


def _message(item_id: str, status: str, transcript: str | None) -> dict[str, Any]:
    """The assistant's audio message item; ``transcript`` None: no content yet."""
    content = [] if transcript is None else [{"type": "output_audio", "transcript": transcript}]
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": content,
    }
