"""The data of the account events call control emits (``call.started``, ``call.ended``, ...).

Built here, from the call record, so every consumer (webhooks today) sends the same documented
shape (``reference/telepath-product.md`` §4); ``telepath.webhooks`` re-exports them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from telepath.calls.model import CallRecord


def iso_ms(ts: datetime) -> str:
    """ISO 8601 UTC with milliseconds and ``Z``, as in the documented webhook examples."""
    ts = ts.astimezone(UTC)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def call_started_payload(record: CallRecord) -> dict[str, Any]:
    """``data`` of ``call.started`` (both documented field spellings: from/to and caller_id)."""
    return {
        "call_id": record.id,
        "connection_id": record.trunk_id,
        "trunk_id": record.trunk_id,
        "timestamp": iso_ms(record.start_time),
        "from": record.from_number,
        "to": record.to_number,
        "caller_id": record.from_number,
        "called_number": record.to_number,
        "ai_provider": record.ai_provider,
        "codec": record.metrics.codec_used,
    }


def call_ended_payload(record: CallRecord) -> dict[str, Any]:
    """``data`` of ``call.ended``, with the aggregate metrics (never the SIP trace or turns)."""
    m = record.metrics
    reason = str(record.disconnect_reason) if record.disconnect_reason is not None else None
    return {
        "call_id": record.id,
        "connection_id": record.trunk_id,
        "trunk_id": record.trunk_id,
        "timestamp": iso_ms(record.end_time or record.start_time),
        "status": str(record.status),
        "duration_seconds": record.duration_seconds,
        "disconnect_reason": reason,
        "reason": reason,
        "metrics": {
            "carrier_lag_ms": m.carrier_lag_ms,
            "ai_latency_ms": m.ai_latency_ms,
            "gateway_processing_ms": m.gateway_processing_ms,
            "packet_loss_percent": m.packet_loss_percent,
            "jitter_ms": m.jitter_ms,
            "codec_used": m.codec_used,
        },
    }
