from __future__ import annotations

import numpy as np
import pytest

from telepath.rtp.resample import Resampler

from .audio import dominant_hz, samples, tone

pytestmark = pytest.mark.unit

PAIRS = [(8000, 16000), (16000, 8000), (8000, 24000), (24000, 8000), (16000, 24000), (24000, 16000)]
# An ElevenLabs agent's other output rates (pcm_22050 / pcm_44100 / pcm_48000), down to a call's
PAIRS += [(22050, 8000), (44100, 8000), (48000, 8000), (22050, 16000), (44100, 16000)]


def _run(resampler: Resampler, pcm: bytes, chunk_samples: int) -> bytes:
    step = 2 * chunk_samples
    return b"".join(resampler.process(pcm[i : i + step]) for i in range(0, len(pcm), step))


def _burst(rate: int, centre_s: float) -> bytes:
    """A 1 kHz tone under a Gaussian envelope (5 ms wide) centred at ``centre_s``."""
    t = np.arange(int(rate * 0.2)) / rate
    env = np.exp(-(((t - centre_s) / 0.005) ** 2))
    return (10000 * env * np.sin(2 * np.pi * 1000 * (t - centre_s))).astype(np.int16).tobytes()


@pytest.mark.parametrize(("src", "dst"), PAIRS)
def test_tone_keeps_frequency_and_length(src: int, dst: int) -> None:
    out = _run(Resampler(src, dst), tone(1000, src, 1.0), src // 50)
    assert len(out) == 2 * dst  # exactly one second out for one second in
    assert dominant_hz(out, dst) == pytest.approx(1000, abs=2)


@pytest.mark.parametrize(("src", "dst"), PAIRS)
def test_added_delay_measured_on_a_tone_burst_is_about_2ms(src: int, dst: int) -> None:
    resampler = Resampler(src, dst)
    out = samples(_run(resampler, _burst(src, 0.1), src // 50))
    reference = samples(_burst(dst, 0.1))
    corr = np.correlate(out, reference, mode="full")
    lag = int(np.argmax(corr)) - (len(reference) - 1)
    measured_ms = lag * 1000 / dst
    assert measured_ms == pytest.approx(resampler.delay_ms, abs=1000 / dst + 0.05)
    assert measured_ms < 2.5  # soxr's streaming modes added 22-153 ms


@pytest.mark.parametrize(("src", "dst"), PAIRS)
def test_output_does_not_depend_on_chunking(src: int, dst: int) -> None:
    pcm = tone(700, src, 0.3)
    whole = _run(Resampler(src, dst), pcm, src // 50)
    odd = _run(Resampler(src, dst), pcm, 37)
    assert len(odd) == len(whole)
    # Same samples up to float rounding: numpy may sum a block's products in a different order
    # for different block sizes, which can flip the last bit of a rounded sample.
    diff = np.abs(samples(odd).astype(np.int32) - samples(whole).astype(np.int32))
    assert int(diff.max()) <= 1


@pytest.mark.parametrize("src", [24000, 22050, 44100, 48000])
def test_anti_aliasing_rejects_a_6khz_tone_going_to_8khz(src: int) -> None:
    """Above the telephone band nothing folds back into it — from 22.05/44.1/48 kHz too, which
    went through audioop.ratecv (interpolation, no filter: a 6 kHz tone came out near full
    level, as a 2 kHz one)."""
    out = samples(_run(Resampler(src, 8000), tone(6000, src, 0.5, amplitude=16000), src // 50))
    rms = np.sqrt(np.mean(out[200:] ** 2))
    assert 20 * np.log10(max(rms, 1e-3) / 32768) < -60


def test_same_rate_passes_through_and_bad_rates_are_refused() -> None:
    pcm = tone(440, 8000, 0.02)
    assert Resampler(8000, 8000).process(pcm) == pcm
    assert Resampler(8000, 8000).delay_ms == 0.0
    with pytest.raises(ValueError):
        Resampler(8000, 11025)
