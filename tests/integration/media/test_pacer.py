"""The shared pacer: every subscriber once per ptime, spread over slots, frames counted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from telepath.transport.media_pacer import Pacer

pytestmark = pytest.mark.integration


async def test_subscribers_are_spread_over_slots_and_paced() -> None:
    loop = asyncio.get_running_loop()
    pacer = Pacer(20, loop)
    calls: dict[int, list[float]] = {i: [] for i in range(8)}
    frames_seen: list[int] = []

    def make(i: int) -> Callable[[float, int], None]:
        def tick(now: float, frames: int) -> None:
            calls[i].append(now)
            frames_seen.append(frames)

        return tick

    handles = [pacer.subscribe(make(i)) for i in range(8)]
    assert pacer.slots == 4
    # two sessions per 5 ms slot: each wake-up serves a quarter of them, not all at once
    assert sorted(pacer._slot_of.values()) == [0, 0, 1, 1, 2, 2, 3, 3]
    await asyncio.sleep(0.5)
    for h in handles:
        pacer.unsubscribe(h)
    assert pacer.subscriber_count == 0
    counts = [len(times) for times in calls.values()]
    assert min(counts) > 0
    assert max(counts) - min(counts) <= 1  # every session ticks at the same rate
    assert set(frames_seen) == {1}


async def test_a_stall_is_counted_in_frames_not_burst() -> None:
    loop = asyncio.get_running_loop()
    pacer = Pacer(20, loop)
    seen: dict[int, list[int]] = {i: [] for i in range(4)}

    def make(i: int) -> Callable[[float, int], None]:
        return lambda now, frames: seen[i].append(frames)

    handles = [pacer.subscribe(make(i)) for i in range(4)]
    await asyncio.sleep(0.1)
    time.sleep(0.2)  # noqa: ASYNC251  (on purpose: the loop stalls for 10 packet times)
    await asyncio.sleep(0.1)
    for h in handles:
        pacer.unsubscribe(h)
    for frames in seen.values():
        # every stream learns once that ~10 frames elapsed, instead of getting 10 calls at once
        assert max(frames) >= 8
        assert len(frames) < sum(frames)  # fewer calls than frames: the stall was not replayed
