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


async def test_hooks_ride_on_the_monitors_wake_ups_and_a_failing_one_stops_nothing() -> None:
    monitor = LagMonitor(threshold_s=0.2, interval_s=0.01)
    calls: list[str] = []

    def broken() -> None:
        calls.append("broken")
        raise RuntimeError("boom")

    monitor.every(0.03, lambda: calls.append("every 3"))
    monitor.every(0.001, broken)  # less than one sample: every sample
    monitor.start()
    try:
        await asyncio.sleep(0.2)
    finally:
        await monitor.stop()
    threes, broken_calls = calls.count("every 3"), calls.count("broken")
    assert broken_calls >= 6  # the monitor kept ticking after the first exception
    assert 2 <= threes <= broken_calls / 1.5  # its own period: every 2nd-3rd sample, not each
    after = len(calls)
    await asyncio.sleep(0.05)
    assert len(calls) == after  # stopped means stopped


async def test_an_idle_gateway_samples_at_the_idle_rate_and_speeds_up_with_work() -> None:
    work = False
    monitor = LagMonitor(threshold_s=0.2, interval_s=0.01, idle_interval_s=0.1, busy=lambda: work)
    wakeups: list[float] = []
    monitor.every(0.0, lambda: wakeups.append(asyncio.get_running_loop().time()))
    monitor.start()
    try:
        await asyncio.sleep(0.55)
        idle = len(wakeups)
        work = True
        await asyncio.sleep(0.3)
        busy = len(wakeups) - idle
    finally:
        await monitor.stop()
    assert 3 <= idle <= 6  # every 100 ms, not every 10
    assert busy >= 10  # back to every 10 ms within one idle interval (idle: ~3 in 0.3 s)


async def test_starting_twice_keeps_one_clock() -> None:
    monitor = LagMonitor(threshold_s=0.2, interval_s=0.02)
    ticks: list[int] = []
    monitor.every(0.0, lambda: ticks.append(1))
    monitor.start()
    monitor.start()
    try:
        await asyncio.sleep(0.21)
    finally:
        await monitor.stop()
    assert 5 <= len(ticks) <= 11  # one sample every 20 ms, not two
