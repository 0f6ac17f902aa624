"""Bridge contract pieces: reasons, errors, playout estimate, audio conversion, registry."""

from __future__ import annotations

import pytest

from telepath.bridges.audio import AudioConverter, WireFormat, duration_ms
from telepath.bridges.base import (
    AgentDisconnected,
    AgentError,
    AgentHangup,
    AgentMark,
    BridgeAuthError,
    BridgeReason,
    CustomConfig,
    ElevenLabsConfig,
    OpenAIConfig,
    RealTimePlayout,
    is_terminal,
)
from telepath.bridges.custom.bridge import TelepathAgentBridge, TwilioStreamBridge
from telepath.bridges.elevenlabs.bridge import ElevenLabsBridge
from telepath.bridges.openai.bridge import OpenAIRealtimeBridge
from telepath.bridges.registry import create_bridge
from telepath.calls.model import DisconnectReason
from telepath.errors import ConfigurationError, TelepathError
from telepath.testing.tones import dominant_frequency, g711_to_pcm16, sine_g711, sine_pcm16

pytestmark = pytest.mark.unit


def test_reasons_are_the_call_record_vocabulary() -> None:
    for reason in BridgeReason:
        assert DisconnectReason(reason.value)


def test_errors_carry_reason_and_retryable() -> None:
    err = BridgeAuthError("rejected (HTTP 401)", code="401")
    assert isinstance(err, TelepathError)
    assert (err.reason, err.retryable) == (BridgeReason.CONNECTION_FAILED, False)
    assert err.to_event() == AgentError(
        BridgeReason.CONNECTION_FAILED, "rejected (HTTP 401)", False, "401"
    )


def test_terminal_events() -> None:
    assert is_terminal(AgentHangup())
    assert is_terminal(AgentDisconnected(BridgeReason.CALLER_HANGUP))
    assert not is_terminal(AgentMark("x"))


def test_secrets_stay_out_of_repr() -> None:
    assert "sk-secret" not in repr(OpenAIConfig(api_key="sk-secret"))
    assert "tok" not in repr(CustomConfig("wss://a", headers={"Authorization": "tok"}))


def test_real_time_playout_models_a_fifo() -> None:
    now = [100.0]  # binary-exact steps avoid float rounding
    playout = RealTimePlayout(lambda: now[0])
    playout.emitted(1000)  # 1 s queued at t=100
    now[0] = 100.25
    assert playout() == 250
    now[0] = 105.0  # idle for a while: everything played
    assert playout() == 1000
    playout.emitted(200)
    assert playout() == 1000
    playout.cleared()
    assert playout() == 0


@pytest.mark.parametrize("codec", ["pcmu", "pcma"])
def test_g711_passthrough_and_conversion(codec: str) -> None:
    frame = sine_g711(1000, 20, codec)  # type: ignore[arg-type]
    same = AudioConverter(codec, WireFormat.for_codec(codec))  # type: ignore[arg-type]
    assert same.passthrough and same.to_agent(frame) == frame
    wide = AudioConverter(codec, WireFormat("pcm16", 16000))  # type: ignore[arg-type]
    up = b"".join(wide.to_agent(frame) for _ in range(10))
    assert dominant_frequency(up, 16000) == pytest.approx(1000, abs=16)
    back = wide.from_agent(sine_pcm16(440, 500, 16000)[:-1]) + wide.from_agent(b"\x00")
    assert duration_ms(back, WireFormat("ulaw")) == pytest.approx(500, abs=2)
    assert dominant_frequency(g711_to_pcm16(back, codec)) == pytest.approx(440, abs=8)  # type: ignore[arg-type]


def test_registry_builds_each_bridge() -> None:
    assert isinstance(create_bridge("openai", OpenAIConfig(api_key="k")), OpenAIRealtimeBridge)
    assert isinstance(
        create_bridge("elevenlabs", ElevenLabsConfig(api_key=None, agent_id="a")), ElevenLabsBridge
    )
    assert isinstance(create_bridge("custom", CustomConfig("wss://a")), TelepathAgentBridge)
    twilio = create_bridge("custom", CustomConfig("wss://a", protocol="twilio"))
    assert isinstance(twilio, TwilioStreamBridge)
    with pytest.raises(ConfigurationError):
        create_bridge("retell", CustomConfig("wss://a"))
    with pytest.raises(ConfigurationError):
        create_bridge("openai", CustomConfig("wss://a"))
