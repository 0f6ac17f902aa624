"""One deadline-paced clock per (event loop, ptime), shared by every media session on it.

A single task wakes every ``ptime`` and calls each subscribed session, instead of one timer per
call (``reference/sip-stack.md`` §4 item 6). The deadline advances by exactly ``ptime`` each
tick (``next += ptime``; never ``sleep(ptime)`` after work), so there is no drift. After a stall
longer than ``MAX_CATCH_UP`` packet times the clock jumps ahead instead of bursting, and tells
subscribers how many frames elapsed so RTP timestamps keep following real time.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable

logger = logging.getLogger(__name__)

TickCallback = Callable[[float, int], None]
MAX_CATCH_UP = 3

_pacers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, Pacer]] = (
    weakref.WeakKeyDictionary()
)


class Pacer:
    """Calls every subscriber once per ``ptime_ms`` with ``(loop_time, frames_elapsed)``.

    Args:
        ptime_ms: the tick interval.
        loop: the event loop to run on.
    """

    def __init__(self, ptime_ms: int, loop: asyncio.AbstractEventLoop) -> None:
        self.ptime = ptime_ms / 1000
        self._loop = loop
        self._subscribers: dict[int, TickCallback] = {}
        self._task: asyncio.Task[None] | None = None
        self._next_id = 0

    @classmethod
    def for_loop(cls, ptime_ms: int, loop: asyncio.AbstractEventLoop | None = None) -> Pacer:
        """Return the shared pacer for this loop and ptime, creating it on first use."""
        loop = loop or asyncio.get_running_loop()
        per_loop = _pacers.setdefault(loop, {})
        pacer = per_loop.get(ptime_ms)
        if pacer is None:
            pacer = per_loop[ptime_ms] = cls(ptime_ms, loop)
        return pacer

    def subscribe(self, callback: TickCallback) -> int:
        """Start calling ``callback`` every tick; returns a handle for :meth:`unsubscribe`."""
        handle = self._next_id
        self._next_id += 1
        self._subscribers[handle] = callback
        if self._task is None or self._task.done():
            self._task = self._loop.create_task(self._run(), name="telepath-media-pacer")
        return handle

    def unsubscribe(self, handle: int) -> None:
        """Stop calling a subscriber (the task exits when none is left)."""
        self._subscribers.pop(handle, None)

    async def _run(self) -> None:
        loop = self._loop
        ptime = self.ptime
        deadline = loop.time()
        while self._subscribers:
            deadline += ptime
            delay = deadline - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = loop.time()
            frames = 1
            behind = now - deadline
            if behind > MAX_CATCH_UP * ptime:
                skipped = int(behind / ptime)
                deadline += skipped * ptime
                frames += skipped
                logger.warning("media pacer stalled; skipping frames")
            for callback in list(self._subscribers.values()):
                try:
                    callback(now, frames)
                except Exception:  # one broken session must not stop every call's audio
                    logger.exception("media session tick failed")
