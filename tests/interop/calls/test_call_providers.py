"""One real call per provider kind and codec: SIPp dials with MD5 digest, the caller's 1 kHz tone
reaches the agent (FFT) and the agent's 440 Hz tone reaches the caller (FFT), and the record
says how the call went."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from telepath.bridges.custom.events import MediaFormat
from telepath.bridges.elevenlabs.events import AudioFormat
from telepath.cli.gateway import Gateway
from telepath.testing.fake_custom import FakeTelepathAgent, FakeTwilioAgent
from telepath.testing.fake_elevenlabs import FakeElevenLabs
from telepath.testing.fake_openai import FakeOpenAIRealtime
from telepath.testing.tones import dominant_frequency, g711_to_pcm16
from tests.certs import self_signed
from tests.integration.conftest import Api
from tests.interop.calls.conftest import create_trunk, hung_up, provider_trunk
from tests.interop.calls.harness import Phone, place_call

pytestmark = pytest.mark.interop

PASSWORD = "correct-horse-9"
CALLER_HZ = 1000
AGENT_HZ = 440


async def _call(
    api: Api,
    gateway: Gateway,
    tmp: Path,
    *,
    formats: str = "0 8 101",
    pt: int = 0,
    caller_hz: float = CALLER_HZ,
) -> tuple[Phone, dict[str, Any]]:
    """Dial the trunk ``alice``, send 2 s of tone, hang up; return the phone and the record."""
    placed = await place_call(gateway, tmp, "alice", PASSWORD, hold_ms=2500, formats=formats)
    placed.phone.start_tone(placed.rtp, caller_hz, 2.0, pt=pt)
    detail = await hung_up(api, gateway, placed)
    assert detail["error_message"] is None
    assert detail["answer_time"] is not None and detail["end_time"] is not None
    assert detail["metrics"]["packet_loss_percent"] == 0
    assert detail["metrics"]["gateway_processing_ms"] is not None
    assert "Digest <redacted>" in detail["sip_trace"]
    assert 'response="' not in detail["sip_trace"]
    assert gateway.manager.ports.in_use == 0
    return placed.phone, detail


def _heard(caller_audio: bytes | bytearray, codec: str = "pcmu") -> float:
    pcm = g711_to_pcm16(bytes(caller_audio), "pcma" if codec == "pcma" else "pcmu")
    assert len(pcm) > 8000 * 2 // 2  # more than 0.5 s reached the agent
    return dominant_frequency(pcm)


@pytest.fixture(params=["ws", "wss"])
def tls(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> ssl.SSLContext | None:
    """The provider over plain WebSocket/HTTP, or over TLS as the real ones are, its certificate
    trusted through ``SSL_CERT_FILE`` (as a private CA would be)."""
    if request.param == "ws":
        return None
    cert, key = self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    return context


async def test_openai(
    api: Api, gateway: Gateway, tmp_path: Path, tls: ssl.SSLContext | None
) -> None:
    fake = FakeOpenAIRealtime(agent="tone", tone_hz=AGENT_HZ, response_ms=1500)
    fake.tls = tls
    async with fake:
        assert fake.url.startswith("wss://" if tls else "ws://")
        await provider_trunk(api, gateway, fake, PASSWORD)
        phone, detail = await _call(api, gateway, tmp_path)
    assert fake.protocol_errors == []
    assert fake.handshakes[0].headers["authorization"] == "Bearer sk-valid-test-key"
    assert fake.session is not None
    assert fake.session["audio"]["input"]["format"]["type"] == "audio/pcmu"
    assert abs(_heard(fake.caller_audio) - CALLER_HZ) < 15
    assert abs(phone.dominant(0) - AGENT_HZ) < 15
    assert detail["ai_provider"] == "openai"
    assert detail["metrics"]["codec_used"] == "PCMU"


async def test_elevenlabs(
    api: Api, gateway: Gateway, tmp_path: Path, tls: ssl.SSLContext | None
) -> None:
    fake = FakeElevenLabs(agent="tone", tone_hz=AGENT_HZ, response_ms=1500)
    fake.tls = tls  # the signed-URL request over https, the conversation over wss
    async with fake:
        assert fake.base_http.startswith("https://" if tls else "http://")
        await provider_trunk(api, gateway, fake, PASSWORD)
        phone, detail = await _call(api, gateway, tmp_path)
    assert fake.protocol_errors == []
    assert "conversation_signature" in fake.handshakes[0].path  # came through the signed URL
    assert abs(_heard(fake.caller_audio) - CALLER_HZ) < 15
    assert abs(phone.dominant(0) - AGENT_HZ) < 15
    assert detail["ai_provider"] == "elevenlabs"


async def test_custom_twilio(api: Api, gateway: Gateway, tmp_path: Path) -> None:
    async with FakeTwilioAgent(agent="tone", tone_hz=AGENT_HZ, response_ms=1500) as agent:
        await create_trunk(
            api,
            "alice",
            PASSWORD,
            ai_provider="custom",
            custom_endpoint=agent.url,
            custom_protocol="twilio",
        )
        phone, detail = await _call(api, gateway, tmp_path)
    assert agent.protocol_errors == []
    assert [m["event"] for m in agent.received[:2]] == ["connected", "start"]
    assert agent.stops  # the gateway said goodbye with "stop"
    assert abs(_heard(agent.caller_audio) - CALLER_HZ) < 15
    assert abs(phone.dominant(0) - AGENT_HZ) < 15
    assert detail["ai_provider"] == "custom"


async def test_pcma_only_offer(api: Api, gateway: Gateway, tmp_path: Path) -> None:
    """A PCMA-only offer: the gateway answers PCMA, OpenAI is told audio/pcma, A-law both ways."""
    async with FakeOpenAIRealtime(agent="tone", tone_hz=AGENT_HZ, response_ms=1500) as fake:
        await provider_trunk(api, gateway, fake, PASSWORD)
        phone, detail = await _call(api, gateway, tmp_path, formats="8 101", pt=8)
    assert fake.protocol_errors == []
    assert fake.session is not None
    assert fake.session["audio"]["output"]["format"]["type"] == "audio/pcma"
    assert abs(_heard(fake.caller_audio, "pcma") - CALLER_HZ) < 15
    assert phone.frames(0) == []  # nothing in PCMU
    assert abs(phone.dominant(8) - AGENT_HZ) < 15
    assert detail["metrics"]["codec_used"] == "PCMA"


async def test_g722_offer(api: Api, gateway: Gateway, tmp_path: Path) -> None:
    """A G.722 offer: wideband on the wire, 8 kHz μ-law to the agent, tones survive both ways."""
    async with FakeTwilioAgent(agent="tone", tone_hz=AGENT_HZ, response_ms=1500) as agent:
        await create_trunk(
            api,
            "alice",
            PASSWORD,
            ai_provider="custom",
            custom_endpoint=agent.url,
            custom_protocol="twilio",
        )
        phone, detail = await _call(api, gateway, tmp_path, formats="9 101", pt=9)
    assert agent.protocol_errors == []
    assert abs(_heard(agent.caller_audio) - CALLER_HZ) < 15
    assert phone.frames(0) == [] and phone.frames(9)
    assert abs(phone.dominant(9) - AGENT_HZ) < 15
    assert detail["metrics"]["codec_used"] == "G722"


@pytest.mark.parametrize(
    ("rate", "heard_hz", "agent_hz"), [(16000, 6000, 6000), (8000, None, AGENT_HZ)]
)
async def test_g722_caller_reaches_a_16_khz_agent_in_full(
    api: Api, gateway: Gateway, tmp_path: Path, rate: int, heard_hz: float | None, agent_hz: int
) -> None:
    """A 6 kHz tone — beyond what 8 kHz audio can carry — from a G.722 caller reaches an agent
    that chose pcm16 at 16 kHz, and that agent's 6 kHz tone reaches the caller; an agent at
    8 kHz hears only its band (no 6 kHz, no alias)."""
    chosen = MediaFormat(encoding="pcm16", sample_rate=rate)
    async with FakeTelepathAgent(agent="tone", tone_hz=agent_hz, media_format=chosen) as agent:
        await create_trunk(api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=agent.url)
        phone, _ = await _call(api, gateway, tmp_path, formats="9 101", pt=9, caller_hz=6000)
    assert agent.protocol_errors == []
    pcm = bytes(agent.caller_audio)
    assert len(pcm) >= rate * 2  # about 2 s of the caller reached the agent
    # the agent's media timestamps follow the audio, not its byte count
    audio = [m for m in agent.received if m["type"] == "audio"]
    assert audio[-1]["timestamp_ms"] == (len(audio) - 1) * 20
    if heard_hz is not None:
        assert abs(dominant_frequency(pcm, rate) - heard_hz) < 30
    else:
        samples = np.frombuffer(pcm, "<i2").astype(np.float64)
        rms = float(np.sqrt(np.mean(samples**2))) / 32768
        assert rms < 0.01  # a 6 kHz tone has nothing below 4 kHz: filtered out, not folded in
    assert abs(phone.dominant(9) - agent_hz) < 15  # and the agent's tone reaches the caller


async def test_g722_call_to_openai_is_wideband_both_ways(
    api: Api, gateway: Gateway, tmp_path: Path
) -> None:
    """A G.722 caller and OpenAI Realtime: the session is audio/pcm at 24 kHz, the caller's
    6 kHz tone reaches the model and the model's 6 kHz tone reaches the caller (G.711 would
    have cut both at 4 kHz)."""
    async with FakeOpenAIRealtime(agent="tone", tone_hz=6000, response_ms=1500) as fake:
        await provider_trunk(api, gateway, fake, PASSWORD)
        phone, detail = await _call(api, gateway, tmp_path, formats="9 101", pt=9, caller_hz=6000)
    assert fake.protocol_errors == []
    assert fake.session is not None
    assert fake.session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    pcm = bytes(fake.caller_audio)
    assert len(pcm) >= 24000 * 2  # about 2 s of the caller at 24 kHz
    assert abs(dominant_frequency(pcm, 24000) - 6000) < 30
    assert abs(phone.dominant(9) - 6000) < 15
    assert detail["metrics"]["codec_used"] == "G722"
    # the record counts the agent's answer in milliseconds of audio, not in bytes of PCM16
    agent_turns = [t for t in detail["turns"] if t["speaker"] == "agent"]
    assert agent_turns and 1400 <= agent_turns[0]["duration_ms"] <= 1500


async def test_g722_call_to_a_16_khz_elevenlabs_agent_is_wideband_both_ways(
    api: Api, gateway: Gateway, tmp_path: Path
) -> None:
    formats: tuple[AudioFormat, AudioFormat] = ("pcm_16000", "pcm_16000")
    async with FakeElevenLabs(agent="tone", tone_hz=6000, response_ms=1500, formats=formats) as f:
        await provider_trunk(api, gateway, f, PASSWORD)
        phone, _ = await _call(api, gateway, tmp_path, formats="9 101", pt=9, caller_hz=6000)
    assert f.protocol_errors == []
    assert abs(dominant_frequency(bytes(f.caller_audio), 16000) - 6000) < 30
    assert abs(phone.dominant(9) - 6000) < 15
