"""Heartbeats of the running gateway processes in the database (``gateway_instances``).

Every gateway process beats its own row (``beat``); a process that dies stops beating. Whether
a row stopped is decided by its beat *counter* as another process sees it change over time
(:class:`StaleWatch`, with that process's monotonic clock), never by comparing the dead host's
timestamps with the living one's: hosts sharing a database may disagree about the time. A stale
row is removed (``forget``) only once all of that process's calls are closed: a close cut short
(the database lost midway, the watcher stopped) leaves it, still stale, for the next check of
this or another watcher. Two watchers may close the same process's calls at once: each record
is closed by one conditional ``UPDATE`` (``close_instance_calls``), so its events are sent once.

Hand-written: a few statements over SQLAlchemy Core; no library keeps process liveness in a
database we already have (a lease service or Redis would be a new dependency to run).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from telepath.db.base import utcnow
from telepath.db.models import GatewayInstance

INSTANCES = cast(Table, GatewayInstance.__table__)


@dataclass(frozen=True, slots=True)
class InstanceBeat:
    """One row as read: the process, how many beats it made, its own clock at the last."""

    instance_id: str
    beats: int
    last_seen_at: datetime


async def beat(sessions: async_sessionmaker[AsyncSession], instance_id: str) -> bool:
    """Count one heartbeat of ``instance_id``; True if its row was there, False if it had to
    be (re)inserted — the first beat, or the row was taken for a dead process's meanwhile."""
    now = utcnow()
    async with sessions() as session:
        result: Any = await session.execute(
            update(INSTANCES)
            .where(INSTANCES.c.id == instance_id)
            .values(beats=INSTANCES.c.beats + 1, last_seen_at=now)
        )
        found = bool(result.rowcount)
        if not found:
            await session.execute(
                insert(INSTANCES).values(
                    id=instance_id,
                    host=socket.gethostname()[:255],
                    pid=os.getpid(),
                    started_at=now,
                    last_seen_at=now,
                    beats=1,
                )
            )
        await session.commit()
    return found


async def forget(sessions: async_sessionmaker[AsyncSession], instance_ids: Collection[str]) -> None:
    """Remove the rows of processes that stopped and left nothing open."""
    if not instance_ids:
        return
    async with sessions() as session:
        await session.execute(delete(INSTANCES).where(INSTANCES.c.id.in_(list(instance_ids))))
        await session.commit()


async def read_all(sessions: async_sessionmaker[AsyncSession]) -> list[InstanceBeat]:
    """Every row."""
    async with sessions() as session:
        rows = await session.execute(
            select(INSTANCES.c.id, INSTANCES.c.beats, INSTANCES.c.last_seen_at)
        )
        return [InstanceBeat(r.id, r.beats, r.last_seen_at) for r in rows]


async def unchanged(sessions: async_sessionmaker[AsyncSession], row: InstanceBeat) -> bool:
    """Whether ``row``'s process has not beaten since ``row`` was read (its row is there with
    the same count): checked just before its calls are closed."""
    async with sessions() as session:
        beats = await session.scalar(
            select(INSTANCES.c.beats).where(INSTANCES.c.id == row.instance_id)
        )
    return beats == row.beats


class StaleWatch:
    """Which rows have not beaten for ``after_s`` of this process's monotonic time.

    A row is stale once its counter has stayed the same over ``after_s`` between two reads;
    a process that just started must watch that long before it calls anything stale. Time in
    which the watcher itself could not read the database does not count either (``read_failed``):
    an outage that both shared — a PostgreSQL failover — kept the others from beating too, and
    on the first read after it no one's beat has landed yet; that is no dead process.
    """

    def __init__(self, after_s: float) -> None:
        self.after_s = after_s
        self._seen: dict[str, tuple[int, float]] = {}  # id -> (beats, first read with them)

    def observe(
        self, rows: Iterable[InstanceBeat], now: float, exclude: Collection[str] = ()
    ) -> list[InstanceBeat]:
        """Feed one read of every row at monotonic time ``now``; return the stale ones."""
        stale: list[InstanceBeat] = []
        current: dict[str, tuple[int, float]] = {}
        for row in rows:
            if row.instance_id in exclude:
                continue
            beats, since = self._seen.get(row.instance_id, (row.beats, now))
            if beats != row.beats:
                beats, since = row.beats, now
            current[row.instance_id] = (beats, since)
            if now - since >= self.after_s:
                stale.append(row)
        self._seen = current  # rows that are gone are forgotten
        return stale

    def read_failed(self) -> None:
        """The watcher's check failed (reading the rows, or rechecking a stale one or closing
        its calls): every row is watched from scratch at the next read, as by a process that
        just started."""
        self._seen = {}
