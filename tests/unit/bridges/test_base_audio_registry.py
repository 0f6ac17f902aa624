"""Bridge contract pieces: reasons, errors, playout estimate, audio conversion, registry."""

from __future__ import annotations

import numpy as np
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
from telepath.calls.call import bridge_reason
from telepath.calls.model import DisconnectReason
from telepath.errors import ConfigurationError, TelepathError
from telepath.testing.tones import dominant_frequency, g711_to_pcm16, sine_g711, sine_pcm16

pytestmark = pytest.mark.unit


def test_reasons_are_the_call_record_vocabulary() -> None:
    for reason in BridgeReason:
        assert DisconnectReason(reason.value)


def test_the_agent_is_told_the_reason_the_record_gets() -> None:
    # README: the custom agent's stop.reason is the record's disconnect_reason, for every
    # reason a call ends with (lost is only a dead process's calls, found by a sweep)
    for reason in DisconnectReason:
        told = bridge_reason(reason)
        assert told.value == (reason.value if reason != DisconnectReason.LOST else "unknown")


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


@pytest.mark.parametrize("rate", [8000, 16000])
def test_a_restarted_agent_stream_starts_on_a_whole_sample_with_a_fresh_filter(rate: int) -> None:
    """After a barge-in's clear (or on a new agent connection) the agent's audio starts afresh:
    half a sample kept from the cut turn would shift every later sample by a byte (a 440 Hz
    tone came out dominated by 840 Hz), and the resampler's history would play the cut turn's
    tail into the new one. The caller's direction is not touched."""
    converter = AudioConverter("pcmu", WireFormat("pcm16", rate))
    converter.from_agent(b"\x10\x20\x30")  # a sample and a half: half of one is kept
    converter.restart_from_agent()
    tone = converter.from_agent(sine_pcm16(440, 500, rate))
    assert len(tone) == 500 * 8
    assert dominant_frequency(g711_to_pcm16(tone)) == pytest.approx(440, abs=8)
    if rate != 8000:  # the 16 -> 8 kHz low-pass filter's history goes too
        converter.from_agent(sine_pcm16(1000, 100, rate, amplitude=0.9))
        converter.restart_from_agent()
        assert converter.from_agent(bytes(640)) == b"\xff" * 160  # μ-law silence, no tail
    caller = sine_g711(1000, 40)
    whole = AudioConverter("pcmu", WireFormat("pcm16", rate)).to_agent(caller)
    first = converter.to_agent(caller[:160])
    converter.restart_from_agent()
    assert first + converter.to_agent(caller[160:]) == whole


def _level_db(pcm: bytes, rate: int, hz: float) -> float:
    """Spectral level at ``hz`` relative to the strongest component, in dB (Hann window)."""
    samples = np.frombuffer(pcm, "<i2").astype(np.float64)[rate // 10 :]  # past the filter's start
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    freqs = np.fft.rfftfreq(len(samples), 1 / rate)
    near = spectrum[np.abs(freqs - hz) < 50].max()
    return float(20 * np.log10(near / spectrum.max()))


def test_a_wideband_call_takes_16_khz_pcm_both_ways_without_images() -> None:
    """A wideband converter's call side is 16 kHz PCM16: a 16 kHz agent's audio passes as it
    is (whole samples only, a split one carried to the next message); an 8 kHz agent's is
    upsampled through the low-pass filter — linear interpolation would leave a 3 kHz tone's
    image at 5 kHz only ~13 dB down — and so is the caller's to a 24 kHz agent."""
    same = AudioConverter("pcmu", WireFormat("pcm16", 16000), wideband=True)
    assert same.passthrough
    data = sine_pcm16(6000, 100, 16000)
    assert same.to_agent(data) == data
    split = [same.from_agent(data[:101]), same.from_agent(data[101:])]
    assert [len(part) % 2 for part in split] == [0, 0] and b"".join(split) == data

    narrow = AudioConverter("pcmu", WireFormat("ulaw", 8000), wideband=True)
    tone = sine_g711(3000, 1000)
    up = b"".join(narrow.from_agent(tone[i : i + 160]) for i in range(0, len(tone), 160))
    assert len(up) == 1000 * 32  # 1 s of 16 kHz PCM16
    assert dominant_frequency(up, 16000) == pytest.approx(3000, abs=16)
    assert _level_db(up, 16000, 5000) < -50

    openai = AudioConverter("pcmu", WireFormat("pcm16", 24000), wideband=True)
    caller = sine_pcm16(6000, 1000, 16000)
    wide = b"".join(openai.to_agent(caller[i : i + 640]) for i in range(0, len(caller), 640))
    assert len(wide) == 1000 * 48
    assert dominant_frequency(wide, 24000) == pytest.approx(6000, abs=24)
    assert _level_db(wide, 24000, 10000) < -50  # 16 kHz - 6 kHz: the image interpolation leaves


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


@pytest.mark.parametrize("rate", [22050, 44100, 48000])
def test_an_agent_s_22_44_or_48_khz_audio_does_not_fold_into_the_phone_band(rate: int) -> None:
    """ElevenLabs' pcm_22050 / pcm_44100 / pcm_48000 agents: their audio goes to the call
    through the low-pass filter like 16 and 24 kHz audio — through audioop.ratecv (no filter)
    a 6 kHz sibilant came out near full level as a 2 kHz whistle."""
    converter = AudioConverter("pcmu", WireFormat("pcm16", 8000), WireFormat("pcm16", rate))
    speech = converter.from_agent(sine_pcm16(1000, 500, rate))
    hiss = converter.from_agent(sine_pcm16(6000, 500, rate))
    speech_pcm, hiss_pcm = g711_to_pcm16(speech, "pcmu"), g711_to_pcm16(hiss, "pcmu")
    assert dominant_frequency(speech_pcm) == pytest.approx(1000, abs=8)

    def rms(pcm: bytes) -> float:
        return float(np.sqrt(np.mean(np.frombuffer(pcm, "<i2")[400:].astype(np.float64) ** 2)))

    assert rms(hiss_pcm) < rms(speech_pcm) / 100  # > 40 dB down (μ-law's own floor is near)
