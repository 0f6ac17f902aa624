"""``LookupCache``: TTL, generations, single flight, failures."""

from __future__ import annotations

import asyncio

import pytest

from telepath.log import call_id_var
from telepath.lookup_cache import LookupCache

pytestmark = pytest.mark.unit


class Source:
    def __init__(self) -> None:
        self.calls = 0
        self.gate = asyncio.Event()
        self.fail: Exception | None = None

    async def load(self) -> int:
        self.calls += 1
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return self.calls


async def test_concurrent_misses_share_one_load_then_hit() -> None:
    cache: LookupCache[str, int] = LookupCache(60)
    src = Source()
    waiting = [asyncio.create_task(cache.get("k", src.load)) for _ in range(10)]
    await asyncio.sleep(0)
    src.gate.set()
    assert await asyncio.gather(*waiting) == [1] * 10
    assert await cache.get("k", src.load) == 1
    assert src.calls == cache.loads == 1


async def test_a_new_generation_or_an_expired_entry_reads_again() -> None:
    generation = 0
    cache: LookupCache[str, int] = LookupCache(60, lambda: generation)
    src = Source()
    src.gate.set()
    assert await cache.get("k", src.load) == 1
    generation += 1
    assert await cache.get("k", src.load) == 2
    expired: LookupCache[str, int] = LookupCache(0)
    assert await expired.get("k", src.load) == 3
    assert await expired.get("k", src.load) == 4


async def test_a_failed_load_reaches_every_waiter_and_is_not_cached() -> None:
    cache: LookupCache[str, int] = LookupCache(60)
    src = Source()
    src.fail = RuntimeError("database down")
    waiting = [asyncio.create_task(cache.get("k", src.load)) for _ in range(3)]
    await asyncio.sleep(0)
    src.gate.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    src.fail = None
    assert await cache.get("k", src.load) == 2


async def test_a_cancelled_loader_does_not_cancel_the_waiters() -> None:
    cache: LookupCache[str, int] = LookupCache(60)
    src = Source()
    loader = asyncio.create_task(cache.get("k", src.load))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(cache.get("k", src.load))
    await asyncio.sleep(0)
    loader.cancel()
    await asyncio.sleep(0)
    src.gate.set()
    assert await waiter == 2  # it loaded for itself
    assert loader.cancelled()


async def test_peek_returns_only_a_fresh_entry_and_never_loads() -> None:
    generation = 0
    cache: LookupCache[str, int] = LookupCache(60, lambda: generation)
    src = Source()
    src.gate.set()
    assert cache.peek("k") is None
    assert await cache.get("k", src.load) == 1
    assert cache.peek("k") == 1 and cache.peek("other") is None
    generation += 1
    assert cache.peek("k") is None  # a change in this process: stale at once
    expired: LookupCache[str, int] = LookupCache(0)
    assert await expired.get("k", src.load) == 2
    assert expired.peek("k") is None
    assert src.calls == 2


def _down(exc: BaseException) -> bool:
    return isinstance(exc, ConnectionError)


async def _loaded(cache: LookupCache[str, int]) -> Source:
    """A source whose value of ``k`` (1) the cache has read once."""
    src = Source()
    src.gate.set()
    assert await cache.get("k", src.load) == 1
    return src


async def test_an_expired_value_is_served_while_the_source_is_down() -> None:
    generation = 0
    cache: LookupCache[str, int] = LookupCache(
        0.0, lambda: generation, stale_if_error_s=60, stale_on=_down
    )
    src = await _loaded(cache)  # expires at once (ttl 0)
    src.fail = ConnectionError("database unreachable")
    assert await cache.get("k", src.load) == 1  # stale, instead of the error
    assert (src.calls, cache.stale_served) == (2, 1)  # it did try the source first
    with pytest.raises(ConnectionError):  # nothing known about this one
        await cache.get("other", src.load)
    src.fail = ValueError("a bug, not an outage")
    with pytest.raises(ValueError):
        await cache.get("k", src.load)
    generation += 1  # changed through this process: the old value must not come back
    src.fail = ConnectionError("database unreachable")
    with pytest.raises(ConnectionError):
        await cache.get("k", src.load)


@pytest.mark.parametrize(
    ("stale_if_error_s", "wait_s"), [(0.0, 0.0), (0.05, 0.1)], ids=["off", "past-the-window"]
)
async def test_without_a_stale_value_to_serve_the_failure_is_raised(
    stale_if_error_s: float, wait_s: float
) -> None:
    cache: LookupCache[str, int] = LookupCache(
        0.0, stale_if_error_s=stale_if_error_s, stale_on=_down
    )
    src = await _loaded(cache)
    await asyncio.sleep(wait_s)
    src.fail = ConnectionError("database unreachable")
    with pytest.raises(ConnectionError):
        await cache.get("k", src.load)


async def test_while_down_a_stale_value_is_tried_again_once_per_ttl_not_per_lookup() -> None:
    cache: LookupCache[str, int] = LookupCache(1.0, stale_if_error_s=600, stale_on=_down)
    src = await _loaded(cache)
    await asyncio.sleep(1.05)  # expired; the five lookups below then have a second to run
    src.fail = ConnectionError("database unreachable")
    assert [await cache.get("k", src.load) for _ in range(5)] == [1] * 5
    assert src.calls == 2  # one failed read, then the stale value is held for a ttl


async def test_after_a_failure_the_source_is_tried_again_only_after_the_retry_interval() -> None:
    cache: LookupCache[str, int] = LookupCache(
        0.05, stale_if_error_s=600, stale_on=_down, retry_after_error_s=60
    )
    src = await _loaded(cache)
    await asyncio.sleep(0.1)  # expired
    src.fail = ConnectionError("database unreachable")
    assert await cache.get("k", src.load) == 1  # stale
    await asyncio.sleep(0.1)  # past the ttl, not past the retry interval
    assert await cache.get("k", src.load) == 1
    assert src.calls == 2


async def test_a_source_that_stops_answering_is_waited_for_only_stale_wait_s() -> None:
    """A silent database (no error until its timeout, seconds later): a lookup with a stale
    value to fall back on waits ``stale_wait_s`` for it, not the whole timeout; the read goes
    on, and what it brings replaces the stale value."""
    cache: LookupCache[str, int] = LookupCache(
        0.05, stale_if_error_s=600, stale_on=_down, stale_wait_s=0.05, retry_after_error_s=60
    )
    src = await _loaded(cache)
    await asyncio.sleep(0.1)  # expired
    src.gate.clear()  # the source stops answering
    waiting = [asyncio.create_task(cache.get("k", src.load)) for _ in range(3)]
    assert await asyncio.wait_for(asyncio.gather(*waiting), 5) == [1, 1, 1]
    assert await asyncio.wait_for(cache.get("k", src.load), 5) == 1  # held: no second read
    assert (src.calls, cache.stale_served) == (2, 3)
    src.gate.set()  # the read in flight answers at last
    await asyncio.sleep(0)
    assert cache.peek("k") == 2  # fresh again
    assert await cache.get("k", src.load) == 2 and src.calls == 2


async def test_a_read_still_in_flight_that_then_fails_keeps_the_stale_value() -> None:
    cache: LookupCache[str, int] = LookupCache(
        0.05, stale_if_error_s=600, stale_on=_down, stale_wait_s=0.05, retry_after_error_s=60
    )
    src = await _loaded(cache)
    await asyncio.sleep(0.1)
    src.gate.clear()
    src.fail = ConnectionError("statement timeout")
    assert await asyncio.wait_for(cache.get("k", src.load), 5) == 1
    src.gate.set()  # the timeout, at last
    await asyncio.sleep(0)
    assert await cache.get("k", src.load) == 1  # still served, not tried again yet
    assert src.calls == 2


async def test_without_a_stale_value_a_slow_source_is_waited_for() -> None:
    cache: LookupCache[str, int] = LookupCache(
        0.05, stale_if_error_s=600, stale_on=_down, stale_wait_s=0.01
    )
    src = Source()
    lookup = asyncio.create_task(cache.get("k", src.load))
    await asyncio.sleep(0.05)
    assert not lookup.done()
    src.gate.set()
    assert await lookup == 1


async def test_a_read_apart_from_its_lookup_runs_in_no_call_s_context() -> None:
    """The background read outlives the lookup that started it and answers every call that
    joins it: its log lines (a database error, a slow query) carried the id of whichever call
    happened to start it."""
    cache: LookupCache[str, int] = LookupCache(
        0.05, stale_if_error_s=600, stale_on=_down, stale_wait_s=0.01, retry_after_error_s=60
    )
    src = await _loaded(cache)
    await asyncio.sleep(0.1)  # expired: the next lookup reads in the background
    seen: list[str] = []

    async def load() -> int:
        seen.append(call_id_var.get())
        return await src.load()

    async def lookup() -> int:
        call_id_var.set("call_started_it")
        return await cache.get("k", load)

    assert await asyncio.wait_for(asyncio.create_task(lookup()), 5) == 2
    assert seen == ["-"]
