"""``GET /metrics`` (Prometheus text, no auth) and ``GET /readyz`` (database round trip)."""

from __future__ import annotations

import dataclasses

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from telepath.api.app import create_app
from telepath.db.engine import make_engine, sessionmaker_for
from telepath.metrics import Metrics
from tests.integration.api.test_trunk_create import err
from tests.integration.conftest import Api

pytestmark = pytest.mark.integration

EXPECTED_FAMILIES = {
    "telepath_active_calls": "gauge",
    "telepath_calls": "counter",
    "telepath_call_setup_seconds": "histogram",
    "telepath_gateway_latency_seconds": "histogram",
    "telepath_rtp_packet_loss_percent": "histogram",
    "telepath_rtp_jitter_ms": "histogram",
    "telepath_sip_auth_failures": "counter",
    "telepath_sip_requests": "counter",
    "telepath_sip_responses": "counter",
    "telepath_calls_rejected": "counter",
    "telepath_webhook_backlog": "gauge",
    "telepath_webhook_deliveries": "counter",
}


async def test_metrics_exposition(api: Api) -> None:
    m = api.state.metrics
    m.sip_requests.labels(method="INVITE").inc()
    m.sip_responses.labels(status="401").inc(2)
    m.sip_auth_failures.labels(reason="bad_password").inc()
    m.calls_rejected.labels(reason="trunk_inactive").inc()
    m.gateway_latency.labels(direction="caller_to_agent").observe(0.00004)
    m.gateway_latency.labels(direction="agent_to_caller").observe(0.003)
    m.record_call_started("call_1")

    resp = await api.client.get("/metrics")  # no Authorization header
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    for name, kind in EXPECTED_FAMILIES.items():
        assert families.get(name) == kind, name
    assert 'telepath_sip_requests_total{method="INVITE"} 1.0' in text
    assert 'telepath_sip_responses_total{status="401"} 2.0' in text
    assert 'telepath_sip_auth_failures_total{reason="bad_password"} 1.0' in text
    assert 'telepath_calls_rejected_total{reason="trunk_inactive"} 1.0' in text
    assert "telepath_active_calls 1.0" in text
    assert (
        'telepath_gateway_latency_seconds_bucket{direction="caller_to_agent",le="5e-05"} 1.0'
        in text
    )
    assert (
        'telepath_gateway_latency_seconds_bucket{direction="agent_to_caller",le="0.05"} 1.0' in text
    )
    assert 'le="1e-05"' in text  # the 10 µs bucket


def test_registries_are_independent() -> None:
    one, two = Metrics(), Metrics()
    one.sip_requests.labels(method="BYE").inc()
    assert b'method="BYE"' in one.render()
    assert b'method="BYE"' not in two.render()


async def test_readyz_ok(api: Api) -> None:
    resp = await api.client.get("/readyz")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ready"}


async def test_readyz_when_the_database_is_down(api: Api) -> None:
    # Nothing listens on port 1: connecting fails at once.
    engine = make_engine("postgresql+asyncpg://postgres@127.0.0.1:1/none")
    try:
        state = dataclasses.replace(api.state, engine=engine, sessions=sessionmaker_for(engine))
        transport = httpx.ASGITransport(app=create_app(state))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            resp = await client.get("/readyz")
            err(resp, 503, "not_ready", "The database is not answering")
            assert (await client.get("/healthz")).status_code == 200
    finally:
        await engine.dispose()
