"""The database implementation of ``calls.ports.CallRecorder``, and detail retention.

Writes never raise into call control: a failed write is logged (without numbers or traces) and
counted, and the call goes on. ``call_ended`` is an upsert, so a call whose ``call_started``
write was lost is still recorded in full when it ends. A write that fails on a transient error
(the database restarting, unreachable, locked: ``engine.transient_error``) is kept and retried
until it lands (``GroupCommit``); a caller waits for it at most ``timeout_s``.

Writes are group-committed (``db/group_commit.py``): at hundreds of calls a second, a few
transactions a second instead of two per call, which is what kept the SIP loop busy (SQLAlchemy
statement building, a session and a pool checkout per write). The upsert is the dialect's
``INSERT … ON CONFLICT`` (SQLite ≥ 3.24 and PostgreSQL).

The webhook events that tell of a call's end (``agent.disconnected``, ``call.error``,
``call.ended``) are written in the same transaction as the record's end, given an ``outbox``
(``webhooks/sink.py``): the webhook outbox is durable only if no crash can fall between the two.
If the events alone make that transaction fail for good (not a transient error), or their rows
cannot be made at all (an event journaled by another version), the record's end is written
without them and the loss is logged and counted: the record matters more.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol, cast, runtime_checkable

from sqlalchemy import Executable, Table, and_, case, insert, null, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from telepath.calls.model import (
    CallMetrics,
    CallRecord,
    CallStatus,
    DisconnectReason,
    final_status,
)
from telepath.config import Settings
from telepath.db.base import fit_row, utcnow
from telepath.db.batches import BATCH_SIZE, in_batches
from telepath.db.engine import transient_error
from telepath.db.group_commit import outage_proof
from telepath.db.models import CallRow
from telepath.db.webhook_store import WebhookRepository, prune_deliveries
from telepath.db.write_journal import replay_journal
from telepath.metrics import Metrics

logger = logging.getLogger(__name__)

WRITE_TIMEOUT_S = 10.0
REPLAY_TIMEOUT_S = 30.0  # a dead process's journal: how long its replay may hold up recovery
JOURNAL = "call_records"  # the writer's name in journal files
SIP_TRACE_MAX_CHARS = 256 * 1024  # a runaway re-INVITE loop must not fill the database


# Core table, not the ORM entity, for the two writes every call makes: the ORM's bulk-DML path
# coerces each of ~25 values through the mapper and costs several times more CPU.
CALLS = cast(Table, CallRow.__table__)


def _final_fields(record: CallRecord) -> dict[str, Any]:
    """The record as column values, each string made to fit its column (``fit_row``): the
    numbers, trace and error text are what a caller or an agent sent."""
    m = record.metrics
    trace = record.sip_trace or None
    if trace is not None and len(trace) > SIP_TRACE_MAX_CHARS:
        trace = trace[:SIP_TRACE_MAX_CHARS] + "\n[trace truncated]\n"
    return fit_row(
        CALLS,
        {
            "account_id": record.account_id,
            "trunk_id": record.trunk_id,
            "from_number": record.from_number,
            "to_number": record.to_number,
            "status": str(record.status),
            "ai_provider": record.ai_provider,
            "start_time": record.start_time,
            "answer_time": record.answer_time,
            "end_time": record.end_time,
            "duration_seconds": record.duration_seconds,
            "disconnect_reason": (
                str(record.disconnect_reason) if record.disconnect_reason is not None else None
            ),
            "error_message": record.error_message,
            "carrier_lag_ms": m.carrier_lag_ms,
            "ai_latency_ms": m.ai_latency_ms,
            "gateway_processing_ms": m.gateway_processing_ms,
            "gateway_processing_p99_ms": m.gateway_processing_p99_ms,
            "packet_loss_percent": m.packet_loss_percent,
            "jitter_ms": m.jitter_ms,
            "codec_used": m.codec_used,
            "setup_ms": m.setup_ms,
            "turns": [asdict(t) for t in record.turns],
            "sip_trace": trace,
            "media": record.media,
        },
    )


@runtime_checkable
class Outbox(Protocol):
    """The webhook outbox, for events written in a call record's transaction (``DbEventSink``;
    checkable, so that recovery can tell it from another ``EventSink``)."""

    async def outbox_rows(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The outbox rows of prepared events (raises when they cannot be made yet)."""
        ...

    def enqueued(self) -> None:
        """Rows were committed."""
        ...


Kind = Literal["call_started", "call_ended"]
_DETAIL = ("turns", "sip_trace", "media")  # never written back into a purged record's detail


@dataclass(frozen=True, slots=True)
class _Write:
    kind: Kind
    values: dict[str, Any]  # a snapshot: the record keeps changing after the call returns
    events: list[dict[str, Any]] = field(default_factory=list)  # prepared webhook events


def _journaled(write: _Write) -> dict[str, Any]:
    return {"kind": write.kind, "values": write.values, "events": write.events}


def _from_journal(item: dict[str, Any]) -> _Write:
    kind = item["kind"]
    events = item.get("events", [])  # journals of earlier versions have none
    if (
        kind not in ("call_started", "call_ended")
        or not isinstance(item.get("values"), dict)
        or not isinstance(events, list)
        or not all(isinstance(e, dict) for e in events)
    ):
        raise ValueError("not a call record write")
    # written by a version that did not make the values fit (``_final_fields``)
    values = fit_row(CALLS, item["values"])
    if kind == "call_ended":
        _to_final_status(values)
    return _Write(kind, values, events)


def _to_final_status(values: dict[str, Any]) -> None:
    """A call's end journaled by a version that closed every answered call ``disconnected``
    (the records already stored are fixed by a migration, not a journal): the status of its reason
    (``final_status``), ``connected`` for a normal end. Its webhook events, prepared then, are
    sent as they were."""
    reason = values.get("disconnect_reason")
    if values.get("status") != CallStatus.DISCONNECTED.value or reason is None:
        return
    with contextlib.suppress(ValueError):  # a reason unknown here: left as it was
        values["status"] = final_status(DisconnectReason(reason), answered=True).value


def _batch_statements(dialect: str) -> tuple[Executable, Executable] | None:
    """(insert-or-ignore, upsert) for ``dialect``, or None where ON CONFLICT is unknown."""
    if dialect == "sqlite":
        ins: Any = sqlite.insert(CALLS)
    elif dialect == "postgresql":
        ins = postgresql.insert(CALLS)
    else:
        return None
    start = ins.on_conflict_do_nothing(index_elements=[CALLS.c.id])
    purged = CALLS.c.detail_purged_at.is_not(None)
    columns = [c.name for c in CALLS.columns if c.name not in ("id", "detail_purged_at")]
    set_: dict[str, Any] = {
        name: case((purged, null()), else_=ins.excluded[name])
        if name in _DETAIL
        else ins.excluded[name]
        for name in columns
    }
    end = ins.on_conflict_do_update(index_elements=[CALLS.c.id], set_=set_)
    return start, end


class DbCallRecorder:
    """Persists call records; optionally keeps ``Metrics`` call counters in step.

    Args:
        sessions: the session factory (``ApiState.sessions``).
        metrics: when given, ``record_call_started``/``record_call_ended`` are reported here
            (call control must then not report them itself).
        timeout_s: the longest a write may hold up call control before it is abandoned.
        instance_id: this process's id (``cli/instances.py``), stored with each record so that
            the records a dead process left open can be found and closed
            (:func:`close_instance_calls`).
        journal: where writes kept through an outage are copied (``db/write_journal.py``).
        outbox: writes a call's end events in its record's transaction (``queues_events``).
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        metrics: Metrics | None = None,
        *,
        timeout_s: float = WRITE_TIMEOUT_S,
        instance_id: str | None = None,
        journal: Path | None = None,
        outbox: Outbox | None = None,
    ) -> None:
        self._sessions = sessions
        self._metrics = metrics
        self._outbox = outbox
        self._timeout_s = timeout_s
        self._instance_id = instance_id
        self.failures = 0
        bind = sessions.kw.get("bind")
        dialect = bind.dialect.name if bind is not None else ""
        self._statements = _batch_statements(dialect)
        self._group = outage_proof(
            self._commit_batch if self._statements is not None else None,
            self._commit_one,
            name="call-record-writer",
            writer="call_records",
            metrics=metrics,
            journal=journal,
            encode=_journaled,
        )

    @property
    def transactions(self) -> int:
        """Transactions committed (group commit: fewer than writes under load)."""
        return self._group.transactions

    async def call_started(self, record: CallRecord) -> None:
        """Insert the record; a repeat (or a start arriving after the end) changes nothing."""
        if self._metrics is not None:
            self._metrics.record_call_started(record.id)
        await self._submit("call_started", record)

    @property
    def queues_events(self) -> bool:
        """Whether ``call_ended`` writes events (else call control emits them itself)."""
        return self._outbox is not None

    async def call_ended(self, record: CallRecord, events: Sequence[dict[str, Any]] = ()) -> None:
        """Write the final state, inserting the record if its start was never stored, and in
        the same transaction the prepared webhook ``events`` (``queues_events``)."""
        if self._metrics is not None:
            m = record.metrics
            self._metrics.record_call_ended(
                record.id,
                outcome=str(record.disconnect_reason or "unknown"),
                setup_ms=m.setup_ms,
                packet_loss_percent=m.packet_loss_percent,
                jitter_ms=m.jitter_ms,
            )
        await self._submit("call_ended", record, list(events))

    async def _submit(
        self, kind: Kind, record: CallRecord, events: list[dict[str, Any]] | None = None
    ) -> None:
        values = {
            "id": record.id,
            "updated_at": utcnow(),
            "instance_id": self._instance_id,
            **_final_fields(record),
        }
        # until committed, failed (counted by ``_settled``: never into call control), or kept
        write = _Write(kind, values, events or [])
        done = await self._group.write(
            write, self._timeout_s, functools.partial(self._settled, kind)
        )
        if not done.done():  # kept: retried until the database takes it
            logger.debug("call record write (%s) kept for retry", kind)

    def _settled(self, kind: Kind, done: asyncio.Future[None]) -> None:
        """A write landed or was given up (a permanent error, or kept too long)."""
        if done.cancelled() or done.exception() is None:
            return
        self.failures += 1
        if self._metrics is not None:
            self._metrics.call_record_failures.labels(operation=kind).inc()
        logger.error("call record write failed (%s): %s", kind, type(done.exception()).__name__)

    @property
    def parked(self) -> int:
        """Writes kept for retry after a transient database failure."""
        return self._group.parked

    async def close(self, timeout_s: float = 5.0) -> int:
        """One last attempt for writes kept for retry; returns how many were lost (with a
        journal: left on disk for the next start)."""
        return await self._group.close(timeout_s)

    async def replay(self, path: Path, timeout_s: float = REPLAY_TIMEOUT_S) -> int:
        """Write the records a dead process kept in its journal ``path``."""
        return await replay_journal(path, _from_journal, self._group.submit, timeout_s)

    async def _outbox_rows(self, writes: list[_Write]) -> list[dict[str, Any]]:
        events = [event for w in writes for event in w.events]
        if not events or self._outbox is None:
            return []
        return await self._outbox.outbox_rows(events)  # before the session: it may read

    def _enqueued(self, rows: list[dict[str, Any]]) -> None:
        if rows and self._outbox is not None:
            self._outbox.enqueued()

    async def _commit_batch(self, batch: list[_Write]) -> None:
        assert self._statements is not None
        start, end = self._statements
        starts = [w.values for w in batch if w.kind == "call_started"]
        ends = [w.values for w in batch if w.kind == "call_ended"]
        rows: list[dict[str, Any]] | None = None  # None: the events' rows could not be made
        try:
            rows = await self._outbox_rows(batch)
            async with self._sessions() as session:
                # starts first: a start and an end of one call in one batch leave the end
                if starts:
                    await session.execute(start, starts)
                if ends:
                    await session.execute(end, ends)
                await WebhookRepository(session).enqueue(rows)
                await session.commit()
        except Exception as exc:
            # A batch of several is retried item by item (GroupCommit); one alone goes through
            # _commit_one here, which writes the record without its events if they fail.
            if rows == [] or len(batch) > 1 or transient_error(exc):
                raise
            await self._commit_one(batch[0])
            return
        self._enqueued(rows)

    async def _commit_one(self, write: _Write) -> None:
        if write.kind == "call_started":
            await self._insert(write.values)
            return
        rows: list[dict[str, Any]] | None = None  # None: the events' rows could not be made
        try:
            rows = await self._outbox_rows([write])
            await self._upsert(write.values, rows)
        except Exception as exc:
            if rows == [] or transient_error(exc):
                raise  # kept and retried whole (transient), or the record's own failure
            # the events alone fail for good — their rows refused, or not even made (an event
            # journaled by another version): the record's end goes without them
            if self._metrics is not None:
                self._metrics.webhook_enqueue_failures.inc(len(write.events))
            logger.error("webhook events of a call's end not queued: %s", type(exc).__name__)
            rows = []
            await self._upsert(write.values, rows)
        self._enqueued(rows)

    async def _insert(self, values: dict[str, Any]) -> None:
        async with self._sessions() as session:
            # One statement, no read first: an existing row (a concurrent writer, a retry)
            # raises IntegrityError and that row wins.
            try:
                await session.execute(insert(CALLS).values(**values))
                await session.commit()
            except IntegrityError:
                await session.rollback()

    async def _upsert(self, values: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        """The record's final state, and the outbox ``rows`` in the same transaction."""
        call_id = values["id"]
        # Fast path: one UPDATE of a row whose detail was not purged (the usual case).
        fields = {k: v for k, v in values.items() if k not in ("id", "updated_at")}
        async with self._sessions() as session:
            result = await session.execute(
                update(CALLS)
                .where(CALLS.c.id == call_id, CALLS.c.detail_purged_at.is_(None))
                .values(updated_at=utcnow(), **fields)
            )
            if int(result.rowcount or 0) == 1:  # type: ignore[attr-defined]
                await WebhookRepository(session).enqueue(rows)
                await session.commit()
                return
            await session.rollback()
        for _ in range(2):  # a lost insert race turns into an update on the second pass
            async with self._sessions() as session:
                row = await session.get(CallRow, call_id)
                fields = {k: v for k, v in values.items() if k not in ("id", "updated_at")}
                if row is None:
                    session.add(CallRow(id=call_id, updated_at=utcnow(), **fields))
                else:
                    if row.detail_purged_at is not None:  # never resurrect purged detail
                        fields.update(dict.fromkeys(_DETAIL))
                    for name, value in fields.items():
                        setattr(row, name, value)
                    row.updated_at = utcnow()
                try:
                    await session.flush()  # the call's row before its events' rows
                    await WebhookRepository(session).enqueue(rows)
                    await session.commit()
                    return
                except IntegrityError:
                    await session.rollback()
        raise RuntimeError("call record upsert lost twice")


PURGE_BATCH = BATCH_SIZE  # records purged per transaction


async def purge_call_details(
    sessions: async_sessionmaker[AsyncSession],
    older_than: timedelta,
    *,
    open_after: timedelta | None,
    now: datetime | None = None,
    batch_size: int = PURGE_BATCH,
) -> int:
    """Drop ``sip_trace``, ``turns`` and ``media`` of calls that ended more than ``older_than``
    ago.

    A record without an end is a live call's — never purged, or its end could not write its
    detail — until ``open_after`` (the longest call plus slack) has passed since its start:
    then it is an orphan (its process stopped mid-call) and ages from its start, by the longer
    of the two. ``open_after`` None (no cap on a call's length): open records are kept.
    Aggregates (times, duration, reason, metrics) are kept. Returns the number of records purged.

    ``batch_size`` records at a time, each batch its own transaction, with a pause between
    batches (``db/batches.py``): on SQLite a transaction holds the database's write lock, and a
    backlog (the first sweep after a long stop, a lowered retention) purged at once would hold
    up every call record write past its timeout.
    """
    current = now or utcnow()
    cutoff = current - older_than
    ended = CallRow.end_time < cutoff
    expired = (
        ended
        if open_after is None  # no orphan: an open record never matches ``ended``
        else or_(
            ended,
            and_(
                CallRow.end_time.is_(None),
                CallRow.start_time < current - max(older_than, open_after),
            ),
        )
    )
    unpurged = CallRow.detail_purged_at.is_(None)  # ``ix_calls_unpurged_end``'s condition
    batch = select(CallRow.id).where(unpurged, expired).limit(batch_size)
    purge = (
        update(CallRow)
        # ``unpurged`` again: rechecked on a row another sweep purged meanwhile (PostgreSQL)
        .where(unpurged, CallRow.id.in_(batch))
        .values(turns=None, sip_trace=None, media=None, detail_purged_at=current)
        .execution_options(synchronize_session=False)
    )

    async def one_batch(session: AsyncSession) -> int:
        result = await session.execute(purge)
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    return await in_batches(sessions, one_batch, batch_size)


_LOST_ANSWERED = final_status(DisconnectReason.LOST, answered=True)  # disconnected
_LOST_UNANSWERED = final_status(DisconnectReason.LOST, answered=False)  # failed
LOST_AFTER_MAX_DURATION = timedelta(minutes=10)  # set-up, drain and clock slack past the cap
LOST_MESSAGE = "the gateway process handling the call stopped without ending it"


async def close_lost_calls(
    sessions: async_sessionmaker[AsyncSession],
    older_than: timedelta,
    *,
    now: datetime | None = None,
) -> int:
    """Close the records of calls that started more than ``older_than`` ago and never ended.

    No call outlives ``TELEPATH_CALL_MAX_DURATION_S`` (the gateway ends it), so a record still
    open past it belongs to a process that stopped without ending its calls — killed, crashed —
    on this or any instance sharing the database, and that no later run closed at once
    (:func:`close_instance_calls`: e.g. its data directory was lost). Its status becomes
    ``disconnected`` (``failed`` if it was never answered: ``final_status``), its reason
    ``lost``; the end time and duration stay unknown, and no ``call.ended`` is sent. Returns the
    number of records closed.
    """
    current = now or utcnow()
    async with sessions() as session:
        result = await session.execute(
            update(CallRow)
            .where(
                CallRow.end_time.is_(None),
                CallRow.disconnect_reason.is_(None),  # not closed yet (by call control or here)
                CallRow.start_time < current - older_than,
            )
            .values(
                status=case(
                    (CallRow.answer_time.is_(None), _LOST_UNANSWERED.value),
                    else_=_LOST_ANSWERED.value,
                ),
                disconnect_reason=DisconnectReason.LOST.value,
                error_message=LOST_MESSAGE,
                updated_at=current,
            )
            .execution_options(synchronize_session=False)
        )
        await session.commit()
        return int(result.rowcount or 0)  # type: ignore[attr-defined]


LOST_INSTANCE_MESSAGE = "the gateway process handling the call stopped; it ended then"


def _record_of(row: CallRow) -> CallRecord:
    """A stored row as call control's record (what the ``call.*`` event payloads are built
    from); turns and trace are left out."""
    return CallRecord(
        id=row.id,
        account_id=row.account_id,
        trunk_id=row.trunk_id,
        from_number=row.from_number,
        to_number=row.to_number,
        start_time=row.start_time,
        status=CallStatus(row.status),
        answer_time=row.answer_time,
        end_time=row.end_time,
        disconnect_reason=(
            DisconnectReason(row.disconnect_reason) if row.disconnect_reason else None
        ),
        metrics=CallMetrics(
            carrier_lag_ms=row.carrier_lag_ms,
            ai_latency_ms=row.ai_latency_ms,
            gateway_processing_ms=row.gateway_processing_ms,
            packet_loss_percent=row.packet_loss_percent,
            jitter_ms=row.jitter_ms,
            codec_used=row.codec_used,
            gateway_processing_p99_ms=row.gateway_processing_p99_ms,
            setup_ms=row.setup_ms,
        ),
        ai_provider=row.ai_provider,
        error_message=row.error_message,
    )


@dataclass(frozen=True, slots=True)
class LostCall:
    """A record :func:`close_instance_calls` closed (this process, not a concurrent closer)."""

    record: CallRecord  # as closed: what its events are built from
    queued: bool  # its events were written in its close's transaction (else: the caller's)


class RecoveryCutShort(Exception):
    """Closing a dead process's records stopped at one that failed (the database lost):
    ``closed`` were closed before it, and their events are still the caller's to send."""

    def __init__(self, closed: list[LostCall]) -> None:
        super().__init__(f"{len(closed)} record(s) closed before a failure")
        self.closed = closed


async def close_instance_calls(
    sessions: async_sessionmaker[AsyncSession],
    instance_ids: Collection[str],
    *,
    now: datetime | None = None,
    outbox: Outbox | None = None,
    events: Callable[[CallRecord], list[dict[str, Any]]] | None = None,
) -> list[LostCall]:
    """Close the open records of the gateway processes ``instance_ids``, which are known to be
    dead (a SIP worker that exited; the previous run of this installation, whose lock is now
    ours: ``cli/instances.py``). Their calls ended when the process did, so unlike
    :func:`close_lost_calls` the end is known, to within the detection delay: ``now`` (the time
    of death, or a bound on it; never before a call was set up). Status
    ``disconnected`` (``failed`` if never answered: ``final_status``), reason ``lost``.

    Two processes may recover the same dead one at once (the restarted host and another host's
    watcher; a front whose worker exited and a watcher), and a process taken for dead may still
    end a call: each record is closed by a compare-and-set (an ``UPDATE`` of the record only
    while it is open), so one closer wins it and the others neither change nor report it. The
    open records are read in a transaction of their own: on SQLite a transaction that read
    before another's commit cannot write (its snapshot is stale: ``SQLITE_BUSY`` at once).

    With an ``outbox``, ``events`` (the record's end as prepared webhook events,
    ``EventSink.prepare``) are written in the transaction that closes the record (one each: an
    orphan's records are few), as for a call's normal end (``DbCallRecorder``): a crash between
    two commits would leave the record closed and its ``call.ended`` never queued — never,
    since recovery closes only records still open. When they cannot be written (the endpoints
    unreadable, or the rows refused for good), the record is closed alone and its events are
    the caller's (``LostCall.queued``). Returns the records this process closed; raises
    :class:`RecoveryCutShort` when a close fails after others landed.
    """
    if not instance_ids:
        return []
    current = now or utcnow()
    async with sessions() as session:
        rows = (
            await session.scalars(
                select(CallRow).where(
                    CallRow.instance_id.in_(list(instance_ids)),
                    CallRow.end_time.is_(None),
                    CallRow.disconnect_reason.is_(None),
                )
            )
        ).all()
    closed: list[LostCall] = []
    for row in rows:
        try:
            lost = await _close_lost(sessions, row, current, outbox, events)
        except Exception as exc:
            if closed:
                raise RecoveryCutShort(closed) from exc
            raise
        if lost is not None:
            closed.append(lost)
    return closed


async def _close_lost(
    sessions: async_sessionmaker[AsyncSession],
    row: CallRow,
    now: datetime,
    outbox: Outbox | None,
    events: Callable[[CallRecord], list[dict[str, Any]]] | None,
) -> LostCall | None:
    """Close one open record as lost, with its events when they can be written; None when it
    was not open any more (another closer, or its call's end, came first)."""
    record = _record_of(row)
    record.status = final_status(DisconnectReason.LOST, answered=row.answer_time is not None)
    record.disconnect_reason = DisconnectReason.LOST
    record.error_message = LOST_INSTANCE_MESSAGE
    # never before the call was up (an end estimated from the process's last sign of life can
    # precede a call set up just before it died)
    record.end_time = max(now, row.answer_time or row.start_time)
    event_rows: list[dict[str, Any]] = []
    if outbox is not None and events is not None:
        try:
            # before the session: it may read (the endpoints)
            event_rows = await outbox.outbox_rows(events(record))
        except Exception as exc:
            logger.warning(
                "a lost call's events not written with its close (%s): sent after it",
                type(exc).__name__,
            )
            return await _close_lost_alone(sessions, record, now)
    try:
        closed = await _close_if_open(sessions, record, now, event_rows)
    except Exception as exc:
        if not event_rows or transient_error(exc):
            raise  # the record's own failure, or a database outage: the recovery fails
        logger.error(
            "a lost call's events refused with its close (%s): sent after it", type(exc).__name__
        )
        return await _close_lost_alone(sessions, record, now)
    if not closed:
        return None
    if event_rows and outbox is not None:
        outbox.enqueued()
    return LostCall(record, queued=outbox is not None and events is not None)


async def _close_lost_alone(
    sessions: async_sessionmaker[AsyncSession], record: CallRecord, now: datetime
) -> LostCall | None:
    """Close the record without its events (``emit`` journals and retries them)."""
    closed = await _close_if_open(sessions, record, now, [])
    return LostCall(record, queued=False) if closed else None


async def _close_if_open(
    sessions: async_sessionmaker[AsyncSession],
    record: CallRecord,
    now: datetime,
    rows: list[dict[str, Any]],
) -> bool:
    """Write ``record``'s lost end if its row is still open, and the outbox ``rows`` in the
    same transaction; False (nothing written) when it is not."""
    async with sessions() as session:
        result = await session.execute(
            update(CALLS)
            .where(
                CALLS.c.id == record.id,
                CALLS.c.end_time.is_(None),
                CALLS.c.disconnect_reason.is_(None),
            )
            .values(
                status=record.status.value,
                disconnect_reason=DisconnectReason.LOST.value,
                error_message=record.error_message,
                end_time=record.end_time,
                duration_seconds=record.duration_seconds,
                updated_at=now,
            )
        )
        if int(result.rowcount or 0) != 1:  # type: ignore[attr-defined]
            await session.rollback()
            return False
        if rows:
            await WebhookRepository(session).enqueue(rows)
        await session.commit()
    return True


RETENTION_INTERVAL_S = 300.0


async def retention_loop(
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    stop_event: asyncio.Event,
    *,
    interval_s: float = RETENTION_INTERVAL_S,
) -> None:
    """Purge expired call detail, prune settled webhook deliveries (delivered or failed) as old,
    and close lost calls' records, now and then every ``interval_s``, until ``stop_event`` is set.

    ``TELEPATH_CALL_RETENTION_HOURS=0`` disables purging and pruning;
    ``TELEPATH_CALL_MAX_DURATION_S=0`` (no cap, so no age at which a call must have ended)
    disables closing lost calls, and purging the detail of records left open. A record still
    open is purged only once it is older than the longest call plus
    ``LOST_AFTER_MAX_DURATION`` (and than the retention). Errors are logged and retried on the
    next round.
    """
    older_than = timedelta(hours=settings.call_retention_hours)
    lost_after = timedelta(seconds=settings.call_max_duration_s) + LOST_AFTER_MAX_DURATION
    purge = settings.call_retention_hours > 0
    sweep = settings.call_max_duration_s > 0
    if not purge and not sweep:
        return
    while not stop_event.is_set():
        try:
            if sweep:
                lost = await close_lost_calls(sessions, lost_after)
                if lost:
                    logger.warning("closed %d call record(s) left open by a stopped process", lost)
            if purge:
                purged = await purge_call_details(
                    sessions, older_than, open_after=lost_after if sweep else None
                )
                if purged:
                    logger.info("purged call detail of %d record(s) past retention", purged)
                # the webhook outbox's settled rows carry the same numbers: the same retention
                pruned = await prune_deliveries(sessions, older_than)
                if pruned:
                    logger.info("pruned %d settled webhook deliveries past retention", pruned)
        except Exception as exc:
            logger.error("call record maintenance failed: %s", type(exc).__name__)
        try:
            await asyncio.wait_for(stop_event.wait(), interval_s)
        except TimeoutError:
            pass
