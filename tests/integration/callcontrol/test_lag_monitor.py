"""Event-loop lag is what sheds new calls before saturation (503), not a crash later."""

from __future__ import annotations

import asyncio
import time

import pytest

from telepath.calls.manager import LagMonitor

pytestmark = pytest.mark.integration


async def test_a_blocked_loop_reads_as_overloaded_then_recovers() -> None:
    monitor = LagMonitor(threshold_s=0.05, interval_s=0.01)
    monitor.start()
    try:
        await asyncio.sleep(0.05)
        assert not monitor.overloaded
        time.sleep(0.15)  # noqa: ASYNC251  (on purpose: the loop is stuck for 150 ms)
        await asyncio.sleep(0.02)
        assert monitor.overloaded and monitor.lag_s >= 0.1
        await asyncio.sleep(0.5)  # lag decays once the loop runs freely again
        assert not monitor.overloaded
    finally:
        await monitor.stop()
