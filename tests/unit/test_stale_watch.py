"""StaleWatch: a process is dead when its beat counter stays still for the whole interval."""

from __future__ import annotations

from datetime import datetime

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
