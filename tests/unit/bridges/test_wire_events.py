"""Provider wire models round-trip the samples in reference/providers.md; dispatch is complete."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from telepath.bridges.base import BridgeProtocolError
from telepath.bridges.custom import events as custom
from telepath.bridges.elevenlabs import events as el
from telepath.bridges.openai import events as oai

pytestmark = pytest.mark.unit

OPENAI_CLIENT = [
    {"type": "input_audio_buffer.append", "audio": "AAAA"},
    {
        "type": "conversation.item.truncate",
        "item_id": "item_1",
        "content_index": 0,
        "audio_end_ms": 1240,
    },
    {"type": "response.cancel"},
    {"type": "response.create", "response": {"instructions": "Greet the caller"}},
    {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "Caller pressed 5"}],
        },
    },
    {
        "type": "conversation.item.create",
        "item": {"type": "function_call_output", "call_id": "call_1", "output": '{"ok":true}'},
    },
    {"type": "conversation.item.delete", "item_id": "item_1"},
    {
        "type": "session.update",
        "event_id": "evt_gw_1",
        "session": {
            "type": "realtime",
            "output_modalities": ["audio"],
            "instructions": "You are the phone assistant.",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcmu"},
                    "noise_reduction": {"type": "near_field"},
                    "turn_detection": {
                        "type": "server_vad",
                        "threshold": 0.5,
                        "prefix_padding_ms": 300,
                        "silence_duration_ms": 500,
                        "idle_timeout_ms": 8000,
                        "create_response": True,
                        "interrupt_response": True,
                    },
                },
                "output": {"format": {"type": "audio/pcmu"}, "voice": "marin"},
            },
            "tools": [
                {
                    "type": "function",
                    "name": "end_call",
                    "description": "Hang up after saying goodbye.",
                    "parameters": {"type": "object", "properties": {}, "required": []},
                }
            ],
            "tool_choice": "auto",
        },
    },
]

OPENAI_SERVER = [
    {
        "type": "response.output_audio.delta",
        "event_id": "e1",
        "response_id": "r1",
        "item_id": "i1",
        "output_index": 0,
        "content_index": 0,
        "delta": "AAAA",
    },
    {
        "type": "input_audio_buffer.speech_started",
        "event_id": "e2",
        "audio_start_ms": 1000,
        "item_id": "i2",
    },
    {
        "type": "response.function_call_arguments.done",
        "event_id": "e3",
        "call_id": "call_1",
        "name": "end_call",
        "arguments": "{}",
        "item_id": "i3",
        "response_id": "r1",
        "output_index": 1,
    },
    {
        "type": "error",
        "event_id": "e4",
        "error": {
            "type": "invalid_request_error",
            "code": "beta_api_shape_disabled",
            "message": "The Realtime Beta API is no longer supported.",
            "param": None,
            "event_id": None,
        },
    },
]


@pytest.mark.parametrize("sample", OPENAI_CLIENT, ids=lambda s: s["type"])
def test_openai_client_events_round_trip(sample: dict[str, Any]) -> None:
    event = oai.parse_client_event(json.dumps(sample))
    assert json.loads(event.to_json()) == sample


@pytest.mark.parametrize("sample", OPENAI_SERVER, ids=lambda s: s["type"])
def test_openai_server_events_parse(sample: dict[str, Any]) -> None:
    event = oai.parse_server_event(json.dumps(sample))
    assert event is not None
    assert event.model_dump(exclude_none=True) == dict(sample) | (
        {"error": {k: v for k, v in sample["error"].items() if v is not None}}
        if "error" in sample
        else {}
    )


def test_openai_unknown_and_malformed() -> None:
    assert oai.parse_server_event('{"type":"rate_limits.updated","rate_limits":[]}') is None
    with pytest.raises(BridgeProtocolError):
        oai.parse_server_event("nope")
    with pytest.raises(BridgeProtocolError):
        oai.parse_server_event('{"type":"response.output_audio.delta"}')
    with pytest.raises(BridgeProtocolError):  # beta shape is rejected by our strict models
        oai.parse_client_event(
            '{"type":"session.update","session":{"input_audio_format":"g711_ulaw"}}'
        )


EL_SERVER = [
    {
        "type": "conversation_initiation_metadata",
        "conversation_initiation_metadata_event": {
            "conversation_id": "conv_1",
            "agent_output_audio_format": "ulaw_8000",
            "user_input_audio_format": "ulaw_8000",
        },
    },
    {"type": "audio", "audio_event": {"audio_base_64": "AAAA", "event_id": 12}},
    {"type": "interruption", "interruption_event": {"event_id": 12}},
    {"type": "ping", "ping_event": {"event_id": 7, "ping_ms": 50}},
    {"type": "agent_response", "agent_response_event": {"agent_response": "Hi", "event_id": 12}},
    {
        "type": "user_transcript",
        "user_transcription_event": {"user_transcript": "Hello", "event_id": 11},
    },
    {
        "type": "client_tool_call",
        "client_tool_call": {
            "tool_name": "transfer_call",
            "tool_call_id": "t1",
            "parameters": {"target": "tel:+1"},
            "event_id": 13,
        },
    },
    {
        "type": "error",
        "error_event": {
            "code": 1008,
            "message": "m",
            "error_type": "override_error",
            "reason": "r",
        },
    },
]
EL_CLIENT = [
    {"user_audio_chunk": "AAAA"},
    {"type": "pong", "event_id": 7},
    {"type": "client_tool_result", "tool_call_id": "t1", "result": "ok", "is_error": False},
    {"type": "contextual_update", "text": "Caller pressed 5"},
    {"type": "user_activity"},
    {
        "type": "conversation_initiation_client_data",
        "conversation_config_override": {"agent": {"prompt": {"prompt": "You are …"}}},
        "dynamic_variables": {"caller_number": "+14155550123", "called_number": "+18005551212"},
        "source_info": {"source": "sip-gateway", "version": "0.1.0"},
    },
]


@pytest.mark.parametrize("sample", EL_SERVER, ids=lambda s: s["type"])
def test_elevenlabs_server_messages_round_trip(sample: dict[str, Any]) -> None:
    message = el.parse_server_message(json.dumps(sample))
    assert message is not None
    assert message.model_dump(exclude_none=True) == sample


@pytest.mark.parametrize("sample", EL_CLIENT, ids=lambda s: s.get("type", "audio"))
def test_elevenlabs_client_messages_round_trip(sample: dict[str, Any]) -> None:
    assert json.loads(el.parse_client_message(json.dumps(sample)).to_json()) == sample


def test_elevenlabs_formats_and_unknown() -> None:
    assert el.wire_format("ulaw_8000").encoding == "ulaw"
    assert el.wire_format("pcm_16000").rate == 16000
    assert el.parse_server_message('{"type":"vad_score","vad_score_event":{"vad_score":1}}') is None
    with pytest.raises(BridgeProtocolError):
        el.parse_client_message('{"type":"nonsense"}')


TWILIO_AGENT = [
    {"event": "media", "streamSid": "MZ1", "media": {"payload": "AAAA"}},
    {"event": "mark", "streamSid": "MZ1", "mark": {"name": "responsePart"}},
    {"event": "clear", "streamSid": "MZ1"},
]
TWILIO_GATEWAY = [
    {"event": "connected", "protocol": "Call", "version": "1.0.0"},
    {
        "event": "start",
        "sequenceNumber": "1",
        "start": {
            "accountSid": "AC1",
            "streamSid": "MZ1",
            "callSid": "CA1",
            "tracks": ["inbound"],
            "customParameters": {"From": "+14155550123"},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
        "streamSid": "MZ1",
    },
    {
        "event": "media",
        "sequenceNumber": "4",
        "media": {"track": "inbound", "chunk": "2", "timestamp": "5", "payload": "AAAA"},
        "streamSid": "MZ1",
    },
    {
        "event": "dtmf",
        "streamSid": "MZ1",
        "sequenceNumber": "5",
        "dtmf": {"track": "inbound_track", "digit": "1"},
    },
    {"event": "mark", "sequenceNumber": "4", "streamSid": "MZ1", "mark": {"name": "my label"}},
    {
        "event": "stop",
        "sequenceNumber": "5",
        "stop": {"accountSid": "AC1", "callSid": "CA1"},
        "streamSid": "MZ1",
    },
]


@pytest.mark.parametrize("sample", TWILIO_AGENT, ids=lambda s: s["event"])
def test_twilio_agent_messages_as_documented(sample: dict[str, Any]) -> None:
    parsed = custom.parse_twilio_agent_event(json.dumps(sample))
    assert parsed is not None and json.loads(parsed.to_json()) == sample


@pytest.mark.parametrize("sample", TWILIO_GATEWAY, ids=lambda s: s["event"])
def test_twilio_gateway_messages_as_documented(sample: dict[str, Any]) -> None:
    model = custom.TWILIO_GATEWAY_EVENTS[sample["event"]]
    assert json.loads(model.model_validate(sample).to_json()) == sample


def test_twilio_ignores_unknown_events() -> None:
    assert custom.parse_twilio_agent_event('{"event":"custom","x":1}') is None


def test_telepath_protocol_round_trip_and_schema_in_sync() -> None:
    start = custom.Start(
        call=custom.CallInfo(call_id="c", trunk_id="t", caller="+1", called="+2", codec="pcmu"),
        system_prompt="Be brief.",
        media_formats=[custom.MediaFormat(encoding="ulaw")],
    )
    assert custom.parse_gateway_message(start.to_json()) == start
    assert custom.parse_agent_message('{"type":"clear"}') == custom.Clear()
    with pytest.raises(BridgeProtocolError):
        custom.parse_agent_message('{"type":"audio","payload":"AA","extra":1}')
    path = Path(__file__).parents[3] / "docs" / "custom-agent-protocol.v1.schema.json"
    assert json.loads(path.read_text()) == json.loads(
        json.dumps(custom.protocol_schema(), sort_keys=True)
    )


@pytest.mark.parametrize(
    "target",
    ["TEL:+14155550123", "Sip:alice@example.com", "SIPS:bob@example.com", "+14155550123", "x y"],
)
def test_a_transfer_target_is_left_to_call_control(target: str) -> None:
    """Schemes are case-insensitive (RFC 3986 §3.1, RFC 3261 §19.1.4) and a target that is no
    URI at all is call control's to refuse ("invalid transfer target", the call goes on): the
    parser used to call all of these a malformed message, which ended the call."""
    text = json.dumps({"type": "transfer", "target": target})
    assert custom.parse_agent_message(text) == custom.Transfer(target=target)


@pytest.mark.parametrize("target", [5, None, ["sip:a@b"], "sip:" + "a" * 2045])
def test_a_transfer_target_must_be_a_string_of_bounded_length(target: object) -> None:
    with pytest.raises(BridgeProtocolError):
        custom.parse_agent_message(json.dumps({"type": "transfer", "target": target}))


def test_start_says_null_when_there_is_no_system_prompt() -> None:
    """docs/custom-agent-protocol.md lists ``system_prompt: string|null`` — always there, unlike
    the optional fields (``?``) — but a trunk without a prompt sent a start without the key."""
    call = custom.CallInfo(call_id="c", trunk_id="t", caller="+1", called="+2", codec="pcmu")
    start = custom.Start(
        call=call, system_prompt=None, media_formats=[custom.MediaFormat(encoding="ulaw")]
    )
    sent = json.loads(start.to_json())
    assert "system_prompt" in sent and sent["system_prompt"] is None
    assert "reconnect" not in sent and "sip_call_id" not in sent["call"]  # optional: left out
    assert custom.parse_gateway_message(start.to_json()) == start
    # and the fake agent's strict reading holds the gateway to it
    del sent["system_prompt"]
    with pytest.raises(BridgeProtocolError):
        custom.parse_gateway_message(json.dumps(sent))
    schema = custom.protocol_schema()["$defs"]["GatewayToAgent"]["$defs"]["Start"]
    assert "system_prompt" in schema["required"]


@pytest.mark.parametrize(
    ("table", "field"),
    [
        (oai.CLIENT_EVENTS, "type"),
        (oai.SERVER_EVENTS, "type"),
        (el.CLIENT_MESSAGES, "type"),
        (el.SERVER_MESSAGES, "type"),
        (custom.TWILIO_AGENT_EVENTS, "event"),
        (custom.TWILIO_GATEWAY_EVENTS, "event"),
    ],
)
def test_dispatch_tables_match_type_tags(table: dict[str, Any], field: str) -> None:
    for tag, model in table.items():
        annotation = model.model_fields[field].annotation
        assert annotation is not None and tag in annotation.__args__


@pytest.mark.parametrize(
    "text",
    [
        '{"event":"mark","sequenceNumber":5,"streamSid":"MZ1","mark":{"name":"m1"}}',
        '{"event":"media","streamSid":123,"media":{"payload":"AAAA"}}',
        '{"event":"clear","streamSid":{"x":1}}',
        '{"event":"mark","streamSid":null,"sequenceNumber":[1],"mark":{"name":"m2"}}',
    ],
)
def test_fields_twilio_ignores_do_not_end_the_call(text: str) -> None:
    """An agent built against Twilio may send a numeric sequenceNumber or any streamSid —
    Twilio ignores both (providers.md §4.3); they ended the call as a protocol error."""
    parsed = custom.parse_twilio_agent_event(text)
    assert parsed is not None and parsed.event == json.loads(text)["event"]


def test_what_twilio_needs_is_still_checked() -> None:
    with pytest.raises(BridgeProtocolError):
        custom.parse_twilio_agent_event('{"event":"mark","mark":{"name":5}}')
