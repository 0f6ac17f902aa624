"""The CPS benchmark's capacity and shedding verdicts (bench/cps.py), from rows built here."""

from __future__ import annotations

from typing import Any

import pytest
from bench import cps

pytestmark = pytest.mark.unit

SECONDS = 6


def step(kind: str, rate: int, **changes: Any) -> dict[str, Any]:
    """A step of ``rate`` calls/s for SECONDS in which every call completed, quickly."""
    calls = rate * SECONDS
    row: dict[str, Any] = {
        "kind": kind,
        "target_cps": rate,
        "attempted": calls,
        "completed": calls,
        "failed": 0,
        "shed_503": 0,
        "timeouts": 0,
        "unexpected": 0,
        "retransmissions": 0,
        "achieved_cps": float(rate),
        "achieved_invite_cps": float(rate),
        "setup_ms_mean": 10.0,
        "server_cpu_ms_per_call": 3.0,
        "server_cpu_pct": 50.0,
        "agent_cpu_pct": 10.0,
        "wall_s": float(SECONDS),
        "sipp_crashed": False,
        "load": [0.5, 0.5, 0.5],
    }
    row.update(changes)
    return row


def shed(kind: str, rate: int, admitted: int, **changes: Any) -> dict[str, Any]:
    """Offered ``rate``/s, ``admitted``/s completed and the rest answered 503. A configured
    limit's token bucket starts full (calls/manager.py: one second of the limit), so it
    admits that burst on top."""
    completed = admitted * SECONDS + int(changes.get("limit_cps", 0) * cps.LIMIT_BURST_S)
    return step(kind, rate, completed=completed, shed_503=rate * SECONDS - completed, **changes)


# capacity 200/s: 300/s queued (mean set-up 150 ms)
CAPACITY = [
    step("telepath", 100),
    step("telepath", 200),
    step("telepath", 300, setup_ms_mean=150.0),
]


def shedding_goals(rows: list[dict[str, Any]]) -> dict[str, str]:
    goals: dict[str, str] = cps.summarize(CAPACITY + rows)["summary"]["goals"]
    return {k: v for k, v in goals.items() if "shedding" in k}


LIMITED = "clean 503 shedding past capacity"
DEFAULT = "clean 503 shedding past capacity, default settings (no limit configured)"


def test_a_limit_that_admits_its_rate_and_sheds_the_rest_is_clean() -> None:
    rows = [
        shed("telepath-limited", 240, 155, limit_cps=160),
        shed("telepath-limited", 320, 150, limit_cps=160),
        shed("telepath-default", 300, 190),
        shed("telepath-default", 400, 170),
    ]
    assert shedding_goals(rows) == {LIMITED: "PASS", DEFAULT: "PASS"}


def test_shedding_every_call_is_not_clean_shedding() -> None:
    rows = [
        shed("telepath-limited", 240, 0, limit_cps=160),
        shed("telepath-default", 300, 0),
    ]
    assert shedding_goals(rows) == {LIMITED: "FAIL", DEFAULT: "FAIL"}


def test_the_limit_must_admit_nine_tenths_of_its_rate() -> None:
    rows = [shed("telepath-limited", 320, 140, limit_cps=160)]  # 140 < 0.9 x 160
    assert shedding_goals(rows)[LIMITED] == "FAIL"


def test_the_default_settings_must_admit_four_fifths_of_the_capacity() -> None:
    rows = [shed("telepath-default", 400, 150)]  # 150 < 0.8 x 200
    assert shedding_goals(rows)[DEFAULT] == "FAIL"


@pytest.mark.parametrize("changes", [{"failed": 2}, {"unexpected": 1}, {"timeouts": 1}])
def test_a_failed_call_or_an_unexpected_message_is_not_clean(changes: dict[str, Any]) -> None:
    rows = [shed("telepath-limited", 240, 155, limit_cps=160, **changes)]
    assert shedding_goals(rows)[LIMITED] == "FAIL"


def test_a_rate_sipp_did_not_reach_is_not_within_capacity() -> None:
    # every call completed quickly, but SIPp started only 420 calls/s of the 500 asked
    assert not cps._within_capacity(step("telepath", 500, achieved_invite_cps=420.0))
    assert not cps._within_capacity(step("telepath", 500, achieved_invite_cps=None))
    assert cps._within_capacity(step("telepath", 500, achieved_invite_cps=480.0))


def test_the_capacity_search_stops_at_a_step_in_which_sipp_crashed() -> None:
    rows = [
        step("telepath", 100),
        step("telepath", 200, sipp_crashed=True, completed=700),
        step("telepath", 300),
    ]
    assert cps._capacity(rows) == 100


def sipp_stats(rows: list[tuple[int, float]]) -> list[dict[str, str]]:
    """SIPp's periodic statistics rows: (OutgoingCall(C), CallRate(C)) each second."""
    return [
        {"ElapsedTime(C)": f"00:00:{i:02d}", "OutgoingCall(C)": str(n), "CallRate(C)": str(r)}
        for i, (n, r) in enumerate(rows)
    ]


def test_the_invite_rate_is_sipps_while_it_was_still_starting_calls() -> None:
    from bench.sipp import SippRun

    # 300 calls asked at 100/s: SIPp's cumulative rate while starting them, not the final
    # row's, which the last calls' hold and BYE dilute
    series = sipp_stats([(0, 0.0), (96, 95.5), (190, 94.8), (300, 88.0), (300, 80.1)])
    run = SippRun(300, series[-1], {}, 3.8, 0, series=series)
    assert run.invite_rate == 94.8
    short = SippRun(300, {}, {}, 0.5, 0, series=sipp_stats([(0, 0.0), (300, 70.0)]))
    assert short.invite_rate is None


def test_the_admitted_rate_is_over_the_time_sipp_spent_starting_calls() -> None:
    # default settings, capacity 250: 500/s asked for 6 s, but SIPp started only 400/s (the
    # 3000 calls took 7.5 s) and the gateway admitted 170/s of them: 1275 completed. Per
    # second of the planned 6 s that read 212.5/s, over 0.8 x 250: clean. It is 170/s.
    row = step("telepath-default", 500, completed=1275, shed_503=1725, achieved_invite_cps=400.0)
    assert cps.admitted_cps(row) == 170.0
    assert cps.clean_shedding(row, 250) is False
    # and at 210/s admitted over the same 7.5 s it holds
    row = step("telepath-default", 500, completed=1575, shed_503=1425, achieved_invite_cps=400.0)
    assert cps.clean_shedding(row, 250) is True


def test_a_configured_limits_first_burst_is_not_credited_as_a_sustained_rate() -> None:
    # limit 160/s, offered 320/s for 6 s: the bucket's first second (160 calls) at once, then
    # 130/s: 940 completed, 156.7/s per second of the step, over 0.9 x 160; sustained 130/s
    row = step("telepath-limited", 320, completed=940, shed_503=980, limit_cps=160)
    assert cps.admitted_cps(row) == 130.0
    assert cps.clean_shedding(row, 200) is False


def test_no_sipp_rate_no_shedding_verdict() -> None:
    row = shed("telepath-default", 400, 170, achieved_invite_cps=None)
    assert cps.admitted_cps(row) is None
    assert cps.clean_shedding(row, 200) is None


def test_a_step_without_data_keeps_the_other_from_passing_the_goal() -> None:
    rows = [
        shed("telepath-limited", 240, 155, limit_cps=160),
        shed("telepath-limited", 320, 150, limit_cps=160, achieved_invite_cps=None),
        shed("telepath-default", 300, 190),
        shed("telepath-default", 400, 170, sipp_crashed=True),
    ]
    assert shedding_goals(rows) == {LIMITED: "n/a", DEFAULT: "n/a"}
    rows.append(shed("telepath-default", 500, 0))  # a step that failed outright still fails
    assert shedding_goals(rows)[DEFAULT] == "FAIL"


def test_cpu_percent_is_over_the_cpu_windows_own_wall_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from types import SimpleNamespace

    from bench.sipp import SippRun

    # SIPp ran 6 s; the CPU window also held the tail after it (records, _wait_idle): 8 s
    class Window:
        def __init__(self, pids: dict[str, int]) -> None:
            self.pids = pids

        def start(self) -> None:
            pass

        def stop(self) -> tuple[float, dict[str, float]]:
            return 8.0, {"gateway0": 4.0, "agent": 0.8}

    monkeypatch.setattr(cps, "CpuWindow", Window)
    monkeypatch.setattr(cps, "run_sipp", lambda *a, **k: object())
    monkeypatch.setattr(cps, "collect", lambda *a: SippRun(600, {}, {}, 6.0, 0))
    monkeypatch.setattr(cps, "_wait_idle", lambda *a: None)
    gw, agent = SimpleNamespace(pids=[1], sip_port=5060), SimpleNamespace(pid=2)
    row = cps._measure(gw, agent, "telepath", 100, 6.0, "scenario.xml")  # type: ignore[arg-type]
    assert row["server_cpu_pct"] == 50.0  # 4 CPU s over the window's 8 s, not SIPp's 6
    assert row["agent_cpu_pct"] == 10.0
    assert row["server_cpu_ms_per_call"] == round(1000 * 4.0 / 600, 3)  # per call: unchanged
    assert row["wall_s"] == 6.0  # SIPp's own
