"""The gateway's per-packet processing-time recorder (a ring of the latest samples)."""

from __future__ import annotations

import pytest

from telepath.transport.media_stats import _RING, ProcessingTimer

pytestmark = pytest.mark.unit


def test_empty_timer_reports_zeros() -> None:
    timer = ProcessingTimer()
    assert (timer.count, timer.mean_us, timer.max_us, timer.percentile_us(0.99)) == (0, 0, 0, 0)


def test_percentiles_over_the_samples_so_far() -> None:
    timer = ProcessingTimer()
    for ns in range(1000, 101_000, 1000):  # 1..100 µs
        timer.record(ns)
    assert timer.count == 100
    assert timer.percentile_us(0.5) == 51.0
    assert timer.percentile_us(0.99) == 100.0
    assert timer.mean_us == 50.5
    assert timer.max_us == 100.0


def test_the_ring_keeps_the_latest_samples_and_the_totals_keep_all() -> None:
    timer = ProcessingTimer()
    for _ in range(_RING):
        timer.record(1_000_000)  # an early burst of slow packets: 1 ms each
    for _ in range(_RING):
        timer.record(2_000)  # then 2 µs each, enough to push the burst out of the ring
    assert timer.count == 2 * _RING
    assert timer.percentile_us(0.99) == 2.0  # latest samples only
    assert timer.max_us == 1000.0  # over the whole call
    assert timer.mean_us == (1_000_000 + 2_000) / 2 / 1000
    timer.record(5_000)  # wraps onto the oldest slot
    assert timer.percentile_us(1.0) == 5.0
