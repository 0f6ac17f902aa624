"""Signal helpers shared by the media tests: tone generation and FFT peak/SNR checks."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def tone(freq_hz: float, rate_hz: int, seconds: float, amplitude: float = 8000.0) -> bytes:
    """A sine tone as native-endian PCM16."""
    t = np.arange(int(rate_hz * seconds)) / rate_hz
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.int16).tobytes()


def samples(pcm: bytes) -> npt.NDArray[np.float64]:
    """PCM16 bytes as float samples."""
    return np.frombuffer(pcm, dtype=np.int16).astype(np.float64)


def dominant_hz(pcm: bytes, rate_hz: int) -> float:
    """The frequency of the strongest FFT bin (Hann-windowed)."""
    x = samples(pcm)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    spectrum[0] = 0
    return float(np.argmax(spectrum) * rate_hz / len(x))


def snr_db(reference: bytes, decoded: bytes, delay: int = 0) -> float:
    """SNR of ``decoded`` against ``reference`` after removing ``delay`` samples of lag."""
    ref = samples(reference)
    out = samples(decoded)[delay:]
    n = min(len(ref), len(out))
    err = out[:n] - ref[:n]
    return float(10 * np.log10(np.sum(ref[:n] ** 2) / max(np.sum(err**2), 1e-9)))
