"""Admission control: past ``sip_max_calls`` a new INVITE gets 503 + Retry-After at once, and
the call already up keeps its media both ways until its caller hangs up."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from telepath.cli.gateway import Gateway
from telepath.testing.fake_custom import FakeTelepathAgent
from telepath.testing.tones import dominant_frequency, g711_to_pcm16
from tests.integration.conftest import Api
from tests.interop.calls.conftest import create_trunk
from tests.interop.calls.harness import Phone
from tests.interop.media.sipp import require_sipp
from tests.interop.sip.sipp_scenarios import call, run_sipp
from tests.interop.sip.uac import CallLeg, Uac, new_branch
from tests.interop.sip.waits import ended_records, until

pytestmark = pytest.mark.interop

PASSWORD = "one-at-a-time"


@pytest.fixture
def settings_overrides(settings_overrides: dict[str, Any]) -> dict[str, Any]:
    return {**settings_overrides, "sip_max_calls": 1}


async def _answered_call_port(gateway: Gateway) -> int:
    for _ in range(1000):
        for live in gateway.manager.calls.values():
            return live.media.local_port
        await asyncio.sleep(0.01)
    raise AssertionError("the first call was not answered")


async def test_second_invite_gets_503_and_first_call_is_unaffected(
    api: Api, gateway: Gateway, tmp_path: Path
) -> None:
    require_sipp()
    phone = await Phone().open()
    uac = await Uac.open("UDP", gateway.server.bound["UDP"])
    try:
        async with FakeTelepathAgent(agent="tone", tone_hz=440, response_ms=1500) as agent:
            await create_trunk(
                api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=agent.url
            )
            first = asyncio.create_task(
                run_sipp(
                    call("alice", phone.port, hold_ms=2500),
                    tmp_path,
                    gateway.server.bound["UDP"],
                    user="alice",
                    password=PASSWORD,
                )
            )
            rtp_port = await _answered_call_port(gateway)
            phone.start_tone(("127.0.0.1", rtp_port), 1000, 2.0)

            # A second caller while the first call is up: refused before any challenge.
            leg = CallLeg(uac, "alice")
            branch = new_branch()
            uac.send(leg.build("INVITE", branch=branch, body=b""))
            busy = await uac.response(503, leg.call_id)
            uac.send(leg.build("ACK", branch=branch, to_tag=busy.to.tag))
            retry_after = busy.headers.get("Retry-After") or ""
            assert retry_after.isdigit() and int(retry_after) > 0
            assert not any(r.message.status == 401 for r in uac.responses(leg.call_id))  # type: ignore[union-attr]
            assert gateway.manager.counters.get("rejected_capacity") == 1
            assert gateway.manager.active_calls == 1

            result = await first
            assert result.returncode == 0, result.stdout + result.errors
    finally:
        await uac.close()
        await phone.close()

    # The first call kept its media both ways through the rejection.
    heard = g711_to_pcm16(bytes(agent.caller_audio), "pcmu")
    assert len(heard) > 8000
    assert abs(dominant_frequency(heard) - 1000) < 15
    assert abs(phone.dominant(0) - 440) < 15
    assert len(agent.handshakes) == 1
    calls = await ended_records(api, gateway)
    assert [c["disconnect_reason"] for c in calls] == ["caller_hangup"]


async def test_capacity_frees_when_the_call_ends(api: Api, gateway: Gateway) -> None:
    """The admission count follows calls out: after a call ends, the next one is let in."""
    async with FakeTelepathAgent(agent="silent") as agent:
        await create_trunk(api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=agent.url)
        uac = await Uac.open("UDP", gateway.server.bound["UDP"])
        try:
            for _ in range(2):
                leg = CallLeg(uac, "alice")
                await leg.challenge(40004)
                await leg.answered(leg.authenticated_invite(PASSWORD, 40004))
                uac.send(leg.ack())
                await leg.bye()
                await until(lambda: gateway.manager.active_calls == 0)
        finally:
            await uac.close()
    assert len(agent.handshakes) == 2
    assert "rejected_capacity" not in gateway.manager.counters
