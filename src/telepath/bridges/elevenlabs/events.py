"""ElevenLabs Conversational AI (Agents Platform) WebSocket messages the gateway uses.

Shapes follow the ElevenLabs SDK (``elevenlabs.conversational_ai.conversation``) and the
agent AsyncAPI contract, as summarised in ``reference/providers.md`` §3. All frames are JSON
text; the caller-audio frame is the only one without ``type``. Client messages forbid unknown
fields; server messages ignore them, and unknown server types are skipped.

API reference: https://elevenlabs.io/docs/agents-platform/api-reference/agents-platform/websocket
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from telepath.bridges.audio import WireFormat
from telepath.bridges.base import BridgeProtocolError

AudioFormat = Literal[
    "pcm_8000", "pcm_16000", "pcm_22050", "pcm_24000", "pcm_44100", "pcm_48000", "ulaw_8000"
]
"""Agent audio formats (``asr.user_input_audio_format``, ``tts.agent_output_audio_format``)."""


def wire_format(fmt: AudioFormat) -> WireFormat:
    """The ``WireFormat`` of an ElevenLabs audio format name."""
    if fmt == "ulaw_8000":
        return WireFormat("ulaw", 8000)
    return WireFormat("pcm16", int(fmt.removeprefix("pcm_")))


class _Client(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_json(self) -> str:
        """Serialize for the wire (unset optional fields omitted)."""
        return self.model_dump_json(exclude_none=True)


class _Server(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


# --- client -> server ------------------------------------------------------------------------


class PromptOverride(_Client):
    """``conversation_config_override.agent.prompt``."""

    prompt: str


class AgentOverride(_Client):
    """``conversation_config_override.agent``."""

    prompt: PromptOverride | None = None
    first_message: str | None = None
    language: str | None = None


class ConfigOverride(_Client):
    """``conversation_config_override`` (each field must be enabled on the agent)."""

    agent: AgentOverride | None = None


class SourceInfo(_Client):
    """``source_info``."""

    source: str
    version: str


class ConversationInitiationClientData(_Client):
    """``conversation_initiation_client_data``: the first message after the socket opens."""

    type: Literal["conversation_initiation_client_data"] = "conversation_initiation_client_data"
    conversation_config_override: ConfigOverride | None = None
    dynamic_variables: dict[str, str | int | float | bool] = {}
    source_info: SourceInfo | None = None


class UserAudioChunk(_Client):
    """Caller audio, base64 in the agent's input format (this message has no ``type``)."""

    user_audio_chunk: str


def user_audio_chunk_json(chunk_b64: str) -> str:
    """``UserAudioChunk(user_audio_chunk=...).to_json()`` byte for byte, without a model.

    Base64 needs no JSON escaping; a unit test holds it to the model's output.
    """
    return f'{{"user_audio_chunk":"{chunk_b64}"}}'


class Pong(_Client):
    """``pong``: the answer to ``ping``, same ``event_id``."""

    type: Literal["pong"] = "pong"
    event_id: int


class ClientToolResult(_Client):
    """``client_tool_result``."""

    type: Literal["client_tool_result"] = "client_tool_result"
    tool_call_id: str
    result: str
    is_error: bool = False


class ContextualUpdate(_Client):
    """``contextual_update``: background information that does not interrupt the agent."""

    type: Literal["contextual_update"] = "contextual_update"
    text: str


class UserActivity(_Client):
    """``user_activity``: resets the turn timeout."""

    type: Literal["user_activity"] = "user_activity"


ClientMessage = (
    ConversationInitiationClientData
    | UserAudioChunk
    | Pong
    | ClientToolResult
    | ContextualUpdate
    | UserActivity
)
CLIENT_MESSAGES: dict[str, type[ClientMessage]] = {
    "conversation_initiation_client_data": ConversationInitiationClientData,
    "pong": Pong,
    "client_tool_result": ClientToolResult,
    "contextual_update": ContextualUpdate,
    "user_activity": UserActivity,
}

# --- server -> client ------------------------------------------------------------------------


class InitiationMetadataEvent(_Server):
    """``conversation_initiation_metadata_event``."""

    conversation_id: str
    agent_output_audio_format: AudioFormat
    user_input_audio_format: AudioFormat


class ConversationInitiationMetadata(_Server):
    """``conversation_initiation_metadata``: the effective audio formats."""

    type: Literal["conversation_initiation_metadata"]
    conversation_initiation_metadata_event: InitiationMetadataEvent


class AudioEvent(_Server):
    """``audio_event``."""

    audio_base_64: str
    event_id: int
    alignment: dict[str, Any] | None = None


class Audio(_Server):
    """``audio``: agent speech in the agent's output format."""

    type: Literal["audio"]
    audio_event: AudioEvent


class InterruptionEvent(_Server):
    """``interruption_event``."""

    event_id: int


class Interruption(_Server):
    """``interruption``: barge-in; drop audio with ``event_id`` up to this one."""

    type: Literal["interruption"]
    interruption_event: InterruptionEvent


class PingEvent(_Server):
    """``ping_event``."""

    event_id: int
    ping_ms: int | None = None


class Ping(_Server):
    """``ping``: answer with ``pong``."""

    type: Literal["ping"]
    ping_event: PingEvent


class AgentResponseEvent(_Server):
    """``agent_response_event``."""

    agent_response: str
    event_id: int | None = None


class AgentResponse(_Server):
    """``agent_response``: what the agent says this turn."""

    type: Literal["agent_response"]
    agent_response_event: AgentResponseEvent


class UserTranscriptionEvent(_Server):
    """``user_transcription_event``."""

    user_transcript: str
    event_id: int | None = None


class UserTranscript(_Server):
    """``user_transcript``: what the caller said."""

    type: Literal["user_transcript"]
    user_transcription_event: UserTranscriptionEvent


class ClientToolCallEvent(_Server):
    """``client_tool_call`` payload."""

    tool_name: str
    tool_call_id: str
    parameters: dict[str, Any] = {}
    event_id: int | None = None


class ClientToolCall(_Server):
    """``client_tool_call``: the agent asks the gateway to run a client tool."""

    type: Literal["client_tool_call"]
    client_tool_call: ClientToolCallEvent


class ErrorDetail(_Server):
    """``error_event``."""

    code: int | None = None
    message: str | None = None
    error_type: str | None = None
    reason: str | None = None


class Error(_Server):
    """``error``: the socket closes after it."""

    type: Literal["error"]
    error_event: ErrorDetail


ServerMessage = (
    ConversationInitiationMetadata
    | Audio
    | Interruption
    | Ping
    | AgentResponse
    | UserTranscript
    | ClientToolCall
    | Error
)
SERVER_MESSAGES: dict[str, type[ServerMessage]] = {
    "conversation_initiation_metadata": ConversationInitiationMetadata,
    "audio": Audio,
    "interruption": Interruption,
    "ping": Ping,
    "agent_response": AgentResponse,
    "user_transcript": UserTranscript,
    "client_tool_call": ClientToolCall,
    "error": Error,
}


def _load(text: str | bytes) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python recurses
        raise BridgeProtocolError("malformed frame: not JSON") from None
    if not isinstance(data, dict):
        raise BridgeProtocolError("malformed frame: not an object")
    return data


def parse_server_message(text: str | bytes) -> ServerMessage | None:
    """Parse a server frame; ``None`` for types the gateway ignores.

    Raises:
        BridgeProtocolError: not JSON, no ``type``, or a handled type with the wrong shape.
    """
    data = _load(text)
    kind = data.get("type")
    if not isinstance(kind, str):
        raise BridgeProtocolError("malformed frame: no message type")
    model = SERVER_MESSAGES.get(kind)
    if model is None:
        return None
    try:
        return model.model_validate(data)
    except ValidationError:
        raise BridgeProtocolError(f"malformed {kind} message") from None


def parse_client_message(text: str | bytes) -> ClientMessage:
    """Parse a client frame strictly (used by the fake server to catch drift).

    Raises:
        BridgeProtocolError: unknown type, unknown field or wrong shape.
    """
    data = _load(text)
    kind = data.get("type")
    model: type[ClientMessage] | None
    if kind is None and "user_audio_chunk" in data:
        model = UserAudioChunk
    else:
        model = CLIENT_MESSAGES.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise BridgeProtocolError(f"unknown client message type {kind!r}")
    try:
        return model.model_validate(data)
    except ValidationError:
        raise BridgeProtocolError(f"malformed {kind or 'user_audio_chunk'} message") from None
