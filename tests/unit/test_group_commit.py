"""Group commit without a database: batching, the item-by-item fallback, no timer."""

from __future__ import annotations

import asyncio

import pytest

from telepath.db.group_commit import GroupCommit

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
