"""The per-frame fast path: hand-built audio messages, shortcut parsers and the take-now rules."""

from __future__ import annotations

import base64
import json
import os

import pytest

from telepath.bridges.audio import AudioConverter, WireFormat
from telepath.bridges.base import AgentAudio, AgentHangup, AgentMark, BridgeReason, CustomConfig
from telepath.bridges.base import BridgeProtocolError as ProtocolError
from telepath.bridges.custom import events as cev
from telepath.bridges.custom.bridge import TelepathAgentBridge, TwilioStreamBridge
from telepath.bridges.elevenlabs import events as eev
from telepath.bridges.openai import events as oev

pytestmark = pytest.mark.unit

# random bytes, ids by length: every process collecting the tests names them alike
PAYLOADS = [
    pytest.param(base64.b64encode(os.urandom(n)).decode(), id=f"{n}-bytes")
    for n in (0, 1, 2, 3, 160, 320)
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_hand_built_audio_messages_match_the_models_byte_for_byte(payload: str) -> None:
    assert cev.gateway_audio_json(7, 140, payload) == (
        cev.GatewayAudio(seq=7, timestamp_ms=140, payload=payload).to_json()
    )
    assert oev.input_audio_append_json(payload) == (
        oev.InputAudioBufferAppend(audio=payload).to_json()
    )
    assert eev.user_audio_chunk_json(payload) == (
        eev.UserAudioChunk(user_audio_chunk=payload).to_json()
    )


async def test_twilio_media_message_matches_the_model_byte_for_byte() -> None:
    bridge = TwilioStreamBridge(CustomConfig(endpoint="ws://127.0.0.1:1/", protocol="twilio"))
    bridge.stream_sid = 'MZ"odd\\sid'  # whatever the SID, it is escaped like the model does
    bridge._sid_json = json.dumps(bridge.stream_sid)
    bridge._converter = AudioConverter("pcmu", WireFormat("ulaw", 8000))
    frame = os.urandom(160)
    text = bridge._audio_message(frame)
    expected = cev.TwMedia(
        sequenceNumber="1",
        media=cev.TwMediaOut(chunk="1", timestamp="0", payload=base64.b64encode(frame).decode()),
        streamSid=bridge.stream_sid,
    ).to_json()
    assert text == expected
    second = bridge._audio_message(frame)
    assert second is not None
    assert json.loads(second)["media"]["timestamp"] == "20"


TELEPATH_CASES = [
    '{"type":"audio","payload":"AAEC"}',
    '{"payload":"AAEC","type":"audio"}',
    '{"type":"audio","payload":""}',
    '{"type":"audio","payload":"AAEC","extra":1}',  # strict protocol: unknown field
    '{"type":"audio","payload":5}',
    '{"type":"audio"}',
    '{"type":"mark","name":"m1"}',
    '{"type":"clear"}',
    '["audio","AAEC"]',
    '"audio"',
    "{oops",
    '{"type":"Audio","payload":"AAEC"}',
    '{"type":"audio","payload":"}',  # the compact prefix, but not JSON
    '{"type":"audio","payload":""}',
    '{"type":"audio","payload":"AA\nEC"}',  # a raw control character: not JSON
    '{"type":"audio","payload":"AA\\u0045C"}',  # an escape: JSON decodes it
    '{"type":"audio","payload":"AAEC","x":"}',
    '{"type":"audio","payload":"AA"}EC"}',
    '{"type":"audio","payload":"AAEC"} ',
]


TWILIO_CASES = [
    '{"event":"media","streamSid":"MZ1","media":{"payload":"AAEC"}}',
    '{"event":"media","media":{"payload":"AAEC","track":"outbound"},"x":1}',
    '{"event":"media","streamSid":null,"media":{"payload":"AAEC"}}',
    '{"event":"media","streamSid":5,"media":{"payload":"AAEC"}}',
    '{"event":"media","media":{"payload":7}}',
    '{"event":"media","media":"AAEC"}',
    '{"event":"media"}',
    '{"event":"mark","mark":{"name":"m"}}',
    '{"event":"clear"}',
    "[]",
    "{oops",
]


def _strict_payload(protocol: str, text: str) -> str | None:
    """The audio payload the strict parser finds in ``text``, None for anything else."""
    try:
        if protocol == "telepath":
            message: object = cev.parse_agent_message(text)
            return message.payload if isinstance(message, cev.AgentAudioMessage) else None
        event = cev.parse_twilio_agent_event(text)
        return event.media.payload if isinstance(event, cev.TwAgentMedia) else None
    except ProtocolError:
        return None


SHORTCUTS = {"telepath": cev.agent_audio_payload, "twilio": cev.twilio_media_payload}


@pytest.mark.parametrize(
    ("protocol", "text"),
    [("telepath", t) for t in TELEPATH_CASES] + [("twilio", t) for t in TWILIO_CASES],
)
def test_shortcut_takes_exactly_what_the_strict_parser_calls_audio(
    protocol: str, text: str
) -> None:
    assert SHORTCUTS[protocol](text) == _strict_payload(protocol, text)


async def _ready_bridge() -> tuple[TelepathAgentBridge, list[AgentAudio]]:
    bridge = TelepathAgentBridge(CustomConfig(endpoint="ws://127.0.0.1:1/"))
    bridge._converter = AudioConverter("pcmu", WireFormat("ulaw", 8000))
    taken: list[AgentAudio] = []
    bridge.set_audio_sink(taken.append)
    return bridge, taken


AUDIO = '{"type":"audio","payload":"' + base64.b64encode(b"\x01\x02\x03").decode() + '"}'


async def test_take_now_delivers_well_formed_audio_to_the_sink() -> None:
    bridge, taken = await _ready_bridge()
    assert bridge._take_now(AUDIO)
    assert taken == [AgentAudio(b"\x01\x02\x03")]


@pytest.mark.parametrize(
    "text",
    [
        '{"type":"audio","payload":"not base64!"}',  # the strict path ends the session for it
        '{"type":"mark","name":"m1"}',
        '{"type":"audio","payload":"AAEC","extra":1}',
    ],
)
async def test_take_now_declines_anything_but_clean_audio(text: str) -> None:
    bridge, taken = await _ready_bridge()
    assert not bridge._take_now(text)
    assert not bridge._take_now(text.encode())
    assert taken == []


async def test_take_now_keeps_the_agents_order_and_respects_the_session_state() -> None:
    bridge, taken = await _ready_bridge()
    await bridge._emit(AgentMark("m1"))  # call control has not read this yet
    assert not bridge._take_now(AUDIO)  # so the audio queues behind it
    bridge._events.clear()
    bridge._handling = True  # the read loop is inside a message (it may be waiting)
    assert not bridge._take_now(AUDIO)
    bridge._handling = False
    bridge.set_audio_sink(None)
    assert not bridge._take_now(AUDIO)
    bridge.set_audio_sink(taken.append)
    bridge._finish(AgentHangup(BridgeReason.AGENT_HANGUP))
    assert not bridge._take_now(AUDIO)
    assert taken == []


async def test_take_now_waits_for_ready() -> None:
    bridge, taken = await _ready_bridge()
    bridge._converter = None  # before ``ready`` the strict path says "audio before ready"
    assert not bridge._take_now(AUDIO)
    assert taken == []
