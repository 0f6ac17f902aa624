"""Media-plane benchmark (not part of the test suite).

N duplex PCMU streams through MediaSession on loopback, against a minimal raw-socket baseline
in the same run. A separate generator process plays the carrier: it sends 50 packets/s per
stream to the gateway and timestamps every packet the gateway sends back, so pacing is measured
where a carrier would see it.

Reported per configuration:
  CPU %/stream   gateway process CPU (user+sys) over the window, as % of one core, per stream
  proc p50/p99   gateway per-packet processing (µs, perf_counter_ns; MediaSession stats,
                 inbound and outbound), averaged over streams
  send |dev| p99 deviation of the gateway's inter-packet interval from ptime, at the receiver (ms)
  drift          max over streams of |(last - first arrival) - (n - 1) * ptime| (ms)

Usage:  .venv/bin/python -m bench.media_bench --streams 50 250 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

from bench.common import ROOT, fmt, pct

PTIME = 0.020
PORT_BASE = 52000


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _loop_policy() -> str:
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        return "uvloop"
    except ImportError:
        return "asyncio"


# ---------------------------------------------------------------------------- generator side


class _GenProto(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.arrivals: list[float] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.arrivals.append(time.perf_counter())


async def _generator(streams: int, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    endpoints = []
    for _ in range(streams):
        t, p = await loop.create_datagram_endpoint(_GenProto, local_addr=("127.0.0.1", 0))
        endpoints.append((t, p))
    ports = [t.get_extra_info("sockname")[1] for t, _ in endpoints]
    print(json.dumps(ports), flush=True)
    targets = json.loads(await loop.run_in_executor(None, sys.stdin.readline))
    payload = b"\xff" * 160
    seq = 0
    deadline = loop.time()
    end = deadline + seconds
    while deadline < end:
        deadline += PTIME
        await asyncio.sleep(max(0.0, deadline - loop.time()))
        header = bytes([0x80, 0]) + seq.to_bytes(2, "big") + (seq * 160).to_bytes(4, "big")
        for i, (t, _) in enumerate(endpoints):
            t.sendto(header + i.to_bytes(4, "big") + payload, ("127.0.0.1", targets[i]))
        seq = (seq + 1) & 0xFFFF
    await asyncio.sleep(0.3)
    print(json.dumps(pacing([p.arrivals for _, p in endpoints])), flush=True)


def pacing(streams: list[list[float]]) -> dict[str, Any]:
    """The gateway's pacing at the receiver, from each stream's arrival times (s): |dev| p50
    and p99 (ms) of the intervals from ptime, nearest rank (``bench.common.pct``; until
    2026-12-08 ``devs[int(n x 0.99)]``, one rank high), the largest drift (ms) and the
    packets received. The first second of each stream is left out (sessions start and
    settle). No interval: None, not 0 (no data is no figure, and no PASS)."""
    devs: list[float] = []
    drifts: list[float] = []
    for arrivals in streams:
        a = [x for x in arrivals if x >= arrivals[0] + 1.0] if arrivals else []
        if len(a) > 2:
            devs += [abs((b - c) - PTIME) * 1000 for c, b in zip(a, a[1:], strict=False)]
            drifts.append(abs((a[-1] - a[0]) - (len(a) - 1) * PTIME) * 1000)
    return {
        "dev_p50": pct(devs, 50),
        "dev_p99": pct(devs, 99),
        "drift_max": max(drifts) if drifts else None,
        "received": sum(len(a) for a in streams),
    }


# ---------------------------------------------------------------------------- gateway side


class _Baseline(asyncio.DatagramProtocol):
    """The minimal RTP path: decode what arrives, send one PCMU packet back per packet."""

    def __init__(self, remote: tuple[str, int]) -> None:
        self.remote = remote
        self.transport: Any = None
        self.seq = 0
        self.frames = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        from telepath.rtp import g711
        from telepath.rtp.packet import pack_rtp

        g711.ulaw_to_pcm16(data[12:])
        self.frames += 1
        self.seq = (self.seq + 1) & 0xFFFF
        self.transport.sendto(
            pack_rtp(0, self.seq, self.seq * 160, 1, data[12:], False), self.remote
        )


async def _run_config(mode: str, streams: int, seconds: float) -> dict[str, Any]:
    from telepath.rtp.codecs import CodecSpec
    from telepath.transport.media_session import MediaSession
    from telepath.transport.ports import RtpPortAllocator

    gen = subprocess.Popen(  # noqa: ASYNC220 - started once, before the measured window
        [
            sys.executable,
            "-m",
            "bench.media_bench",  # from ROOT: it imports bench.common
            "--role",
            "generator",
            "--streams",
            str(streams),
            "--seconds",
            str(seconds),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert gen.stdin is not None and gen.stdout is not None
    remotes = json.loads(gen.stdout.readline())
    loop = asyncio.get_running_loop()
    sessions: list[MediaSession] = []
    baselines: list[tuple[Any, _Baseline]] = []
    received = [0]

    def count(_: object) -> None:
        received[0] += 1

    if mode == "session":
        # slack: other processes' ephemeral ports (32768-60999 here) may sit in the range
        allocator = RtpPortAllocator(PORT_BASE, PORT_BASE + 4 * streams + 200, host="127.0.0.1")
        tone = b"\x00\x10\x20\x30\x40\x30\x20\x10" * 20  # 20 ms of μ-law, repeated
        for port in remotes:
            s = await MediaSession.open(
                allocator.allocate(),
                remote=("127.0.0.1", port),
                codec=CodecSpec.static("PCMU"),
                on_event=count,
                inactivity_timeout_s=0,
            )
            s.play(tone * int((seconds + 5) / PTIME))
            sessions.append(s)
        local = [s.local_port for s in sessions]
    else:
        for port in remotes:
            t, p = await loop.create_datagram_endpoint(
                functools.partial(_Baseline, ("127.0.0.1", port)), local_addr=("127.0.0.1", 0)
            )
            baselines.append((t, p))
        local = [t.get_extra_info("sockname")[1] for t, _ in baselines]
    gen.stdin.write(json.dumps(local) + "\n")
    gen.stdin.flush()
    await asyncio.sleep(1.0)  # warm-up, excluded from the CPU window
    cpu0, wall0 = _cpu(), time.perf_counter()
    await asyncio.sleep(seconds - 1.5)
    cpu1, wall1 = _cpu(), time.perf_counter()
    result_line = await loop.run_in_executor(None, gen.stdout.readline)
    gen.wait()
    pacing = json.loads(result_line)
    row: dict[str, Any] = {
        "mode": mode,
        "streams": streams,
        "cpu_pct_per_stream": 100 * (cpu1 - cpu0) / (wall1 - wall0) / streams,
        "cpu_pct_total": 100 * (cpu1 - cpu0) / (wall1 - wall0),
        **pacing,
    }
    if sessions:
        stats = [s.stats() for s in sessions]
        row["in_p50"] = statistics.fmean(st.inbound.p50_us for st in stats)
        row["in_p99"] = statistics.fmean(st.inbound.p99_us for st in stats)
        row["out_p50"] = statistics.fmean(st.outbound.p50_us for st in stats)
        row["out_p99"] = statistics.fmean(st.outbound.p99_us for st in stats)
        measured = [st.gateway_processing_ms for st in stats]
        row["gateway_processing_ms"] = statistics.fmean(ms for ms in measured if ms is not None)
        for s in sessions:
            await s.close()
    for t, _ in baselines:
        t.close()
    return row


async def _main(streams: list[int], seconds: float) -> list[dict[str, Any]]:
    rows = []
    for n in streams:
        for mode in ("baseline", "session"):
            rows.append(await _run_config(mode, n, seconds))
    header = (
        f"{'mode':9} {'streams':>7} {'CPU%/strm':>9} {'CPU% tot':>8} {'in p50/p99 µs':>14} "
        f"{'out p50/p99 µs':>15} {'send|dev| p50/p99 ms':>21} {'drift ms':>8}"
    )
    print(header)
    for r in rows:
        inp = f"{r.get('in_p50', 0):.1f}/{r.get('in_p99', 0):.1f}" if "in_p50" in r else "-"
        out = f"{r.get('out_p50', 0):.1f}/{r.get('out_p99', 0):.1f}" if "out_p50" in r else "-"
        print(
            f"{r['mode']:9} {r['streams']:>7} {r['cpu_pct_per_stream']:>9.3f} "
            f"{r['cpu_pct_total']:>8.1f} {inp:>14} {out:>15} "
            f"{fmt(r['dev_p50']):>9}/{fmt(r['dev_p99']):<11} {fmt(r['drift_max']):>8}"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[50, 250])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--role", choices=["gateway", "generator"], default="gateway")
    args = parser.parse_args()
    loop_name = _loop_policy()
    if args.role == "generator":
        asyncio.run(_generator(args.streams[0], args.seconds))
        return
    print(f"event loop: {loop_name}; python {sys.version.split()[0]}; pid {os.getpid()}")
    asyncio.run(_main(args.streams, args.seconds))


if __name__ == "__main__":
    main()
