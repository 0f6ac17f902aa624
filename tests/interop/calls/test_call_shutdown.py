"""Graceful shutdown of a real ``telepath serve`` process: SIGTERM with a call up.

New INVITEs get 503 while the gateway drains; the live call is ended with our BYE once the
drain time (2 s) runs out; the process exits 0; after a restart the record says ``shutdown``.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from telepath.testing.fake_custom import FakeTelepathAgent
from tests.integration.live.conftest import (
    custom_trunk,
    free_sip_port,
    live_json,
    start_server,
    stop_server,
)
from tests.interop.calls.harness import (
    Phone,
    authenticated_call,
    refused_call,
    run_sipp,
    wait_until,
)
from tests.interop.media.sipp import require_sipp

pytestmark = pytest.mark.interop

PASSWORD = "correct-horse-9"
DRAIN_S = 2


def _env(sip_port: int) -> dict[str, str]:
    return {
        "TELEPATH_SIP_HOST": "127.0.0.1",
        "TELEPATH_SIP_PORT": str(sip_port),
        "TELEPATH_SIP_DRAIN_TIMEOUT_S": str(DRAIN_S),
        "TELEPATH_ALLOW_INSECURE_AGENT_URLS": "true",
        "TELEPATH_SIP_DIGEST_ALGORITHMS": "MD5,SHA-256",
        "TELEPATH_VALIDATE_PROVIDER_KEYS": "false",
        "TELEPATH_RTP_PORT_MIN": "33000",
        "TELEPATH_RTP_PORT_MAX": "33998",
    }


async def test_sigterm_drains_then_ends_calls_with_bye(tmp_path: Path) -> None:
    require_sipp()
    data_dir = tmp_path / "data"
    sip_port = free_sip_port()
    server = await asyncio.to_thread(start_server, data_dir, _env(sip_port))
    phone = await Phone().open()
    try:
        async with FakeTelepathAgent(tone_hz=440, response_ms=500) as agent:
            await live_json(
                server, "POST", "/v1/trunks", custom_trunk("alice", PASSWORD, agent.url)
            )
            scenario = authenticated_call("alice", phone.port, caller_hangs_up=False)
            (tmp_path / "call").mkdir()
            sipp = asyncio.create_task(
                run_sipp(
                    scenario,
                    tmp_path / "call",
                    ("127.0.0.1", sip_port),
                    user="alice",
                    password=PASSWORD,
                )
            )
            # The gateway's RTP reaches the phone once the call is answered: answer from there.
            await wait_until(lambda: phone.source is not None, what="RTP from the gateway")
            assert phone.source is not None
            phone.start_tone(phone.source, 1000, 30)
            await wait_until(lambda: len(agent.caller_audio) > 1600, what="audio at the agent")

            server.process.send_signal(signal.SIGTERM)
            await wait_until(lambda: "draining calls" in server.log(), what="the drain to start")
            (tmp_path / "late").mkdir()
            late = await run_sipp(
                refused_call("bob", phone.port, 503),
                tmp_path / "late",
                ("127.0.0.1", sip_port),
                user="bob",
                password=PASSWORD,
                timeout_s=5,
            )
            assert late.returncode == 0, late.stdout + late.errors
            assert "Retry-After:" in late.messages
            assert not sipp.done()  # the live call outlasts the new INVITE

            result = await sipp  # ends when our BYE was answered
            assert result.returncode == 0, result.stdout + result.errors
            code = await asyncio.to_thread(server.process.wait, 20)
            assert code == 0, server.log()
            await phone.close()
            assert agent.stops  # the agent was told too
    finally:
        await phone.close()
        if server.process.poll() is None:
            await asyncio.to_thread(stop_server, server)

    restarted = await asyncio.to_thread(
        start_server, data_dir, _env(free_sip_port()), server.api_key
    )
    try:
        calls = (await live_json(restarted, "GET", "/v1/calls"))["calls"]
    finally:
        await asyncio.to_thread(stop_server, restarted)
    assert len(calls) == 1  # the refused INVITE never became a call
    [call] = calls
    assert call["status"] == "disconnected"
    assert call["disconnect_reason"] == "shutdown"
    assert call["duration_seconds"] >= DRAIN_S
