"""Which gateway processes run (on this data directory, or on this database), so that what a
dead one left is closed.

Each gateway process — ``telepath serve`` and every SIP worker it starts — has a random
*instance id*, stored with each call record it writes (``calls.instance_id``). A process that dies
with calls up (SIGKILL, the OOM killer, a crash, a power cut) cannot end them: their records stay
open. Three cases are detected — the first two at once, the third about a minute later — and those
records are then closed as ``lost`` with an end at or just after the death, and
``agent.disconnected``, ``call.error`` and ``call.ended`` are sent as for any failed call (each
record is closed by one process only, however many notice the death at once, and its events are
written in the transaction that closes it: ``close_instance_calls``):

- a SIP worker exits: the front sees it (``cli/workers.py``) and closes that worker's records;
- ``telepath serve`` itself died: the ids of the processes it ran are in
  ``<data_dir>/instances``, which every one of them keeps locked (``flock``; the workers inherit
  the descriptor) for as long as it lives. The next ``telepath serve`` on that directory takes
  the lock — proof that none of them still runs — reads the ids and closes their records. If the
  lock is held (the old workers still draining), it tries again every few seconds. The running
  front touches the file every ``HEARTBEAT_S``, so its modification time says when that run was
  last alive: the lost calls' end is put there (plus one interval), not at the restart, which
  may come hours later — a duration is what a carrier bills;
- any gateway process died, on any host sharing the database — the case the file cannot see (a
  container restarted without its data directory, a PostgreSQL deployment of several hosts):
  every process beats its own row in ``gateway_instances`` every ``heartbeat_s``
  (``db/instance_store.py``); the front of each ``telepath serve`` watches the rows, and one
  whose beat counter has not moved for ``TELEPATH_LOST_INSTANCE_AFTER_S`` (60 s) of its own
  clock is taken for dead and that process's records are closed, ending one heartbeat after
  its last (time in which the watcher itself could not read the database does not count: a
  shared outage is no death). Its row is removed once all are closed: a close cut short (the
  database lost midway, the watcher stopped) is taken up again at a later check, by this
  watcher or another (two at once close each record once, as above). Trade-off: a process
  that stops beating that long while alive (its database out of reach, the process frozen)
  gets its calls closed by another; its row comes back with its next beat (an error is logged)
  and each call's record is rewritten with its real end when the call ends — ``call.ended`` is
  then sent a second time.

Anything else (a process of an older version, which has no heartbeat row) is closed by the
retention sweep once no call can still be up (``close_lost_calls``: the end then stays unknown).

Hand-written: a few lines over ``fcntl.flock``, which no maintained library wraps better.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Collection
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from telepath.calls.events import (
    agent_disconnected_payload,
    call_ended_payload,
    call_error_payload,
)
from telepath.calls.model import CallRecord
from telepath.calls.ports import EventSink
from telepath.db import instance_store
from telepath.db.base import utcnow
from telepath.db.call_recorder import Outbox, RecoveryCutShort, close_instance_calls
from telepath.log import Streak
from telepath.metrics import Metrics

log = logging.getLogger(__name__)

FILE_NAME = "instances"
RETRY_CLAIM_S = 5.0
HEARTBEAT_S = 10.0  # the front touches the file this often: a lost call's end is this precise
BEATS_PER_LOST = 6  # database heartbeats in TELEPATH_LOST_INSTANCE_AFTER_S


Replay = Callable[[Collection[str]], Awaitable[None]]


def heartbeat_s(lost_after_s: float) -> float:
    """The database heartbeat interval for a given ``TELEPATH_LOST_INSTANCE_AFTER_S``."""
    return min(HEARTBEAT_S, lost_after_s / BEATS_PER_LOST)


def new_instance_id() -> str:
    """A random id for one gateway process (80 bits: never reused)."""
    return "gw_" + secrets.token_hex(10)


class InstanceFile:
    """``<data_dir>/instances``: the ids of this run's processes, locked while any lives.

    ``claim`` takes the lock and returns the ids the previous run left; until it succeeds the
    file is not written (another run holds it). ``add``/``discard`` keep it current.
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / FILE_NAME
        self._ids: list[str] = []
        self._fd: int | None = None
        self.last_alive: datetime | None = None  # the previous run's last heartbeat (claim)

    @property
    def claimed(self) -> bool:
        return self._fd is not None

    def fileno(self) -> int | None:
        """The locked descriptor (for SIP workers to inherit, so the lock outlives the front
        while they drain), or None when not claimed."""
        return self._fd

    def claim(self) -> list[str] | None:
        """Take the lock: the ids the previous run recorded (it is dead), or None if the lock is
        held by a live process."""
        if self._fd is not None:
            return []
        try:
            # 0700 as the README says: with PostgreSQL and TELEPATH_SECRET_KEY set this is the
            # only thing that creates the data dir (mkdir's mode applies to the leaf only).
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:  # e.g. a read-only data directory (PostgreSQL deployments)
            log.warning(
                "cannot keep %s (%s): records of calls a killed run leaves open will be closed "
                "by the retention sweep only",
                self.path,
                type(exc).__name__,
            )
            return []
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        with os.fdopen(os.dup(fd), "r", encoding="ascii", errors="replace") as f:
            previous = [line.strip() for line in f if line.strip()]
        if previous:
            self.last_alive = datetime.fromtimestamp(os.fstat(fd).st_mtime, UTC)
        self._fd = fd
        self._write()
        return [i for i in previous if i not in self._ids]

    def add(self, instance_id: str) -> None:
        self._ids.append(instance_id)
        self._write()

    def discard(self, instance_id: str) -> None:
        if instance_id in self._ids:
            self._ids.remove(instance_id)
            self._write()

    def _write(self) -> None:
        if self._fd is None:
            return
        data = "".join(f"{i}\n" for i in self._ids).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        os.fsync(self._fd)

    def beat(self) -> None:
        """Mark this run alive now (the file's modification time)."""
        if self._fd is not None:
            os.utime(self._fd)

    def lost_calls_end(self) -> datetime | None:
        """When the previous run's calls ended at the latest: one heartbeat after its last."""
        if self.last_alive is None:
            return None
        return min(utcnow(), self.last_alive + timedelta(seconds=HEARTBEAT_S))

    async def beat_forever(self) -> None:
        """:meth:`beat` every ``HEARTBEAT_S`` (a task of the front, cancelled at stop)."""
        while True:
            self.beat()
            await asyncio.sleep(HEARTBEAT_S)

    def close(self) -> None:
        """A clean stop: every call was ended, nothing is left to close; release the lock."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None


def _lost_events(record: CallRecord) -> list[tuple[str, dict[str, Any]]]:
    """The events of a call closed as lost: those of any failed call (``calls/events.py``)."""
    return [
        ("agent.disconnected", agent_disconnected_payload(record)),
        ("call.error", call_error_payload(record)),
        ("call.ended", call_ended_payload(record)),
    ]


async def close_calls_of(
    instance_ids: Collection[str],
    sessions: async_sessionmaker[AsyncSession],
    sink: EventSink | None,
    metrics: Metrics | None = None,
    *,
    ended: datetime | None = None,
    replay: Replay | None = None,
) -> int:
    """Close the open records of the dead processes ``instance_ids`` as ``lost`` (ending at
    ``ended``, default now) and send each one's events; returns how many this process closed
    (another recovering the same process at once closes the rest: ``close_instance_calls``).
    Never raises (logged instead).

    With the database's outbox for a sink (``DbEventSink``), a record's events are written in
    the transaction that closes it; with any other sink, or when they could not be written
    there, they are emitted once it is closed.

    ``replay`` first writes what they kept through a database outage and left in their journals
    (``Gateway.replay_journals``): a call that ended meanwhile is then recorded with its real
    end, not closed as lost."""
    if replay is not None:
        try:
            await replay(instance_ids)
        except Exception as exc:
            log.error("replaying a stopped process's journal failed: %s", type(exc).__name__)
    outbox = sink if isinstance(sink, Outbox) else None

    def prepared(record: CallRecord) -> list[dict[str, Any]]:
        assert sink is not None  # the outbox is the sink
        return [sink.prepare(record.account_id, e, data) for e, data in _lost_events(record)]

    try:
        closed = await close_instance_calls(
            sessions,
            instance_ids,
            now=ended,
            outbox=outbox,
            events=prepared if outbox is not None else None,
        )
        # nothing of theirs is left open (else their heartbeat rows stay, and are taken again)
        await instance_store.forget(sessions, instance_ids)
    except RecoveryCutShort as exc:
        cause = type(exc.__cause__).__name__
        log.error("closing the call records of a stopped process failed midway: %s", cause)
        closed = exc.closed
    except Exception as exc:
        log.error("closing the call records of a stopped process failed: %s", type(exc).__name__)
        return 0
    for lost in closed:
        record = lost.record
        if metrics is not None:
            metrics.record_call_ended(record.id, outcome=str(record.disconnect_reason))
        if sink is None or lost.queued:
            continue
        for event, data in _lost_events(record):
            try:
                await sink.emit(record.account_id, event, data)
            except Exception as exc:
                log.error("queueing %s failed: %s", event, type(exc).__name__)
    if closed:
        log.warning("closed %d call record(s) of a stopped gateway process as lost", len(closed))
    return len(closed)


async def claim_and_recover(
    instances: InstanceFile,
    sessions: async_sessionmaker[AsyncSession],
    sink: EventSink | None,
    metrics: Metrics | None = None,
    *,
    retry_s: float = RETRY_CLAIM_S,
    replay: Replay | None = None,
) -> None:
    """Claim ``instances`` (retrying while a previous run's process still holds it) and close
    what the previous run left open."""
    warned = False
    while True:
        previous = instances.claim()
        if previous is not None:
            break
        if not warned:
            log.warning(
                "%s is locked by a running process (a previous run's SIP workers still "
                "draining?); trying again every %.0f s",
                instances.path,
                retry_s,
            )
            warned = True
        await asyncio.sleep(retry_s)
    if previous:  # never raises
        await close_calls_of(
            previous, sessions, sink, metrics, ended=instances.lost_calls_end(), replay=replay
        )


async def beat_forever(
    sessions: async_sessionmaker[AsyncSession], instance_id: str, interval_s: float
) -> None:
    """Beat this process's ``gateway_instances`` row every ``interval_s`` (a task of every
    gateway process; the first beat is made before it serves calls). Never raises."""
    failing = False
    while True:
        await asyncio.sleep(interval_s)
        try:
            found = await instance_store.beat(sessions, instance_id)
        except Exception as exc:
            if not failing:
                log.warning("gateway heartbeat failed: %s; retrying", type(exc).__name__)
            failing = True
            continue
        failing = False
        if not found:
            log.error(
                "this gateway process's heartbeat row was gone: another process took it for "
                "dead and closed its open call records as lost (each is rewritten when its call "
                "ends)"
            )


async def reap_forever(
    sessions: async_sessionmaker[AsyncSession],
    sink: EventSink | None,
    metrics: Metrics | None,
    own_id: str,
    lost_after_s: float,
) -> None:
    """Close the calls of gateway processes, on any host, whose heartbeat stopped for
    ``lost_after_s`` (a task of the front of each ``telepath serve``). Never raises."""
    interval = heartbeat_s(lost_after_s)
    watch = instance_store.StaleWatch(lost_after_s)
    failures = Streak(log, "checking other gateway processes' heartbeats")
    while True:
        try:
            rows = await instance_store.read_all(sessions)
            stale = watch.observe(rows, time.monotonic(), exclude=(own_id,))
            for row in stale:
                if await instance_store.unchanged(sessions, row):  # not beaten since the read
                    ended = min(utcnow(), row.last_seen_at + timedelta(seconds=interval))
                    # its row goes once all its calls are closed: a close cut short (a failure,
                    # or this process stopping) leaves it, and the next check takes it again
                    await close_calls_of([row.instance_id], sessions, sink, metrics, ended=ended)
        except Exception as exc:
            watch.read_failed()  # a shared outage kept the others from beating too
            failures.failed(exc)
        else:
            failures.worked()
        await asyncio.sleep(interval)
