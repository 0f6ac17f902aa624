from __future__ import annotations

import array
import math

import pytest

from telepath.rtp import g711

pytestmark = pytest.mark.unit

ALL_CODES = bytes(range(256))
ALL_SAMPLES = array.array("h", range(-32768, 32768)).tobytes()


def _decoded(pcm: bytes) -> list[int]:
    return array.array("h", pcm).tolist()


def test_ulaw_decode_table_all_256_codes() -> None:
    values = _decoded(g711.ulaw_to_pcm16(ALL_CODES))
    assert values == [g711.ulaw_decode_sample(c) for c in range(256)]
    # ITU-T G.711 Table 2a end points and zero (scaled to 16 bits as audioop does).
    assert values[0x00] == -32124
    assert values[0x80] == 32124
    assert values[0xFF] == 0
    assert values[0x7F] == 0
    assert values[0x7E] == -8
    assert values[0xFE] == 8
    # Monotonic within each sign half.
    assert values[0x80:0x100] == sorted(values[0x80:0x100], reverse=True)
    assert values[0x00:0x80] == sorted(values[0x00:0x80])


def test_alaw_decode_table_all_256_codes() -> None:
    values = _decoded(g711.alaw_to_pcm16(ALL_CODES))
    assert values == [g711.alaw_decode_sample(c) for c in range(256)]
    assert values[0xD5] == 8
    assert values[0x55] == -8
    assert values[0xAA] == 32256
    assert values[0x2A] == -32256
    assert len(set(values)) == 256  # A-law has no negative zero


def test_every_code_survives_decode_then_encode() -> None:
    ulaw = g711.pcm16_to_ulaw(g711.ulaw_to_pcm16(ALL_CODES))
    expected = bytearray(ALL_CODES)
    expected[0x7F] = 0xFF  # μ-law's negative zero re-encodes as positive zero
    assert ulaw == bytes(expected)
    assert g711.pcm16_to_alaw(g711.alaw_to_pcm16(ALL_CODES)) == ALL_CODES


def test_table_fallback_is_bit_exact_with_fast_path_for_every_input() -> None:
    assert g711.table_ulaw_to_pcm16(ALL_CODES) == g711.ulaw_to_pcm16(ALL_CODES)
    assert g711.table_alaw_to_pcm16(ALL_CODES) == g711.alaw_to_pcm16(ALL_CODES)
    assert g711.table_pcm16_to_ulaw(ALL_SAMPLES) == g711.pcm16_to_ulaw(ALL_SAMPLES)
    assert g711.table_pcm16_to_alaw(ALL_SAMPLES) == g711.pcm16_to_alaw(ALL_SAMPLES)


def test_fast_path_is_audioop_on_this_python() -> None:
    assert g711.BACKEND == "audioop"


def test_silence_frames() -> None:
    silence = b"\x00\x00" * 160
    assert g711.pcm16_to_ulaw(silence) == bytes([g711.PCMU_SILENCE]) * 160
    assert g711.pcm16_to_alaw(silence) == bytes([g711.PCMA_SILENCE]) * 160


def test_odd_pcm_length_is_rejected() -> None:
    with pytest.raises(ValueError, match="odd number of bytes"):
        g711.pcm16_to_ulaw(b"\x00")
    with pytest.raises(ValueError, match="odd number of bytes"):
        g711.table_pcm16_to_alaw(b"\x00")


@pytest.mark.parametrize(
    "samples",
    [
        [],
        [0] * 160,
        [-32768] * 160,  # the extreme square must not overflow anything
        [32767, -32768] * 80,
        [3, -4],
        [500] * 159 + [501],
        [(i * 7919) % 65536 - 32768 for i in range(160)],
    ],
)
def test_pcm16_rms_is_the_truncated_root_mean_square(samples: list[int]) -> None:
    pcm = array.array("h", samples).tobytes()
    expected = math.isqrt(sum(s * s for s in samples) // len(samples)) if samples else 0
    assert g711.pcm16_rms(pcm) == expected
    assert g711.table_pcm16_rms(pcm) == expected


def test_pcm16_rms_rejects_half_a_sample() -> None:
    with pytest.raises(ValueError, match="odd"):
        g711.table_pcm16_rms(b"\x00\x01\x02")
