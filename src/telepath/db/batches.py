"""Bulk maintenance run a batch at a time: the retention sweep's purge of call detail
(``db/call_recorder.py``) and prune of settled webhook deliveries (``db/webhook_store.py``).

On SQLite a transaction holds the database's write lock: a backlog (the first sweep after a
long stop, a lowered retention) written in one transaction would hold up every call record
write and outbox claim past its timeout. Each batch is its own transaction, and a pause as long
as the batch took (at most ``PAUSE_MAX_S``) follows it, so writers waiting for the lock get in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

BATCH_SIZE = 500  # rows written per transaction
# SQLite's longest wait between two tries of a writer waiting for the lock (its default busy
# handler): a pause this long lets any waiting writer in.
PAUSE_MAX_S = 0.1


async def in_batches(
    sessions: async_sessionmaker[AsyncSession],
    batch: Callable[[AsyncSession], Awaitable[int]],
    batch_size: int,
) -> int:
    """Run ``batch`` (which writes at most ``batch_size`` rows and says how many it wrote) in a
    transaction of its own, again and again until it writes fewer than ``batch_size``, pausing
    between batches. Returns how many rows were written in all."""
    loop = asyncio.get_running_loop()
    total = 0
    while True:
        began = loop.time()
        async with sessions() as session:
            count = await batch(session)
            await session.commit()
        total += count
        if count < batch_size:
            return total
        await asyncio.sleep(min(loop.time() - began, PAUSE_MAX_S))
