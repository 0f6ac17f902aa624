"""The database implementation of ``calls.ports.CallRecorder``, and detail retention.

Writes never raise into call control: a failed write is logged (without numbers or traces) and
counted, and the call goes on. ``call_ended`` is an upsert, so a call whose ``call_started``
write was lost is still recorded in full when it ends.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, and_, insert, or_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from telepath.calls.model import CallRecord
from telepath.config import Settings
from telepath.db.base import utcnow
from telepath.db.models import CallRow
from telepath.metrics import Metrics

logger = logging.getLogger(__name__)

WRITE_TIMEOUT_S = 10.0
SIP_TRACE_MAX_CHARS = 256 * 1024  # a runaway re-INVITE loop must not fill the database


# Core table, not the ORM entity, for the two writes every call makes: the ORM's bulk-DML path
# coerces each of ~25 values through the mapper and costs several times more CPU.
CALLS = cast(Table, CallRow.__table__)


def _final_fields(record: CallRecord) -> dict[str, Any]:
    m = record.metrics
    trace = record.sip_trace or None
    if trace is not None and len(trace) > SIP_TRACE_MAX_CHARS:
        trace = trace[:SIP_TRACE_MAX_CHARS] + "\n[trace truncated]\n"
    return {
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
    }


class DbCallRecorder:
    """Persists call records; optionally keeps ``Metrics`` call counters in step.

    Args:
        sessions: the session factory (``ApiState.sessions``).
        metrics: when given, ``record_call_started``/``record_call_ended`` are reported here
            (call control must then not report them itself).
        timeout_s: the longest a write may hold up call control before it is abandoned.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        metrics: Metrics | None = None,
        *,
        timeout_s: float = WRITE_TIMEOUT_S,
    ) -> None:
        self._sessions = sessions
        self._metrics = metrics
        self._timeout_s = timeout_s
        self.failures = 0

    async def call_started(self, record: CallRecord) -> None:
        """Insert the record; a repeat (or a start arriving after the end) changes nothing."""
        if self._metrics is not None:
            self._metrics.record_call_started(record.id)
        await self._guard("call_started", self._insert(record))

    async def call_ended(self, record: CallRecord) -> None:
        """Write the final state, inserting the record if its start was never stored."""
        if self._metrics is not None:
            m = record.metrics
            self._metrics.record_call_ended(
                record.id,
                outcome=str(record.disconnect_reason or "unknown"),
                setup_ms=m.setup_ms,
                packet_loss_percent=m.packet_loss_percent,
                jitter_ms=m.jitter_ms,
            )
        await self._guard("call_ended", self._upsert(record))

    async def _guard(self, operation: str, write: Any) -> None:
        try:
            await asyncio.wait_for(write, self._timeout_s)
        except Exception as exc:  # never into call control; CancelledError still propagates
            self.failures += 1
            if self._metrics is not None:
                self._metrics.call_record_failures.labels(operation=operation).inc()
            logger.error("call record write failed (%s): %s", operation, type(exc).__name__)

    async def _insert(self, record: CallRecord) -> None:
        async with self._sessions() as session:
            # One statement, no read first: an existing row (a concurrent writer, a retry)
            # raises IntegrityError and that row wins.
            try:
                await session.execute(
                    insert(CALLS).values(id=record.id, updated_at=utcnow(), **_final_fields(record))
                )
                await session.commit()
            except IntegrityError:
                await session.rollback()

    async def _upsert(self, record: CallRecord) -> None:
        # Fast path: one UPDATE of a row whose detail was not purged (the usual case).
        fields = _final_fields(record)
        async with self._sessions() as session:
            result = await session.execute(
                update(CALLS)
                .where(CALLS.c.id == record.id, CALLS.c.detail_purged_at.is_(None))
                .values(updated_at=utcnow(), **fields)
            )
            await session.commit()
            if int(result.rowcount or 0) == 1:  # type: ignore[attr-defined]
                return
        for _ in range(2):  # a lost insert race turns into an update on the second pass
            async with self._sessions() as session:
                row = await session.get(CallRow, record.id)
                fields = _final_fields(record)
                if row is None:
                    session.add(CallRow(id=record.id, updated_at=utcnow(), **fields))
                else:
                    if row.detail_purged_at is not None:  # never resurrect purged detail
                        fields["turns"] = None
                        fields["sip_trace"] = None
                    for name, value in fields.items():
                        setattr(row, name, value)
                    row.updated_at = utcnow()
                try:
                    await session.commit()
                    return
                except IntegrityError:
                    await session.rollback()
        raise RuntimeError("call record upsert lost twice")


async def purge_call_details(
    sessions: async_sessionmaker[AsyncSession],
    older_than: timedelta,
    *,
    now: datetime | None = None,
) -> int:
    """Drop ``sip_trace`` and ``turns`` of calls that ended more than ``older_than`` ago.

    Calls that never recorded an end (the gateway stopped mid-call) age from their start.
    Aggregates (times, duration, reason, metrics) are kept. Returns the number of records purged.
    """
    current = now or utcnow()
    cutoff = current - older_than
    async with sessions() as session:
        result = await session.execute(
            update(CallRow)
            .where(
                CallRow.detail_purged_at.is_(None),
                or_(
                    CallRow.end_time < cutoff,
                    and_(CallRow.end_time.is_(None), CallRow.start_time < cutoff),
                ),
            )
            .values(turns=None, sip_trace=None, detail_purged_at=current)
            .execution_options(synchronize_session=False)
        )
        await session.commit()
        return int(result.rowcount or 0)  # type: ignore[attr-defined]


RETENTION_INTERVAL_S = 300.0


async def retention_loop(
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    stop_event: asyncio.Event,
    *,
    interval_s: float = RETENTION_INTERVAL_S,
) -> None:
    """Purge expired call detail now and then every ``interval_s`` until ``stop_event`` is set.

    ``TELEPATH_CALL_RETENTION_HOURS=0`` disables purging. Errors are logged and retried on the
    next round.
    """
    if settings.call_retention_hours <= 0:
        return
    older_than = timedelta(hours=settings.call_retention_hours)
    while not stop_event.is_set():
        try:
            purged = await purge_call_details(sessions, older_than)
            if purged:
                logger.info("purged call detail of %d record(s) past retention", purged)
        except Exception as exc:
            logger.error("call detail purge failed: %s", type(exc).__name__)
        try:
            await asyncio.wait_for(stop_event.wait(), interval_s)
        except TimeoutError:
            pass
