"""Group commit without a database: batching, the item-by-item fallback, no timer."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from telepath.db.group_commit import GroupCommit
from telepath.db.write_journal import WriteJournal, read_journal
from telepath.log import call_id_var

pytestmark = pytest.mark.unit


class Store:
    """Records each transaction; a batch holding ``bad`` fails as a whole, as a foreign key
    error does, and so does ``bad`` alone."""

    def __init__(self, bad: int | None = None) -> None:
        self.bad = bad
        self.transactions: list[list[int]] = []

    async def batch(self, items: list[int]) -> None:
        await asyncio.sleep(0.01)  # a transaction in flight: later items queue behind it
        if self.bad in items:
            raise ValueError("constraint")
        self.transactions.append(list(items))

    async def single(self, item: int) -> None:
        await self.batch([item])


async def test_items_queued_behind_a_transaction_share_the_next() -> None:
    store = Store()
    group = GroupCommit(store.batch, store.single, name="t")
    first = group.submit(0)
    await asyncio.sleep(0)  # its transaction starts at once: no timer waits for company
    await asyncio.gather(first, *(group.submit(i) for i in range(1, 10)))
    assert store.transactions == [[0], list(range(1, 10))]
    assert group.transactions == 2


async def test_a_lone_write_is_committed_at_once() -> None:
    store = Store()
    group = GroupCommit(store.batch, store.single, name="t")
    await group.submit(1)
    await group.submit(2)
    assert store.transactions == [[1], [2]]


async def test_a_failing_batch_is_retried_item_by_item_and_costs_no_other_item() -> None:
    store = Store(bad=5)
    group = GroupCommit(store.batch, store.single, name="t")
    results = await asyncio.gather(*(group.submit(i) for i in range(8)), return_exceptions=True)
    assert [type(r).__name__ for r in results] == ["NoneType"] * 5 + ["ValueError"] + [
        "NoneType"
    ] * 2
    assert sorted(i for t in store.transactions for i in t) == [0, 1, 2, 3, 4, 6, 7]


async def test_without_a_batch_statement_every_item_is_its_own_transaction() -> None:
    store = Store()
    group = GroupCommit(None, store.single, name="t")
    await asyncio.gather(*(group.submit(i) for i in range(3)))
    assert store.transactions == [[0], [1], [2]]


class Flaky(Store):
    """A database that is unreachable (``ConnectionError``) until ``up`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.up = False
        self.attempts = 0

    async def batch(self, items: list[int]) -> None:
        self.attempts += 1
        await asyncio.sleep(0)
        if not self.up:
            raise ConnectionError("database unreachable")
        self.transactions.append(list(items))


def transient(exc: BaseException) -> bool:
    return isinstance(exc, ConnectionError)


async def test_a_transient_failure_is_retried_until_the_write_lands() -> None:
    store = Flaky()
    group = GroupCommit(
        store.batch, store.single, name="t", retryable=transient, first_retry_s=0.01
    )
    first = group.submit(1)
    for _ in range(1000):  # a few back-off rounds while the database is down (5 s at most)
        if store.attempts >= 3:
            break
        await asyncio.sleep(0.005)
    assert not first.done() and group.parked == 1
    store.up = True
    await asyncio.wait_for(first, 5)
    assert store.transactions == [[1]] and group.parked == 0


async def test_during_an_outage_new_writes_wait_behind_the_parked_ones() -> None:
    """One failed attempt per back-off, not one per write; the order of writes holds."""
    store = Flaky()
    group = GroupCommit(store.batch, store.single, name="t", retryable=transient, first_retry_s=0.5)
    parked = [group.submit(1), group.submit(2)]
    await asyncio.sleep(0.01)
    assert group.parked == 2 and store.attempts == 1
    newer = [group.submit(i) for i in range(3, 30)]  # none of them tries the database
    assert group.parked == 29 and store.attempts == 1
    store.up = True
    await asyncio.wait_for(asyncio.gather(*parked, *newer), 5)
    assert store.transactions == [list(range(1, 30))]  # the next round: one transaction, in order


async def test_a_permanent_failure_is_not_retried() -> None:
    store = Store(bad=1)
    group = GroupCommit(
        store.batch, store.single, name="t", retryable=transient, first_retry_s=0.01
    )
    with pytest.raises(ValueError):
        await group.submit(1)
    assert group.parked == 0


async def test_past_the_bound_the_oldest_parked_write_fails() -> None:
    store = Flaky()
    group = GroupCommit(
        store.batch, store.single, name="t", retryable=transient, max_parked=2, first_retry_s=60
    )
    futures = [group.submit(i) for i in range(4)]
    await asyncio.sleep(0.01)
    assert [f.done() for f in futures] == [True, True, False, False]
    assert all(isinstance(f.exception(), ConnectionError) for f in futures[:2])
    assert group.parked == 2 and group.dropped == 2
    assert await group.close(1) == 2  # still down: the last attempt fails too


async def test_close_makes_one_last_attempt() -> None:
    store = Flaky()
    group = GroupCommit(store.batch, store.single, name="t", retryable=transient, first_retry_s=60)
    future = group.submit(1)
    await asyncio.sleep(0.01)
    store.up = True
    assert await group.close(1) == 0
    await asyncio.wait_for(future, 1)
    assert store.transactions == [[1]]


async def test_a_batch_that_fails_on_a_transient_error_is_kept_whole() -> None:
    """The database is down, not a row bad: trying each item alone would cost one failed
    connection per item on the event loop (thousands after a long outage)."""
    store = Flaky()
    group = GroupCommit(store.batch, store.single, name="t", retryable=transient, first_retry_s=60)
    group.submit(0)
    await asyncio.sleep(0)  # 0 is in flight: the rest queue behind it and share one batch
    futures = [group.submit(i) for i in range(1, 50)]
    await asyncio.sleep(0.01)
    assert group.parked == 50
    assert store.attempts == 2  # 0 alone, then the other 49 together: no attempt per item
    store.up = True
    assert await group.close(1) == 0
    await asyncio.wait_for(asyncio.gather(*futures), 1)
    assert store.transactions == [list(range(50))]  # one transaction when it is back


async def test_without_a_batch_statement_an_outage_costs_one_attempt_per_round() -> None:
    store = Flaky()
    group = GroupCommit(None, store.single, name="t", retryable=transient, first_retry_s=60)
    for i in range(20):
        group.submit(i)
    await asyncio.sleep(0.01)
    assert group.parked == 20 and store.attempts == 1
    await group.close(0.1)


async def test_a_writer_waits_until_its_write_lands_or_is_kept_not_for_the_outage() -> None:
    """During an outage waiting longer only holds call control up (a call's end writes its
    record and three events, each waiting up to 10 s): ``write`` returns once it is kept."""
    store = Flaky()
    group = GroupCommit(store.batch, store.single, name="t", retryable=transient, first_retry_s=60)
    kept = await asyncio.wait_for(group.write(1, 60), 5)
    assert not kept.done() and group.parked == 1
    joined = await asyncio.wait_for(group.write(2, 60), 5)  # behind the kept one: kept at once
    assert not joined.done() and group.parked == 2
    store.up = True
    await group.close(1)
    assert kept.done() and joined.done() and store.transactions == [[1, 2]]
    again = GroupCommit(store.batch, store.single, name="t", retryable=transient)
    landed = await again.write(3, 60)  # the database answering: waited for, as before
    assert landed.done() and landed.exception() is None


async def test_the_writer_runs_in_no_call_s_context() -> None:
    """The writer commits many calls' items: started from one call's task, it carried that
    call's id onto every log line of every later batch (README: a call's id on its lines)."""
    seen: list[str] = []

    async def batch(items: list[int]) -> None:
        seen.append(call_id_var.get())

    async def single(item: int) -> None:
        await batch([item])

    group = GroupCommit(batch, single, name="t")

    async def a_call() -> None:
        call_id_var.set("call_A")
        await group.submit(1)

    await asyncio.get_running_loop().create_task(a_call())
    assert seen == ["-"]


class Hangs:
    """The first attempt fails on a transient error (if ``fail_first``); every later one hangs,
    as a write to a database that stopped answering mid-transaction does."""

    def __init__(self, *, fail_first: bool) -> None:
        self.fail_first = fail_first
        self.attempts = 0

    async def single(self, item: int) -> None:
        self.attempts += 1
        if self.fail_first and self.attempts == 1:
            raise ConnectionError("database unreachable")
        await asyncio.Event().wait()


@pytest.mark.parametrize("fail_first", [True, False], ids=["parked", "first-attempt"])
async def test_close_counts_a_write_still_in_flight_as_not_taken(
    tmp_path: Path, fail_first: bool
) -> None:
    """The last attempt still hangs when ``close`` stops waiting: the write is neither landed
    nor failed, so it is counted (the gateway's heartbeat stays), its future fails and it stays
    in the journal for the next start; counting the parked ones alone said 0 and lost it."""
    store = Hangs(fail_first=fail_first)
    journal: WriteJournal[int] = WriteJournal(tmp_path / "t.jsonl", lambda item: {"item": item})
    group = GroupCommit(
        None, store.single, name="t", retryable=transient, first_retry_s=0.01, journal=journal
    )
    future = group.submit(7)
    for _ in range(500):
        if store.attempts == (2 if fail_first else 1):  # in flight, in the writer's hands
            break
        await asyncio.sleep(0.005)
    assert await group.close(0.1) == 1
    assert future.done() and isinstance(future.exception(), Exception)
    assert group.parked == 0 and group.dropped == 1
    assert read_journal(journal.path) == [{"item": 7}]  # not removed: the next start replays it


class HangsThenUnwinds:
    """Every attempt hangs; cancelled, it takes a moment to unwind, as a session rolling back
    its connection does."""

    async def single(self, item: int) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.05)


async def test_a_write_submitted_once_close_gave_up_fails_at_once(tmp_path: Path) -> None:
    """``close`` cancels the writer and returns before it has unwound: a write submitted then
    saw a writer still running, started none, and its future never resolved. It now fails at
    once, and stays in the journal like the writes ``close`` gave up."""
    journal: WriteJournal[int] = WriteJournal(tmp_path / "t.jsonl", lambda item: {"item": item})
    group = GroupCommit(
        None, HangsThenUnwinds().single, name="t", retryable=transient, journal=journal
    )
    group.submit(7)
    assert await group.close(0.05) == 1
    late = group.submit(8)
    assert late.done() and isinstance(late.exception(), RuntimeError)  # at once: no wait
    assert group.parked == 0 and group.dropped == 2
    assert read_journal(journal.path) == [{"item": 7}, {"item": 8}]
    await asyncio.sleep(0.1)  # the writer has unwound


async def test_a_write_submitted_while_close_gives_up_is_counted(tmp_path: Path) -> None:
    """A write submitted once ``close`` gave up the writer, before it returned (a future's
    callback, say), is counted among the lost: the gateway keeps its heartbeat."""
    group = GroupCommit(None, HangsThenUnwinds().single, name="t", retryable=transient)
    late: list[asyncio.Future[None]] = []
    group.submit(7).add_done_callback(lambda _: late.append(group.submit(8)))
    assert await group.close(0.05) == 2
    assert late and late[0].done() and isinstance(late[0].exception(), RuntimeError)
    await asyncio.sleep(0.1)
