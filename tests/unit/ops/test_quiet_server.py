"""``QuietServer``: uvicorn without its 10 Hz tick, still stopping at once on a signal."""

from __future__ import annotations

import asyncio
import signal

import pytest
import uvicorn

from telepath.cli.serve import QuietServer

pytestmark = pytest.mark.unit


class Counting(QuietServer):
    def __init__(self) -> None:
        super().__init__(uvicorn.Config(app=lambda: None))
        self.ticks: list[int] = []

    async def on_tick(self, counter: int) -> bool:
        self.ticks.append(counter)
        return self.should_exit


async def test_it_ticks_once_a_second_and_a_signal_wakes_it_at_once() -> None:
    server = Counting()
    loop = asyncio.create_task(server.main_loop())
    await asyncio.sleep(0.3)
    assert server.ticks == [0]  # uvicorn's own loop: 3 ticks by now; the next is a second away
    server.handle_exit(signal.SIGTERM, None)  # as uvicorn's signal handler calls it
    await asyncio.wait_for(loop, 0.9)  # woken by the signal, not by the next tick
    assert server.ticks == [0, 10]  # every tick does uvicorn's once-a-second work
