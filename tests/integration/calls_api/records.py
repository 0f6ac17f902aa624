"""Helpers that build call records and find the test account."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from telepath.calls.diagnosis import media_report
from telepath.calls.model import CallMetrics, CallRecord, CallStatus, DisconnectReason, Turn
from telepath.db.repository import AccountRepository
from telepath.secrets.tokens import new_id
from telepath.transport.media_stats import DirectionStats, MediaStats
from tests.integration.conftest import Api

T0 = datetime(2026, 3, 5, 10, 30, 0, tzinfo=UTC)


async def account_of(api: Api, key: str | None = None) -> str:
    """The account id behind an API key (default: the bootstrap key)."""
    async with api.state.sessions() as session:
        found = await AccountRepository(session).authenticate(key or api.key)
        assert found is not None
        return found.account_id


def started(
    account_id: str, *, trunk_id: str = "conn_a", start: datetime = T0, **over: Any
) -> CallRecord:
    """A record as call control hands it over when a call starts."""
    values: dict[str, Any] = {
        "id": new_id("call"),
        "account_id": account_id,
        "trunk_id": trunk_id,
        "from_number": "+14155550100",
        "to_number": "+18005551234",
        "start_time": start,
        "ai_provider": "openai",
    }
    values.update(over)
    return CallRecord(**values)


NO_TIMES = DirectionStats(0, 0.0, 0.0, 0.0, 0.0)


def ended(
    record: CallRecord,
    *,
    seconds: float = 342,
    reason: DisconnectReason = DisconnectReason.CALLER_HANGUP,
    status: CallStatus = CallStatus.CONNECTED,
) -> CallRecord:
    """The same record as call control hands it over when the call ends (by default answered
    and hung up by the caller: ``connected``, the status of a call that ended normally; pass
    ``status`` with a ``reason`` that is not a normal end)."""
    record.answer_time = record.start_time + timedelta(milliseconds=250)
    record.end_time = record.answer_time + timedelta(seconds=seconds)
    record.status = status
    record.disconnect_reason = reason
    record.metrics = CallMetrics(
        carrier_lag_ms=85,
        ai_latency_ms=215,
        gateway_processing_ms=0.0421,
        packet_loss_percent=0.2,
        jitter_ms=12.5,
        codec_used="G722",
        gateway_processing_p99_ms=0.31,
        setup_ms=250,
    )
    record.turns = [
        Turn(turn_number=1, speaker="caller", duration_ms=2340, processing_time_ms=0),
        Turn(turn_number=2, speaker="agent", duration_ms=3210, processing_time_ms=285),
    ]
    record.media = media_report(
        MediaStats(
            17100,
            17050,
            17050 * 160,
            50,
            0.29,
            12.5,
            3,
            0,
            50,
            40,
            0,
            0,
            0,
            0.0,
            0.0,
            0.0,
            38.2,
            NO_TIMES,
            NO_TIMES,
        ),
        local=("203.0.113.5", 40000),
        remote_sdp=("198.51.100.9", 42000),
        remote_rtp=("198.51.100.9", 42000),
        srtp=None,
        answered_s=seconds,
    )
    record.sip_trace = "INVITE sip:agent@example.test SIP/2.0\r\nVia: SIP/2.0/UDP ...\r\n"
    return record
