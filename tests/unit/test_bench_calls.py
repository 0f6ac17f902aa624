"""The calls benchmark's verdicts and per-step figures (bench/calls.py), from rows built here:
no gateway, no phones, no SIPp."""

from __future__ import annotations

from typing import Any

import pytest
from bench import calls

pytestmark = pytest.mark.unit


def telepath_row(n: int = 10, **changes: Any) -> dict[str, Any]:
    """A step in which every call came up and every goal holds."""
    row: dict[str, Any] = {
        "kind": "telepath",
        "calls": n,
        "calls_up": n,
        "calls_bridged": n,
        "sipp_completed": n,
        "sipp_failed": 0,
        "sipp_shed_503": 0,
        "setup_ms_mean": 5.0,
        "cpu_pct_total": 0.3 * n,
        "cpu_pct_per_call": 0.3,
        "sys_pct": 20.0,
        "agent_cpu_pct": 5.0,
        "phones_cpu_pct": 5.0,
        "rss_mb": 100.0,
        "gw_proc_mean_ms": 0.02,
        "gw_proc_p99_ms": 0.3,
        "records": n,
        "to_agent_p50_ms": 0.8,
        "to_agent_p99_ms": 2.0,
        "from_agent_p50_ms": 1.0,
        "from_agent_p95_ms": 2.5,
        "from_agent_p99_ms": 3.0,
        "first_audio_p95_ms": 3.0,
        "first_audio_calls": n,
        "jitter_p50_ms": 0.1,
        "jitter_p99_ms": 0.5,
        "jitter_max_ms": 1.0,
        "rx_loss_pct": 0.0,
        "echo_sent": 250 * n,
        "echo_returned": 250 * n,
        "echo_loss_pct": 0.0,
        "rtt_p50_ms": 2.0,
        "rtt_p99_ms": 5.0,
        "load": [0.5, 0.5, 0.5],
    }
    row.update(changes)
    return row


def goals_of(rows: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    goals: dict[str, dict[str, str]] = calls.summarize(rows)["summary"]["goals"]
    return goals


def test_a_healthy_step_passes_every_goal() -> None:
    goals = goals_of([telepath_row(10)])
    assert set(goals["N=10"].values()) == {"PASS"}


def test_added_latency_is_judged_per_direction_on_the_wall_clock_not_per_packet_cpu() -> None:
    # The README's N=200 step: per-packet callback time well under 5 ms while the agent
    # direction queued (p50 291 ms): the goal is not met, whatever the callbacks cost.
    row = telepath_row(200, gw_proc_p99_ms=0.78, from_agent_p50_ms=291.0, from_agent_p99_ms=420.0)
    latency = {k: v for k, v in goals_of([row])["N=200"].items() if "latency" in k}
    assert len(latency) == 2  # one verdict per direction
    assert [v for k, v in latency.items() if "agent→caller" in k] == ["FAIL"]
    assert [v for k, v in latency.items() if "caller→agent" in k] == ["PASS"]


def test_the_caller_to_agent_direction_fails_on_its_own_p99() -> None:
    row = telepath_row(50, to_agent_p50_ms=1.0, to_agent_p99_ms=5.5)
    latency = {k: v for k, v in goals_of([row])["N=50"].items() if "latency" in k}
    assert [v for k, v in latency.items() if "caller→agent" in k] == ["FAIL"]


def test_no_wall_clock_figure_is_no_verdict() -> None:
    row = telepath_row(10, to_agent_p99_ms=None, from_agent_p99_ms=None)
    latency = {k: v for k, v in goals_of([row])["N=10"].items() if "latency" in k}
    assert set(latency.values()) == {"n/a"}


def test_the_table_shows_p50_and_p99_of_each_direction(capsys: pytest.CaptureFixture[str]) -> None:
    calls.summarize([telepath_row(10, from_agent_p95_ms=7.25, from_agent_p99_ms=9.75)])
    out = capsys.readouterr().out
    assert "agent→ p50/p99" in out and "9.75" in out
