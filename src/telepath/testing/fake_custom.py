"""Fake custom agents: one speaking the ``telepath`` protocol, one a Twilio Media Streams agent.

Both are WebSocket *servers* (the gateway dials them). They validate what the gateway sends:
``FakeTelepathAgent`` parses every frame strictly with ``telepath.bridges.custom.events`` and
requires ``start`` first; ``FakeTwilioAgent`` checks each message's keys against Twilio's
documentation (and the keys and values inside them: SIDs, ``chunk`` counting from "1",
string timestamps, tracks), ``connected`` then ``start`` first, and ``sequenceNumber`` counting
from "1".
Violations land in ``protocol_errors``.

Recorded: ``received`` (decoded JSON), ``caller_audio`` (decoded to the negotiated format),
``digits``, ``mark_echoes``, ``stops``, ``transfer_results`` (telepath), ``handshakes``.

Behaviour switches (both unless noted):

* ``agent``: ``"tone"`` (``response_ms`` of ``tone_hz`` after start, then a mark named
  ``"end-of-greeting"``), ``"echo"`` (caller audio straight back), ``"silent"``.
* ``clear_after_ms``: send ``clear`` after that much tone audio (and stop the tone).
* ``hangup``: after the greeting, telepath ``hangup`` / Twilio close 1000.
* ``transfer_to`` (telepath): after the greeting, a ``transfer`` request (with ``hangup``,
  the agent hangs up when the ``transfer_result`` arrives).
* ``media_format`` (telepath): the format chosen in ``ready``; ``no_ready=True`` never answers.
* ``after_start``: ``"error"`` (telepath ``error`` message), ``"drop"``, ``"malformed"``
  (not JSON), ``"invalid-utf8"`` (a text frame that is no UTF-8), ``"close"`` (1011),
  ``"close-normal"`` (1000).
* ``drop_after_ms`` (telepath): the first connection is aborted that long after ``ready``
  (later ones, a reconnect's, are not): ``starts`` keeps every ``start``.
* ``max_sessions``: handshakes past that many are answered 503.
* ``reject_status`` / ``handshake_delay_s``: see ``FakeAgentServer``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from typing import Any, Literal

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from telepath.bridges.audio import WireFormat, convert
from telepath.bridges.base import BridgeProtocolError
from telepath.bridges.custom import events as ev
from telepath.testing.tones import sine_pcm16
from telepath.testing.ws_server import FakeAgentServer, json_response

__all__ = ["FakeTelepathAgent", "FakeTwilioAgent"]

CHUNK_MS = 100
GREETING_MARK = "end-of-greeting"
TWILIO_KEYS = {
    "connected": {"event", "protocol", "version"},
    "start": {"event", "sequenceNumber", "start", "streamSid"},
    "media": {"event", "sequenceNumber", "media", "streamSid"},
    "dtmf": {"event", "streamSid", "sequenceNumber", "dtmf"},
    "mark": {"event", "sequenceNumber", "streamSid", "mark"},
    "stop": {"event", "sequenceNumber", "stop", "streamSid"},
}
#: The keys inside each message's object (providers.md §4.2).
TWILIO_INNER_KEYS = {
    "start": {"accountSid", "streamSid", "callSid", "tracks", "customParameters", "mediaFormat"},
    "media": {"track", "chunk", "timestamp", "payload"},
    "dtmf": {"track", "digit"},
    "mark": {"name"},
    "stop": {"accountSid", "callSid"},
}
TWILIO_SID = re.compile(r"[A-Z]{2}[0-9a-f]{32}")


class _FakeCustom(FakeAgentServer):
    ws_path = "/agent"

    def __init__(
        self,
        *,
        agent: Literal["tone", "echo", "silent"] = "tone",
        tone_hz: float = 440.0,
        response_ms: int = 1000,
        clear_after_ms: int | None = None,
        hangup: bool = False,
        after_start: str | None = None,
        reject_status: int | None = None,
        handshake_delay_s: float = 0.0,
        max_sessions: int | None = None,
    ) -> None:
        super().__init__(reject_status=reject_status, handshake_delay_s=handshake_delay_s)
        self.max_sessions = max_sessions
        self.agent = agent
        self.tone_hz = tone_hz
        self.response_ms = response_ms
        self.clear_after_ms = clear_after_ms
        self.hangup = hangup
        self.after_start = after_start
        self.received: list[dict[str, Any]] = []
        self.caller_audio = bytearray()
        self.digits: list[str] = []
        self.mark_echoes: list[str] = []
        self.stops: list[dict[str, Any]] = []
        self.wire = WireFormat("ulaw", 8000)

    def check_handshake(self, request: Request) -> Response | None:
        """503 past ``max_sessions`` handshakes."""
        if self.max_sessions is not None and len(self.handshakes) > self.max_sessions:
            return json_response(503, {"error": "no more sessions"})
        return None

    async def _after_start(self, ws: ServerConnection) -> bool:
        match self.after_start:
            case "drop":
                self.drop(ws)
                return True
            case "malformed":
                await ws.send("{oops")
            case "invalid-utf8":  # a text frame that is no UTF-8 (RFC 6455 §8.1: fail, 1007)
                ws.protocol.send_text(b'{"type":"mark","name":"\xff"}')
                ws.send_data()
            case "close":
                await ws.close(1011, "internal error")
                return True
            case "close-normal":
                await ws.close(1000)
                return True
        return False

    async def _greet(self, ws: ServerConnection) -> bool:
        """Play the tone; True if a ``clear`` cut it short."""
        for sent_ms in range(0, self.response_ms, CHUNK_MS):
            if self.clear_after_ms is not None and sent_ms >= self.clear_after_ms:
                await self.send_clear(ws)
                return True
            # Made at the wire's own rate (a 6 kHz tone needs 16 kHz), then encoded.
            rate = self.wire.rate
            pcm = sine_pcm16(self.tone_hz, CHUNK_MS, rate, phase=sent_ms * rate // 1000)
            await self.send_audio(ws, convert(pcm, WireFormat("pcm16", rate), self.wire))
            await asyncio.sleep(0)
        await self.send_mark(ws, GREETING_MARK)
        return False

    async def send_audio(self, ws: ServerConnection, data: bytes) -> None:
        """Send agent audio in the protocol's framing."""
        raise NotImplementedError

    async def send_clear(self, ws: ServerConnection) -> None:
        """Send ``clear``."""
        raise NotImplementedError

    async def send_mark(self, ws: ServerConnection, name: str) -> None:
        """Send a mark."""
        raise NotImplementedError


class FakeTelepathAgent(_FakeCustom):
    """A ``telepath``-protocol agent (see the module docstring for switches)."""

    def __init__(
        self,
        *,
        media_format: ev.MediaFormat | None = None,
        no_ready: bool = False,
        transfer_to: str | None = None,
        drop_after_ms: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.media_format = media_format
        self.no_ready = no_ready
        self.transfer_to = transfer_to
        self.drop_after_ms = drop_after_ms
        self.transfer_results: list[dict[str, Any]] = []
        self.start_message: ev.Start | None = None
        self.starts: list[ev.Start] = []

    async def send_audio(self, ws: ServerConnection, data: bytes) -> None:
        """Send an ``audio`` message."""
        message = ev.AgentAudioMessage(payload=base64.b64encode(data).decode("ascii"))
        await ws.send(message.to_json())

    async def send_clear(self, ws: ServerConnection) -> None:
        """Send ``clear``."""
        await ws.send(ev.Clear().to_json())

    async def send_mark(self, ws: ServerConnection, name: str) -> None:
        """Send a ``mark``."""
        await ws.send(ev.Mark(name=name).to_json())

    async def handle(self, ws: ServerConnection) -> None:
        """Run one call (each session of the fake is one call: its own start comes first)."""
        started = False
        async for raw in ws:
            try:
                message = ev.parse_gateway_message(raw)
            except BridgeProtocolError as exc:
                self.violation(str(exc))
                continue
            self.received.append(json.loads(raw))
            if started == isinstance(message, ev.Start):
                self.violation("start must come first, once")
            match message:
                case ev.Start():
                    started = True
                    self.start_message = message
                    self.starts.append(message)
                    if await self._on_start(ws, message):
                        return
                case ev.GatewayAudio():
                    data = base64.b64decode(message.payload)
                    self.caller_audio += data
                    if self.agent == "echo":
                        await self.send_audio(ws, data)
                case ev.Dtmf():
                    self.digits.append(message.digit)
                case ev.Mark():
                    self.mark_echoes.append(message.name)
                case ev.TransferResult():
                    result = message.model_dump(exclude_none=True)
                    self.transfer_results.append(result)
                    await self._on_transfer_result(ws, result)
                case ev.Stop():
                    self.stops.append(message.model_dump())

    async def _on_transfer_result(self, ws: ServerConnection, result: dict[str, Any]) -> None:
        """The gateway's answer to a ``transfer`` (with ``hangup``: hang up)."""
        if self.hangup:
            await ws.send(ev.Hangup(reason="transferred").to_json())

    async def _on_start(self, ws: ServerConnection, start: ev.Start) -> bool:
        if self.no_ready:
            return False
        chosen = self.media_format or start.media_formats[0]
        self.wire = WireFormat(chosen.encoding, chosen.sample_rate)
        await ws.send(ev.Ready(media_format=chosen).to_json())
        if self.drop_after_ms is not None and len(self.starts) == 1:
            asyncio.get_running_loop().call_later(self.drop_after_ms / 1000, self.drop, ws)
        if self.after_start == "error":
            await ws.send(
                ev.AgentErrorMessage(message="LLM quota exceeded", code="quota").to_json()
            )
            return False
        if await self._after_start(ws):
            return True
        if self.agent != "tone" or await self._greet(ws):
            return False
        if self.transfer_to is not None:  # hangs up (if asked to) once the result arrives
            # unvalidated: the gateway, not the fake, is the one to judge the target
            transfer = ev.Transfer.model_construct(target=self.transfer_to, request_id="xfer-1")
            await ws.send(transfer.to_json())
        elif self.hangup:
            await ws.send(ev.Hangup(reason="done").to_json())
        return False


class FakeTwilioAgent(_FakeCustom):
    """An agent written for Twilio Media Streams (see the module docstring for switches)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stream_sid: str | None = None
        self.custom_parameters: dict[str, str] = {}
        self.chunks = 0  # media messages received

    async def send_audio(self, ws: ServerConnection, data: bytes) -> None:
        """Send ``media`` exactly as Twilio documents it."""
        payload = base64.b64encode(data).decode("ascii")
        message = {"event": "media", "streamSid": self.stream_sid, "media": {"payload": payload}}
        await ws.send(json.dumps(message))

    async def send_clear(self, ws: ServerConnection) -> None:
        """Send ``clear``."""
        await ws.send(json.dumps({"event": "clear", "streamSid": self.stream_sid}))

    async def send_mark(self, ws: ServerConnection, name: str) -> None:
        """Send ``mark``."""
        mark = {"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}}
        await ws.send(json.dumps(mark))

    def _check(self, data: dict[str, Any]) -> None:
        kind = data.get("event")
        if not isinstance(kind, str) or kind not in TWILIO_KEYS:
            self.violation(f"unknown twilio event {kind!r}")
            return
        expected = TWILIO_KEYS[kind]
        if set(data) != expected:
            self.violation(f"{kind}: keys {sorted(data)} != {sorted(expected)}")
        count = len(self.received)
        if (count == 0) != (kind == "connected") or (count == 1) != (kind == "start"):
            self.violation("connected then start must come first")
        if kind != "connected" and data.get("sequenceNumber") != str(count):
            self.violation(f"{kind}: sequenceNumber {data.get('sequenceNumber')!r} != {count}")
        if kind not in ("connected", "start") and data.get("streamSid") != self.stream_sid:
            self.violation(f"{kind}: streamSid mismatch")
        model = ev.TWILIO_GATEWAY_EVENTS[kind]
        try:
            model.model_validate(data)
        except ValueError:
            self.violation(f"{kind}: wrong shape")
        inner = data.get(kind)
        if kind in TWILIO_INNER_KEYS and (
            not isinstance(inner, dict) or set(inner) != TWILIO_INNER_KEYS[kind]
        ):
            self.violation(f"{kind}: inner keys {sorted(inner or {})} != documented")
        elif isinstance(inner, dict):
            self._check_inner(kind, inner, data)

    def _check_inner(self, kind: str, inner: dict[str, Any], data: dict[str, Any]) -> None:
        """Values Twilio documents (providers.md §4.2): strings, SIDs, counters, tracks."""
        sids = {k: v for k, v in inner.items() if k.endswith("Sid")}
        if kind != "connected":
            sids["streamSid"] = data.get("streamSid")
        if not all(isinstance(v, str) and TWILIO_SID.fullmatch(v) for v in sids.values()):
            self.violation(f"{kind}: SIDs are not two letters and 32 hex digits")
        if kind == "start":
            params = inner["customParameters"]
            if inner["tracks"] != ["inbound"] or inner["streamSid"] != data["streamSid"]:
                self.violation("start: tracks or streamSid")
            if not isinstance(params, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in params.items()
            ):
                self.violation("start: customParameters are not strings")
        elif kind == "media":
            self.chunks += 1
            if inner["track"] != "inbound" or inner["chunk"] != str(self.chunks):
                self.violation(f"media: track {inner['track']!r} chunk {inner['chunk']!r}")
            stamp = inner["timestamp"]
            if not (isinstance(stamp, str) and stamp.isascii() and stamp.isdigit()):
                self.violation(f"media: timestamp {stamp!r} is not a string of digits")
        elif kind == "dtmf" and inner["track"] != "inbound_track":
            self.violation(f"dtmf: track {inner['track']!r}")

    async def handle(self, ws: ServerConnection) -> None:
        """Run one stream."""
        async for raw in ws:
            data = json.loads(raw)
            self._check(data)
            self.received.append(data)
            match data.get("event"):
                case "start":
                    self.stream_sid = data["streamSid"]
                    start = data["start"]
                    self.custom_parameters = dict(start["customParameters"])
                    if start["mediaFormat"] != {
                        "encoding": "audio/x-mulaw",
                        "sampleRate": 8000,
                        "channels": 1,
                    }:
                        self.violation("mediaFormat is not audio/x-mulaw 8000 mono")
                    if await self._after_start(ws):
                        return
                    if self.agent == "tone" and not await self._greet(ws) and self.hangup:
                        await ws.close(1000)
                        return
                case "media":
                    chunk = base64.b64decode(data["media"]["payload"])
                    self.caller_audio += chunk
                    if self.agent == "echo":
                        await self.send_audio(ws, chunk)
                case "dtmf":
                    self.digits.append(data["dtmf"]["digit"])
                case "mark":
                    self.mark_echoes.append(data["mark"]["name"])
                case "stop":
                    self.stops.append(data)
