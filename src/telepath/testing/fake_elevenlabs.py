"""A local fake of ElevenLabs Conversational AI: REST endpoints and the conversation socket.

One port serves both. HTTP ``GET`` routes (answers as in ``fake_provider_http``, keyed by the
``xi-api-key`` prefix, e.g. ``sk-valid...``):

* ``/v1/convai/conversation/get-signed-url?agent_id=...`` -> a signed URL to this server;
* ``/v1/convai/agents/{agent_id}`` -> the agent, announcing this fake's audio formats and the
  override fields it enables.

The WebSocket ``/v1/convai/conversation?agent_id=...`` requires a ``conversation_signature``
unless ``public=True``. Every client frame is validated strictly against
``telepath.bridges.elevenlabs.events`` and the first one must be
``conversation_initiation_client_data``; violations land in ``protocol_errors``. Received
frames are kept in ``received``, sent ones in ``sent``; ``pongs`` holds answered ping ids.

Overrides: as ElevenLabs, a conversation whose initiation overrides a field the agent does not
enable (in its Security settings; none is by default) is refused: an ``error`` event with
``error_type`` ``override_error`` and code 1008, then close 1008 (providers.md §3.3).
``allowed_overrides`` enables fields, dotted paths under ``conversation_config_override``
(``PROMPT_OVERRIDE`` for the system prompt).

Behaviour switches:

* ``formats``: ``(user_input_audio_format, agent_output_audio_format)`` announced in the
  metadata; audio is produced and expected in these formats (default ``ulaw_8000`` both).
* ``agent``: ``"tone"`` speaks a ``response_ms`` first message at ``tone_hz``; ``"echo"``
  returns caller audio (formats must match); ``"silent"`` says nothing.
* ``barge_in_after_ms``: interrupt the first message after that much audio, send two late
  chunks of the interrupted turn (to be dropped), then a ``reply_ms`` new turn at ``reply_hz``
  (default ``tone_hz``) (to be played).
* ``barge_in_on_speech_ms``: send the whole first message, then interrupt it as the server's
  VAD would, once that much caller speech (``user_audio_chunk`` audio louder than
  ``SPEECH_RMS``, counted in ``caller_speech_ms``) has arrived; then the same late chunks and
  new turn (announced by its ``agent_response``) as above.
* ``end_call``: after the first message, report the system ``end_call`` tool and close 1000.
* ``max_duration``: after the first message, the conversation's ``max_duration_seconds`` runs
  out (providers.md §3.6): ``goodbye_ms`` of ``reply_hz`` as a new turn (the agent's
  ``max_conversation_duration_message``; none for 0), then ``error`` ``max_duration_exceeded``
  (code 1000) and close 1000.
* ``transfer_to`` / ``hangup_tool``: after the first message, a ``client_tool_call`` (as an
  agent with ``client_tool_call`` among its client events sends it; see the README).
* ``after_setup``: ``"error"`` (error event ``llm_error`` + close 1002), ``"drop"``,
  ``"malformed"``, ``"close"`` (1011).
* ``setup``: ``"override_error"`` (error + close 1008 after any initiation) or ``"silent"``.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
from collections.abc import Collection
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from telepath.bridges.audio import WireFormat, convert
from telepath.bridges.base import BridgeProtocolError
from telepath.bridges.elevenlabs import events as ev
from telepath.testing.fake_provider_http import (
    elevenlabs_agent_answer,
    elevenlabs_signed_url_answer,
)
from telepath.testing.tones import sine_pcm16
from telepath.testing.ws_server import FakeAgentServer, json_response

__all__ = ["FakeElevenLabs"]

CHUNK_MS = 100
SPEECH_RMS = 500  # PCM16 RMS above which caller audio counts as speech (a tone, not silence)


class FakeElevenLabs(FakeAgentServer):
    """Fake ElevenLabs; use ``base_http`` as ``api_base`` and ``url`` as ``ws_url``."""

    ws_path = "/v1/convai/conversation"

    def __init__(
        self,
        *,
        formats: tuple[ev.AudioFormat, ev.AudioFormat] = ("ulaw_8000", "ulaw_8000"),
        agent: Literal["tone", "echo", "silent"] = "tone",
        tone_hz: float = 440.0,
        response_ms: int = 1000,
        barge_in_after_ms: int | None = None,
        barge_in_on_speech_ms: int | None = None,
        reply_ms: int = 200,
        reply_hz: float | None = None,
        end_call: bool = False,
        max_duration: bool = False,
        goodbye_ms: int = 0,
        transfer_to: str | None = None,
        hangup_tool: bool = False,
        after_setup: str | None = None,
        setup: str | None = None,
        public: bool = False,
        reject_status: int | None = None,
        handshake_delay_s: float = 0.0,
        allowed_overrides: Collection[str] = (),
    ) -> None:
        super().__init__(reject_status=reject_status, handshake_delay_s=handshake_delay_s)
        self.allowed_overrides = frozenset(allowed_overrides)
        self.formats = formats
        self.agent = agent
        self.tone_hz = tone_hz
        self.response_ms = response_ms
        self.barge_in_after_ms = barge_in_after_ms
        self.barge_in_on_speech_ms = barge_in_on_speech_ms
        self.reply_ms = reply_ms
        self.reply_hz = tone_hz if reply_hz is None else reply_hz
        self.end_call = end_call
        self.max_duration = max_duration
        self.goodbye_ms = goodbye_ms
        self.transfer_to = transfer_to
        self.hangup_tool = hangup_tool
        self.after_setup = after_setup
        self.setup = setup
        self.public = public
        self.received: list[dict[str, Any]] = []
        self.sent: list[dict[str, Any]] = []
        self.caller_audio = bytearray()
        self.pongs: list[int] = []
        self.tool_results: list[dict[str, Any]] = []
        self.caller_speech_ms = 0.0
        self._event_ids = itertools.count(1)
        self._speaking_turn: int | None = None  # the turn a caller's speech would interrupt
        self.http_routes["/v1/convai/conversation/get-signed-url"] = self._signed_url
        self.http_routes["/v1/convai/agents/"] = self._agent

    # --- REST ------------------------------------------------------------------------------

    def _signed_url(self, request: Request) -> tuple[int, Any]:
        query = {k: v[0] for k, v in parse_qs(urlsplit(request.path).query).items()}
        key = request.headers.get("xi-api-key")
        return elevenlabs_signed_url_answer(key, query.get("agent_id"), self.url)

    def _agent(self, request: Request) -> tuple[int, Any]:
        agent_id = urlsplit(request.path).path.rsplit("/", 1)[-1]
        key = request.headers.get("xi-api-key")
        return elevenlabs_agent_answer(key, agent_id, self.formats, self.allowed_overrides)

    def check_handshake(self, request: Request) -> Response | None:
        """Require ``agent_id`` and (unless public) a signature."""
        query = parse_qs(urlsplit(request.path).query)
        if "agent_id" not in query:
            return json_response(400, {"detail": "agent_id required"})
        if not self.public and "conversation_signature" not in query:
            return json_response(403, {"detail": "signature required"})
        return None

    # --- session ---------------------------------------------------------------------------

    async def _send(self, ws: ServerConnection, message: dict[str, Any]) -> None:
        self.sent.append(message)
        await ws.send(json.dumps(message))

    async def _audio(self, ws: ServerConnection, data: bytes, event_id: int) -> None:
        chunk = base64.b64encode(data).decode("ascii")
        audio_event = {"audio_base_64": chunk, "event_id": event_id}
        await self._send(ws, {"type": "audio", "audio_event": audio_event})

    async def handle(self, ws: ServerConnection) -> None:
        """Run one conversation."""
        first = True
        async for message in ws:
            try:
                parsed = ev.parse_client_message(message)
            except BridgeProtocolError as exc:
                self.violation(str(exc))
                continue
            self.received.append(json.loads(message))
            if first != isinstance(parsed, ev.ConversationInitiationClientData):
                self.violation("conversation_initiation_client_data must come first, once")
            first = False
            match parsed:
                case ev.ConversationInitiationClientData():
                    refused = sorted(_override_paths(parsed) - self.allowed_overrides)
                    if refused:
                        await self._refuse_override(ws, refused[0])
                        return
                    if await self._start_conversation(ws):
                        return
                case ev.UserAudioChunk():
                    data = base64.b64decode(parsed.user_audio_chunk)
                    self.caller_audio += data
                    if self.agent == "echo":
                        await self._audio(ws, data, 1)
                    await self._on_caller_audio(ws, data)
                case ev.Pong():
                    self.pongs.append(parsed.event_id)
                case ev.ClientToolResult():
                    self.tool_results.append(parsed.model_dump())
                case _:
                    pass

    async def _refuse_override(self, ws: ServerConnection, path: str) -> None:
        """ElevenLabs' answer to an override the agent does not enable: an ``error`` event with
        the documented keys (the texts are this fake's), then close 1008."""
        error = {
            "code": 1008,
            "message": f"Override for field '{path}' is not allowed by the agent's config.",
            "error_type": "override_error",
            "reason": "override_not_allowed",
            "debug_message": f"Enable the '{path}' override in the agent's Security settings.",
            "details": {"field": path},
        }
        await self._close_with_error(ws, error)

    async def _close_with_error(self, ws: ServerConnection, error: dict[str, Any]) -> None:
        """The ``error`` event, then the close: [EL-SPEC] ``ErrorData.code`` is the
        ``WebSocketCloseCode`` the conversation closes with; the reason is the error type."""
        await self._send(ws, {"type": "error", "error_event": error})
        await ws.close(error["code"], error["error_type"])

    async def _start_conversation(self, ws: ServerConnection) -> bool:
        if self.setup == "silent":
            return False
        if self.setup == "override_error":
            error = {"code": 1008, "message": "Override not allowed"}
            error["error_type"] = "override_error"
            await self._close_with_error(ws, error)
            return True
        metadata = {
            "conversation_id": "conv_fake_1",
            "agent_output_audio_format": self.formats[1],
            "user_input_audio_format": self.formats[0],
        }
        await self._send(
            ws,
            {
                "type": "conversation_initiation_metadata",
                "conversation_initiation_metadata_event": metadata,
            },
        )
        await self._send(ws, {"type": "ping", "ping_event": {"event_id": 1, "ping_ms": None}})
        if await self._after_setup(ws):
            return True
        if self.agent == "tone":
            await self._first_message(ws)
        return await self._after_first_message(ws)

    async def _after_setup(self, ws: ServerConnection) -> bool:
        match self.after_setup:
            case "error":
                error = {"code": 1002, "message": "LLM failed", "error_type": "llm_error"}
                await self._close_with_error(ws, error)
                return True
            case "drop":
                self.drop(ws)
                return True
            case "malformed":
                await ws.send("not json at all")
            case "close":
                await ws.close(1011, "internal error")
                return True
        return False

    async def _first_message(self, ws: ServerConnection) -> None:
        turn = next(self._event_ids)
        response = {"agent_response": "Hello from the fake agent.", "event_id": turn}
        await self._send(ws, {"type": "agent_response", "agent_response_event": response})
        out = ev.wire_format(self.formats[1])
        for sent_ms in range(0, self.response_ms, CHUNK_MS):
            if self.barge_in_after_ms is not None and sent_ms >= self.barge_in_after_ms:
                await self._interrupt(ws, turn)
                return
            await self._audio(ws, _tone(self.tone_hz, CHUNK_MS, out, sent_ms), turn)
            await asyncio.sleep(0)
        if self.barge_in_on_speech_ms is not None:
            self._speaking_turn = turn

    async def _on_caller_audio(self, ws: ServerConnection, data: bytes) -> None:
        """Server-side VAD: enough caller speech during the agent's turn interrupts it."""
        if self.barge_in_on_speech_ms is None:
            return
        fmt = ev.wire_format(self.formats[0])
        pcm = convert(data, fmt, WireFormat("pcm16", fmt.rate))
        if _rms(pcm) > SPEECH_RMS:
            self.caller_speech_ms += len(pcm) / 2 * 1000 / fmt.rate
        turn = self._speaking_turn
        if turn is not None and self.caller_speech_ms >= self.barge_in_on_speech_ms:
            self._speaking_turn = None
            await self._interrupt(ws, turn)

    async def _interrupt(self, ws: ServerConnection, turn: int) -> None:
        """``interruption`` of ``turn``, two late chunks of it (to be dropped), a new turn."""
        out = ev.wire_format(self.formats[1])
        await self._send(ws, {"type": "interruption", "interruption_event": {"event_id": turn}})
        for _ in range(2):  # late audio of the interrupted turn
            await self._audio(ws, _tone(self.tone_hz, CHUNK_MS, out), turn)
        new_turn = next(self._event_ids)
        response = {"agent_response": "Sorry, go ahead.", "event_id": new_turn}
        await self._send(ws, {"type": "agent_response", "agent_response_event": response})
        await self._audio(ws, _tone(self.reply_hz, self.reply_ms, out), new_turn)

    async def _after_first_message(self, ws: ServerConnection) -> bool:
        if self.end_call:
            # [EL-SPEC] AgentToolResponseData: all six fields are required
            tool: dict[str, Any] = {"tool_name": "end_call", "tool_call_id": "tool_1"}
            tool.update(tool_type="system", is_error=False, is_called=True)
            tool["event_id"] = next(self._event_ids)
            await self._send(ws, {"type": "agent_tool_response", "agent_tool_response": tool})
            await ws.close(1000, "end_call")
            return True
        if self.max_duration:
            await self._max_duration_exceeded(ws)
            return True
        call: dict[str, Any] | None = None
        if self.transfer_to is not None:
            call = {"tool_name": "transfer_call", "parameters": {"target": self.transfer_to}}
        elif self.hangup_tool:
            call = {"tool_name": "end_call", "parameters": {}}
        if call is not None:
            call.update(tool_call_id="tool_call_1", event_id=next(self._event_ids))
            await self._send(ws, {"type": "client_tool_call", "client_tool_call": call})
        return False

    async def _max_duration_exceeded(self, ws: ServerConnection) -> None:
        """The goodbye (if any), the ``error``, close 1000. The error has the keys providers.md
        §3.4 documents; its texts are ours (ElevenLabs' are not documented)."""
        if self.goodbye_ms:
            turn = next(self._event_ids)
            out = ev.wire_format(self.formats[1])
            for sent_ms in range(0, self.goodbye_ms, CHUNK_MS):
                ms = min(CHUNK_MS, self.goodbye_ms - sent_ms)
                await self._audio(ws, _tone(self.reply_hz, ms, out, sent_ms), turn)
        error: dict[str, Any] = {
            "code": 1000,
            "message": "Conversation ended: maximum duration exceeded",
            "error_type": "max_duration_exceeded",
            "reason": "max_duration_exceeded",
            "debug_message": "max_duration_seconds reached",
            "details": {},
        }
        await self._close_with_error(ws, error)


def _override_paths(init: ev.ConversationInitiationClientData) -> set[str]:
    """Every field ``init`` overrides, as a dotted path under ``conversation_config_override``."""
    if init.conversation_config_override is None:
        return set()
    paths: set[str] = set()
    pending: list[tuple[str, Any]] = [("", init.conversation_config_override.model_dump())]
    while pending:
        prefix, node = pending.pop()
        if isinstance(node, dict):
            pending.extend((f"{prefix}{key}.", value) for key, value in node.items())
        elif node is not None:
            paths.add(prefix.removesuffix("."))
    return paths


def _tone(hz: float, ms: int, out: WireFormat, start_ms: int = 0) -> bytes:
    """``ms`` of a sine from ``start_ms`` on, made at ``out``'s rate and encoded in it."""
    pcm = sine_pcm16(hz, ms, out.rate, phase=start_ms * out.rate // 1000)
    return convert(pcm, WireFormat("pcm16", out.rate), out)


def _rms(pcm16: bytes) -> float:
    view = memoryview(pcm16).cast("h")
    return (sum(s * s for s in view) / len(view)) ** 0.5 if len(view) else 0.0
