"""OpenAI Realtime API (GA) wire events: the subset the gateway sends and handles.

Field names follow the official SDK's ``openai/types/realtime/*`` (GA shape; the beta shape is
rejected by the service) and ``reference/providers.md`` §2. Client events forbid unknown
fields so a typo cannot reach the wire; server events ignore unknown fields (the service adds
fields over time) and unknown server event *types* are skipped by ``parse_server_event``.

API reference: https://platform.openai.com/docs/api-reference/realtime
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from telepath.bridges.base import BridgeProtocolError

Voice = Literal[
    "alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"
]
"""Built-in voices (``audio.output.voice``); custom voices are ``{"id": "voice_..."}``."""


class _Client(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_json(self) -> str:
        """Serialize for the wire (unset optional fields omitted)."""
        return self.model_dump_json(exclude_none=True)


class _Server(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


# --- session configuration -------------------------------------------------------------------


class PcmuFormat(_Client):
    """G.711 μ-law, 8 kHz (no ``rate`` field)."""

    type: Literal["audio/pcmu"] = "audio/pcmu"


class PcmaFormat(_Client):
    """G.711 A-law, 8 kHz (no ``rate`` field)."""

    type: Literal["audio/pcma"] = "audio/pcma"


class PcmFormat(_Client):
    """PCM16 little-endian; only 24 kHz is supported."""

    type: Literal["audio/pcm"] = "audio/pcm"
    rate: Literal[24000] = 24000


AudioFormat = Annotated[PcmuFormat | PcmaFormat | PcmFormat, Field(discriminator="type")]


class ServerVad(_Client):
    """``turn_detection`` with server-side VAD."""

    type: Literal["server_vad"] = "server_vad"
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    create_response: bool = True
    interrupt_response: bool = True
    idle_timeout_ms: int | None = None


class NoiseReduction(_Client):
    """Input noise reduction; ``near_field`` suits handsets."""

    type: Literal["near_field", "far_field"] = "near_field"


class AudioInput(_Client):
    """``session.audio.input``."""

    format: AudioFormat
    turn_detection: ServerVad = ServerVad()
    noise_reduction: NoiseReduction | None = None


class VoiceId(_Client):
    """A custom voice (``{"id": "voice_..."}``); a bare ``voice_...`` string is refused."""

    id: str


class AudioOutput(_Client):
    """``session.audio.output``."""

    format: AudioFormat
    voice: str | VoiceId | None = None


def output_voice(name: str | None) -> str | VoiceId | None:
    """A trunk's voice setting on the wire: a custom voice id as a voice object."""
    if name is not None and name.startswith("voice_"):
        return VoiceId(id=name)
    return name


class SessionAudio(_Client):
    """``session.audio``."""

    input: AudioInput
    output: AudioOutput


class FunctionTool(_Client):
    """A function the model may call."""

    type: Literal["function"] = "function"
    name: str
    description: str
    parameters: dict[str, Any]


class Session(_Client):
    """The GA ``session`` object of ``session.update`` (``type`` is required)."""

    type: Literal["realtime"] = "realtime"
    output_modalities: list[Literal["audio", "text"]] = ["audio"]
    instructions: str | None = None
    audio: SessionAudio
    tools: list[FunctionTool] = []
    tool_choice: Literal["auto", "none", "required"] = "auto"


# --- client events ---------------------------------------------------------------------------


class SessionUpdate(_Client):
    """``session.update``."""

    type: Literal["session.update"] = "session.update"
    event_id: str | None = None
    session: Session


class InputAudioBufferAppend(_Client):
    """``input_audio_buffer.append``: base64 audio in the session's input format."""

    type: Literal["input_audio_buffer.append"] = "input_audio_buffer.append"
    event_id: str | None = None
    audio: str


def input_audio_append_json(audio_b64: str) -> str:
    """``InputAudioBufferAppend(audio=...).to_json()`` byte for byte, without a model per frame.

    Base64 needs no JSON escaping; a unit test holds it to the model's output.
    """
    return f'{{"type":"input_audio_buffer.append","audio":"{audio_b64}"}}'


class ConversationItemTruncate(_Client):
    """``conversation.item.truncate``: cut an assistant item at what the caller heard."""

    type: Literal["conversation.item.truncate"] = "conversation.item.truncate"
    event_id: str | None = None
    item_id: str
    content_index: int = 0
    audio_end_ms: int = Field(ge=0)


class ConversationItemDelete(_Client):
    """``conversation.item.delete``."""

    type: Literal["conversation.item.delete"] = "conversation.item.delete"
    event_id: str | None = None
    item_id: str


class InputText(_Client):
    """A text content part of a message item."""

    type: Literal["input_text"] = "input_text"
    text: str


class MessageItem(_Client):
    """A ``message`` conversation item (user or system text)."""

    type: Literal["message"] = "message"
    role: Literal["user", "system"]
    content: list[InputText]


class FunctionCallOutputItem(_Client):
    """The result of a function call."""

    type: Literal["function_call_output"] = "function_call_output"
    call_id: str
    output: str


class ConversationItemCreate(_Client):
    """``conversation.item.create``."""

    type: Literal["conversation.item.create"] = "conversation.item.create"
    event_id: str | None = None
    item: Annotated[MessageItem | FunctionCallOutputItem, Field(discriminator="type")]


class ResponseParams(_Client):
    """The optional ``response`` of ``response.create``."""

    instructions: str | None = None
    metadata: dict[str, str] | None = None  # comes back on the response's events


class ResponseCreate(_Client):
    """``response.create``."""

    type: Literal["response.create"] = "response.create"
    event_id: str | None = None
    response: ResponseParams | None = None


class ResponseCancel(_Client):
    """``response.cancel``."""

    type: Literal["response.cancel"] = "response.cancel"
    event_id: str | None = None


ClientEvent = (
    SessionUpdate
    | InputAudioBufferAppend
    | ConversationItemTruncate
    | ConversationItemDelete
    | ConversationItemCreate
    | ResponseCreate
    | ResponseCancel
)
CLIENT_EVENTS: dict[str, type[ClientEvent]] = {
    "session.update": SessionUpdate,
    "input_audio_buffer.append": InputAudioBufferAppend,
    "conversation.item.truncate": ConversationItemTruncate,
    "conversation.item.delete": ConversationItemDelete,
    "conversation.item.create": ConversationItemCreate,
    "response.create": ResponseCreate,
    "response.cancel": ResponseCancel,
}

# --- server events ---------------------------------------------------------------------------


class SessionCreated(_Server):
    """``session.created``: first message after the upgrade."""

    type: Literal["session.created"]
    event_id: str
    session: dict[str, Any]


class SessionUpdated(_Server):
    """``session.updated``: the effective session after our ``session.update``."""

    type: Literal["session.updated"]
    event_id: str
    session: dict[str, Any]


class ResponseCreated(_Server):
    """``response.created``."""

    type: Literal["response.created"]
    event_id: str
    response: dict[str, Any]


class ResponseOutputAudioDelta(_Server):
    """``response.output_audio.delta``: base64 audio in the session's output format."""

    type: Literal["response.output_audio.delta"]
    event_id: str
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    delta: str


class ResponseOutputAudioDone(_Server):
    """``response.output_audio.done``."""

    type: Literal["response.output_audio.done"]
    event_id: str
    response_id: str
    item_id: str
    output_index: int
    content_index: int


class ResponseOutputAudioTranscriptDone(_Server):
    """``response.output_audio_transcript.done``: what the agent said."""

    type: Literal["response.output_audio_transcript.done"]
    event_id: str
    item_id: str
    transcript: str


class InputTranscriptionCompleted(_Server):
    """``conversation.item.input_audio_transcription.completed``: what the caller said."""

    type: Literal["conversation.item.input_audio_transcription.completed"]
    event_id: str
    item_id: str
    transcript: str


class SpeechStarted(_Server):
    """``input_audio_buffer.speech_started``: the caller started talking (barge-in)."""

    type: Literal["input_audio_buffer.speech_started"]
    event_id: str
    audio_start_ms: int
    item_id: str


class SpeechStopped(_Server):
    """``input_audio_buffer.speech_stopped``."""

    type: Literal["input_audio_buffer.speech_stopped"]
    event_id: str
    audio_end_ms: int
    item_id: str


class FunctionCallArgumentsDone(_Server):
    """``response.function_call_arguments.done``: a complete function call."""

    type: Literal["response.function_call_arguments.done"]
    event_id: str
    response_id: str
    item_id: str
    output_index: int
    call_id: str
    name: str
    arguments: str


class StatusError(_Server):
    """``response.status_details.error``."""

    type: str | None = None
    code: str | None = None
    message: str | None = None


class StatusDetails(_Server):
    """``response.status_details``."""

    type: str | None = None
    reason: str | None = None
    error: StatusError | None = None


class ResponseObject(_Server):
    """The ``response`` of ``response.done`` (only what the gateway reads)."""

    id: str | None = None
    status: Literal["completed", "cancelled", "failed", "incomplete", "in_progress"] | None = None
    status_details: StatusDetails | None = None
    metadata: dict[str, str] | None = None  # as given to response.create


class ResponseDone(_Server):
    """``response.done``: a response finished, in whatever state."""

    type: Literal["response.done"]
    event_id: str
    response: ResponseObject


class ErrorDetail(_Server):
    """``error.error``."""

    type: str
    code: str | None = None
    message: str
    param: str | None = None
    event_id: str | None = None


class ErrorEvent(_Server):
    """``error``: most are recoverable; ``event_id`` names the client event at fault."""

    type: Literal["error"]
    event_id: str
    error: ErrorDetail


class ConversationItemTruncated(_Server):
    """``conversation.item.truncated``."""

    type: Literal["conversation.item.truncated"]
    event_id: str
    item_id: str
    content_index: int
    audio_end_ms: int


ServerEvent = (
    SessionCreated
    | SessionUpdated
    | ResponseCreated
    | ResponseOutputAudioDelta
    | ResponseOutputAudioDone
    | ResponseOutputAudioTranscriptDone
    | InputTranscriptionCompleted
    | SpeechStarted
    | SpeechStopped
    | FunctionCallArgumentsDone
    | ResponseDone
    | ErrorEvent
    | ConversationItemTruncated
)
SERVER_EVENTS: dict[str, type[ServerEvent]] = {
    "session.created": SessionCreated,
    "session.updated": SessionUpdated,
    "response.created": ResponseCreated,
    "response.output_audio.delta": ResponseOutputAudioDelta,
    "response.output_audio.done": ResponseOutputAudioDone,
    "response.output_audio_transcript.done": ResponseOutputAudioTranscriptDone,
    "conversation.item.input_audio_transcription.completed": InputTranscriptionCompleted,
    "input_audio_buffer.speech_started": SpeechStarted,
    "input_audio_buffer.speech_stopped": SpeechStopped,
    "response.function_call_arguments.done": FunctionCallArgumentsDone,
    "response.done": ResponseDone,
    "error": ErrorEvent,
    "conversation.item.truncated": ConversationItemTruncated,
}


def _load(text: str | bytes) -> tuple[str, dict[str, Any]]:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python recurses
        raise BridgeProtocolError("malformed frame: not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise BridgeProtocolError("malformed frame: no event type")
    return data["type"], data


def parse_server_event(text: str | bytes) -> ServerEvent | None:
    """Parse a server frame; ``None`` for event types the gateway does not handle.

    Raises:
        BridgeProtocolError: not JSON, no ``type``, or a handled type with the wrong shape.
    """
    kind, data = _load(text)
    model = SERVER_EVENTS.get(kind)
    if model is None:
        return None
    try:
        return model.model_validate(data)
    except ValidationError:
        raise BridgeProtocolError(f"malformed {kind} event") from None


def parse_client_event(text: str | bytes) -> ClientEvent:
    """Parse a client frame strictly (used by the fake server to catch protocol drift).

    Raises:
        BridgeProtocolError: unknown type, unknown field or wrong shape.
    """
    kind, data = _load(text)
    model = CLIENT_EVENTS.get(kind)
    if model is None:
        raise BridgeProtocolError(f"unknown client event type {kind!r}")
    try:
        return model.model_validate(data)
    except ValidationError:
        raise BridgeProtocolError(f"malformed {kind} event") from None
