"""Queries over call records, always scoped to an account, and their JSON views.

The views are shared by ``GET /v1/calls`` and ``telepath calls``, so both print the same shape
(``reference/telepath-product.md`` §1.6-1.7).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from telepath.calls.model import CallStatus, whole_ms, whole_us
from telepath.db.models import CallRow

#: The statuses of a failure for a trunk's success rate, as the call log shows them: Failed
#: (never answered) and Dropped (answered, then cut by a failure: ``calls.model.DROPPED_REASONS``).
#: A call that ended normally is ``connected`` (Completed), as is one still up.
FAILURE_STATUSES = (CallStatus.FAILED.value, CallStatus.DISCONNECTED.value)


def iso(ts: datetime | None) -> str | None:
    """ISO 8601 UTC with a ``Z`` suffix and second precision (as trunk timestamps)."""
    return None if ts is None else ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


class CallRepository:
    """Call record reads; ``account_id=None`` (CLI only) means every account."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, account_id: str | None, call_id: str) -> CallRow | None:
        """The account's record with this id, or None (another account's record is None too)."""
        query = select(CallRow).where(CallRow.id == call_id)
        if account_id is not None:
            query = query.where(CallRow.account_id == account_id)
        return await self.session.scalar(query)

    async def list(
        self,
        account_id: str | None,
        *,
        trunk_id: str | None = None,
        status: str | None = None,
        start_date: datetime | None = None,
        end_date: datetime | None = None,
        limit: int = 20,
        offset: int = 0,
    ) -> tuple[Sequence[CallRow], int]:
        """A page of records (newest first) and the total matching count.

        ``start_date`` and ``end_date`` bound ``start_time``, both inclusive.
        """
        where = []
        if account_id is not None:
            where.append(CallRow.account_id == account_id)
        if trunk_id is not None:
            where.append(CallRow.trunk_id == trunk_id)
        if status is not None:
            where.append(CallRow.status == status)
        if start_date is not None:
            where.append(CallRow.start_time >= start_date)
        if end_date is not None:
            where.append(CallRow.start_time <= end_date)
        total = await self.session.scalar(select(func.count()).select_from(CallRow).where(*where))
        rows = await self.session.scalars(
            select(CallRow)
            .where(*where)
            .order_by(CallRow.start_time.desc(), CallRow.id.desc())
            .limit(limit)
            .offset(offset)
        )
        return rows.all(), int(total or 0)

    async def trunk_stats(
        self, account_id: str, trunk_ids: Collection[str], since: datetime
    ) -> dict[str, TrunkCallStats]:
        """Aggregates of the account's calls to each of ``trunk_ids`` that started at or after
        ``since``, in one grouped query (``ix_calls_account_trunk_start``); a trunk without
        such calls is absent from the result (``NO_CALLS``)."""
        if not trunk_ids:
            return {}
        # closed by its call's end or by a sweep (which leaves the end time unknown): the
        # status cannot tell, a completed call stays ``connected`` as while it was up
        ended = or_(CallRow.end_time.is_not(None), CallRow.disconnect_reason.is_not(None))
        failed = CallRow.status.in_(FAILURE_STATUSES)  # closed, all of them
        rows = await self.session.execute(
            select(
                CallRow.trunk_id,
                func.count(),
                func.sum(case((ended, 1), else_=0)),
                func.sum(case((failed, 1), else_=0)),
                func.avg(CallRow.ai_latency_ms),  # NULLs (not measured) left out
            )
            .where(
                CallRow.account_id == account_id,
                CallRow.trunk_id.in_(list(trunk_ids)),
                CallRow.start_time >= since,
            )
            .group_by(CallRow.trunk_id)
        )
        return {
            trunk_id: TrunkCallStats(
                calls=int(calls),
                ended=int(ended_count or 0),
                failed=int(failed_count or 0),
                mean_ai_latency_ms=None if latency is None else float(latency),
            )
            for trunk_id, calls, ended_count, failed_count, latency in rows
        }


@dataclass(frozen=True)
class TrunkCallStats:
    """Aggregates of one trunk's calls over a period (``CallRepository.trunk_stats``)."""

    calls: int  # every call that started in the period
    ended: int  # of which ended (an end time or a disconnect reason: not in progress)
    failed: int  # of which failed: status ``failed`` or ``disconnected`` (FAILURE_STATUSES)
    mean_ai_latency_ms: float | None  # mean ai_latency_ms of the calls that measured one

    @property
    def success_rate(self) -> float:
        """Percentage of the ended calls that did not fail, to one decimal; 100 when none
        ended (none failed)."""
        if not self.ended:
            return 100.0
        return round(100.0 * (self.ended - self.failed) / self.ended, 1)

    @property
    def avg_latency_ms(self) -> int:
        """The mean latency rounded half up to whole milliseconds; 0 when none was measured."""
        if self.mean_ai_latency_ms is None:
            return 0
        return int(self.mean_ai_latency_ms + 0.5)


NO_CALLS = TrunkCallStats(calls=0, ended=0, failed=0, mean_ai_latency_ms=None)


def call_metrics(row: CallRow) -> dict[str, Any]:
    """The ``metrics`` object of a call's details."""
    return {
        "carrier_lag_ms": row.carrier_lag_ms,
        "ai_latency_ms": row.ai_latency_ms,
        "gateway_processing_ms": whole_ms(row.gateway_processing_ms),
        "gateway_processing_us": whole_us(row.gateway_processing_ms),
        "gateway_processing_p99_ms": _round(row.gateway_processing_p99_ms, 3),
        "packet_loss_percent": _round(row.packet_loss_percent, 3),
        "jitter_ms": whole_ms(row.jitter_ms),
        "jitter_us": whole_us(row.jitter_ms),
        "codec_used": row.codec_used,
        "setup_ms": row.setup_ms,
    }


def call_summary(row: CallRow) -> dict[str, Any]:
    """A call as listed by ``GET /v1/calls``: the documented flat latency fields, no detail."""
    return {
        "id": row.id,
        "trunk_id": row.trunk_id,
        "from": row.from_number,
        "to": row.to_number,
        "status": row.status,
        "duration_seconds": row.duration_seconds,
        "start_time": iso(row.start_time),
        "end_time": iso(row.end_time),
        "disconnect_reason": row.disconnect_reason,
        "carrier_lag_ms": row.carrier_lag_ms,
        "ai_latency_ms": row.ai_latency_ms,
        "gateway_processing_ms": whole_ms(row.gateway_processing_ms),
        "gateway_processing_us": whole_us(row.gateway_processing_ms),
    }


def call_detail(row: CallRow) -> dict[str, Any]:
    """A call as returned by ``GET /v1/calls/{id}``.

    After the retention period ``turns`` is empty, ``sip_trace`` and ``media`` are null and
    ``detail_purged_at`` says when they were removed.
    """
    return {
        "id": row.id,
        "trunk_id": row.trunk_id,
        "from": row.from_number,
        "to": row.to_number,
        "status": row.status,
        "ai_provider": row.ai_provider,
        "duration_seconds": row.duration_seconds,
        "start_time": iso(row.start_time),
        "answer_time": iso(row.answer_time),
        "end_time": iso(row.end_time),
        "disconnect_reason": row.disconnect_reason,
        "error_message": row.error_message,
        "metrics": call_metrics(row),
        "turns": list(row.turns or []),
        "sip_trace": row.sip_trace,
        "media": row.media,
        "detail_purged_at": iso(row.detail_purged_at),
    }
