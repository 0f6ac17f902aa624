"""Calls through a database outage: real PostgreSQL behind a proxy the test cuts, real SIPp
calls, a real agent. A known trunk's calls are still answered and bridged, their records land
once the database is back; what cannot be served gets a clean ``503``, never a ``500``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from telepath.cli.gateway import Gateway
from telepath.db.call_recorder import DbCallRecorder
from telepath.db.trunk_directory import CACHE_TTL_S, DbTrunkDirectory
from telepath.testing.fake_custom import FakeTelepathAgent
from tests.integration.conftest import Api
from tests.integration.db.tcp_proxy import TcpProxy
from tests.interop.calls.conftest import GATEWAY_SETTINGS, create_trunk
from tests.interop.calls.harness import (
    Phone,
    place_call,
    refused_call,
    run_sipp,
    settled,
    wait_until,
)

pytestmark = pytest.mark.interop

PASSWORD = "correct-horse-9"


@pytest.fixture
async def pg_proxy(postgres_url: str) -> AsyncIterator[TcpProxy]:
    async with TcpProxy.in_front_of(postgres_url) as proxy:
        yield proxy


@pytest.fixture
def database_url(postgres_url: str, pg_proxy: TcpProxy) -> str:
    return pg_proxy.through(postgres_url)


@pytest.mark.parametrize(
    ("outage", "settings_overrides"),
    [
        ("refused", {**GATEWAY_SETTINGS, "database_timeout_s": 1.0}),
        ("silent", GATEWAY_SETTINGS),  # the default TELEPATH_DATABASE_TIMEOUT_S, 10 s
    ],
    ids=["refused", "silent"],
)
async def test_a_known_trunks_calls_go_on_through_a_database_outage(
    api: Api, gateway: Gateway, tmp_path: Path, pg_proxy: TcpProxy, outage: str
) -> None:
    """``refused``: a restart or failover (connections refused or reset); ``silent``: the
    server or the network stops answering, with nothing refused: no read fails before the
    statement timeout, and the call must not wait for it."""
    recorder = gateway.manager.recorder
    directory = gateway.manager.directory
    assert isinstance(directory, DbTrunkDirectory)
    assert isinstance(recorder, DbCallRecorder)
    async with FakeTelepathAgent(tone_hz=440, response_ms=500) as agent:
        await create_trunk(api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=agent.url)
        before = await place_call(gateway, tmp_path, "alice", PASSWORD, hold_ms=800)
        result = await before.tone_until_end(0.6)  # the trunk is read, and cached for 1 s
        assert result.returncode == 0, result.stdout + result.errors
        await wait_until(lambda: not gateway.manager.calls, what="the first call's end")

        if outage == "refused":
            pg_proxy.cut()  # PostgreSQL restarts or fails over
        else:
            pg_proxy.freeze()
        try:
            await asyncio.sleep(CACHE_TTL_S + 0.2)  # the cached trunk expires: read again
            heard = len(agent.caller_audio)
            placed = await place_call(gateway, tmp_path, "alice", PASSWORD, hold_ms=1500)
            result = await placed.tone_until_end(1.3)
            assert result.returncode == 0, result.stdout + result.errors  # answered and bridged
            assert len(agent.caller_audio) - heard >= 8000  # a second of the caller's audio
            assert placed.phone.loud_frames() >= 10  # and the agent's greeting came back
            if outage == "silent":  # answered, bridged and ended before the read timed out
                assert directory.stale_reads_in_flight == 1

            phone = await Phone().open()  # a user the gateway has never seen: nothing to serve
            refused = await run_sipp(
                refused_call("nobody", phone.port, 503),
                tmp_path,
                gateway.server.bound["UDP"],
                user="nobody",
                password=PASSWORD,
                timeout_s=30,  # silent: the 503 comes when the read times out
            )
            await phone.close()
            assert refused.returncode == 0, refused.stdout + refused.errors
            await wait_until(lambda: recorder.parked >= 1, what="the record kept for retry")
            assert recorder.failures == 0
        finally:  # also when an assertion fails: teardown needs the database
            pg_proxy.restore()
        await wait_until(lambda: recorder.parked == 0, within_s=40, what="the kept record")
        await settled(gateway)  # the call's end waited for its start; now it is written too
    assert recorder.parked == recorder.failures == 0
    detail = (await api.get(f"/v1/calls/{placed.call_id}")).json()
    assert (detail["status"], detail["disconnect_reason"]) == ("connected", "caller_hangup")
    assert detail["end_time"] is not None and detail["duration_seconds"] >= 1


async def test_the_api_answers_503_while_the_database_is_down(api: Api, pg_proxy: TcpProxy) -> None:
    pg_proxy.cut()
    resp = await api.get("/v1/trunks")
    pg_proxy.restore()
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "5"
    assert resp.json() == {
        "error": {
            "code": "service_unavailable",
            "message": "The database is not answering; try again shortly",
            "status": 503,
        }
    }
    assert (await api.get("/v1/trunks")).status_code == 200
    spec = (await api.client.get("/openapi.json")).json()  # and the answer is documented
    for path, method in (("/v1/trunks", "get"), ("/v1/calls", "get"), ("/v1/webhooks", "post")):
        assert "503" in spec["paths"][path][method]["responses"], (path, method)
