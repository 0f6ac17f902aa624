"""Garbage collection timed by the media clock (``transport/gc_schedule.py``)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from telepath.transport import gc_schedule
from telepath.transport.media_pacer import Pacer

pytestmark = pytest.mark.integration

DEFAULTS = (700, 10, 10)


@pytest.fixture(autouse=True)
def fresh_schedule() -> Iterator[None]:
    """Each test starts with no clock running and CPython's default thresholds."""
    state = (gc_schedule._clocks, gc_schedule._saved, gc.get_threshold())
    gc_schedule._clocks, gc_schedule._saved = 0, None
    gc.set_threshold(*DEFAULTS)
    try:
        yield
    finally:
        gc_schedule._clocks, gc_schedule._saved = state[0], state[1]
        gc.set_threshold(*state[2])


@pytest.fixture
def collections_seen() -> Iterator[list[tuple[int, bool]]]:
    """(generation, whether after_tick ran it) for every collection while the test runs."""
    seen: list[tuple[int, bool]] = []

    def record(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            seen.append((info["generation"], gc_schedule.collecting))

    gc.callbacks.append(record)
    try:
        yield seen
    finally:
        gc.callbacks.remove(record)


def _allocate(n: int) -> list[list[int]]:
    return [[i] for i in range(n)]  # container objects: each one counts for the collector


def test_thresholds_are_raised_while_any_clock_runs() -> None:
    gc_schedule.clock_started()
    raised = gc.get_threshold()
    assert raised[0] >= gc_schedule.SAFETY_THRESHOLD0 and raised[2] > 10**6
    gc_schedule.clock_started()  # a second clock (another ptime or loop)
    gc_schedule.clock_stopped()
    assert gc.get_threshold() == raised
    gc_schedule.clock_stopped()
    assert gc.get_threshold() == DEFAULTS
    gc_schedule.clock_stopped()  # one too many: harmless
    assert gc.get_threshold() == DEFAULTS


def test_after_tick_runs_the_generation_cpython_would(
    collections_seen: list[tuple[int, bool]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gc_schedule, "FULL_AFTER", 2)
    gc.collect()  # counts back to zero
    collections_seen.clear()
    gc_schedule.clock_started()
    keep = []
    ran: list[int | None] = []
    try:
        assert gc_schedule.after_tick() is None  # nothing allocated: nothing due
        for _ in range(40):
            keep.append(_allocate(800))  # past threshold0, far below the safety net
            ran.append(gc_schedule.after_tick())
    finally:
        gc_schedule.clock_stopped()
    # CPython's "count > threshold": 11 young collections, then one of generation 1 (12 per
    # round); once a third generation-1 collection has run (count2 = 3 > 2), a full one
    assert ran[:13] == [0] * 11 + [1, 0]
    assert ran.index(2) == 36 and ran[35] == 1
    assert all(g is not None for g in ran)
    assert [g for g, _ in collections_seen] == ran
    assert all(scheduled for _, scheduled in collections_seen)  # none from the allocation path


def test_nothing_runs_without_a_clock_or_with_the_collector_off() -> None:
    gc.collect()
    keep = _allocate(2000)
    assert gc_schedule.after_tick() is None  # no clock: CPython's own thresholds apply
    gc_schedule.clock_started()
    gc.disable()
    try:
        assert gc_schedule.after_tick() is None  # switched off (e.g. by a test): not ours
    finally:
        gc.enable()
        gc_schedule.clock_stopped()
    assert len(keep) == 2000


async def test_the_pacer_collects_after_its_ticks(
    collections_seen: list[tuple[int, bool]],
) -> None:
    loop = asyncio.get_running_loop()
    pacer = Pacer(20, loop)
    kept: list[list[list[int]]] = []  # alive: the collector counts net allocations
    ticks = 0

    def allocating_stream(now: float, frames: int) -> None:
        nonlocal ticks
        ticks += 1
        kept.append(_allocate(1000))

    handle = pacer.subscribe(allocating_stream)
    assert gc.get_threshold()[0] >= gc_schedule.SAFETY_THRESHOLD0
    await asyncio.sleep(0.5)
    pacer.unsubscribe(handle)
    await asyncio.sleep(0.1)  # the next tick finds nobody and stops the clock
    assert ticks >= 10
    young = [scheduled for generation, scheduled in collections_seen if generation < 2]
    assert len(young) >= ticks - 2  # one per tick: each allocated past threshold0
    assert all(young), "a collection ran from the allocation path, not after a tick"
    assert gc.get_threshold() == DEFAULTS
