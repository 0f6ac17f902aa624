"""The ElevenLabs agent WebSocket messages, transcribed from the AsyncAPI contract.

Source ([EL-SPEC] in reference/providers.md): elevenlabs/packages
``packages/types/schemas/agent.asyncapi.yaml``, ``components.schemas`` (field names, types,
``required`` lists and enums only). The payloads the fake and the bridge exchange are checked
against these models, not against ``telepath.bridges.elevenlabs.events`` (which the fake
itself uses, so it could not catch a drift of both).

Each field the contract lists as required has no default here; an optional one defaults to
``None``. Validation is strict (an ``integer`` is a JSON integer, not a string of digits).
The contract leaves most objects open (no ``additionalProperties``); these models forbid
fields it does not list, so a fake or a bridge cannot invent one unnoticed. ``details`` of
``ErrorData`` is open (``additionalProperties: true``), as are the ``type: object`` maps
(``parameters``, ``dynamic_variables``...).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

__all__ = ["CLIENT_PAYLOADS", "SERVER_PAYLOADS", "validate_client", "validate_server"]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


AudioFormat = Literal[
    "pcm_8000", "pcm_16000", "pcm_22050", "pcm_24000", "pcm_44100", "pcm_48000", "ulaw_8000"
]
"""``AudioFormat`` (and ``UserInputAudioFormat``, the same enum)."""

WebSocketCloseCode = Literal[1000, 1002, 1008, 1011]

ErrorType = Literal[
    "unknown",
    "invalid_message",
    "telephony_agent_error",
    "mcp_tool_error",
    "mcp_https_error",
    "value_error",
    "missing_fields",
    "override_error",
    "missing_dynamic_variable_transfer",
    "missing_dynamic_variable",
    "websocket_disconnect",
    "safety_violation",
    "llm_timeout",
    "transport_receive_timeout",
    "asyncio_timeout",
    "http_exception",
    "max_duration_exceeded",
    "llm_error",
    "custom_llm_error",
    "cascade_brain_error",
    "asr_transcription_error",
    "vad_error",
    "turn_probability_error",
    "tts_cascade_error",
    "redis_timeout_error",
    "unknown_websocket_crash",
]

# --- client -> server: *Payload ------------------------------------------------------------


class UserAudioPayload(_Spec):
    user_audio_chunk: str


class PongPayload(_Spec):
    type: Literal["pong"]
    event_id: int


class UserMessagePayload(_Spec):
    type: Literal["user_message"]
    text: str | None = None


class UserActivityPayload(_Spec):
    type: Literal["user_activity"]


class ClientToolResultPayload(_Spec):
    type: Literal["client_tool_result"]
    tool_call_id: str
    result: str
    is_error: bool


class ContextualUpdatePayload(_Spec):
    type: Literal["contextual_update"]
    text: str


class SourceInfo(_Spec):
    source: str | None = None
    version: str | None = None


class ConversationInitiationPayload(_Spec):
    """The overrides are checked against the SDK's own type; here they stay a map."""

    type: Literal["conversation_initiation_client_data"]
    conversation_config_override: dict[str, Any] | None = None
    custom_llm_extra_body: dict[str, Any] | None = None
    dynamic_variables: dict[str, Any] | None = None
    user_id: str | None = None
    source_info: SourceInfo | None = None


CLIENT_PAYLOADS: dict[str, type[_Spec]] = {
    "pong": PongPayload,
    "user_message": UserMessagePayload,
    "user_activity": UserActivityPayload,
    "client_tool_result": ClientToolResultPayload,
    "contextual_update": ContextualUpdatePayload,
    "conversation_initiation_client_data": ConversationInitiationPayload,
}

# --- server -> client: *Data and *Payload --------------------------------------------------


class AudioAlignmentData(_Spec):
    chars: list[str]
    char_start_times_ms: list[int]
    char_durations_ms: list[int]


class AudioEventData(_Spec):
    audio_base_64: str
    event_id: int
    alignment: AudioAlignmentData | None = None


class AudioPayload(_Spec):
    type: Literal["audio"]
    audio_event: AudioEventData


class UserTranscriptionData(_Spec):
    user_transcript: str
    event_id: int


class UserTranscriptPayload(_Spec):
    type: Literal["user_transcript"]
    user_transcription_event: UserTranscriptionData


class AgentResponseData(_Spec):
    agent_response: str
    event_id: int


class AgentResponsePayload(_Spec):
    type: Literal["agent_response"]
    agent_response_event: AgentResponseData


class InterruptionData(_Spec):
    event_id: int


class InterruptionPayload(_Spec):
    type: Literal["interruption"]
    interruption_event: InterruptionData


class ConversationMetadataData(_Spec):
    conversation_id: str
    agent_output_audio_format: AudioFormat
    user_input_audio_format: AudioFormat


class ConversationMetadataPayload(_Spec):
    type: Literal["conversation_initiation_metadata"]
    conversation_initiation_metadata_event: ConversationMetadataData


class ClientToolCallData(_Spec):
    tool_name: str
    tool_call_id: str
    parameters: dict[str, Any]
    event_id: int


class ClientToolCallPayload(_Spec):
    type: Literal["client_tool_call"]
    client_tool_call: ClientToolCallData


class AgentToolRequestData(_Spec):
    tool_name: str
    tool_call_id: str
    tool_type: str
    event_id: int


class AgentToolRequestPayload(_Spec):
    type: Literal["agent_tool_request"]
    agent_tool_request: AgentToolRequestData


class AgentToolResponseData(_Spec):
    tool_name: str
    tool_call_id: str
    tool_type: str
    is_error: bool
    is_called: bool
    event_id: int


class AgentToolResponsePayload(_Spec):
    type: Literal["agent_tool_response"]
    agent_tool_response: AgentToolResponseData


class PingData(_Spec):
    event_id: int
    ping_ms: int | None = None


class PingPayload(_Spec):
    type: Literal["ping"]
    ping_event: PingData


class ErrorData(_Spec):
    code: WebSocketCloseCode
    message: str | None = None
    error_type: ErrorType | None = None
    reason: str | None = None
    debug_message: str | None = None
    details: dict[str, Any] | None = None


class ErrorPayload(_Spec):
    type: Literal["error"]
    error_event: ErrorData


SERVER_PAYLOADS: dict[str, type[_Spec]] = {
    "audio": AudioPayload,
    "user_transcript": UserTranscriptPayload,
    "agent_response": AgentResponsePayload,
    "interruption": InterruptionPayload,
    "conversation_initiation_metadata": ConversationMetadataPayload,
    "client_tool_call": ClientToolCallPayload,
    "agent_tool_request": AgentToolRequestPayload,
    "agent_tool_response": AgentToolResponsePayload,
    "ping": PingPayload,
    "error": ErrorPayload,
}


def validate_server(message: dict[str, Any]) -> None:
    """Raise unless ``message`` is a server message of a type the fake may send, as specified."""
    kind = message.get("type")
    assert isinstance(kind, str) and kind in SERVER_PAYLOADS, f"unknown server type {kind!r}"
    SERVER_PAYLOADS[kind].model_validate(message)


def validate_client(message: dict[str, Any]) -> None:
    """Raise unless ``message`` is a client message as specified (audio has no ``type``)."""
    kind = message.get("type")
    if kind is None:
        UserAudioPayload.model_validate(message)
        return
    assert isinstance(kind, str) and kind in CLIENT_PAYLOADS, f"unknown client type {kind!r}"
    CLIENT_PAYLOADS[kind].model_validate(message)
