from __future__ import annotations

import numpy as np
import pytest

from telepath.rtp.g722 import AVAILABLE, G722Decoder, G722Encoder

from .audio import dominant_hz, samples, tone

pytestmark = pytest.mark.unit


def test_g722_tone_round_trip_snr() -> None:
    assert AVAILABLE
    pcm = tone(1000, 16000, 1.0)
    encoder, decoder = G722Encoder(), G722Decoder()
    frames = [pcm[i : i + 640] for i in range(0, len(pcm), 640)]  # 20 ms at 16 kHz
    payloads = [encoder.encode(f) for f in frames]
    assert {len(p) for p in payloads} == {160}  # 64 kbit/s: 160 bytes per 20 ms
    out = b"".join(decoder.decode(p) for p in payloads)
    assert len(out) == len(pcm)
    assert dominant_hz(out, 16000) == pytest.approx(1000, abs=2)
    # G.722's QMF + ADPCM path has a fixed delay; find it, then bound the SNR after it.
    ref, dec = samples(pcm), samples(out)
    best = max(range(80), key=lambda d: float(np.dot(ref[:12000], dec[d : d + 12000])))
    err = dec[best + 1600 : best + 14000] - ref[1600:14000]
    snr = 10 * np.log10(np.sum(ref[1600:14000] ** 2) / np.sum(err**2))
    assert snr > 35, snr


def test_g722_streams_are_independent() -> None:
    pcm = tone(440, 16000, 0.02)
    a, b = G722Encoder(), G722Encoder()
    assert a.encode(pcm) == b.encode(pcm)
