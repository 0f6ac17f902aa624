"""Event vocabulary, subscription matching and the call event payloads."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from telepath.calls.model import CallMetrics, CallRecord, CallStatus, DisconnectReason
from telepath.webhooks.events import (
    call_ended_payload,
    call_started_payload,
    iso_ms,
    subscribed,
)
from telepath.webhooks.sink import normalize_payload

pytestmark = pytest.mark.unit

START = datetime(2026, 3, 10, 14, 22, 31, 842_123, tzinfo=UTC)


def record() -> CallRecord:
    return CallRecord(
        id="call_1",
        account_id="acct_1",
        trunk_id="conn_1",
        from_number="+14155550100",
        to_number="+18005551234",
        start_time=START,
        ai_provider="openai",
        metrics=CallMetrics(codec_used="G722", carrier_lag_ms=82, ai_latency_ms=187),
    )


def test_subscribed() -> None:
    assert subscribed(["*"], "call.error")
    assert subscribed(["call.ended", "call.started"], "call.started")
    assert not subscribed(["call.ended"], "call.started")


def test_iso_ms() -> None:
    assert iso_ms(START) == "2026-03-10T14:22:31.842Z"


def test_call_started_payload() -> None:
    data = call_started_payload(record())
    assert data["call_id"] == "call_1" and data["connection_id"] == "conn_1"
    assert data["timestamp"] == "2026-03-10T14:22:31.842Z"
    assert data["from"] == data["caller_id"] == "+14155550100"
    assert data["to"] == data["called_number"] == "+18005551234"
    assert data["codec"] == "G722"
    json.dumps(data)


def test_call_ended_payload_has_no_detail() -> None:
    rec = record()
    rec.answer_time = START
    rec.end_time = START + timedelta(seconds=196)
    rec.status = CallStatus.CONNECTED  # answered, ended normally
    rec.disconnect_reason = DisconnectReason.CALLER_HANGUP
    rec.sip_trace = "INVITE ..."
    data = call_ended_payload(rec)
    assert data["duration_seconds"] == 196 and data["status"] == "connected"
    assert data["disconnect_reason"] == data["reason"] == "caller_hangup"
    assert data["metrics"]["carrier_lag_ms"] == 82
    assert "sip_trace" not in json.dumps(data) and "INVITE" not in json.dumps(data)


def test_call_ended_metrics_are_the_documented_integers() -> None:
    """``gateway_processing_ms`` and ``jitter_ms`` are ints in the contract (found by review:
    0.1875 and 12.5 were sent); the same means in whole microseconds beside them."""
    rec = record()
    rec.metrics.gateway_processing_ms = 0.1875
    rec.metrics.jitter_ms = 12.5
    rec.metrics.packet_loss_percent = 0.25
    metrics = call_ended_payload(rec)["metrics"]
    assert metrics == {
        "carrier_lag_ms": 82,
        "ai_latency_ms": 187,
        "gateway_processing_ms": 0,
        "gateway_processing_us": 188,
        "packet_loss_percent": 0.25,
        "jitter_ms": 13,
        "jitter_us": 12500,
        "codec_used": "G722",
    }
    assert all(type(metrics[k]) is int for k in ("gateway_processing_ms", "jitter_us"))


def test_call_ended_metrics_not_measured_are_null() -> None:
    metrics = call_ended_payload(record())["metrics"]
    for name in ("gateway_processing_ms", "gateway_processing_us", "jitter_ms", "jitter_us"):
        assert metrics[name] is None


def test_normalize_payload() -> None:
    data = normalize_payload(
        {"when": START, "reason": DisconnectReason.SHUTDOWN, "nested": {"n": [1, 2.5, None]}}
    )
    assert data == {
        "when": "2026-03-10T14:22:31.842Z",
        "reason": "shutdown",
        "nested": {"n": [1, 2.5, None]},
    }
    with pytest.raises(TypeError):
        normalize_payload({"bad": object()})
