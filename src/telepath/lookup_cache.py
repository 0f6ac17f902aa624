"""A small read-through cache for database lookups on the call path, with single flight.

Trunks (two lookups per INVITE) and webhook endpoints (several events per call) are read far
more often than they change. Entries live for a short TTL so that a change made by another
process is seen soon; a change made by this process bumps a *generation* and is seen at once.
When an entry expires under load, the lookups that arrive while it is being read again wait
for that one read instead of each starting their own (measured at 100 calls/s: dozens of
identical queries per expiry without it).

Hand-written because the few maintained asyncio caches (``aiocache``, ``async-lru``) either
lack the generation check or add a backend abstraction we do not need.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["LookupCache"]

K = TypeVar("K")
V = TypeVar("V")

MAX_ENTRIES = 10_000


def _never(_: BaseException) -> bool:
    return False


class LookupCache(Generic[K, V]):
    """``await cache.get(key, load)``: cached value, or ``load()`` once for concurrent misses.

    Args:
        ttl_s: how long a value is served without reading again.
        generation: returns the current generation; entries from an older one are stale.
        stale_if_error_s: when ``load`` fails with an error ``stale_on`` accepts (the database
            unreachable), an expired value of the current generation is served for up to this
            long past its expiry instead of the error (RFC 5861's ``stale-if-error``).
        stale_on: which load errors may be answered with a stale value.
        retry_after_error_s: how long a value served stale is then held before the source is
            tried again (default ``ttl_s``): while the source is down, one failed read per key
            this often.
        stale_wait_s: with a stale value to fall back on, how long a lookup waits for the
            source before it is answered with that value (None: until the read ends). A
            silent source (a hung server, a black-holed network) raises only at its timeout,
            seconds later; the read goes on meanwhile and what it brings replaces the value.
    """

    def __init__(
        self,
        ttl_s: float,
        generation: Callable[[], int] = lambda: 0,
        *,
        stale_if_error_s: float = 0.0,
        stale_on: Callable[[BaseException], bool] = _never,
        retry_after_error_s: float | None = None,
        stale_wait_s: float | None = None,
    ) -> None:
        self._ttl_s = ttl_s
        self._generation = generation
        self._stale_if_error_s = stale_if_error_s
        self._stale_on = stale_on
        self._retry_after_error_s = ttl_s if retry_after_error_s is None else retry_after_error_s
        self._stale_wait_s = stale_wait_s
        self._background: set[asyncio.Task[V]] = set()  # reads a lookup stopped waiting for
        self.stale_served = 0  # lookups answered with a stale value (tests and diagnostics)
        # key -> (generation, fresh until, value, may be served stale until)
        self._entries: dict[K, tuple[int, float, V, float]] = {}
        self._flights: dict[tuple[int, K], asyncio.Future[V]] = {}
        self.loads = 0  # reads that reached ``load`` (tests and diagnostics)

    @property
    def reads_in_flight(self) -> int:
        """Reads still running that the lookups stopped waiting for (``stale_wait_s``)."""
        return len(self._background)

    def peek(self, key: K) -> V | None:
        """The cached value if it is fresh, else None; never loads (no await, no task)."""
        hit = self._entries.get(key)
        if hit is not None and hit[0] == self._generation() and hit[1] > time.monotonic():
            return hit[2]
        return None

    async def get(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        now = time.monotonic()
        generation = self._generation()
        hit = self._entries.get(key)
        if hit is not None and hit[0] == generation and hit[1] > now:
            return hit[2]
        stale = hit if hit is not None and hit[0] == generation and now < hit[3] else None
        flight = (generation, key)  # a lookup after a change never joins one from before
        pending = self._flights.get(flight)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._flights[flight] = pending
            if stale is None or self._stale_wait_s is None:
                return await self._read(key, load, flight, pending, stale, now)
            # read apart from this lookup, which may stop waiting for it (below); in no call's
            # context: it outlives this lookup and answers every call that joins it, so its
            # log lines must not carry the id of the call that happened to start it
            read = asyncio.create_task(
                self._read(key, load, flight, pending, stale, now), context=contextvars.Context()
            )
            self._background.add(read)
            read.add_done_callback(self._reaped)
        if stale is not None and self._stale_wait_s is not None:
            try:
                return await asyncio.wait_for(asyncio.shield(pending), self._stale_wait_s)
            except TimeoutError:
                self.stale_served += 1
                if self._entries.get(key) == stale:  # further lookups answered at once
                    self._hold(key, stale, time.monotonic())
                return stale[2]
        try:
            return await asyncio.shield(pending)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not pending.cancelled() or task is None or task.cancelling():
                raise  # we were cancelled ourselves
            return await load()  # the task that was loading was cancelled, not us

    def _hold(self, key: K, stale: tuple[int, float, V, float], now: float) -> None:
        """Serve ``stale`` without asking the source for ``retry_after_error_s``: while it is
        down or silent, one read per key that often, not one per lookup. The stale window
        still counts from the last good read."""
        held = min(now + self._retry_after_error_s, stale[3])
        self._entries[key] = (stale[0], held, stale[2], stale[3])

    def _reaped(self, task: asyncio.Task[V]) -> None:
        self._background.discard(task)
        if not task.cancelled():
            task.exception()  # ``_read`` leaves its outcome in the flight's future

    async def _read(
        self,
        key: K,
        load: Callable[[], Awaitable[V]],
        flight: tuple[int, K],
        pending: asyncio.Future[V],
        stale: tuple[int, float, V, float] | None,
        now: float,
    ) -> V:
        generation = flight[0]
        try:
            self.loads += 1
            value = await load()
        except asyncio.CancelledError:
            pending.cancel()
            raise
        except Exception as exc:
            if stale is not None and self._stale_on(exc):
                self.stale_served += 1
                self._hold(key, stale, now)
                pending.set_result(stale[2])  # the lookups that joined this one get it too
                return stale[2]
            pending.set_exception(exc)
            pending.exception()  # nobody may be waiting: not "never retrieved"
            raise
        else:
            pending.set_result(value)
        finally:
            del self._flights[flight]
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        read_at = time.monotonic() if stale is not None else now
        expires = read_at + self._ttl_s
        self._entries[key] = (generation, expires, value, expires + self._stale_if_error_s)
        return value
