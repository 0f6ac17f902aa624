"""StaleWatch: a process is dead when its beat counter stays still for the whole interval."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from types import SimpleNamespace
from typing import Any, cast

import pytest

from telepath.cli import instances
from telepath.db import instance_store
from telepath.db.base import utcnow
from telepath.db.instance_store import InstanceBeat, StaleWatch

T = utcnow()


def row(instance_id: str, beats: int, seen: datetime = T) -> InstanceBeat:
    return InstanceBeat(instance_id, beats, seen)


def test_a_counter_that_stays_still_for_the_interval_is_stale() -> None:
    watch = StaleWatch(after_s=60)
    assert watch.observe([row("gw_a", 5)], now=1000) == []
    assert watch.observe([row("gw_a", 5)], now=1059.9) == []
    assert watch.observe([row("gw_a", 5)], now=1060) == [row("gw_a", 5)]


def test_a_beat_starts_the_interval_again() -> None:
    watch = StaleWatch(after_s=60)
    watch.observe([row("gw_a", 5)], now=1000)
    assert watch.observe([row("gw_a", 6)], now=1050) == []
    assert watch.observe([row("gw_a", 6)], now=1100) == []  # 50 s since the counter moved
    assert watch.observe([row("gw_a", 6)], now=1110) == [row("gw_a", 6)]


def test_the_rows_own_clock_is_not_used() -> None:
    """A host whose clock is an hour behind is not dead while its counter moves."""
    watch = StaleWatch(after_s=60)
    old = utcnow().replace(year=2000)
    for i in range(5):
        assert watch.observe([row("gw_skewed", i, old)], now=1000 + 30 * i) == []


def test_a_new_watcher_waits_the_whole_interval_first() -> None:
    """A process that just started cannot tell a dead row from a live one at once."""
    watch = StaleWatch(after_s=60)
    assert watch.observe([row("gw_dead_for_hours", 3)], now=5) == []
    assert watch.observe([row("gw_dead_for_hours", 3)], now=65) == [row("gw_dead_for_hours", 3)]


def test_excluded_and_vanished_rows() -> None:
    watch = StaleWatch(after_s=10)
    watch.observe([row("gw_self", 1), row("gw_b", 1)], now=0, exclude=("gw_self",))
    assert watch.observe([row("gw_self", 1)], now=20, exclude=("gw_self",)) == []
    # gw_b vanished (another process took it) and came back: watched from scratch
    assert watch.observe([row("gw_b", 1)], now=25) == []
    assert watch.observe([row("gw_b", 1)], now=35) == [row("gw_b", 1)]


def test_time_the_watcher_could_not_read_does_not_count() -> None:
    """A shared database outage (a PostgreSQL failover) is no dead process: the sibling could
    not beat while the watcher could not read, so its first read after recovery finds every
    counter where it was; each row gets the whole interval again from there."""
    watch = StaleWatch(after_s=60)
    assert watch.observe([row("gw_a", 5), row("gw_b", 7)], now=0) == []
    for _ in range(9):  # reads failing until t=90
        watch.read_failed()
    assert watch.observe([row("gw_a", 5), row("gw_b", 7)], now=90) == []
    assert watch.observe([row("gw_a", 5), row("gw_b", 8)], now=149.9) == []
    # a process that really died during the outage is still found, a full interval later
    assert watch.observe([row("gw_a", 5), row("gw_b", 8)], now=150) == [row("gw_a", 5)]


async def test_the_reaper_tells_the_watch_when_its_reads_fail(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """reap_forever's failed reads reach the watch: a sibling whose counter did not move across
    the watcher's own outage is not taken for dead on the first read after it."""
    clock = [0.0]
    reads = iter([True, False, False, True, True])  # read, two failures, recovered
    taken: list[InstanceBeat] = []
    done = asyncio.Event()

    async def read_all(sessions: Any) -> list[InstanceBeat]:
        clock[0] += 0.3  # half the interval per round, by the watcher's clock
        ok = next(reads, None)
        if ok is None:
            done.set()
            await asyncio.Event().wait()
        if not ok:
            raise ConnectionRefusedError
        return [row("gw_sibling", 5)]

    async def unchanged(sessions: Any, stale: InstanceBeat) -> bool:
        taken.append(stale)
        return False

    monkeypatch.setattr(instance_store, "read_all", read_all)
    monkeypatch.setattr(instance_store, "unchanged", unchanged)
    monkeypatch.setattr(instances, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    task = asyncio.create_task(instances.reap_forever(cast(Any, None), None, None, "gw_self", 0.6))
    try:
        await asyncio.wait_for(done.wait(), timeout=30)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert taken == []  # 0.9 s since the first read, 0.3 s since the watcher could read
