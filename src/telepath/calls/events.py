"""The data of the account events call control emits (``call.started``, ``call.ended``, ...).

Built here, from the call record, so every consumer (webhooks today) sends the same documented
shape (``reference/telepath-product.md`` §4); ``telepath.webhooks`` re-exports them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from telepath.calls.model import CallRecord, CallStatus, DisconnectReason, whole_ms, whole_us


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
    """``data`` of ``call.ended``, with the aggregate metrics (never the SIP trace or turns) and
    the codes of the media report's warnings (``no_inbound_rtp``, ...; empty when it found
    nothing wrong, null for a call that never had media)."""
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
            "gateway_processing_ms": whole_ms(m.gateway_processing_ms),
            "gateway_processing_us": whole_us(m.gateway_processing_ms),
            "packet_loss_percent": m.packet_loss_percent,
            "jitter_ms": whole_ms(m.jitter_ms),
            "jitter_us": whole_us(m.jitter_ms),
            "codec_used": m.codec_used,
        },
        "media_warnings": (
            None
            if record.media is None
            else [warning["code"] for warning in record.media.get("warnings", [])]
        ),
    }


def agent_connected_payload(record: CallRecord, agent_id: str | None) -> dict[str, Any]:
    """``data`` of ``agent.connected``: ``agent_type`` is the provider (``openai``,
    ``elevenlabs``, ``custom``); ``agent_id`` the ElevenLabs agent or the OpenAI model (null
    for a custom agent, whose URL may carry credentials)."""
    return {
        "call_id": record.id,
        "trunk_id": record.trunk_id,
        "timestamp": iso_ms(record.answer_time or record.start_time),
        "ai_provider": record.ai_provider,
        "agent_type": record.ai_provider,
        "agent_id": agent_id,
    }


def agent_disconnected_payload(record: CallRecord) -> dict[str, Any]:
    """``data`` of ``agent.disconnected``: the call's disconnect reason and error message."""
    reason = str(record.disconnect_reason) if record.disconnect_reason is not None else None
    return {
        "call_id": record.id,
        "trunk_id": record.trunk_id,
        "timestamp": iso_ms(record.end_time or record.start_time),
        "reason": reason,
        "error_message": record.error_message,
    }


def call_error_payload(record: CallRecord) -> dict[str, Any]:
    """``data`` of ``call.error``: ``call.ended``'s, plus ``error_code`` (the disconnect reason),
    ``error_message`` (also as ``error``) and ``severity``: ``critical`` when the caller got no
    agent at all (the call failed) or the gateway process died with the call (``lost``),
    ``warning`` when an answered call's agent failed mid-call."""
    ended = call_ended_payload(record)
    failed = record.status == CallStatus.FAILED or record.disconnect_reason == DisconnectReason.LOST
    return {
        **ended,
        "error_code": ended["disconnect_reason"],
        "error_message": record.error_message,
        "error": record.error_message,
        "severity": "critical" if failed else "warning",
    }
