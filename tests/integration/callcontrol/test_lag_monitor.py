"""Event-loop lag is what sheds new calls before saturation (503), not a crash later."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from telepath.calls.manager import LagMonitor
from tests.interop.sip.waits import until

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
        for _ in range(10):  # the loop is busy for 300 ms out of every ~301 ms
            time.sleep(0.3)  # noqa: ASYNC251
            await asyncio.sleep(0.001)
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


async def _until(done: Callable[[], bool]) -> None:
    """Wait for ``done()``; a generous limit, so a loaded machine only makes it slower."""
    await until(done, within_s=10.0)


async def test_hooks_ride_on_the_monitors_wake_ups_and_a_failing_one_stops_nothing() -> None:
    monitor = LagMonitor(threshold_s=0.2, interval_s=0.01)
    calls: list[str] = []

    def broken() -> None:
        calls.append("broken")
        raise RuntimeError("boom")

    monitor.every(0.05, lambda: calls.append("every 5"))
    monitor.every(0.001, broken)  # less than one sample: every sample
    monitor.start()
    try:
        # the monitor keeps ticking after the first exception
        await _until(lambda: calls.count("broken") >= 20)
    finally:
        await monitor.stop()
    fives, broken_calls = calls.count("every 5"), calls.count("broken")
    # its own period: every 5th sample on time, every 2nd-3rd with samples up to 2x late
    assert 2 <= fives <= broken_calls / 2
    after = len(calls)
    await asyncio.sleep(0.05)
    assert len(calls) == after  # stopped means stopped


async def test_an_idle_gateway_samples_at_the_idle_rate_and_speeds_up_with_work() -> None:
    loop = asyncio.get_running_loop()
    work = False
    monitor = LagMonitor(threshold_s=0.2, interval_s=0.01, idle_interval_s=0.1, busy=lambda: work)
    wakeups: list[float] = []
    monitor.every(0.0, lambda: wakeups.append(loop.time()))
    before = loop.time()
    monitor.start()
    try:
        first = monitor.next_sample_at
        assert first is not None and before + 0.1 <= first <= loop.time() + 0.1  # idle: 100 ms
        await _until(lambda: len(wakeups) >= 1)
        idle_next = monitor.next_sample_at
        assert idle_next is not None and 0.099 <= idle_next - wakeups[-1] <= 0.1
        work = True
        await _until(lambda: len(wakeups) >= 2)  # the idle sample already due, then 10 ms
        # (on a crowded machine more samples may have come by the time this runs: the last)
        busy_next = monitor.next_sample_at
        assert busy_next is not None and 0.009 <= busy_next - wakeups[-1] <= 0.01
    finally:
        await monitor.stop()
    assert monitor.next_sample_at is None


async def test_starting_twice_keeps_one_clock() -> None:
    loop = asyncio.get_running_loop()
    monitor = LagMonitor(threshold_s=0.2, interval_s=0.02)
    ticks: list[float] = []
    monitor.every(0.0, lambda: ticks.append(loop.time()))
    monitor.start()
    monitor.start()
    try:
        await _until(lambda: len(ticks) >= 6)
    finally:
        await monitor.stop()
    # one sample every 20 ms at the most (a loaded machine only spaces them more); two clocks
    # would give two samples per 20 ms
    assert ticks[5] - ticks[0] >= 5 * 0.02 * 0.9
