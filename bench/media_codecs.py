"""Codec and resampler micro-benchmark (not part of the test suite): µs per 20 ms frame.

Also measures the resampler's added delay on a tone burst (cross-correlation peak), and times
libsamplerate's ``sinc_fastest`` for comparison when the ``samplerate`` package is installed
(it is not a dependency).

Usage:  .venv/bin/python bench/media_codecs.py
"""

from __future__ import annotations

import functools
import json
import timeit
from collections.abc import Callable

import numpy as np

from telepath.bridges.audio import AudioConverter, WireFormat, b64_decode, b64_encode
from telepath.bridges.openai import events as openai_ev
from telepath.rtp import g711
from telepath.rtp.g722 import G722Decoder, G722Encoder
from telepath.rtp.resample import Resampler

N = 20000


def per_frame_us(fn: Callable[[], object], number: int = N) -> float:
    return min(timeit.repeat(fn, number=number, repeat=3)) / number * 1e6


def tone(rate: int, seconds: float, freq: float = 1000) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    return (8000 * np.sin(2 * np.pi * freq * t)).astype(np.int16).tobytes()


def burst(rate: int) -> np.ndarray:
    t = np.arange(int(rate * 0.2)) / rate
    return 10000 * np.exp(-(((t - 0.1) / 0.005) ** 2)) * np.sin(2 * np.pi * 1000 * (t - 0.1))


def delay_ms(process: Callable[[bytes], bytes], src: int, dst: int) -> float:
    x = burst(src).astype(np.int16).tobytes()
    step = 2 * src // 50
    out = np.frombuffer(
        b"".join(process(x[i : i + step]) for i in range(0, len(x), step)), np.int16
    )
    ref = burst(dst)
    corr = np.correlate(out.astype(float), ref, mode="full")
    return (int(np.argmax(corr)) - (len(ref) - 1)) * 1000 / dst


def main() -> dict[str, float]:
    """Print the tables; return µs per frame by name (for ``python -m bench media``)."""
    results: dict[str, float] = {}
    pcm8 = tone(8000, 0.02)
    ulaw, alaw = g711.pcm16_to_ulaw(pcm8), g711.pcm16_to_alaw(pcm8)
    print(f"G.711 backend: {g711.BACKEND}")
    rows = [
        ("PCMU encode", per_frame_us(lambda: g711.pcm16_to_ulaw(pcm8))),
        ("PCMU decode", per_frame_us(lambda: g711.ulaw_to_pcm16(ulaw))),
        ("PCMA encode", per_frame_us(lambda: g711.pcm16_to_alaw(pcm8))),
        ("PCMA decode", per_frame_us(lambda: g711.alaw_to_pcm16(alaw))),
        (
            "PCMU encode (table fallback)",
            per_frame_us(lambda: g711.table_pcm16_to_ulaw(pcm8), 2000),
        ),
        (
            "PCMU decode (table fallback)",
            per_frame_us(lambda: g711.table_ulaw_to_pcm16(ulaw), 2000),
        ),
    ]
    pcm16 = tone(16000, 0.02)
    enc, dec = G722Encoder(), G722Decoder()
    g722 = enc.encode(pcm16)
    rows += [
        ("G.722 encode (16 kHz)", per_frame_us(lambda: enc.encode(pcm16), 5000)),
        ("G.722 decode (16 kHz)", per_frame_us(lambda: dec.decode(g722), 5000)),
    ]
    for name, us in rows:
        print(f"{name:32} {us:8.2f} µs/frame")
        results[name] = round(us, 3)
    print()
    print(f"{'resampler':28} {'µs/frame':>9} {'delay ms':>9}")
    pairs = [
        (8000, 16000),
        (16000, 8000),
        (8000, 24000),
        (24000, 8000),
        (16000, 24000),
        (24000, 16000),
    ]
    for src, dst in pairs:
        r = Resampler(src, dst)
        frame = tone(src, 0.02)
        us = per_frame_us(functools.partial(r.process, frame), 5000)
        d = delay_ms(Resampler(src, dst).process, src, dst)
        print(f"{'polyphase ' + str(src) + '->' + str(dst):28} {us:9.1f} {d:9.2f}")
        results[f"polyphase {src}->{dst} us"] = round(us, 2)
        results[f"polyphase {src}->{dst} delay ms"] = round(d, 2)
    results.update(wideband_rows())
    try:
        import samplerate
    except ImportError:
        print("samplerate (libsamplerate) not installed: comparison skipped")
        return results

    def make(src: int, dst: int) -> Callable[[bytes], bytes]:
        conv = samplerate.Resampler("sinc_fastest", channels=1)

        def run(chunk: bytes) -> bytes:
            x = np.frombuffer(chunk, np.int16).astype(np.float32) / 32768
            y = conv.process(x, dst / src)
            return bytes((np.clip(y, -1, 1) * 32767).astype(np.int16).tobytes())

        return run

    for src, dst in pairs:
        frame = tone(src, 0.02)
        run = make(src, dst)
        us = per_frame_us(functools.partial(run, frame), 5000)
        # libsamplerate emits fewer samples while its filter fills, so position in the output
        # is not time and the correlation method cannot see its lag (about 2.5 ms, §3.11).
        print(f"{'libsamplerate ' + str(src) + '->' + str(dst):28} {us:9.1f} {'n/a':>9}")
        results[f"libsamplerate {src}->{dst} us"] = round(us, 2)
    return results


def wideband_rows() -> dict[str, float]:
    """A G.722 call's audio work per 20 ms frame pair in the bridge and call control, as a
    narrowband call (the agent at 8 kHz: what every G.722 call did before wideband calls, the
    baseline) and as a wideband one, for OpenAI Realtime (G.711 vs 24 kHz PCM: resampling,
    base64, the append message and the delta's parse) and for an agent at 16 kHz (custom or
    ElevenLabs). G.722 coding is in both columns: it is the same either way."""
    pcm16 = tone(16000, 0.02)
    enc, dec = G722Encoder(), G722Decoder()
    g722 = enc.encode(pcm16)

    def delta(audio: bytes) -> str:
        return json.dumps(
            {
                "type": "response.output_audio.delta",
                "event_id": "event_1",
                "response_id": "resp_1",
                "item_id": "item_1",
                "output_index": 0,
                "content_index": 0,
                "delta": b64_encode(audio),
            }
        )

    # Narrowband: call control filters the caller to 8 kHz G.711, the agent's G.711 back up.
    down, up = Resampler(16000, 8000), Resampler(8000, 16000)
    ulaw_delta = delta(g711.pcm16_to_ulaw(tone(8000, 0.02)))

    def openai_narrow() -> None:
        caller = g711.pcm16_to_ulaw(down.process(dec.decode(g722)))
        openai_ev.input_audio_append_json(b64_encode(caller))
        event = openai_ev.parse_server_event(ulaw_delta)
        assert isinstance(event, openai_ev.ResponseOutputAudioDelta)
        enc.encode(up.process(g711.ulaw_to_pcm16(b64_decode(event.delta))))

    wide = AudioConverter("pcmu", WireFormat("pcm16", 24000), wideband=True)
    pcm_delta = delta(tone(24000, 0.02))

    def openai_wide() -> None:
        caller = wide.to_agent(dec.decode(g722))
        openai_ev.input_audio_append_json(b64_encode(caller))
        event = openai_ev.parse_server_event(pcm_delta)
        assert isinstance(event, openai_ev.ResponseOutputAudioDelta)
        enc.encode(wide.from_agent(b64_decode(event.delta)))

    # A 16 kHz agent: before, its audio went 16 -> 8 kHz G.711 in the bridge, then back up.
    agent16 = tone(16000, 0.02)
    narrow16 = AudioConverter("pcmu", WireFormat("pcm16", 16000))
    up16 = Resampler(8000, 16000)
    same16 = AudioConverter("pcmu", WireFormat("pcm16", 16000), wideband=True)

    def agent16_narrow() -> None:
        dec.decode(g722)
        played = g711.ulaw_to_pcm16(narrow16.from_agent(agent16))
        enc.encode(up16.process(played))

    def agent16_wide() -> None:
        same16.to_agent(dec.decode(g722))
        enc.encode(same16.from_agent(agent16))

    print()
    print(f"{'G.722 call, frame pair':28} {'8 kHz agent':>12} {'wideband':>9}  µs")
    results: dict[str, float] = {}
    for name, narrow, widened in (
        ("OpenAI Realtime", openai_narrow, openai_wide),
        ("16 kHz agent", agent16_narrow, agent16_wide),
    ):
        before, after = per_frame_us(narrow, 5000), per_frame_us(widened, 5000)
        print(f"{name:28} {before:12.1f} {after:9.1f}")
        results[f"g722 {name} narrowband us"] = round(before, 2)
        results[f"g722 {name} wideband us"] = round(after, 2)
    return results


if __name__ == "__main__":
    main()
