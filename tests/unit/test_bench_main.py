"""``python -m bench``'s results file and run-wide settings (bench/__main__.py), with a suite
stubbed out: no gateway, no SIPp."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import bench.__main__ as bench_main
import pytest
from bench import cps
from bench.common import ROOT

pytestmark = pytest.mark.unit

GIT = {"commit": "0123456789abcdef0123456789abcdef01234567", "dirty": True}


def run_main(monkeypatch: pytest.MonkeyPatch, out: Path, suite: str = "cps") -> dict[str, Any]:
    monkeypatch.setattr(sys, "argv", ["python -m bench", suite, "--quick", "--out", str(out)])
    monkeypatch.setattr(bench_main, "git_state", lambda: GIT, raising=False)
    bench_main.main()
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc


def test_each_section_records_its_own_start_machine_and_commit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    out = tmp_path / "results.json"
    # a section of an earlier run of the day, on another machine
    earlier = {"rows": [], "started_at": "2026-12-07T01:00:00+00:00", "machine": {"cpu": "X"}}
    out.write_text(json.dumps({"date": "2026-12-07T01:00:00+00:00", "calls": earlier}))
    monkeypatch.setattr(cps, "run", lambda quick: {"summary": {"goals": {}}})
    doc = run_main(monkeypatch, out)
    section = doc["cps"]
    assert section["machine"]["cpu"] == bench_main.machine()["cpu"]
    assert section["machine"]["cores"] == bench_main.machine()["cores"]
    assert section["git"] == GIT
    assert section["started_at"].startswith("20")
    assert doc["calls"] == earlier  # its own date and machine, not this run's
    assert "machine" not in doc and "date" not in doc  # no run-wide value over every section


def test_git_state_names_the_checkouts_commit() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    state = bench_main.git_state()
    assert re.fullmatch(r"[0-9a-f]{40}", state["commit"] or "")
    assert isinstance(state["dirty"], bool)


def test_every_suite_runs_on_the_gateways_event_loop_whatever_ran_before(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import asyncio

    import uvloop
    from bench import frame_path

    seen: list[asyncio.AbstractEventLoopPolicy] = []

    def run(quick: bool) -> dict[str, Any]:
        seen.append(asyncio.get_event_loop_policy())
        return {}

    monkeypatch.setattr(frame_path, "run", run)
    before = asyncio.get_event_loop_policy()
    try:
        doc = run_main(monkeypatch, tmp_path / "results.json", suite="frame")
        assert isinstance(seen[0], uvloop.EventLoopPolicy)  # as `telepath serve` runs
        assert doc["frame"]["event_loop"] == "uvloop"
        assert asyncio.get_event_loop_policy() is before  # and nothing leaks past the suite
    finally:
        asyncio.set_event_loop_policy(before)


def test_the_media_suite_leaves_the_event_loop_policy_as_it_found_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio

    from bench import media, media_bench, media_codecs

    async def rows(streams: list[int], seconds: float) -> list[dict[str, Any]]:
        return [{"mode": "session", "streams": streams[-1], "dev_p99": 0.5}]

    monkeypatch.setattr(media_bench, "_main", rows)
    monkeypatch.setattr(media_codecs, "main", lambda: {})
    before = asyncio.get_event_loop_policy()
    try:
        media.run(quick=True)
        assert asyncio.get_event_loop_policy() is before
    finally:
        asyncio.set_event_loop_policy(before)
