"""Group commit: writes that arrive while a transaction is in flight share the next one.

Every call writes rows on the event loop that carries the calls' media: its record twice, and an
outbox row per webhook event. A session, a transaction and SQLAlchemy's statement building per
row cost 0.5-0.6 ms of CPU each (measured); at hundreds of calls a second that was a large share
of the loop. Here each writer waits until its row is committed, as before, but the rows queued
while a commit runs go together into the next: one ``executemany`` per kind. There is no timer,
so a lone write is never delayed: at one call a second it is one transaction per write, as
before; under load, a few transactions a second.

If a batch fails as a whole (a foreign key, say), every item is retried alone, so one bad row
costs no other. A batch or an item that fails on a *transient* error (``retryable``: the
database unreachable, a connection lost, a lock held too long) is not given up: its items are
parked — not tried one by one, which would only repeat the failure once per item — and retried
together after a back-off (1 s doubling to 5 s) until they land, their futures resolving then,
so a database restart or failover loses no call record or webhook event. While items are parked
new ones join them in order instead of trying the database themselves: during an outage a
writer costs one failed attempt per back-off, not one per write. At most ``max_parked`` items
wait (the oldest then fails); :meth:`close` makes one last attempt and fails the rest. With a
``journal`` (``db/write_journal.py``) every kept item is also copied to disk, for the next start
to replay if this process dies first.
Hand-written: SQLAlchemy has no such queue, and it is a few lines.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from contextvars import Context
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from telepath.db.engine import transient_error
from telepath.db.write_journal import WriteJournal
from telepath.metrics import Metrics

T = TypeVar("T")

__all__ = ["GroupCommit"]

FIRST_RETRY_S = 1.0
MAX_RETRY_S = 5.0  # one attempt per writer this often while the database is down
MAX_PARKED = 10_000  # writes kept through an outage (a call writes about three)


def _never(_: BaseException) -> bool:
    return False


@dataclass(slots=True)
class _Pending(Generic[T]):
    item: T
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    error: BaseException | None = None  # the last transient failure, while kept
    kept: bool = False  # failed transiently once: counted in ``GroupCommit.parked`` until done
    waiter: asyncio.Future[None] | None = None  # ``GroupCommit.write`` waiting for it to be kept


class GroupCommit(Generic[T]):
    """Commits submitted items in batches.

    Args:
        batch: writes a list of items in one transaction (raises if it failed as a whole); None
            to write every item alone (a dialect without a batch statement).
        single: writes one item in its own transaction (the fallback).
        name: the writer task's name.
        retryable: whether a failure is transient — the database, not the data (keep and retry).
        max_parked: the most items kept for retry; past it the oldest fails.
        first_retry_s: the first back-off; it doubles up to ``MAX_RETRY_S`` while writes fail.
        journal: where kept items are copied to disk (None: in memory only).
    """

    def __init__(
        self,
        batch: Callable[[list[T]], Awaitable[None]] | None,
        single: Callable[[T], Awaitable[None]],
        *,
        name: str,
        retryable: Callable[[BaseException], bool] = _never,
        max_parked: int = MAX_PARKED,
        first_retry_s: float = FIRST_RETRY_S,
        journal: WriteJournal[T] | None = None,
    ) -> None:
        self._batch = batch
        self._single = single
        self._name = name
        self._retryable = retryable
        self._max_parked = max_parked
        self._first_retry_s = first_retry_s
        self._delay = first_retry_s
        self._journal = journal
        self._queue: list[_Pending[T]] = []
        self._parked: list[_Pending[T]] = []
        self._writing: list[_Pending[T]] = []  # the writer's batch in flight
        self._writer: asyncio.Task[None] | None = None
        self._retrier: asyncio.Task[None] | None = None
        self.transactions = 0  # committed: fewer than the items under load
        self.dropped = 0  # parked items given up (the backlog overflowed, or closed)
        self._kept = 0
        self._closed = False  # ``close`` gave the writer up: a submit fails at once
        self._late = 0  # submitted since then

    @property
    def parked(self) -> int:
        """Items kept after a transient failure (or queued behind such) and not yet landed."""
        return self._kept

    def _done(self, pending: _Pending[T], error: BaseException | None) -> None:
        if pending.kept:
            pending.kept = False
            self._kept -= 1
            if self._kept == 0 and self._journal is not None:
                self._journal.emptied()
        _resolve(pending.done, error)

    def submit(self, item: T) -> asyncio.Future[None]:
        """Queue ``item``; the future resolves once it is committed (or with its error).

        Await it through ``asyncio.shield``: a waiter that gives up leaves the batch alone.
        """
        return self._submit(item).done

    async def write(
        self,
        item: T,
        timeout_s: float,
        settled: Callable[[asyncio.Future[None]], object] | None = None,
    ) -> asyncio.Future[None]:
        """Submit ``item`` and wait until it is committed, has failed, or is *kept* for retry
        (the database down: waiting longer would only hold the caller up), at most
        ``timeout_s``; returns its future, done or not. Cancelling the caller leaves it be.
        ``settled`` is called with the future once it is done (before this returns, if then)."""
        pending = self._submit(item)
        if settled is not None:
            pending.done.add_done_callback(settled)
        if not pending.kept and not pending.done.done():
            pending.waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait(
                    {pending.done, pending.waiter},
                    timeout=timeout_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                pending.waiter = None
        return pending.done

    def _submit(self, item: T) -> _Pending[T]:
        pending = _Pending(item)
        if self._closed:
            # ``close`` cancelled the writer, which may not have unwound yet: queued, this would
            # wait for it for ever. Given up at once, like the writes ``close`` gave up.
            self._late += 1
            pending.error = RuntimeError(f"{self._name} closed")
            self._lose([pending])
            return pending
        if self._parked:
            # An outage is under way: wait with the others for the next attempt (one per
            # back-off) rather than fail against the database once per write.
            self._keep(pending)
            self._parked.append(pending)
            self._bound()
            return pending
        self._queue.append(pending)
        self._start_writer()
        return pending

    def _start_writer(self) -> None:
        if self._writer is None or self._writer.done():
            # in no call's context: it commits every call's items (its log lines name none)
            self._writer = asyncio.get_running_loop().create_task(
                self._drain(), name=self._name, context=Context()
            )

    async def _drain(self) -> None:
        """Commit queued items, a batch per transaction, until the queue is empty; then exit."""
        while self._queue:
            batch, self._queue = self._queue, []
            self._writing = batch
            await self._commit(batch)
        self._writing = []

    async def _commit(self, batch: list[_Pending[T]]) -> None:
        if self._batch is not None:
            try:
                await self._batch([p.item for p in batch])
                self._committed()
                for p in batch:
                    self._done(p, None)
                return
            except Exception as exc:
                if len(batch) == 1 or self._retryable(exc):
                    # Alone, or the database rather than a row failed: item by item would only
                    # repeat the failure once per item (a failed connection each, on the loop).
                    for p in batch:
                        self._failed(p, exc)
                    return
        for i, p in enumerate(batch):
            try:
                await self._single(p.item)
                self._committed()
                self._done(p, None)
            except Exception as exc:
                if self._retryable(exc):  # the database is down: keep the rest untried
                    for rest in batch[i:]:
                        self._failed(rest, exc)
                    return
                self._failed(p, exc)

    def _committed(self) -> None:
        self.transactions += 1
        self._delay = self._first_retry_s  # the database is back: the next outage starts over

    def _failed(self, pending: _Pending[T], error: Exception) -> None:
        if not self._retryable(error):
            self._done(pending, error)
            return
        pending.error = error
        self._keep(pending)
        self._parked.append(pending)
        self._bound()
        if self._retrier is None or self._retrier.done():
            self._retrier = asyncio.get_running_loop().create_task(
                self._retry(), name=f"{self._name}-retry", context=Context()
            )

    def _keep(self, pending: _Pending[T]) -> None:
        if not pending.kept:
            pending.kept = True
            self._kept += 1
            if self._journal is not None:
                self._journal.kept(pending.item)
            if pending.waiter is not None and not pending.waiter.done():
                pending.waiter.set_result(None)

    def _bound(self) -> None:
        while len(self._parked) > self._max_parked:
            self._give_up(self._parked.pop(0))

    async def _retry(self) -> None:
        """Put parked items back at the head of the queue after a back-off, until none is left
        (each round that fails parks them again and doubles the back-off)."""
        while self._parked:
            await asyncio.sleep(self._delay)
            self._delay = min(self._delay * 2, MAX_RETRY_S)
            parked, self._parked = self._parked, []
            self._queue[:0] = parked  # ahead of newer writes: a call's start before its end
            self._start_writer()
            if self._writer is not None:
                await asyncio.wait({self._writer})

    def _give_up(self, pending: _Pending[T]) -> None:
        self.dropped += 1
        self._done(pending, pending.error or RuntimeError("write given up"))

    async def close(self, timeout_s: float) -> int:
        """Stop retrying: one last attempt for parked items within ``timeout_s``; the ones that
        still fail, and those still being written (or queued) when it is up, are given up:
        their futures fail and, with a journal, they stay on disk. Returns how many. So are the
        writes submitted from then on (counted while this runs)."""
        if self._retrier is not None:
            self._retrier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retrier
            self._retrier = None
        if self._parked:
            parked, self._parked = self._parked, []
            self._queue[:0] = parked
            self._start_writer()
        if self._writer is not None and not self._writer.done():
            await asyncio.wait({self._writer}, timeout=timeout_s)
        self._closed = True
        self._late = 0
        lost, self._parked = self._parked, []
        if self._writer is not None and not self._writer.done():
            # still writing (the database not answering): neither landed nor failed, so not
            # known written — counted, or the caller would take this stop as clean and lose them
            lost += [p for p in self._writing if not p.done.done()] + self._queue
            self._queue = []
            self._writer.cancel()
        if self._retrier is not None:  # a failure of the last attempt parked them again
            self._retrier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retrier
            self._retrier = None
        self._lose(lost)
        if lost:
            await asyncio.sleep(0)  # their futures' callbacks (the writers' failure counts) run
        return len(lost) + self._late

    def _lose(self, lost: list[_Pending[T]]) -> None:
        for pending in lost:
            self._keep(pending)  # on disk too if it was first tried just now
        if lost and self._journal is not None:
            self._journal.detach()  # given up here, but on disk for the next start
        for pending in lost:
            self._give_up(pending)


def outage_proof(
    batch: Callable[[list[T]], Awaitable[None]] | None,
    single: Callable[[T], Awaitable[None]],
    *,
    name: str,
    writer: str,
    metrics: Metrics | None,
    journal: Path | None,
    encode: Callable[[T], dict[str, Any]],
) -> GroupCommit[T]:
    """A gateway writer's ``GroupCommit``: transient database errors kept and retried, kept
    items copied to ``journal`` (``encode``: one as JSON), and ``metrics``'
    ``telepath_db_writes_parked{writer}`` showing how many wait."""
    group = GroupCommit(
        batch,
        single,
        name=name,
        retryable=transient_error,
        journal=WriteJournal(journal, encode) if journal is not None else None,
    )
    if metrics is not None:
        metrics.db_writes_parked.labels(writer=writer).set_function(lambda: group.parked)
    return group


def _resolve(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
        future.exception()  # retrieved: a waiter that timed out must not log "never retrieved"
