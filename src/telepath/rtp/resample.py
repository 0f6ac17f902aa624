"""Low-delay streaming resampling between 8, 16 and 24 kHz (PCM16 mono) with a polyphase FIR —
and from an ElevenLabs agent's other output rates, 22.05, 44.1 and 48 kHz.

Why our own filter: soxr's streaming modes buffer 22-153 ms (or alias badly in QQ mode), and
libsamplerate's ``sinc_fastest`` costs 23-40 µs per 20 ms frame with 2.5 ms lag
(``reference/sip-stack.md`` §3.11). A linear-phase Kaiser-windowed FIR run as a rational L/M
polyphase filter emits output for every input chunk with a fixed group delay of about 2 ms and
costs a few tens of µs per 20 ms frame in numpy. Measured figures are in ``bench/media_codecs.py``
and asserted (delay) in ``tests/unit/rtp/test_resample.py``.

Design: cut-off at the Nyquist frequency of the lower rate, transition band 30 % of that
(3.4-4.6 kHz around 4 kHz for 8 kHz), 80 dB Kaiser design. Energy between 4 and
4.6 kHz that survives the transition folds back above 3.4 kHz, outside the telephone band.
Each :class:`Resampler` is stateful (filter history and phase), one per stream direction.

A ratio with a large interpolation factor (44.1 kHz -> 8 kHz is 80/441) computes only the
outputs it needs — one window and one filter phase each — rather than every position on the
upsampled grid (80 times the input rate): the same filter, for a few hundred µs per frame.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import as_strided

SUPPORTED_RATES = (8000, 16000, 24000)
# Also taken: an agent's other PCM rates (ElevenLabs pcm_22050 / pcm_44100 / pcm_48000).
RESAMPLED_RATES = (*SUPPORTED_RATES, 22050, 44100, 48000)
_GATHER_FROM_UP = 8  # an interpolation factor past which only the needed outputs are computed
_STOPBAND_DB = 80.0
_TRANSITION = 0.3  # fraction of the lower Nyquist frequency


def _design(up: int, down: int) -> npt.NDArray[np.float64]:
    """Return the prototype low-pass filter at the upsampled rate, gain ``up`` in the passband."""
    # Frequencies normalised to the upsampled rate (1.0 == that rate).
    cutoff = 0.5 / max(up, down)
    width = _TRANSITION * cutoff
    # Kaiser's formulas (A > 50 dB).
    beta = 0.1102 * (_STOPBAND_DB - 8.7)
    taps = math.ceil((_STOPBAND_DB - 7.95) / (14.36 * width)) + 1
    taps += -taps % up  # a whole number of taps per phase
    n = np.arange(taps) - (taps - 1) / 2
    h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(taps, beta)
    result: npt.NDArray[np.float64] = h * (up / h.sum())
    return result


class Resampler:
    """Streaming PCM16 resampler between two of 8000, 16000, 22050, 24000, 44100, 48000 Hz.

    Args:
        from_rate: input sample rate in Hz.
        to_rate: output sample rate in Hz.

    Raises:
        ValueError: a rate is not supported.
    """

    def __init__(self, from_rate: int, to_rate: int) -> None:
        if from_rate not in RESAMPLED_RATES or to_rate not in RESAMPLED_RATES:
            raise ValueError(f"resampling supports only {', '.join(map(str, RESAMPLED_RATES))} Hz")
        self.from_rate = from_rate
        self.to_rate = to_rate
        ratio = Fraction(to_rate, from_rate)
        self._up = ratio.numerator
        self._down = ratio.denominator
        self._passthrough = from_rate == to_rate
        h = _design(self._up, self._down) if not self._passthrough else np.ones(1)
        taps_per_phase = len(h) // self._up
        self._k = taps_per_phase
        # phases[p][j] = h[p + j*up]; reversed so a window of input in time order dots with it.
        phases = h.reshape(taps_per_phase, self._up).T
        self._phases = np.ascontiguousarray(phases[:, ::-1], dtype=np.float32)
        self._history = np.zeros(taps_per_phase - 1, dtype=np.float32)
        self._position = 0  # next output position on the upsampled grid, relative to this chunk

    @property
    def delay_ms(self) -> float:
        """The filter's group delay in ms (constant: the filter is linear-phase)."""
        if self._passthrough:
            return 0.0
        taps = self._k * self._up
        return (taps - 1) / 2 / (self.from_rate * self._up) * 1000

    def process(self, pcm: bytes) -> bytes:
        """Resample one chunk (any length; 20 ms frames are the normal case).

        Args:
            pcm: native-endian PCM16 at ``from_rate``.

        Returns:
            Native-endian PCM16 at ``to_rate``; over a stream, output length tracks input length
            times the ratio exactly (the sub-sample phase is carried between chunks).
        """
        if self._passthrough or not pcm:
            return pcm
        x = np.frombuffer(pcm, dtype=np.int16).astype(np.float32)
        buf = np.concatenate((self._history, x))
        self._history = buf[len(buf) - (self._k - 1) :]
        # Row i is the k input samples ending at x[i] (as_strided: no copy, and far cheaper
        # per call than sliding_window_view's argument checking).
        step = buf.strides[0]
        windows = as_strided(buf, shape=(len(x), self._k), strides=(step, step), writeable=False)
        # Output n sits at position p_n = position + n*down on the upsampled grid; it needs
        # input window p_n // up and filter phase p_n % up.
        if self._up == 1:
            y = windows[self._position :: self._down] @ self._phases[0]
        elif self._up > _GATHER_FROM_UP:
            grid = np.arange(self._position, len(x) * self._up, self._down)
            y = np.einsum("ij,ij->i", windows[grid // self._up], self._phases[grid % self._up])
        else:
            full = (windows @ self._phases.T).ravel()  # every upsampled-grid position
            y = full[self._position :: self._down]
        self._position = (self._position - len(x) * self._up) % self._down
        np.rint(y, out=y)
        np.clip(y, -32768, 32767, out=y)
        out: bytes = y.astype(np.int16).tobytes()
        return out
