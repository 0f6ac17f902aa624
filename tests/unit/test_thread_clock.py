"""The load admission's clock: time on a CPU plus time runnable, waiting for one."""

from __future__ import annotations

import multiprocessing
import os
import time
from typing import Any

import pytest

from telepath.transport import thread_clock
from telepath.transport.thread_clock import BusyClock


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def _spin_on(cpu: int, seconds: float, spinning: Any) -> None:
    os.sched_setaffinity(0, {cpu})
    spinning.set()
    _spin(seconds)


@pytest.mark.skipif(not os.path.exists("/proc/thread-self/schedstat"), reason="Linux only")
def test_waiting_for_a_shared_cpu_counts_as_busy() -> None:
    """Sharing one CPU with a busy process, a spinning thread runs about half the time: its
    CPU time says half busy, the busy clock says busy throughout."""
    saved = os.sched_getaffinity(0)
    cpu = min(saved)
    context = multiprocessing.get_context("spawn")
    spinning = context.Event()
    rival = context.Process(target=_spin_on, args=(cpu, 30.0, spinning))
    rival.start()
    try:
        os.sched_setaffinity(0, {cpu})
        clock = BusyClock()
        assert clock.waits_counted
        assert spinning.wait(30)
        wall0, busy0, cpu0 = time.monotonic(), clock(), time.thread_time()
        _spin(1.0)
        wall = time.monotonic() - wall0
        busy, ran = clock() - busy0, time.thread_time() - cpu0
        clock.close()
    finally:
        os.sched_setaffinity(0, saved)
        rival.terminate()
        rival.join(10)
    assert busy >= 0.8 * wall  # running or waiting to run all along
    assert busy - ran >= 0.15 * wall  # a good part of it waiting: thread_time alone missed it


def test_without_scheduler_statistics_it_is_the_thread_cpu_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(thread_clock, "SCHEDSTAT", "/nonexistent/schedstat")
    clock = BusyClock()
    assert not clock.waits_counted
    before, cpu0 = clock(), time.thread_time()
    _spin(0.05)
    assert clock() - before == pytest.approx(time.thread_time() - cpu0, abs=0.01)
