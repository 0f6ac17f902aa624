"""The pacer's deadline timer: once per arm, re-armable from its callback, never early with the
kernel's timer, disarmed cleanly — on asyncio's loop and on uvloop, precise and fallback."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from telepath.log import call_id_var
from telepath.transport.deadline_timer import DeadlineTimer
from telepath.transport.media_pacer import Pacer

pytestmark = pytest.mark.integration

LINUX = sys.platform.startswith("linux")


def on_both_loops(test: Callable[[bool], Coroutine[Any, Any, None]]) -> Callable[[bool], None]:
    """Run an async test under asyncio's loop and under uvloop (production)."""

    def run(precise: bool) -> None:
        asyncio.run(test(precise))
        uvloop.run(test(precise))

    run.__name__ = test.__name__
    return run


@pytest.mark.parametrize("precise", [True, False])
@on_both_loops
async def test_fires_once_per_arm_and_can_be_rearmed_from_its_callback(precise: bool) -> None:
    loop = asyncio.get_running_loop()
    fired: list[float] = []
    deadlines: list[float] = []
    done = asyncio.Event()

    def callback() -> None:
        fired.append(time.monotonic())
        if len(fired) < 5:
            deadlines.append(deadlines[-1] + 0.004)
            timer.arm(deadlines[-1])
        else:
            done.set()

    timer = DeadlineTimer(loop, callback, precise=precise)
    assert timer.precise is (precise and LINUX)
    deadlines.append(loop.time() + 0.004)
    timer.arm(deadlines[0])
    await asyncio.wait_for(done.wait(), 5)
    await asyncio.sleep(0.02)
    assert len(fired) == 5  # once per arm: no repeats, none lost
    if timer.precise:
        # the kernel's timer is never early (loop.time() is CLOCK_MONOTONIC, as is monotonic())
        assert all(f >= d for f, d in zip(fired, deadlines, strict=True))
    timer.disarm()


@pytest.mark.parametrize("precise", [True, False])
@on_both_loops
async def test_disarm_cancels_and_rearming_replaces_the_deadline(precise: bool) -> None:
    loop = asyncio.get_running_loop()
    fired: list[str] = []
    timer = DeadlineTimer(loop, lambda: fired.append("x"), precise=precise)
    timer.arm(loop.time() + 0.02)
    timer.disarm()
    timer.disarm()  # idempotent
    await asyncio.sleep(0.05)
    assert fired == []
    timer.arm(loop.time() + 10)  # far away, then replaced by a near deadline
    timer.arm(loop.time() + 0.005)
    await asyncio.sleep(0.05)
    assert fired == ["x"]
    if timer.precise:
        assert timer._reading  # still watched until disarmed
    timer.disarm()
    if timer.precise:
        assert not loop.remove_reader(timer._fd)  # an idle timer holds no reader on the loop


@pytest.mark.parametrize("precise", [True, False])
@on_both_loops
async def test_a_past_deadline_fires_at_once(precise: bool) -> None:
    loop = asyncio.get_running_loop()
    fired = asyncio.Event()
    timer = DeadlineTimer(loop, fired.set, precise=precise)
    timer.arm(loop.time() - 1.0)
    await asyncio.wait_for(fired.wait(), 1)
    timer.disarm()


@pytest.mark.parametrize("precise", [True, False])
@on_both_loops
async def test_the_pacer_ticks_stops_and_restarts_on_either_timer(precise: bool) -> None:
    loop = asyncio.get_running_loop()
    pacer = Pacer(20, loop, precise=precise)
    ticks: list[int] = []
    handle = pacer.subscribe(lambda now, frames: ticks.append(frames))
    await asyncio.sleep(0.2)
    pacer.unsubscribe(handle)
    await asyncio.sleep(0.05)  # the next wake-up finds nobody and stops the clock
    assert not pacer._running
    if pacer._timer.precise:
        assert not loop.remove_reader(pacer._timer._fd)  # nothing left watched on the loop
    count = len(ticks)
    assert count >= 1  # it ticked (frame counting is test_pacer.py's)
    await asyncio.sleep(0.1)
    assert len(ticks) == count  # stopped: no more ticks
    handle = pacer.subscribe(lambda now, frames: ticks.append(frames))
    await asyncio.sleep(0.1)
    assert len(ticks) > count  # restarted by the next subscriber
    pacer.unsubscribe(handle)


class FailingSettime:
    """Stands in for libc when the kernel refuses to arm the timer."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def timerfd_settime(self, *args: Any) -> int:
        return -1

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@pytest.mark.skipif(not LINUX, reason="the kernel timer exists only on Linux")
async def test_a_timer_the_kernel_refuses_to_arm_falls_back_instead_of_failing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from telepath.transport import deadline_timer

    loop = asyncio.get_running_loop()
    fired = asyncio.Event()
    timer = DeadlineTimer(loop, fired.set)
    assert timer.precise
    monkeypatch.setattr(deadline_timer, "_LIBC", FailingSettime(deadline_timer._LIBC))
    timer.arm(loop.time() + 0.005)  # must not raise: the pacer's tick would die with it
    await asyncio.wait_for(fired.wait(), 1)
    assert not timer.precise
    assert "falling back" in caplog.text
    timer.disarm()


@pytest.mark.skipif(not LINUX, reason="the kernel timer exists only on Linux")
def test_finding_libc_starts_no_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """ctypes.util.find_library runs ``ldconfig -p`` (tens of ms at start-up, and it may be
    missing from a minimal container): libc's symbols are already in the process."""
    import subprocess

    from telepath.transport import deadline_timer

    def no_process(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"started a process: {args[0] if args else kwargs}")

    monkeypatch.setattr(subprocess, "Popen", no_process)
    libc = deadline_timer._load_libc()
    assert libc is not None and hasattr(libc, "timerfd_create")


@pytest.mark.parametrize("precise", [True, False])
@on_both_loops
async def test_the_callback_runs_in_no_calls_context(precise: bool) -> None:
    """The timer serves every call (the media pacer's): armed first from inside one call's
    set-up, its callback used to run in that call's context, and everything logged from it
    carried that call's id."""
    loop = asyncio.get_running_loop()
    seen: list[str] = []
    fired = asyncio.Event()

    def callback() -> None:
        seen.append(call_id_var.get())
        if len(seen) < 3:
            timer.arm(loop.time() + 0.002)  # re-armed from inside: still no call's
        else:
            fired.set()

    timer = DeadlineTimer(loop, callback, precise=precise)

    async def call_setup() -> None:
        call_id_var.set("call_first")
        timer.arm(loop.time() + 0.002)

    await loop.create_task(call_setup())
    await asyncio.wait_for(fired.wait(), 5)
    timer.disarm()
    assert seen == ["-", "-", "-"]
