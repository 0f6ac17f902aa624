"""Custom WebSocket agents: the ``telepath`` protocol (ours) and ``twilio`` (Media Streams).

The gateway is the WebSocket client; the trunk's ``custom_headers`` go on the handshake. In
both protocols a normal close (1000) by the agent means "hang up" (as with Twilio streams) and
any other close or a drop is ``ai_provider_error`` — unless the trunk has ``custom_reconnect``
and speaks the telepath protocol: then a drop is followed by a new connection, a ``start`` with
``reconnect`` and the agent's ``ready`` in the same format, and the call goes on
(``ws.py``; ``docs/custom-agent-protocol.md``, "Reconnect policy").
"""

from __future__ import annotations

import asyncio
import binascii
import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

from telepath.bridges.audio import WIDEBAND, AudioConverter, WireFormat, b64_decode, b64_encode
from telepath.bridges.base import (
    AgentAudio,
    AgentClear,
    AgentConnected,
    AgentError,
    AgentEvent,
    AgentHangup,
    AgentMark,
    AgentTranscript,
    AgentTransfer,
    BridgeConnectError,
    BridgeError,
    BridgeProtocolError,
    BridgeReason,
    CallMetadata,
    Codec,
    CustomConfig,
    PlayoutProgress,
    ProviderError,
)
from telepath.bridges.custom import events as ev
from telepath.bridges.ws import WebSocketBridge
from telepath.bridges.ws_socket import MessageSocket

__all__ = ["TelepathAgentBridge", "TwilioStreamBridge"]

logger = logging.getLogger(__name__)

FRAME_MS = 20
#: How far a Twilio ``media.timestamp`` may stray from the clock before it follows the clock
#: (``TwilioStreamBridge._audio_message``): more than network jitter and the odd loop stall,
#: less than a hold or RTP that stopped.
MEDIA_CLOCK_SLACK_MS = 100


def _b64decode(text: str) -> bytes:
    try:
        return b64_decode(text)
    except binascii.Error:
        raise BridgeProtocolError("malformed audio payload: not base64") from None


class _CustomBridge(WebSocketBridge):
    provider = "custom"

    def __init__(self, config: CustomConfig, *, connect_timeout_s: float = 10.0) -> None:
        super().__init__(connect_timeout_s=connect_timeout_s)
        self.config = config
        self._converter: AudioConverter | None = None
        self._sent_ms = 0

    async def _connect(
        self, url: str, headers: Mapping[str, str] | None, timeout_s: float
    ) -> MessageSocket:
        """Every dial, the first and a reconnect's: a ``ws://`` endpoint only while insecure
        agent URLs are allowed. The setting was checked only when the trunk was saved, and a
        trunk made while it was on went on being dialled in cleartext, its custom headers
        (an ``Authorization``) and all, after it was turned off."""
        if not self.config.allow_insecure and urlsplit(url).scheme.lower() == "ws":
            # Not the URL (its path or query may hold a token), nor the headers.
            logger.warning(
                "custom bridge: the agent endpoint is ws:// (cleartext) and "
                "TELEPATH_ALLOW_INSECURE_AGENT_URLS is off: not dialled"
            )
            raise BridgeConnectError(
                "agent URL is ws:// and insecure agent URLs are not allowed",
                retryable=False,
                code="insecure_url",
            )
        return await super()._connect(url, headers, timeout_s)

    def _on_remote_close(self, code: int | None, reason: str) -> AgentEvent:
        if code == 1000:
            return AgentHangup(BridgeReason.AGENT_HANGUP)
        return super()._on_remote_close(code, reason)

    def _clear(self) -> None:
        """A barge-in: the audio after it is a new turn, begun on a whole sample of its own."""
        if self._converter is not None:
            self._converter.restart_from_agent()

    def _decode_audio(self, payload_b64: str | None) -> bytes | None:
        """Fast path: agent audio in the call's codec, or None to leave it to the parser."""
        if payload_b64 is None or self._converter is None:
            return None
        try:
            data = b64_decode(payload_b64)
        except binascii.Error:
            return None  # the parser's path reports it
        return self._converter.from_agent(data)


class TelepathAgentBridge(_CustomBridge):
    """Bridge speaking the ``telepath`` custom-agent protocol, version 1."""

    accepts_wideband = True  # an agent that chose pcm16 at 16 kHz hears a G.722 caller in full

    def __init__(self, config: CustomConfig, *, connect_timeout_s: float = 10.0) -> None:
        super().__init__(config, connect_timeout_s=connect_timeout_s)
        self._offered: list[ev.MediaFormat] = []
        self._codec_name: Codec = "pcmu"
        self._wideband = False
        self._caller_bytes_per_ms = 8.0
        self._ready: asyncio.Future[None] | None = None
        self._seq = 0
        self._transfers = 0
        self._start: ev.Start | None = None
        self._format: ev.MediaFormat | None = None
        self.reconnect_s = config.reconnect_s

    async def start(self, meta: CallMetadata, playout: PlayoutProgress | None = None) -> None:
        """Connect, send ``start`` and wait for the agent's ``ready``."""
        law = "ulaw" if meta.codec == "pcmu" else "alaw"
        other = "alaw" if law == "ulaw" else "ulaw"
        # Best first (docs/custom-agent-protocol.md): the call's own audio needs no conversion.
        # A G.711 call's is its law; a wideband (G.722) call's is 16 kHz PCM16, which also
        # keeps its 50-7,000 Hz, then 8 kHz PCM16 (a resample), then a law (and its coding).
        narrow = ev.MediaFormat(encoding="pcm16", sample_rate=8000)
        wide = ev.MediaFormat(encoding="pcm16", sample_rate=16000)
        laws = [ev.MediaFormat(encoding=law), ev.MediaFormat(encoding=other)]
        if meta.wideband:
            self._offered = [wide, narrow, *laws]
        else:
            self._offered = [laws[0], narrow, wide, laws[1]]
        self._codec_name = meta.codec
        self._wideband = meta.wideband
        self._caller_bytes_per_ms = WIDEBAND.bytes_per_ms if meta.wideband else 8.0
        self._ready = asyncio.get_running_loop().create_future()
        self._ready.add_done_callback(_retrieve)
        await self._open(self.config.endpoint, self.config.headers)
        call = ev.CallInfo(
            call_id=meta.call_id,
            trunk_id=meta.trunk_id,
            caller=meta.caller,
            called=meta.called,
            codec=meta.codec,
            sip_call_id=meta.sip_call_id,
            sip_headers=meta.sip_headers or None,
        )
        start = ev.Start(call=call, system_prompt=meta.system_prompt, media_formats=self._offered)
        await self._send(start.to_json())
        self._start = start  # sent: a stop may follow it
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), self.connect_timeout_s)
        except TimeoutError:
            await self._fail_start(
                BridgeConnectError("agent sent no ready", retryable=True, code="timeout")
            )
        except BridgeError as err:
            await self._fail_start(err)

    def _audio_message(self, payload: bytes) -> str | None:
        """Caller audio as an ``audio`` message in the negotiated format."""
        if self._converter is None:
            return None
        self._seq += 1
        data = self._converter.to_agent(payload)
        text = ev.gateway_audio_json(self._seq, self._sent_ms, b64_encode(data))
        self._sent_ms += round(len(payload) / self._caller_bytes_per_ms)
        return text

    def _audio_now(self, text: str) -> bytes | None:
        return self._decode_audio(ev.agent_audio_payload(text))

    async def send_dtmf(self, digit: str) -> None:
        """Send a ``dtmf`` message."""
        await self._send(ev.Dtmf(digit=digit).to_json())

    async def notify_mark(self, name: str) -> None:
        """Echo a ``mark`` the agent placed, now played (or cleared)."""
        await self._send(ev.Mark(name=name).to_json())

    async def send_transfer_result(
        self, request_id: str, ok: bool, detail: str | None = None, *, ending: bool = False
    ) -> None:
        """Send ``transfer_result`` (``ending`` or not: the agent decides what it does next)."""
        result = ev.TransferResult(request_id=request_id, ok=ok, detail=detail)
        await self._send(result.to_json())

    async def _goodbye(self, reason: BridgeReason) -> None:
        if self._start is not None:  # never a stop without its start (the protocol's order)
            await self._send(ev.Stop(reason=reason.value).to_json())

    async def _handle_text(self, text: str) -> None:
        message = ev.parse_agent_message(text)
        match message:
            case ev.AgentAudioMessage():
                if self._converter is None:
                    raise BridgeProtocolError("audio before ready")
                payload = self._converter.from_agent(_b64decode(message.payload))
                if payload:
                    await self._emit(AgentAudio(payload))
            case ev.Ready():
                await self._on_ready(message)
            case ev.Mark():
                await self._emit(AgentMark(message.name))
            case ev.Clear():
                self._clear()
                await self._emit(AgentClear())
            case ev.Hangup():
                self._finish(AgentHangup(BridgeReason.AGENT_HANGUP))
            case ev.Transfer():
                self._transfers += 1
                request_id = message.request_id or f"transfer-{self._transfers}"
                await self._emit(AgentTransfer(message.target, request_id))
            case ev.Transcript():
                await self._emit(AgentTranscript(message.role, message.text))
            case ev.AgentErrorMessage():
                raise ProviderError("agent reported an error", code=message.code)

    async def _on_ready(self, message: ev.Ready) -> None:
        if self._ready is None or self._ready.done():
            raise BridgeProtocolError("ready sent twice")
        if message.media_format not in self._offered:
            raise BridgeProtocolError("agent chose a media format that was not offered")
        fmt = message.media_format
        wire = WireFormat(fmt.encoding, fmt.sample_rate)
        self._converter = AudioConverter(self._codec_name, wire, wideband=self._wideband)
        self._format = fmt
        self._ready.set_result(None)
        self._established = True
        await self._emit(AgentConnected(self.provider))

    async def _resume(self, attempt: int) -> None:
        """The call's ``start`` again, with ``reconnect``; the agent answers ``ready`` in the
        format it chose the first time (the audio on both sides is already in it)."""
        ws, start = self._ws, self._start
        assert ws is not None and start is not None
        await ws.send(start.model_copy(update={"reconnect": attempt}).to_json())
        message = ev.parse_agent_message(await ws.recv())
        if not isinstance(message, ev.Ready):
            raise BridgeProtocolError("the agent's first message after reconnecting is not ready")
        if message.media_format != self._format:
            raise BridgeProtocolError("the agent changed its media format on reconnecting")
        self._clear()  # the old connection's last audio may have ended mid-sample

    def _on_remote_close(self, code: int | None, reason: str) -> AgentEvent:
        if self._ready is not None and not self._ready.done():
            return AgentError(
                BridgeReason.CONNECTION_FAILED,
                "agent closed before ready",
                code != 1000,
                str(code) if code is not None else "1006",
            )
        return super()._on_remote_close(code, reason)

    def _finish(self, event: AgentEvent) -> None:
        ready = self._ready
        if ready is not None and not ready.done():
            if isinstance(event, AgentError):
                err: BridgeError = BridgeError(
                    event.message, reason=event.reason, retryable=event.retryable, code=event.code
                )
            else:
                err = BridgeConnectError("agent ended during setup", retryable=False)
            ready.set_exception(err)
        super()._finish(event)


def _sid(prefix: str) -> str:
    """A Twilio-looking SID: two letters and 32 hex digits."""
    return prefix + secrets.token_hex(16)


class TwilioStreamBridge(_CustomBridge):
    """Bridge playing Twilio's role in a bidirectional Media Stream."""

    def __init__(self, config: CustomConfig, *, connect_timeout_s: float = 10.0) -> None:
        super().__init__(config, connect_timeout_s=connect_timeout_s)
        self.stream_sid = _sid("MZ")
        self._sid_json = json.dumps(self.stream_sid)
        self.call_sid = _sid("CA")
        self.account_sid = _sid("AC")
        self._sequence = 0
        self._chunk = 0
        #: Monotonic seconds (replaceable in tests); the stream starts when ``start`` is sent.
        self.clock: Callable[[], float] = time.monotonic
        self._started_at = self.clock()

    def _next_sequence(self) -> str:
        self._sequence += 1
        return str(self._sequence)

    async def start(self, meta: CallMetadata, playout: PlayoutProgress | None = None) -> None:
        """Connect and send ``connected`` and ``start`` (customParameters carry the call)."""
        self._converter = AudioConverter(meta.codec, WireFormat("ulaw", 8000))
        await self._open(self.config.endpoint, self.config.headers)
        await self._emit(AgentConnected(self.provider, self.stream_sid))
        params = {"From": meta.caller, "To": meta.called, "CallId": meta.call_id}
        params["TrunkId"] = meta.trunk_id
        if meta.sip_call_id:
            params["SipCallId"] = meta.sip_call_id
        if meta.system_prompt:
            params["SystemPrompt"] = meta.system_prompt
        for name, value in meta.sip_headers.items():
            params.setdefault(name, value)  # never in place of the call's own parameters
        info = ev.TwStartInfo(
            accountSid=self.account_sid,
            streamSid=self.stream_sid,
            callSid=self.call_sid,
            customParameters=params,
        )
        await self._send(ev.TwConnected().to_json())
        sequence = self._next_sequence()
        start = ev.TwStart(sequenceNumber=sequence, start=info, streamSid=self.stream_sid)
        self._started_at = self.clock()
        await self._send(start.to_json())

    def _audio_message(self, payload: bytes) -> str | None:
        """A ``media`` message (μ-law 8 kHz; A-law calls are converted)."""
        if self._converter is None:
            return None
        self._chunk += 1
        data = b64_encode(self._converter.to_agent(payload))
        # media.timestamp is ms since the stream started (presentation time, providers.md
        # §4.2). The audio counted so far gives exact 20 ms steps through jitter, but not the
        # time nothing came (a hold): it follows the clock once it falls more than the slack
        # behind, and waits (equal stamps) once a burst puts it that far ahead. Never back.
        timestamp = self._sent_ms
        elapsed_ms = int((self.clock() - self._started_at) * 1000)
        if timestamp < elapsed_ms - MEDIA_CLOCK_SLACK_MS:
            timestamp = elapsed_ms
        elif timestamp > elapsed_ms + MEDIA_CLOCK_SLACK_MS:
            timestamp = elapsed_ms + MEDIA_CLOCK_SLACK_MS
        self._sent_ms = timestamp + round(len(payload) / 8)
        # TwMedia(...).to_json() byte for byte, without a model per frame (a unit test holds
        # them together); the stream SID is ours and JSON-escaped once.
        return (
            f'{{"event":"media","sequenceNumber":"{self._next_sequence()}","media":'
            f'{{"track":"inbound","chunk":"{self._chunk}","timestamp":"{timestamp}",'
            f'"payload":"{data}"}},"streamSid":{self._sid_json}}}'
        )

    def _audio_now(self, text: str) -> bytes | None:
        return self._decode_audio(ev.twilio_media_payload(text))

    async def send_dtmf(self, digit: str) -> None:
        """Send a ``dtmf`` message."""
        message = ev.TwDtmf(
            streamSid=self.stream_sid,
            sequenceNumber=self._next_sequence(),
            dtmf=ev.TwDtmfInfo(digit=digit),
        )
        await self._send(message.to_json())

    async def notify_mark(self, name: str) -> None:
        """Echo a ``mark`` once playout reached it (or ``clear`` dropped it)."""
        message = ev.TwMark(
            sequenceNumber=self._next_sequence(),
            streamSid=self.stream_sid,
            mark=ev.TwMarkInfo(name=name),
        )
        await self._send(message.to_json())

    async def _goodbye(self, reason: BridgeReason) -> None:
        stop = ev.TwStop(
            sequenceNumber=self._next_sequence(),
            stop=ev.TwStopInfo(accountSid=self.account_sid, callSid=self.call_sid),
            streamSid=self.stream_sid,
        )
        await self._send(stop.to_json())

    async def _handle_binary(self, data: bytes) -> None:
        return None  # Twilio ignores binary frames

    async def _handle_text(self, text: str) -> None:
        message = ev.parse_twilio_agent_event(text)
        match message:
            case ev.TwAgentMedia():
                assert self._converter is not None
                payload = self._converter.from_agent(_b64decode(message.media.payload))
                if payload:
                    await self._emit(AgentAudio(payload))
            case ev.TwMark():
                await self._emit(AgentMark(message.mark.name))
            case ev.TwClear():
                self._clear()
                await self._emit(AgentClear())
            case None:
                pass


def _retrieve(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()
