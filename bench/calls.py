"""N concurrent bridged calls through ``telepath serve`` with an echo agent, on loopback.

Each call is placed by SIPp (digest auth, one phone port per call from an injection file) and its
media is a phone in ONE separate process (``bench.workers phones``): 20 ms PCMU frames on a
monotonic deadline, each frame marked (phone, tick) so it can be followed phone → gateway →
agent → gateway → phone. The agent (``FakeTelepathAgent`` echo, separate process) stamps when
each marked frame arrives and when it echoes it. Over a steady window with all N calls up:

  up/bridged     calls whose phone heard the gateway before the window / calls whose marked
                 frames came back through the gateway and the agent inside the window
  CPU %/call     gateway process CPU (all threads) as % of one core, divided by the calls
                 bridged in the window
  RSS MB/call    the slope of the gateway's RSS (median over the window) from the step before:
                 (RSS at this N - RSS at the previous N) / (calls bridged more); the first
                 step has none (``rss_per_call``)
  proc/pkt       gateway's own per-packet time from the call records (GET /v1/calls/{id}):
                 mean of gateway_processing_us (in ms) and p99 of gateway_processing_p99_ms —
                 the CPU time inside the callbacks only (informational: no verdict reads it)
  proc in/out p50  per direction, the median of the step's calls' per-packet p50s (the same
                 callback time as proc/pkt) from /metrics telepath_gateway_latency_seconds:
                 the delta of two scrapes bracketing the step, as its bucket's upper bound
                 (informational)
  →agent p50/p99 phone send → agent receive (wire, jitter buffer, WebSocket, both loops)
  agent→ p50/p99 agent send → phone receive (WebSocket, playout queue and pacing, wire);
                 the p95 is in the JSON too
  RTT p50/p99    phone send → phone receive of the echoed frame (the baselines' only latency)
  1st audio p95  per call, the agent's first audio message → its arrival at the phone
  jitter p50/p99/max  |inter-arrival − 20 ms| of the gateway's RTP at the phones
  loss           gateway RTP lost at the phones — each phone that latched is owed 50 packets/s
                 for the whole window, so a silent or stopped stream counts, and gaps inside a
                 stream count too — / marked frames sent in the window never echoed back

  kernel %       the system (kernel) share of that process's CPU

A step stands only if it measured N calls (``step_validity``): N calls up and bridged, N SIPp
calls completed, none failed or shed (503), echo loss within ``ECHO_LOSS_TOLERANCE_PCT``, and
in the churn step no churn call shed and the churn SIPp at ``CHURN_MIN_ACHIEVED_SHARE`` of its
rate at least; otherwise every verdict of the step reads INVALID, with the reasons. The
gateway runs with no admission (``GATEWAY_ENV``), so its load admission cannot shed this
suite's calls.

Goals (``step_goals``): CPU per call, RTP send jitter p99 and the p99 added latency, judged per
direction on the wall-clock →agent and agent→ p99: an upper bound of what the gateway adds
(the phones', the agent's and loopback's share included; see ``step_goals``).

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
# A step's verdicts stand only if it measured what it says: every call up and bridged, every
# SIPp call completed (a shed 503 is not), and every marked frame echoed back. Frames in flight
# when the window closes are waited for, so a healthy step loses none; the tolerance leaves room
# for one in a thousand, not for a call.
ECHO_LOSS_TOLERANCE_PCT = 0.1
# Nothing is shed by admission in this suite (its ramp and its churn are far below the CPS
# capacity): a call refused by the load admission would leave a step short of N calls and
# make it INVALID, not measure N. Load shedding has its own figures in ``bench cps``; a call
# shed anyway (the receive-backlog guard) still makes the step INVALID.
GATEWAY_ENV = {"TELEPATH_SIP_MAX_LOOP_LOAD": "0", "TELEPATH_SIP_MAX_CPS": "0"}
# The churn step's SIPp must start its calls at this share of CHURN_CPS (its own CallRate while
# starting them, as ``bench cps`` requires of its steps), or the step did not carry the churn it
# is named after.
CHURN_MIN_ACHIEVED_SHARE = 0.95


def cpu_pct_per_call(cpu_s: float, wall_s: float, bridged: int) -> float | None:
    """A process's CPU over the window as % of one core per call it carried (None: none)."""
    return round(100 * cpu_s / wall_s / bridged, 4) if bridged > 0 and wall_s > 0 else None


def step_validity(r: dict[str, Any]) -> list[str]:
    """Why a ``telepath`` step's verdicts cannot stand (empty: they can)."""
    n = r["calls"]
    reasons = []
    for key, label in (
        ("calls_up", "calls up"),
        ("calls_bridged", "calls bridged"),
        ("sipp_completed", "SIPp calls completed"),
    ):
        if r.get(key) != n:
            reasons.append(f"{label} {r.get(key)} of {n}")
    if r.get("sipp_failed") != 0:
        reasons.append(f"{r.get('sipp_failed')} SIPp calls failed")
    if r.get("sipp_shed_503"):
        reasons.append(f"{r['sipp_shed_503']} calls shed (503)")
    echo_loss = r.get("echo_loss_pct")
    if echo_loss is None or echo_loss > ECHO_LOSS_TOLERANCE_PCT:
        reasons.append(f"echo loss {echo_loss} % (tolerance {ECHO_LOSS_TOLERANCE_PCT} %)")
    if r.get("kind") == "telepath+churn":
        # the churn's own calls: one shed makes the step INVALID as a held call's would
        # (README, "How the benchmark computes and judges its figures"), and SIPp must have
        # started them at the rate the step is named after
        shed = r.get("churn_shed_503")
        if shed is None or shed:
            reasons.append(f"{shed} churn calls shed (503)")
        asked = r.get("churn_cps") or 0
        reached = r.get("churn_invite_cps")
        if reached is None or reached < CHURN_MIN_ACHIEVED_SHARE * asked:
            reasons.append(
                f"churn SIPp started {reached} calls/s of {asked} asked "
                f"(at least {CHURN_MIN_ACHIEVED_SHARE:.0%})"
            )
    return reasons


def churn_fields(churn: SippRun, churn_cps: int) -> dict[str, Any]:
    """The churn step's SIPp run, as its row records it (``step_validity`` reads them)."""
    return {
        "churn_cps": churn_cps,
        "churn_attempted": churn.attempted,
        "churn_completed": churn.completed,
        "churn_failed": churn.failed,
        "churn_shed_503": churn.shed_503,
        "churn_invite_cps": churn.invite_rate,
    }


def _latency_buckets(metrics: str, direction: str) -> list[tuple[float, float]]:
    """Cumulative (upper bound s, count) of ``telepath_gateway_latency_seconds`` for a
    direction."""
    pat = re.compile(
        r'telepath_gateway_latency_seconds_bucket\{direction="' + direction + r'",le="([^"]+)"\}'
        r" ([0-9.e+]+)"
    )
    return [
        (float("inf") if m.group(1) == "+Inf" else float(m.group(1)), float(m.group(2)))
        for m in pat.finditer(metrics)
    ]


def _histogram_p50(before: str, after: str, direction: str) -> float | None:
    """The median (its bucket's upper bound, ms) of the per-call p50s that
    ``telepath_gateway_latency_seconds`` observed between two scrapes: the calls that ended
    in between (the gateway observes a call's per-packet p50 when it ends). The histogram is
    cumulative since the gateway started, so one scrape would mix in every earlier step."""
    b0 = dict(_latency_buckets(before, direction))
    delta = [(le, count - b0.get(le, 0.0)) for le, count in _latency_buckets(after, direction)]
    if not delta or delta[-1][1] <= 0:
        return None
    total = delta[-1][1]
    le = next(le for le, count in delta if count >= total / 2)
    return None if le == float("inf") else round(le * 1000, 3)


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
        metrics_before = gw.metrics()  # the step's calls are observed in /metrics as they end
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
        "calls_bridged": ph["calls_bridged"],
        "sipp_completed": sipp.completed,
        "sipp_failed": sipp.failed,
        "sipp_shed_503": sipp.shed_503,
        "setup_ms_mean": sipp.response_time_ms,
        "cpu_pct_total": round(100 * cpu["gateway"] / wall, 2),
        "cpu_pct_per_call": cpu_pct_per_call(cpu["gateway"], wall, ph["calls_bridged"]),
        "sys_pct": window.system_share("gateway", cpu["gateway"]),
        "agent_cpu_pct": round(100 * cpu["agent"] / wall, 1),
        "phones_cpu_pct": round(100 * cpu["phones"] / wall, 1),
        "rss_mb": round(rss, 1),
        "rss_mb_before": round(rss0, 1),
        "gw_proc_mean_ms": round(statistics.fmean(proc_mean), 4) if proc_mean else None,
        "gw_proc_p99_ms": pct(proc_p99, 99),
        "records": len(records),
        "in_p50_ms_metrics": _histogram_p50(metrics_before, metrics, "caller_to_agent"),
        "out_p50_ms_metrics": _histogram_p50(metrics_before, metrics, "agent_to_caller"),
        **_merge(phones_file, agent_file),
        **_lateness(metrics_t0, metrics_t1),
        **ph,
        "load": load,
    }
    if churn is not None:
        row.update(churn_fields(churn, churn_cps))
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
        "cpu_pct_per_call": cpu_pct_per_call(cpu["server"], wall, ph["calls_bridged"]),
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
    gw = Gateway(extra_env=GATEWAY_ENV, rtp_span=4 * max(steps) + 200)
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


def _at_most(value: float | None, goal: float) -> str:
    return verdict(None if value is None else value <= goal)


def step_goals(r: dict[str, Any]) -> dict[str, str]:
    """The issue's goals for one ``telepath`` step, each INVALID if the step is
    (``step_validity``).

    Added latency is judged per direction on the wall clock, phone → agent and agent → phone
    (``_merge``): an upper bound of what the gateway adds, as it also holds the phones' and the
    echo agent's sends and receives and loopback. It is not taken net of the relay floor: the
    relay stamps no per-direction times, and a difference of two p99s is not the p99 of the
    difference. So a PASS proves the goal; a FAIL may be the host's, which the round trip of
    the same run's relay floor (same phones, same N) shows. agent→caller includes the wait for
    the call's pacer slot (0–20 ms, RTP leaves on the call's own 20 ms clock) and the playout
    queue. The per-packet processing time of the call records (``gw_proc``) times only the
    callbacks: no socket buffer, event-loop queue, late wake-up or playout queue, i.e. none of
    what grows with N; it is shown, not judged.
    """
    goals = {
        f"<= {GOAL_CPU_PCT_PER_CALL} % of a core per call": _at_most(
            r["cpu_pct_per_call"], GOAL_CPU_PCT_PER_CALL
        ),
        f"p99 added latency caller→agent <= {GOAL_P99_ADDED_MS} ms "
        "(wall clock phone→agent, an upper bound)": _at_most(
            r.get("to_agent_p99_ms"), GOAL_P99_ADDED_MS
        ),
        f"p99 added latency agent→caller <= {GOAL_P99_ADDED_MS} ms "
        "(wall clock agent→phone, an upper bound)": _at_most(
            r.get("from_agent_p99_ms"), GOAL_P99_ADDED_MS
        ),
        f"RTP send jitter p99 <= {GOAL_JITTER_P99_MS} ms": _at_most(
            r.get("jitter_p99_ms"), GOAL_JITTER_P99_MS
        ),
    }
    return _unless_invalid(r, goals)


def _unless_invalid(r: dict[str, Any], goals: dict[str, str]) -> dict[str, str]:
    return dict.fromkeys(goals, "INVALID") if step_validity(r) else goals


def rss_per_call(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Set each ``telepath`` step's ``rss_mb_per_call`` to the slope of the gateway's RSS
    from the step before (MiB per call carried), and return them by step.

    One gateway serves every step, and its memory is not handed back between them: RSS at a
    step's start is the high-water mark of the steps before, so RSS with N calls up minus RSS
    at the step's start mostly measured what earlier calls had not already left allocated.
    The slope between successive steps is what each further call adds. The first step has
    no step before it (its RSS holds the first call's imports and caches): None.
    """
    slopes: dict[str, float] = {}
    previous: dict[str, Any] | None = None
    for r in rows:
        if r["kind"] != "telepath":
            continue
        r["rss_mb_per_call"] = None
        if previous is not None:
            calls = r.get("calls_bridged", r["calls"]) - previous.get(
                "calls_bridged", previous["calls"]
            )
            if calls > 0:
                r["rss_mb_per_call"] = round((r["rss_mb"] - previous["rss_mb"]) / calls, 3)
                slopes[_step_name(r)] = r["rss_mb_per_call"]
        previous = r
    return slopes


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    rss_slopes = rss_per_call(rows)
    headers = [
        "server",
        "N",
        "up/bridged",
        "CPU %/call",
        "CPU % tot",
        "kernel %",
        "RSS MB/call",
        "proc/pkt mean/p99 ms",
        "proc in/out p50 ≤ms",
        "→agent p50/p99",
        "agent→ p50/p99",
        "RTT p50/p99",
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
            f"{r.get('calls_up', r['calls'])}/{r.get('calls_bridged')}",
            r["cpu_pct_per_call"],
            r["cpu_pct_total"],
            r.get("sys_pct"),
            r.get("rss_mb_per_call"),
            pair(r.get("gw_proc_mean_ms"), r.get("gw_proc_p99_ms")),
            pair(r.get("in_p50_ms_metrics"), r.get("out_p50_ms_metrics")),
            pair(r.get("to_agent_p50_ms"), r.get("to_agent_p99_ms")),
            pair(r.get("from_agent_p50_ms"), r.get("from_agent_p99_ms")),
            pair(r.get("rtt_p50_ms"), r.get("rtt_p99_ms")),
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
        goals[_step_name(r)] = step_goals(r)
    for r in rows:
        if r["kind"] == "telepath+churn":
            churn = {
                f"RTP send jitter p99 <= {GOAL_JITTER_P99_MS} ms "
                f"(max {r.get('jitter_max_ms')} ms)": _at_most(
                    r.get("jitter_p99_ms"), GOAL_JITTER_P99_MS
                ),
                "every churn call completed": verdict(
                    r["churn_completed"] == r["churn_attempted"] and not r["churn_failed"]
                ),
            }
            goals[_step_name(r)] = _unless_invalid(r, churn)
    invalid: dict[str, list[str]] = {}
    for r in rows:
        if r["kind"] in ("telepath", "telepath+churn") and step_validity(r):
            invalid[_step_name(r)] = step_validity(r)
    broken = next(
        (
            f"{n} (invalid: {'; '.join(invalid[n])})" if n in invalid else n
            for n, g in goals.items()
            if "FAIL" in g.values() or n in invalid
        ),
        "none (all pass)",
    )
    floor = {r["calls"]: r["cpu_pct_per_call"] for r in rows if r["kind"] == "relay"}
    vs_floor = {
        f"N={r['calls']}": round(r["cpu_pct_per_call"] / floor[r["calls"]], 2)
        for r in tp
        if floor.get(r["calls"]) and r["cpu_pct_per_call"] is not None
    }
    for n, g in goals.items():
        ratio = f"; CPU/call {vs_floor[n]}x the relay floor" if n in vs_floor else ""
        print(f"  {n}: " + "; ".join(f"{v} {k}" for k, v in g.items()) + ratio)
    for n, reasons in invalid.items():
        print(f"  {n}: INVALID, its verdicts do not stand: {'; '.join(reasons)}")
    print(f"first N where a goal breaks: {broken}")
    return {
        "rows": rows,
        "summary": {
            "goals": goals,
            "invalid_steps": invalid,
            "first_failing_step": broken,
            "cpu_vs_relay_floor": vs_floor,
            "rss_mb_per_call": rss_slopes,
        },
    }


def _step_name(r: dict[str, Any]) -> str:
    if r["kind"] == "telepath+churn":
        return f"N={r['calls']} + {r['churn_cps']} calls/s churn"
    return f"N={r['calls']}"
