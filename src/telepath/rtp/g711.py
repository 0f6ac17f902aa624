"""G.711 μ-law (PCMU) and A-law (PCMA) to and from 16-bit linear PCM (ITU-T G.711).

PCM is signed 16-bit little-endian (native byte order on every supported platform), 8 kHz,
mono. The fast path is the C ``audioop`` module: the standard library on 3.11/3.12 and the
``audioop-lts`` package on 3.13+ (about 0.2 µs to decode and 0.6 µs to encode a 20 ms frame).
When neither is importable, a table-driven pure-Python fallback with identical output is used;
:data:`BACKEND` says which one is active. The fallback's encode table reproduces audioop's
rounding (the classic Sun ``g711.c`` algorithm on a 14-bit/13-bit input) so behaviour never
depends on the Python version. ``pcm16_rms`` (a frame's level, for turn detection) comes from
the same backend.
"""

from __future__ import annotations

import array
import math
import sys
import warnings
from collections.abc import Callable
from types import ModuleType

PCMU_SILENCE = 0xFF
PCMA_SILENCE = 0xD5

_SEG_UEND = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)
_SEG_AEND = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)
_ULAW_BIAS = 0x84
_ULAW_CLIP = 8159


def _segment(value: int, ends: tuple[int, ...]) -> int:
    for i, end in enumerate(ends):
        if value <= end:
            return i
    return len(ends)


def ulaw_encode_sample(sample: int) -> int:
    """Encode one signed 16-bit sample to a μ-law code (reference, per sample)."""
    pcm = sample >> 2  # 14-bit magnitude domain, floor like audioop
    if pcm < 0:
        pcm, mask = -pcm, 0x7F
    else:
        mask = 0xFF
    pcm = min(pcm, _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    seg = _segment(pcm, _SEG_UEND)
    if seg >= 8:
        return 0x7F ^ mask
    return ((seg << 4) | ((pcm >> (seg + 1)) & 0x0F)) ^ mask


def ulaw_decode_sample(code: int) -> int:
    """Decode one μ-law code to a signed 16-bit sample (G.711 Table 2a values, scaled by 4)."""
    u = ~code & 0xFF
    t = (((u & 0x0F) << 3) + _ULAW_BIAS) << ((u & 0x70) >> 4)
    return _ULAW_BIAS - t if u & 0x80 else t - _ULAW_BIAS


def alaw_encode_sample(sample: int) -> int:
    """Encode one signed 16-bit sample to an A-law code (reference, per sample)."""
    pcm = sample >> 3  # 13-bit domain
    if pcm >= 0:
        mask = 0xD5
    else:
        mask = 0x55
        pcm = -pcm - 1
    seg = _segment(pcm, _SEG_AEND)
    if seg >= 8:
        return 0x7F ^ mask
    aval = seg << 4
    aval |= (pcm >> 1) & 0x0F if seg < 2 else (pcm >> seg) & 0x0F
    return aval ^ mask


def alaw_decode_sample(code: int) -> int:
    """Decode one A-law code to a signed 16-bit sample (G.711 Table 1a values, scaled by 8)."""
    a = code ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    if seg == 0:
        t += 8
    elif seg == 1:
        t += 0x108
    else:
        t = (t + 0x108) << (seg - 1)
    return t if a & 0x80 else -t


def _decode_table(decode: Callable[[int], int]) -> list[bytes]:
    return [decode(code).to_bytes(2, sys.byteorder, signed=True) for code in range(256)]


def _encode_table(encode: Callable[[int], int]) -> bytes:
    # Indexed by the sample's unsigned 16-bit pattern.
    return bytes(encode(i - 65536 if i >= 32768 else i) for i in range(65536))


_ULAW_DEC: list[bytes] | None = None
_ALAW_DEC: list[bytes] | None = None
_ULAW_ENC: bytes | None = None
_ALAW_ENC: bytes | None = None


def _tables() -> tuple[list[bytes], list[bytes], bytes, bytes]:
    global _ULAW_DEC, _ALAW_DEC, _ULAW_ENC, _ALAW_ENC
    if _ULAW_DEC is None or _ALAW_DEC is None or _ULAW_ENC is None or _ALAW_ENC is None:
        _ULAW_DEC = _decode_table(ulaw_decode_sample)
        _ALAW_DEC = _decode_table(alaw_decode_sample)
        _ULAW_ENC = _encode_table(ulaw_encode_sample)
        _ALAW_ENC = _encode_table(alaw_encode_sample)
    return _ULAW_DEC, _ALAW_DEC, _ULAW_ENC, _ALAW_ENC


def table_ulaw_to_pcm16(data: bytes) -> bytes:
    """μ-law to PCM16 through a 256-entry table (the fallback path)."""
    table = _tables()[0]
    return b"".join([table[c] for c in data])


def table_alaw_to_pcm16(data: bytes) -> bytes:
    """A-law to PCM16 through a 256-entry table (the fallback path)."""
    table = _tables()[1]
    return b"".join([table[c] for c in data])


def _samples(pcm: bytes) -> array.array[int]:
    if len(pcm) % 2:
        raise ValueError("PCM16 data has an odd number of bytes")
    samples = array.array("H")
    samples.frombytes(pcm)
    return samples


def table_pcm16_to_ulaw(pcm: bytes) -> bytes:
    """PCM16 to μ-law through a 64 K-entry table (the fallback path)."""
    table = _tables()[2]
    return bytes([table[s] for s in _samples(pcm)])


def table_pcm16_to_alaw(pcm: bytes) -> bytes:
    """PCM16 to A-law through a 64 K-entry table (the fallback path)."""
    table = _tables()[3]
    return bytes([table[s] for s in _samples(pcm)])


def table_pcm16_rms(pcm: bytes) -> int:
    """Root mean square of PCM16 samples, truncated to an int, without audioop."""
    if len(pcm) % 2:
        raise ValueError("PCM16 data has an odd number of bytes")
    samples = array.array("h")
    samples.frombytes(pcm)
    if sys.byteorder == "big":  # pragma: no cover - PCM16 on the wire is little-endian
        samples.byteswap()
    if not samples:
        return 0
    # floor(sqrt(floor(mean))) == floor(sqrt(mean)): the same value as audioop.rms
    return math.isqrt(sum(s * s for s in samples) // len(samples))


def _load_audioop() -> ModuleType | None:
    # audioop warns on import (PEP 594) on 3.11/3.12; audioop-lts on 3.13+ does not.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import audioop
        except ImportError:  # pragma: no cover - 3.13+ without audioop-lts
            return None
    return audioop


_audioop = _load_audioop()

if _audioop is not None:
    BACKEND = "audioop"
    _ao = _audioop

    def ulaw_to_pcm16(data: bytes) -> bytes:
        """Decode μ-law bytes to PCM16 (two bytes per input byte)."""
        result: bytes = _ao.ulaw2lin(data, 2)
        return result

    def alaw_to_pcm16(data: bytes) -> bytes:
        """Decode A-law bytes to PCM16 (two bytes per input byte)."""
        result: bytes = _ao.alaw2lin(data, 2)
        return result

    def pcm16_to_ulaw(pcm: bytes) -> bytes:
        """Encode PCM16 to μ-law (one byte per sample).

        Raises:
            ValueError: ``pcm`` has an odd length.
        """
        if len(pcm) % 2:
            raise ValueError("PCM16 data has an odd number of bytes")
        result: bytes = _ao.lin2ulaw(pcm, 2)
        return result

    def pcm16_to_alaw(pcm: bytes) -> bytes:
        """Encode PCM16 to A-law (one byte per sample).

        Raises:
            ValueError: ``pcm`` has an odd length.
        """
        if len(pcm) % 2:
            raise ValueError("PCM16 data has an odd number of bytes")
        result: bytes = _ao.lin2alaw(pcm, 2)
        return result

    def pcm16_rms(pcm: bytes) -> int:
        """Root mean square of PCM16 samples, truncated to an int (0 for no samples)."""
        result: int = _ao.rms(pcm, 2)
        return result

else:  # pragma: no cover - exercised through the table_* functions in tests
    BACKEND = "table"
    pcm16_rms = table_pcm16_rms
    ulaw_to_pcm16 = table_ulaw_to_pcm16
    alaw_to_pcm16 = table_alaw_to_pcm16
    pcm16_to_ulaw = table_pcm16_to_ulaw
    pcm16_to_alaw = table_pcm16_to_alaw
