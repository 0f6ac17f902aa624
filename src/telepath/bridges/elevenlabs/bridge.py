"""ElevenLabs Conversational AI bridge.

Start: with an API key, ``GET {api_base}/v1/convai/conversation/get-signed-url?agent_id=...``
(header ``xi-api-key``) and dial the signed URL; without one (public agent) dial
``{ws_url}?agent_id=...``. The first frame is ``conversation_initiation_client_data`` with the
system prompt as ``agent.prompt.prompt`` override (only when the trunk sets one; ElevenLabs
refuses it unless the agent enables that override, which ``api/provider_checks.py`` checks when
the trunk is saved) and the call's numbers as dynamic variables ``caller_number``,
``called_number``, ``call_id``. The agent's audio formats come from
``conversation_initiation_metadata``: ``ulaw_8000`` passes through for μ-law calls, anything else
is converted (``bridges.audio``).

Barge-in: ``interruption`` emits ``AgentClear`` and drops every later ``audio`` whose
``event_id`` is not newer than the interruption's. ``ping`` is answered with ``pong``.

Max duration: at the conversation's ``max_duration_seconds`` ElevenLabs sends ``error``
``max_duration_exceeded`` (code 1000), maybe after the agent's goodbye, then closes 1000
(providers.md §3.6). That error is no failure: the close after it is ``AgentHangup`` with
``SESSION_LIMIT``, and call control plays the goodbye out first.

Tools: client tools ``transfer_call`` (``{"target": "tel:..."}``) and ``end_call`` are run by
the gateway; the agent's system ``end_call`` tool closes the socket with 1000, reported as
``AgentHangup``. DTMF is sent as a ``contextual_update``.
"""

from __future__ import annotations

import asyncio
import binascii
import json
import logging
from urllib.parse import urlencode

import aiohttp
from websockets.exceptions import ConnectionClosed

from telepath import __version__
from telepath.bridges.audio import AudioConverter, b64_decode, b64_encode
from telepath.bridges.base import (
    AgentAudio,
    AgentClear,
    AgentConnected,
    AgentError,
    AgentEvent,
    AgentHangup,
    AgentTranscript,
    AgentTransfer,
    BridgeAuthError,
    BridgeConnectError,
    BridgeError,
    BridgeProtocolError,
    BridgeReason,
    CallMetadata,
    Codec,
    ElevenLabsConfig,
    PlayoutProgress,
    ProviderError,
)
from telepath.bridges.elevenlabs import events as ev
from telepath.bridges.http_client import new_session, read_body
from telepath.bridges.ws import WebSocketBridge, stop_task

__all__ = ["ElevenLabsBridge"]

logger = logging.getLogger(__name__)

TRANSFER_TOOLS = frozenset({"transfer_call", "transfer"})
HANGUP_TOOLS = frozenset({"end_call", "hangup"})
#: ``error_type`` of the error that ends a conversation at ``max_duration_seconds``.
MAX_DURATION_ERROR = "max_duration_exceeded"
# ElevenLabs ends a conversation after 60 s without user input (close 1002, providers.md §3.6);
# a caller on hold sends no audio: ``user_activity`` after this long without a frame.
USER_ACTIVITY_S = 20.0


class ElevenLabsBridge(WebSocketBridge):
    """Bridge to an ElevenLabs agent conversation.

    Args:
        config: the trunk's ElevenLabs settings.
        connect_timeout_s: bound on the signed-URL request, the upgrade and the metadata wait.
    """

    provider = "elevenlabs"
    accepts_wideband = True  # a pcm_16000 agent hears a G.722 caller in full

    def __init__(self, config: ElevenLabsConfig, *, connect_timeout_s: float = 10.0) -> None:
        super().__init__(connect_timeout_s=connect_timeout_s)
        self.config = config
        self._converter: AudioConverter | None = None
        self._ready: asyncio.Future[str] | None = None
        self._last_interrupt = -1
        self._max_duration = False  # error max_duration_exceeded seen: the close ends the session
        self._meta_codec: Codec = "pcmu"
        self._wideband = False
        self.conversation_id: str | None = None
        self.user_activity_s = USER_ACTIVITY_S
        self._frames_sent = 0  # caller frames, counted for the user_activity keep-alive
        self._activity: asyncio.Task[None] | None = None

    # --- AgentBridge -----------------------------------------------------------------------

    async def start(self, meta: CallMetadata, playout: PlayoutProgress | None = None) -> None:
        """Get a signed URL, connect, send the initiation data and wait for the metadata."""
        url = await self._conversation_url()
        self._meta_codec = meta.codec
        self._wideband = meta.wideband
        self._ready = asyncio.get_running_loop().create_future()
        self._ready.add_done_callback(_retrieve)
        await self._open(url)
        await self._send(self._initiation(meta).to_json())
        try:
            conversation_id = await asyncio.wait_for(
                asyncio.shield(self._ready), self.connect_timeout_s
            )
        except TimeoutError:
            await self._fail_start(
                BridgeConnectError("no conversation metadata", retryable=True, code="timeout")
            )
        except BridgeError as err:
            await self._fail_start(err)
        self.conversation_id = conversation_id
        self._activity = asyncio.get_running_loop().create_task(
            self._keep_active(), name="elevenlabs-user-activity"
        )

    async def _keep_active(self) -> None:
        """``user_activity`` whenever no caller frame went for ``user_activity_s`` (a hold, RTP
        that stopped): without input for 60 s ElevenLabs would end the conversation."""
        seen = self._frames_sent
        while self._terminal is None and not self._closing:
            await asyncio.sleep(self.user_activity_s)
            if self._terminal is not None or self._closing or self._ws is None:
                return
            if self._frames_sent == seen:
                try:
                    await self._send(ev.UserActivity().to_json())
                except (ConnectionClosed, OSError):
                    return  # the read loop reports the close
            seen = self._frames_sent

    async def close(self, reason: BridgeReason = BridgeReason.CALLER_HANGUP) -> None:
        """As :meth:`WebSocketBridge.close`, the keep-alive stopped first."""
        activity, self._activity = self._activity, None
        if activity is not None:
            await stop_task(activity)
        await super().close(reason)

    def _audio_message(self, payload: bytes) -> str | None:
        """One caller frame as ``user_audio_chunk`` in the agent's input format."""
        if self._converter is None:
            return None
        self._frames_sent += 1
        chunk = b64_encode(self._converter.to_agent(payload))
        return ev.user_audio_chunk_json(chunk)

    async def send_dtmf(self, digit: str) -> None:
        """Tell the agent about a key press (``contextual_update``)."""
        text = f"The caller pressed the {digit} key on the phone keypad."
        await self._send(ev.ContextualUpdate(text=text).to_json())

    async def send_transfer_result(
        self, request_id: str, ok: bool, detail: str | None = None, *, ending: bool = False
    ) -> None:
        """Answer the ``transfer_call`` client tool (``ending`` too: the conversation's
        ``stop`` follows, and a tool result asks for no separately billed response)."""
        result = detail or ("transferred" if ok else "transfer failed")
        message = ev.ClientToolResult(tool_call_id=request_id, result=result, is_error=not ok)
        await self._send(message.to_json())

    # --- setup -----------------------------------------------------------------------------

    async def _conversation_url(self) -> str:
        cfg = self.config
        if cfg.api_key is None:
            return f"{cfg.ws_url}?{urlencode({'agent_id': cfg.agent_id})}"
        endpoint = f"{cfg.api_base.rstrip('/')}/v1/convai/conversation/get-signed-url"
        params, headers = {"agent_id": cfg.agent_id}, {"xi-api-key": cfg.api_key}
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                if cfg.http is not None:  # the gateway's: a kept-alive connection, no handshakes
                    status, body = await _get(cfg.http.get(), endpoint, params, headers)
                else:
                    async with new_session(limit=1) as session:
                        status, body = await _get(session, endpoint, params, headers)
        except TimeoutError:
            err = BridgeConnectError("signed URL request timed out", retryable=True, code="timeout")
            self._finish(err.to_event())
            raise err from None
        except (aiohttp.ClientError, OSError):
            err = BridgeConnectError(
                "ElevenLabs API unreachable", retryable=True, code="unreachable"
            )
            self._finish(err.to_event())
            raise err from None
        if status != 200:
            if status in (401, 403, 404, 422):
                err = BridgeAuthError(f"signed URL refused (HTTP {status})", code=str(status))
            else:
                retryable = status == 429 or status >= 500
                err = BridgeConnectError(
                    f"signed URL failed (HTTP {status})", retryable=retryable, code=str(status)
                )
            logger.warning("elevenlabs bridge: signed URL request failed (HTTP %d)", status)
            self._finish(err.to_event())
            raise err
        if body is None:
            err = BridgeConnectError("signed URL response too long", retryable=False)
            self._finish(err.to_event())
            raise err
        try:
            signed = json.loads(body)["signed_url"]
        except (ValueError, KeyError, TypeError, RecursionError):  # (nested too deep)
            signed = None
        if not isinstance(signed, str):
            err = BridgeConnectError("signed URL response malformed", retryable=False)
            self._finish(err.to_event())
            raise err
        return signed

    def _initiation(self, meta: CallMetadata) -> ev.ConversationInitiationClientData:
        override = None
        if meta.system_prompt:
            agent = ev.AgentOverride(prompt=ev.PromptOverride(prompt=meta.system_prompt))
            override = ev.ConfigOverride(agent=agent)
        variables: dict[str, str | int | float | bool] = {
            "caller_number": meta.caller,
            "called_number": meta.called,
            "call_id": meta.call_id,
        }
        for name, value in meta.sip_headers.items():  # X-Customer-Id -> sip_x_customer_id
            variables["sip_" + name.lower().replace("-", "_")] = value
        return ev.ConversationInitiationClientData(
            conversation_config_override=override,
            dynamic_variables=variables,
            source_info=ev.SourceInfo(source="telepath", version=__version__),
        )

    # --- incoming --------------------------------------------------------------------------

    async def _handle_text(self, text: str) -> None:
        message = ev.parse_server_message(text)
        match message:
            case ev.Audio():
                await self._on_audio(message.audio_event)
            case ev.Interruption():
                self._last_interrupt = max(
                    self._last_interrupt, message.interruption_event.event_id
                )
                if self._converter is not None:  # the next turn starts on a whole sample
                    self._converter.restart_from_agent()
                await self._emit(AgentClear())
            case ev.Ping():
                await self._send(ev.Pong(event_id=message.ping_event.event_id).to_json())
            case ev.ConversationInitiationMetadata():
                await self._on_metadata(message.conversation_initiation_metadata_event)
            case ev.AgentResponse():
                await self._emit(
                    AgentTranscript("agent", message.agent_response_event.agent_response)
                )
            case ev.UserTranscript():
                text_ = message.user_transcription_event.user_transcript
                await self._emit(AgentTranscript("caller", text_))
            case ev.ClientToolCall():
                await self._on_tool_call(message.client_tool_call)
            case ev.Error():
                detail = message.error_event
                if detail.error_type == MAX_DURATION_ERROR:
                    logger.info("elevenlabs bridge: conversation reached its maximum duration")
                    self._max_duration = True  # the close that follows ends it
                    return
                raise ProviderError(
                    "ElevenLabs reported an error",
                    retryable=detail.code == 1011,
                    code=detail.error_type or (str(detail.code) if detail.code else None),
                )
            case _:
                pass

    async def _on_metadata(self, meta: ev.InitiationMetadataEvent) -> None:
        if self._ready is None or self._ready.done():
            return
        self._converter = AudioConverter(
            self._meta_codec,
            ev.wire_format(meta.user_input_audio_format),
            ev.wire_format(meta.agent_output_audio_format),
            wideband=self._wideband,
        )
        if not self._converter.passthrough:
            logger.info("elevenlabs bridge: agent audio is not ulaw_8000, converting")
        self._ready.set_result(meta.conversation_id)
        await self._emit(AgentConnected(self.provider, meta.conversation_id))  # before any audio

    async def _on_audio(self, audio: ev.AudioEvent) -> None:
        if audio.event_id <= self._last_interrupt or self._converter is None:
            return  # audio of a turn the caller interrupted
        try:
            data = b64_decode(audio.audio_base_64)
        except binascii.Error:
            raise BridgeProtocolError("malformed audio: not base64") from None
        payload = self._converter.from_agent(data)
        if payload:
            await self._emit(AgentAudio(payload, str(audio.event_id)))

    async def _on_tool_call(self, call: ev.ClientToolCallEvent) -> None:
        if call.tool_name in TRANSFER_TOOLS:
            target = call.parameters.get("target") or call.parameters.get("number")
            # Any string: whether it is a sip, sips or tel URI is call control's check
            # (sip.uri.transfer_target, schemes case-insensitive as RFC 3986 §3.1 and RFC 3261
            # §19.1.4 have them: "TEL:…", "Sip:…"), which answers "invalid transfer target",
            # as for the custom bridge (custom/events.py Transfer).
            if isinstance(target, str):
                await self._emit(AgentTransfer(target, call.tool_call_id))
                return
            await self.send_transfer_result(call.tool_call_id, False, "target must be a URI")
            return
        if call.tool_name in HANGUP_TOOLS:
            result = ev.ClientToolResult(tool_call_id=call.tool_call_id, result="hanging up")
            await self._send(result.to_json())
            self._finish(AgentHangup(BridgeReason.AGENT_HANGUP))
            return
        result = ev.ClientToolResult(
            tool_call_id=call.tool_call_id, result="unknown tool", is_error=True
        )
        await self._send(result.to_json())

    def _on_remote_close(self, code: int | None, reason: str) -> AgentEvent:
        if self._ready is not None and not self._ready.done():
            return AgentError(
                BridgeReason.CONNECTION_FAILED,
                "ElevenLabs closed the conversation during setup",
                code in (None, 1002, 1011),
                str(code) if code is not None else "1006",
            )
        if self._max_duration:  # the close after max_duration_exceeded (1000; a drop ends it too)
            return AgentHangup(BridgeReason.SESSION_LIMIT)
        if code == 1000:
            return AgentHangup(BridgeReason.AGENT_HANGUP)  # the system end_call tool
        if code == 1008:
            return AgentError(BridgeReason.AI_PROVIDER_ERROR, "ElevenLabs refused", False, "1008")
        return super()._on_remote_close(code, reason)

    def _finish(self, event: AgentEvent) -> None:
        ready = self._ready
        if ready is not None and not ready.done():
            if isinstance(event, AgentError):
                err: BridgeError = BridgeError(
                    event.message, reason=event.reason, retryable=event.retryable, code=event.code
                )
            else:
                err = BridgeConnectError("ElevenLabs ended during setup", retryable=False)
            ready.set_exception(err)
        super()._finish(event)


def _retrieve(fut: asyncio.Future[str]) -> None:
    if not fut.cancelled():
        fut.exception()


MAX_ANSWER_BYTES = 64 * 1024  # a signed-URL answer is ~300 bytes


async def _get(
    session: aiohttp.ClientSession, url: str, params: dict[str, str], headers: dict[str, str]
) -> tuple[int, bytes | None]:
    """Status and body of one GET (``None``: longer than ``MAX_ANSWER_BYTES``); redirects are
    not followed."""
    async with session.get(url, params=params, headers=headers, allow_redirects=False) as resp:
        return resp.status, await read_body(resp, MAX_ANSWER_BYTES)
