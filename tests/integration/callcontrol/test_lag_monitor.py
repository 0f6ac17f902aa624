"""Event-loop lag is what sheds new calls before saturation (503), not a crash later."""

from __future__ import annotations

import asyncio
import time

import pytest

from telepath.calls.manager import LagMonitor

pytestmark = pytest.mark.integration


async def test_sustained_lag_reads_as_overloaded_a_single_stall_does_not() -> None:
    monitor = LagMonitor(threshold_s=0.2, interval_s=0.01)
    monitor.start()
    try:
        await asyncio.sleep(0.05)
        assert not monitor.overloaded
        time.sleep(0.03)  # noqa: ASYNC251  (one short stall: not overload)
        await asyncio.sleep(0.03)
        assert not monitor.overloaded
        for _ in range(10):  # the loop is busy for 300 ms out of every ~310 ms
            time.sleep(0.3)  # noqa: ASYNC251
            await asyncio.sleep(0.01)
        assert monitor.overloaded and monitor.lag_s > 0.2
        await asyncio.sleep(1.0)  # lag decays once the loop runs freely again
        assert not monitor.overloaded
    finally:
        await monitor.stop()


def test_one_long_stall_alone_never_sheds_calls_repeated_lag_does() -> None:
    monitor = LagMonitor(threshold_s=0.2)
    monitor.sample(5.0)  # a VM pause or a slow start-up import: one sample
    assert not monitor.overloaded
    for _ in range(3):
        monitor.sample(0.0)
    monitor.sample(1.5)
    assert not monitor.overloaded
    for _ in range(5):  # the loop is late by 300 ms on every tick: that is overload
        monitor.sample(0.3)
    assert monitor.overloaded
    for _ in range(10):
        monitor.sample(0.0)
    assert not monitor.overloaded
