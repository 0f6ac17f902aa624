"""Wire messages of the two custom-agent protocols.

``telepath`` (version 1) is ours, specified in ``docs/custom-agent-protocol.md``; its JSON
Schema (``docs/custom-agent-protocol.v1.schema.json``) is generated from the models below by
``protocol_schema()`` and a test keeps the committed file in sync.

``twilio`` is Twilio Media Streams (bidirectional), with the gateway in Twilio's role, exactly
as in https://www.twilio.com/docs/voice/media-streams/websocket-messages (field names are
camelCase there, so they are here). Agents only send ``media``, ``mark`` and ``clear``;
unknown events and fields are ignored, as Twilio does.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    ValidationError,
    model_serializer,
)

from telepath.bridges.base import BridgeProtocolError

PROTOCOL_VERSION = "1"

# --- telepath v1 -----------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_json(self) -> str:
        """Serialize for the wire (unset optional fields omitted)."""
        return self.model_dump_json(exclude_none=True)


class MediaFormat(_Strict):
    """An audio format: ``ulaw``/``alaw`` at 8000 Hz, or ``pcm16`` (LE mono) at 8000/16000 Hz."""

    encoding: Literal["ulaw", "alaw", "pcm16"]
    sample_rate: Literal[8000, 16000] = 8000


class CallInfo(_Strict):
    """Call metadata in ``start``."""

    call_id: str
    trunk_id: str
    caller: str
    called: str
    codec: Literal["pcmu", "pcma"]
    sip_call_id: str | None = None
    # The INVITE headers the trunk forwards (forward_sip_headers), by name; absent when none.
    sip_headers: dict[str, str] | None = None


class Start(_Strict):
    """Gateway -> agent, first message: call metadata, prompt and the formats on offer."""

    type: Literal["start"] = "start"
    version: Literal["1"] = "1"
    call: CallInfo
    # Always sent, null when the trunk has none: the protocol lists it as string|null, not as
    # an optional field (docs/custom-agent-protocol.md).
    system_prompt: str | None
    media_formats: list[MediaFormat]
    # On a new connection after a drop (the trunk's custom_reconnect): how many times this
    # call has reconnected, this one included; absent on the call's first connection.
    reconnect: int | None = Field(None, ge=1)

    @model_serializer(mode="wrap")
    def _prompt_even_if_null(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)  # exclude_none (to_json) left a null prompt out
        return {
            name: data.get(name)
            for name in type(self).model_fields
            if name in data or name == "system_prompt"
        }


class GatewayAudio(_Strict):
    """Gateway -> agent: caller audio (base64) in the negotiated format."""

    type: Literal["audio"] = "audio"
    seq: int = Field(ge=1)
    timestamp_ms: int = Field(ge=0)
    payload: str


class Dtmf(_Strict):
    """Gateway -> agent: the caller pressed a key."""

    type: Literal["dtmf"] = "dtmf"
    digit: str = Field(pattern=r"^[0-9*#A-D]$")


class Mark(_Strict):
    """Both ways: the agent places a mark; the gateway echoes it when played or cleared."""

    type: Literal["mark"] = "mark"
    name: str


class TransferResult(_Strict):
    """Gateway -> agent: outcome of a ``transfer`` request."""

    type: Literal["transfer_result"] = "transfer_result"
    request_id: str
    ok: bool
    detail: str | None = None


class Stop(_Strict):
    """Gateway -> agent: the call ended; the gateway closes the socket next."""

    type: Literal["stop"] = "stop"
    reason: str


class Ready(_Strict):
    """Agent -> gateway, first message: the format chosen from ``start.media_formats``."""

    type: Literal["ready"] = "ready"
    media_format: MediaFormat


class AgentAudioMessage(_Strict):
    """Agent -> gateway: agent speech (base64, negotiated format, any length)."""

    type: Literal["audio"] = "audio"
    payload: str


class Clear(_Strict):
    """Agent -> gateway: drop all queued agent audio now (barge-in); pending marks echo."""

    type: Literal["clear"] = "clear"


class Hangup(_Strict):
    """Agent -> gateway: end the call once the queued audio has played."""

    type: Literal["hangup"] = "hangup"
    reason: str | None = None


#: The longest ``transfer.target`` taken (far past any phone number or SIP URI in use).
MAX_TRANSFER_TARGET = 2048


class Transfer(_Strict):
    """Agent -> gateway: transfer the caller to a sip, sips or tel URI; a target that is no
    such URI gets a failed transfer_result and the call goes on."""

    type: Literal["transfer"] = "transfer"
    # Any string: whether it is such a URI is call control's check (sip.uri.transfer_target,
    # schemes case-insensitive as RFC 3986 §3.1 and RFC 3261 §19.1.4 have them), which refuses
    # it with "invalid transfer target". A pattern here made "TEL:…" or a bare number a
    # malformed message, and that ended the call.
    target: str = Field(max_length=MAX_TRANSFER_TARGET)
    request_id: str | None = None


class Transcript(_Strict):
    """Agent -> gateway: a final transcript line (optional, for call records)."""

    type: Literal["transcript"] = "transcript"
    role: Literal["caller", "agent"]
    text: str


class AgentErrorMessage(_Strict):
    """Agent -> gateway: a fatal error; the gateway ends the call (``ai_provider_error``)."""

    type: Literal["error"] = "error"
    message: str
    code: str | None = None


GatewayMessage = Annotated[
    Start | GatewayAudio | Dtmf | Mark | TransferResult | Stop, Field(discriminator="type")
]
AgentMessage = Annotated[
    Ready | AgentAudioMessage | Mark | Clear | Hangup | Transfer | Transcript | AgentErrorMessage,
    Field(discriminator="type"),
]
_GATEWAY: TypeAdapter[Any] = TypeAdapter(GatewayMessage)
_AGENT: TypeAdapter[Any] = TypeAdapter(AgentMessage)


def _load(text: str | bytes) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python recurses
        raise BridgeProtocolError("malformed frame: not JSON") from None


def gateway_audio_json(seq: int, timestamp_ms: int, payload_b64: str) -> str:
    """``GatewayAudio(...).to_json()``, byte for byte, without building a model (per frame).

    Base64 and integers need no JSON escaping; a unit test holds it to the model's output.
    """
    return f'{{"type":"audio","seq":{seq},"timestamp_ms":{timestamp_ms},"payload":"{payload_b64}"}}'


_AUDIO_HEAD = '{"type":"audio","payload":"'
_AUDIO_MIN_LEN = len(_AUDIO_HEAD) + 2
_BASE64_CHARS = re.compile(r"[A-Za-z0-9+/=]*")


def agent_audio_payload(text: str) -> str | None:
    """The base64 payload when ``text`` is a well-formed ``audio`` message, else None.

    The per-frame shortcut around :func:`parse_agent_message`: it accepts exactly what that
    accepts as an :class:`AgentAudioMessage` (a unit test holds them together) and declines
    everything else, which then takes the strict parser's path.
    """
    # The compact form our own examples and SDK models send, read without a JSON parse: the
    # payload is taken only when it is nothing but base64 characters, which JSON would return
    # unchanged; every other spelling goes through ``json.loads`` below.
    if text.startswith(_AUDIO_HEAD) and text.endswith('"}'):
        compact = text[len(_AUDIO_HEAD) : -2]
        if len(text) >= _AUDIO_MIN_LEN and _BASE64_CHARS.fullmatch(compact):
            return compact
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # the parser's path reports it
        return None
    if type(data) is not dict or len(data) != 2 or data.get("type") != "audio":
        return None
    payload = data.get("payload")
    return payload if type(payload) is str else None


def twilio_media_payload(text: str) -> str | None:
    """The base64 payload when ``text`` is a well-formed Twilio ``media`` event, else None.

    The per-frame shortcut around :func:`parse_twilio_agent_event` (extra fields are ignored
    there too); anything else is declined and takes the parser's path.
    """
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # the parser's path reports it
        return None
    if type(data) is not dict or data.get("event") != "media":
        return None
    media = data.get("media")  # streamSid is ignored whatever its type, as by the parser
    if type(media) is not dict:
        return None
    payload = media.get("payload")
    return payload if type(payload) is str else None


def parse_agent_message(text: str | bytes) -> AgentMessage:
    """Parse an agent -> gateway frame of the telepath protocol (strict).

    Raises:
        BridgeProtocolError: not JSON, unknown type, unknown field or wrong shape.
    """
    try:
        message: AgentMessage = _AGENT.validate_python(_load(text))
    except ValidationError:
        raise BridgeProtocolError("malformed agent message") from None
    return message


def parse_gateway_message(text: str | bytes) -> GatewayMessage:
    """Parse a gateway -> agent frame (used by the fake agent to catch drift).

    Raises:
        BridgeProtocolError: not JSON, unknown type, unknown field or wrong shape.
    """
    try:
        message: GatewayMessage = _GATEWAY.validate_python(_load(text))
    except ValidationError:
        raise BridgeProtocolError("malformed gateway message") from None
    return message


def protocol_schema() -> dict[str, Any]:
    """The JSON Schema of protocol version 1 (both directions)."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://telepath.dev/schemas/custom-agent-protocol.v1.json",
        "title": "Telepath custom agent protocol, version 1",
        "description": "JSON text frames; see docs/custom-agent-protocol.md.",
        "$defs": {
            "GatewayToAgent": _GATEWAY.json_schema(ref_template="#/$defs/{model}"),
            "AgentToGateway": _AGENT.json_schema(ref_template="#/$defs/{model}"),
        },
    }


# --- Twilio Media Streams --------------------------------------------------------------------


class _Twilio(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    def to_json(self) -> str:
        """Serialize for the wire."""
        return self.model_dump_json(exclude_none=True)


class TwMediaFormat(_Twilio):
    """``start.mediaFormat``: always μ-law 8 kHz mono."""

    encoding: Literal["audio/x-mulaw"] = "audio/x-mulaw"
    sampleRate: Literal[8000] = 8000
    channels: Literal[1] = 1


class TwStartInfo(_Twilio):
    """``start.start``."""

    accountSid: str
    streamSid: str
    callSid: str
    tracks: list[str] = ["inbound"]
    customParameters: dict[str, str] = {}
    mediaFormat: TwMediaFormat = TwMediaFormat()


class TwConnected(_Twilio):
    """``connected``: first message, no sequence number."""

    event: Literal["connected"] = "connected"
    protocol: Literal["Call"] = "Call"
    version: Literal["1.0.0"] = "1.0.0"


class TwStart(_Twilio):
    """``start``."""

    event: Literal["start"] = "start"
    sequenceNumber: str
    start: TwStartInfo
    streamSid: str


class TwMediaOut(_Twilio):
    """``media.media`` as the gateway sends it (caller audio)."""

    track: Literal["inbound"] = "inbound"
    chunk: str
    timestamp: str
    payload: str


class TwMedia(_Twilio):
    """``media`` from the gateway."""

    event: Literal["media"] = "media"
    sequenceNumber: str
    media: TwMediaOut
    streamSid: str


class TwDtmfInfo(_Twilio):
    """``dtmf.dtmf``."""

    track: Literal["inbound_track"] = "inbound_track"
    digit: str


class TwDtmf(_Twilio):
    """``dtmf`` from the gateway."""

    event: Literal["dtmf"] = "dtmf"
    streamSid: str
    sequenceNumber: str
    dtmf: TwDtmfInfo


class TwMarkInfo(_Twilio):
    """``mark.mark``."""

    name: str


class TwMark(_Twilio):
    """``mark``, both ways (from the agent ``sequenceNumber`` is absent)."""

    event: Literal["mark"] = "mark"
    sequenceNumber: str | None = None
    streamSid: str | None = None
    mark: TwMarkInfo


class TwStopInfo(_Twilio):
    """``stop.stop``."""

    accountSid: str
    callSid: str


class TwStop(_Twilio):
    """``stop`` from the gateway."""

    event: Literal["stop"] = "stop"
    sequenceNumber: str
    stop: TwStopInfo
    streamSid: str


class TwAgentMediaInfo(_Twilio):
    """``media.media`` from the agent."""

    payload: str


class TwAgentMedia(_Twilio):
    """``media`` from the agent: μ-law 8 kHz, base64, any size."""

    event: Literal["media"] = "media"
    streamSid: str | None = None
    media: TwAgentMediaInfo


class TwClear(_Twilio):
    """``clear`` from the agent."""

    event: Literal["clear"] = "clear"
    streamSid: str | None = None


TWILIO_AGENT_EVENTS: dict[str, type[TwAgentMedia | TwMark | TwClear]] = {
    "media": TwAgentMedia,
    "mark": TwMark,
    "clear": TwClear,
}
TWILIO_GATEWAY_EVENTS: dict[str, type[_Twilio]] = {
    "connected": TwConnected,
    "start": TwStart,
    "media": TwMedia,
    "dtmf": TwDtmf,
    "mark": TwMark,
    "stop": TwStop,
}


def parse_twilio_agent_event(text: str | bytes) -> TwAgentMedia | TwMark | TwClear | None:
    """Parse an agent frame; ``None`` for events Twilio would ignore.

    Raises:
        BridgeProtocolError: not JSON, or a ``media``/``mark`` with the wrong shape.
    """
    data = _load(text)
    kind = data.get("event") if isinstance(data, dict) else None
    model = TWILIO_AGENT_EVENTS.get(kind) if isinstance(kind, str) else None
    if model is None:
        return None
    for ignored in ("streamSid", "sequenceNumber"):
        # Twilio ignores both on what a stream sends it (providers.md §4.3): whatever their
        # type, they must not end the call
        if ignored in data and not isinstance(data[ignored], str):
            del data[ignored]
    try:
        return model.model_validate(data)
    except ValidationError:
        raise BridgeProtocolError(f"malformed twilio {kind} event") from None
