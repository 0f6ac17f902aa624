"""Test tones: sine waves as PCM16 or G.711, and an FFT check of the dominant frequency.

Generation uses only the stdlib (the fakes run inside the gateway's process in tests and
benchmarks). The FFT check needs NumPy, a development dependency, imported lazily.
"""

from __future__ import annotations

import math
import struct

from telepath.bridges.audio import AudioConverter, WireFormat
from telepath.bridges.base import Codec

__all__ = ["dominant_frequency", "g711_to_pcm16", "sine_g711", "sine_pcm16"]


def sine_pcm16(
    freq_hz: float, duration_ms: int, rate: int = 8000, amplitude: float = 0.5, phase: int = 0
) -> bytes:
    """A sine tone as PCM16 little-endian mono.

    Args:
        freq_hz: tone frequency.
        duration_ms: length in milliseconds.
        rate: sample rate in Hz.
        amplitude: peak level, 0..1 of full scale.
        phase: index of the first sample (to continue a tone across chunks without clicks).
    """
    count = rate * duration_ms // 1000
    peak = amplitude * 32767
    samples = (
        round(peak * math.sin(2 * math.pi * freq_hz * (phase + n) / rate)) for n in range(count)
    )
    return struct.pack(f"<{count}h", *samples)


def sine_g711(
    freq_hz: float, duration_ms: int, codec: Codec = "pcmu", amplitude: float = 0.5, phase: int = 0
) -> bytes:
    """A sine tone as 8 kHz G.711 (μ-law for ``pcmu``, A-law for ``pcma``)."""
    pcm = sine_pcm16(freq_hz, duration_ms, 8000, amplitude, phase)
    return AudioConverter(codec, WireFormat("pcm16", 8000)).from_agent(pcm)


def g711_to_pcm16(data: bytes, codec: Codec = "pcmu") -> bytes:
    """Decode 8 kHz G.711 to PCM16."""
    return AudioConverter(codec, WireFormat("pcm16", 8000)).to_agent(data)


def dominant_frequency(pcm16: bytes, rate: int = 8000) -> float:
    """The strongest frequency in a PCM16 signal, in Hz (Hann window, real FFT).

    Resolution is ``rate / samples``: 250 ms at 8 kHz resolves 4 Hz.
    """
    import numpy as np

    samples = np.frombuffer(pcm16, dtype="<i2").astype(np.float64)
    if samples.size < 2:
        raise ValueError("need at least two samples")
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    spectrum[0] = 0.0  # ignore DC
    return float(np.argmax(spectrum) * rate / samples.size)
