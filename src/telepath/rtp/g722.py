"""G.722 wideband (ITU-T G.722, 64 kbit/s) through the ``G722`` package (libg722, public domain).

Measured on the project machine (``bench/media_codecs.py``): 16.4 µs to encode and 12.4 µs to
decode one 20 ms frame (320 samples at 16 kHz ↔ 160 bytes), i.e. about 25x the cost of G.711 via
audioop but well within budget. The codec is stateful (sub-band ADPCM), so each direction of a
call needs its own :class:`G722Encoder` / :class:`G722Decoder`.

RFC 3551 §4.5.2: G.722's RTP clock rate is 8000 Hz although audio is sampled at 16 kHz, so a
20 ms frame advances the RTP timestamp by 160, not 320. :data:`G722_RTP_CLOCK_RATE` encodes that.
"""

from __future__ import annotations

import array

try:
    import G722 as _g722

    AVAILABLE = True
except ImportError:  # pragma: no cover - the package is a declared dependency
    AVAILABLE = False

G722_SAMPLE_RATE = 16000
G722_RTP_CLOCK_RATE = 8000
G722_BIT_RATE = 64000


def _require() -> None:
    if not AVAILABLE:  # pragma: no cover
        raise RuntimeError("the G722 package is not installed")


class G722Encoder:
    """Stateful G.722 encoder: PCM16 at 16 kHz in, 64 kbit/s G.722 out (one byte per 2 samples)."""

    def __init__(self) -> None:
        _require()
        self._codec = _g722.G722(G722_SAMPLE_RATE, G722_BIT_RATE)

    def encode(self, pcm: bytes) -> bytes:
        """Encode native-endian PCM16 (an even number of samples) to G.722 bytes."""
        samples = array.array("h")
        samples.frombytes(pcm)
        result: bytes = self._codec.encode(samples)
        return result


class G722Decoder:
    """Stateful G.722 decoder: G.722 bytes in, PCM16 at 16 kHz out (two samples per byte)."""

    def __init__(self) -> None:
        _require()
        self._codec = _g722.G722(G722_SAMPLE_RATE, G722_BIT_RATE)

    def decode(self, payload: bytes) -> bytes:
        """Decode G.722 bytes to native-endian PCM16 at 16 kHz."""
        samples: array.array[int] = self._codec.decode(payload)
        return samples.tobytes()
