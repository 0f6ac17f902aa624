"""N concurrent bridged calls through ``telepath serve`` with an echo agent, on loopback.

Each call is placed by SIPp (digest auth, one phone port per call from an injection file) and its
media is a phone in ONE separate process (``bench.workers phones``): 20 ms PCMU frames on a
monotonic deadline, each frame marked (phone, tick) so it can be followed phone → gateway →
agent → gateway → phone. The agent (``FakeTelepathAgent`` echo, separate process) stamps when
each marked frame arrives and when it echoes it. Over a steady window with all N calls up:

  CPU %/call     gateway process CPU (all threads) as % of one core, divided by N
  RSS/call       (RSS with N calls up - RSS before the step) / N
  gw proc        gateway's own per-packet time from the call records (GET /v1/calls/{id}):
                 mean of gateway_processing_us (in ms) and p99 of gateway_processing_p99_ms
  in/out p50     per-direction per-call p50 from /metrics telepath_gateway_latency_seconds
  →agent p50/p99 phone send → agent receive (wire, jitter buffer, WebSocket, both loops)
  agent→ p50/p95 agent send → phone receive (WebSocket, playout queue and pacing, wire)
  1st audio p95  per call, the agent's first audio message → its arrival at the phone
  jitter p50/p99/max  |inter-arrival − 20 ms| of the gateway's RTP at the phones
  loss           gateway RTP lost at the phone (sequence gaps) / echo frames never returned

  kernel %       the system (kernel) share of that process's CPU

With ``BENCH_PROBE=1`` the gateway also times its per-frame callbacks in situ (thread CPU
clock; ``bench/probe/sitecustomize.py``) and each step prints µs per call and per frame pair
for RTP in, agent bytes in, the pacer's wake-up and the two sends inside them. The probe costs a
few µs per call, so that run's CPU figures read high: use it to see where time goes, not for
the table.

The ``telepath+churn`` step holds ``CHURN_N`` calls up as above while SIPp sets up and tears down
``CHURN_CPS`` more calls per second (digest auth, agent connect, 200 ms each) through the same
gateway: what a production gateway's live calls go through all day. The jitter of the calls
that stay up is the figure (anything that stops the event loop — a full garbage collection,
a slow set-up step — shows in its max); CPU per call is not comparable with the other rows.

Baselines, the same phones at the same packet rate, each a separate process on uvloop:
  udp-echo       a minimal UDP echo per stream (``bench.workers udpecho``): the packet path
  relay          the bridge floor (``bench.workers relay``): per stream, RTP in → one TCP write
                 to a TCP echo peer → one TCP read → the packet out again — the system calls
                 and wake-ups any bridge with one agent connection per call makes per frame pair,
                 with no media work at all. Its CPU/call is what this design costs on this
                 machine before a line of Telepath runs; the summary prints the gateway's ratio
                 to it. (On loopback a sender also pays for the receiver's network stack, so
                 these floors, like the gateway, include the peers' receive paths.)
"""

from __future__ import annotations

import json
import re
import socket
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import (
    CpuWindow,
    loadavg,
    pct,
    print_table,
    proc_rss_mb,
    verdict,
)
from bench.procs import Gateway, Worker
from bench.sipp import SippRun, bench_scenario, collect, run_sipp

USER = "benchcalls"
PASSWORD = "Bench-Passw0rd!"
SETUP_RATE = 20  # calls/s while ramping up (well under the CPS capacity)
CHURN_N = 50  # calls held up in the churn step
CHURN_CPS = 100  # further calls set up and torn down per second meanwhile (under capacity)
GOAL_CPU_PCT_PER_CALL = 0.4
GOAL_P99_ADDED_MS = 5.0
GOAL_JITTER_P99_MS = 2.0


def _histogram_p50(metrics: str, direction: str) -> float | None:
    """Median (bucket upper bound, ms) of telepath_gateway_latency_seconds for a direction."""
    buckets: list[tuple[float, float]] = []
    pat = re.compile(
        r'telepath_gateway_latency_seconds_bucket\{direction="' + direction + r'",le="([^"]+)"\}'
        r" ([0-9.e+]+)"
    )
    for m in pat.finditer(metrics):
        le = float("inf") if m.group(1) == "+Inf" else float(m.group(1))
        buckets.append((le, float(m.group(2))))
    if not buckets or buckets[-1][1] == 0:
        return None
    total = buckets[-1][1]
    for le, count in buckets:
        if count >= total / 2:
            return round(le * 1000, 3)
    return None


def _lateness_buckets(metrics: str) -> list[tuple[float, float]]:
    """Cumulative (upper bound s, count) of ``telepath_media_tick_lateness_seconds``."""
    pat = re.compile(
        r"^telepath_media_tick_lateness_seconds_bucket\{le=\"([^\"]+)\"\} ([0-9.e+]+)$", re.M
    )
    return [
        (float("inf") if m.group(1) == "+Inf" else float(m.group(1)), float(m.group(2)))
        for m in pat.finditer(metrics)
    ]


def _lateness(before: str, after: str) -> dict[str, Any]:
    """The media clock's lateness over a window, from two scrapes: the p99 as its bucket's
    upper bound (ms), and the share of wake-ups more than 2 ms late. How late the clock woke
    is the gateway's own share of the jitter the phones measure; the rest is the host."""
    b0 = dict(_lateness_buckets(before))
    delta = [(le, count - b0.get(le, 0.0)) for le, count in _lateness_buckets(after)]
    if not delta or delta[-1][1] <= 0:
        return {}
    total = delta[-1][1]
    p99 = next(le for le, count in delta if count >= 0.99 * total)
    within_2ms = next((count for le, count in delta if le >= 0.002), total)
    return {
        "tick_late_p99_ms": None if p99 == float("inf") else round(p99 * 1000, 3),
        "tick_late_over_2ms_pct": round(100 * (total - within_2ms) / total, 3),
    }


def _merge(phones_file: Path, agent_file: Path) -> dict[str, Any]:
    ph = json.loads(phones_file.read_text())
    ag = json.loads(agent_file.read_text())
    sent, recv = ph["sent"], ph["recv"]
    to_agent = [1000 * (ag[k][0] - t) for k, t in sent.items() if k in ag]
    from_agent = [1000 * (recv[k] - ag[k][1]) for k in sent if k in ag and k in recv]
    firsts: dict[str, tuple[float, str]] = {}
    for k, (_, t_send) in ag.items():
        phone = k.split(":")[0]
        if phone not in firsts or t_send < firsts[phone][0]:
            firsts[phone] = (t_send, k)
    first = [1000 * (recv[k] - t) for t, k in firsts.values() if k in recv]

    def r(v: float | None) -> float | None:
        return None if v is None else round(v, 3)

    return {
        "to_agent_p50_ms": r(pct(to_agent, 50)),
        "to_agent_p99_ms": r(pct(to_agent, 99)),
        "from_agent_p50_ms": r(pct(from_agent, 50)),
        "from_agent_p95_ms": r(pct(from_agent, 95)),
        "from_agent_p99_ms": r(pct(from_agent, 99)),
        "first_audio_p95_ms": r(pct(first, 95)),
        "first_audio_calls": len(first),
    }


def _probe(path: Path | None, t0: float, t1: float) -> dict[str, dict[str, float]]:
    """Per-callback CPU over the window from the gateway's probe file (``BENCH_PROBE=1``)."""
    if path is None or not path.exists():
        return {}
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    before = [x for x in lines if x["t"] <= t0] or lines[:1]
    after = [x for x in lines if x["t"] >= t1] or lines[-1:]
    if not before or not after:
        return {}
    a, b = before[-1]["acc"], after[0]["acc"]
    pairs = b.get("rtp_in", [0, 0])[1] - a.get("rtp_in", [0, 0])[1]
    out = {}
    for name, (ns, count) in b.items():
        ns0, count0 = a.get(name, [0, 0])
        calls = count - count0
        out[name] = {
            "us_per_call": round((ns - ns0) / 1000 / calls, 1) if calls else 0.0,
            "us_per_frame_pair": round((ns - ns0) / 1000 / pairs, 1) if pairs else 0.0,
        }
    return out


def _step(
    gw: Gateway, agent: Worker, n: int, window_s: float, tmp: Path, churn_cps: int = 0
) -> dict[str, Any]:
    phones = Worker("phones")
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the churn calls' RTP goes here
    sink.bind(("127.0.0.1", 0))
    churn: SippRun | None = None
    try:
        phones.send(f"open {n}")
        ports = phones.recv_json()
        rss0 = proc_rss_mb(gw.pid)
        started = datetime.now(UTC).isoformat()
        ramp_s = n / SETUP_RATE
        latch_s = ramp_s + 5  # every phone has heard the gateway, or we go on without it
        hold_ms = int((ramp_s + latch_s + window_s + 6) * 1000)
        scenario = bench_scenario(USER, "[field0]", hold_ms)
        proc = run_sipp(
            ("127.0.0.1", gw.sip_port),
            SETUP_RATE,
            n,
            scenario=scenario,
            user=USER,
            password=PASSWORD,
            injection=[str(p) for p in ports],
            timeout_s=ramp_s + hold_ms / 1000 + 30,
            background=True,
        )
        assert not isinstance(proc, SippRun)
        phones.send(f"latch {latch_s}")
        latched = phones.recv_json(latch_s + 30)["latched"]
        time.sleep(1.0)  # settle: jitter buffers, playout queues
        phones.send("mark")
        phones.recv()
        churner: subprocess.Popen[bytes] | None = None
        if churn_cps:
            started_churn = run_sipp(
                ("127.0.0.1", gw.sip_port),
                churn_cps,
                int(churn_cps * window_s),
                scenario=bench_scenario(USER, sink.getsockname()[1], 200),
                user=USER,
                password=PASSWORD,
                timeout_s=window_s + 30,
                background=True,
            )
            assert not isinstance(started_churn, SippRun)
            churner = started_churn
        window = CpuWindow({"gateway": gw.pid, "agent": agent.pid, "phones": phones.pid})
        window.start()
        metrics_t0 = gw.metrics()
        probe_t0 = time.monotonic()
        rss_samples = []
        end = time.monotonic() + window_s
        while time.monotonic() < end:
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
            rss_samples.append(proc_rss_mb(gw.pid))
        wall, cpu = window.stop()
        metrics_t1 = gw.metrics()
        probe_t1 = time.monotonic()
        load = loadavg()
        phones_file = tmp / f"phones-{n}.json"
        phones.send(f"end {phones_file}")
        ph = phones.recv_json(60)
        if churner is not None:
            churn = collect(churner, window_s + 45)
        sipp = collect(proc, hold_ms / 1000 + ramp_s + 60)
    finally:
        phones.close()
        sink.close()
    agent_file = tmp / f"agent-{n}.json"
    agent.send(f"dump {agent_file}")
    agent.recv_json()
    time.sleep(1.0)  # last call records
    records = gw.calls_since(started)
    metrics = gw.metrics()
    proc_mean = [  # the API's gateway_processing_ms is whole ms: the µs field, in ms
        c["metrics"]["gateway_processing_us"] / 1000
        for c in records
        if c.get("metrics", {}).get("gateway_processing_us") is not None
    ]
    proc_p99 = [
        c["metrics"]["gateway_processing_p99_ms"]
        for c in records
        if c.get("metrics", {}).get("gateway_processing_p99_ms") is not None
    ]
    rss = statistics.median(rss_samples) if rss_samples else proc_rss_mb(gw.pid)
    row: dict[str, Any] = {
        "kind": "telepath+churn" if churn_cps else "telepath",
        "calls": n,
        "calls_up": latched,
        "sipp_completed": sipp.completed,
        "sipp_failed": sipp.failed,
        "setup_ms_mean": sipp.response_time_ms,
        "cpu_pct_total": round(100 * cpu["gateway"] / wall, 2),
        "cpu_pct_per_call": round(100 * cpu["gateway"] / wall / n, 4),
        "sys_pct": window.system_share("gateway", cpu["gateway"]),
        "agent_cpu_pct": round(100 * cpu["agent"] / wall, 1),
        "phones_cpu_pct": round(100 * cpu["phones"] / wall, 1),
        "rss_mb": round(rss, 1),
        "rss_mb_per_call": round((rss - rss0) / n, 3),
        "gw_proc_mean_ms": round(statistics.fmean(proc_mean), 4) if proc_mean else None,
        "gw_proc_p99_ms": pct(proc_p99, 99),
        "records": len(records),
        "in_p50_ms_metrics": _histogram_p50(metrics, "caller_to_agent"),
        "out_p50_ms_metrics": _histogram_p50(metrics, "agent_to_caller"),
        **_merge(phones_file, agent_file),
        **_lateness(metrics_t0, metrics_t1),
        **ph,
        "load": load,
    }
    if churn is not None:
        row["churn_cps"] = churn_cps
        row["churn_attempted"] = churn.attempted
        row["churn_completed"] = churn.completed
        row["churn_failed"] = churn.failed
    probe = _probe(gw.probe_file, probe_t0, probe_t1)
    if probe:
        row["probe"] = probe
        print(
            f"  probe N={n} (µs per call / per frame pair): "
            + ", ".join(
                f"{k} {v['us_per_call']}/{v['us_per_frame_pair']}" for k, v in probe.items()
            ),
            flush=True,
        )
    return row


def _baseline(n: int, window_s: float, kind: str) -> dict[str, Any]:
    """The same phones against ``udp-echo`` (one recv + one send per packet) or ``relay``
    (the bridge floor: UDP → TCP peer → UDP, two receives and two sends per frame pair)."""
    helpers: list[Worker] = []
    if kind == "udp-echo":
        server = Worker("udpecho")
        server.send(f"open {n}")
    else:
        peer = Worker("tcpecho")
        helpers.append(peer)
        server = Worker("relay")
        server.send(f"open {n} {peer.recv_json()['port']}")
    helpers.append(server)
    phones = Worker("phones")
    try:
        targets = server.recv_json()
        phones.send(f"open {n}")
        phones.recv_json()
        phones.send(f"target {json.dumps(targets)}")
        phones.recv_json()
        time.sleep(1.0)
        phones.send("mark")
        phones.recv()
        window = CpuWindow({"server": server.pid, "phones": phones.pid})
        window.start()
        time.sleep(window_s)
        wall, cpu = window.stop()
        load = loadavg()
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            phones.send(f"end {f.name}")
            ph = phones.recv_json(60)
    finally:
        phones.close()
        for helper in helpers:
            helper.close()
    return {
        "kind": kind,
        "calls": n,
        "cpu_pct_total": round(100 * cpu["server"] / wall, 2),
        "cpu_pct_per_call": round(100 * cpu["server"] / wall / n, 4),
        "sys_pct": window.system_share("server", cpu["server"]),
        "phones_cpu_pct": round(100 * cpu["phones"] / wall, 1),
        **ph,
        "load": load,
    }


def run(quick: bool = False) -> dict[str, Any]:
    steps = [10, 100] if quick else [10, 50, 100, 200]
    window_s = 5.0 if quick else 10.0
    tmp = Path(tempfile.mkdtemp(prefix="bench-calls-"))
    agent = Worker("agent")
    url = agent.recv_json()["url"]
    gw = Gateway(rtp_span=4 * max(steps) + 200)
    rows: list[dict[str, Any]] = []
    try:
        gw.create_trunk(USER, PASSWORD, url)
        for n in steps:
            row = _step(gw, agent, n, window_s, tmp)
            rows.append(row)
            print(f"  calls telepath N={n}: {_brief(row)}", flush=True)
            time.sleep(2)
        row = _step(gw, agent, CHURN_N, window_s, tmp, churn_cps=CHURN_CPS)
        rows.append(row)
        print(
            f"  calls telepath N={CHURN_N} + {CHURN_CPS} calls/s churn "
            f"({row['churn_completed']}/{row['churn_attempted']} ok): {_brief(row)}",
            flush=True,
        )
    finally:
        gw.stop()
        agent.close()
    for n in steps:
        for kind in ("udp-echo", "relay"):
            row = _baseline(n, window_s, kind)
            rows.append(row)
            print(f"  calls {kind} N={n}: {_brief(row)}", flush=True)
    return summarize(rows)


def _brief(r: dict[str, Any]) -> str:
    return (
        f"CPU {r['cpu_pct_total']} % ({r['cpu_pct_per_call']} %/call), jitter p99 "
        f"{r.get('jitter_p99_ms')} ms (max {r.get('jitter_max_ms')}), "
        + (f"clock late p99 <= {r.get('tick_late_p99_ms')} ms, " if "tick_late_p99_ms" in r else "")
        + f"loss {r.get('rx_loss_pct')} %, load {r['load']}"
        + (
            f" — {r['rx_seq_jumps']} RTP sequence jumps, "
            f"{r['rx_phones_with_two_sources']} phones hearing two streams"
            if r.get("rx_seq_jumps") or r.get("rx_phones_with_two_sources")
            else ""
        )
    )


def _g(value: Any) -> str:
    return "-" if value is None else f"{value:.3g}"


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    headers = [
        "server",
        "N",
        "up",
        "CPU %/call",
        "CPU % tot",
        "kernel %",
        "RSS MB/call",
        "gw proc mean/p99 ms",
        "in/out p50 ms",
        "→agent p50/p99",
        "agent→ p50/p95",
        "1st audio p95",
        "jitter p50/p99/max",
        "clock late p99/>2ms%",
        "loss % rx/echo",
        "agent/phones CPU %",
        "load1",
    ]

    def pair(a: Any, b: Any) -> str:
        return f"{_g(a)}/{_g(b)}"

    table = [
        [
            r["kind"],
            r["calls"],
            r.get("calls_up", r["calls"]),
            r["cpu_pct_per_call"],
            r["cpu_pct_total"],
            r.get("sys_pct"),
            r.get("rss_mb_per_call"),
            pair(r.get("gw_proc_mean_ms"), r.get("gw_proc_p99_ms")),
            pair(r.get("in_p50_ms_metrics"), r.get("out_p50_ms_metrics")),
            pair(r.get("to_agent_p50_ms"), r.get("to_agent_p99_ms")),
            pair(r.get("from_agent_p50_ms"), r.get("from_agent_p95_ms")),
            r.get("first_audio_p95_ms"),
            pair(r.get("jitter_p50_ms"), r.get("jitter_p99_ms")) + f"/{r.get('jitter_max_ms')}",
            pair(r.get("tick_late_p99_ms"), r.get("tick_late_over_2ms_pct")),
            pair(r.get("rx_loss_pct"), r.get("echo_loss_pct")),
            pair(r.get("agent_cpu_pct"), r.get("phones_cpu_pct")),
            r["load"][0],
        ]
        for r in rows
    ]
    print_table("Concurrent bridged calls, echo agent, loopback (20 ms PCMU)", headers, table)
    tp = [r for r in rows if r["kind"] == "telepath"]
    goals: dict[str, dict[str, str]] = {}
    for r in tp:
        goals[f"N={r['calls']}"] = {
            f"<= {GOAL_CPU_PCT_PER_CALL} % of a core per call": verdict(
                r["cpu_pct_per_call"] <= GOAL_CPU_PCT_PER_CALL
            ),
            f"p99 added latency (gateway per-packet p99) <= {GOAL_P99_ADDED_MS} ms": verdict(
                None if r["gw_proc_p99_ms"] is None else r["gw_proc_p99_ms"] <= GOAL_P99_ADDED_MS
            ),
            f"RTP send jitter p99 <= {GOAL_JITTER_P99_MS} ms": verdict(
                None if r.get("jitter_p99_ms") is None else r["jitter_p99_ms"] <= GOAL_JITTER_P99_MS
            ),
        }
    for r in rows:
        if r["kind"] == "telepath+churn":
            jitter = r.get("jitter_p99_ms")
            goals[f"N={r['calls']} + {r['churn_cps']} calls/s churn"] = {
                f"RTP send jitter p99 <= {GOAL_JITTER_P99_MS} ms "
                f"(max {r.get('jitter_max_ms')} ms)": verdict(
                    None if jitter is None else jitter <= GOAL_JITTER_P99_MS
                ),
                "every churn call completed": verdict(
                    r["churn_completed"] == r["churn_attempted"] and not r["churn_failed"]
                ),
            }
    broken = next((n for n, g in goals.items() if "FAIL" in g.values()), "none (all pass)")
    floor = {r["calls"]: r["cpu_pct_per_call"] for r in rows if r["kind"] == "relay"}
    vs_floor = {
        f"N={r['calls']}": round(r["cpu_pct_per_call"] / floor[r["calls"]], 2)
        for r in tp
        if floor.get(r["calls"])
    }
    for n, g in goals.items():
        ratio = f"; CPU/call {vs_floor[n]}x the relay floor" if n in vs_floor else ""
        print(f"  {n}: " + "; ".join(f"{v} {k}" for k, v in g.items()) + ratio)
    print(f"first N where a goal breaks: {broken}")
    return {
        "rows": rows,
        "summary": {"goals": goals, "first_failing_step": broken, "cpu_vs_relay_floor": vs_floor},
    }
