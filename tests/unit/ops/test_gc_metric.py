"""``telepath_gc_pause_seconds``: every collection is timed while watched, none after."""

from __future__ import annotations

import gc

from telepath.metrics import Metrics


def _count(metrics: Metrics, generation: int) -> float:
    value = metrics.registry.get_sample_value(
        "telepath_gc_pause_seconds_count", {"generation": str(generation)}
    )
    return value or 0.0


def _sum(metrics: Metrics) -> float:
    return sum(
        metrics.registry.get_sample_value("telepath_gc_pause_seconds_sum", {"generation": str(g)})
        or 0.0
        for g in range(3)
    )


def test_collections_are_timed_by_generation_until_unwatched() -> None:
    metrics = Metrics()
    callbacks = len(gc.callbacks)
    unwatch = metrics.watch_gc()
    try:
        assert len(gc.callbacks) == callbacks + 1
        gc.collect(0)
        gc.collect(2)
        gc.collect(2)
    finally:
        unwatch()
    assert _count(metrics, 0) >= 1
    assert _count(metrics, 2) >= 2
    assert _sum(metrics) > 0
    assert len(gc.callbacks) == callbacks
    before = [_count(metrics, g) for g in range(3)]
    gc.collect(2)
    assert [_count(metrics, g) for g in range(3)] == before
    unwatch()  # twice: harmless
