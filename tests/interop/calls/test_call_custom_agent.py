"""A real call end to end: SIPp dials a custom-agent trunk with MD5 digest auth; a tone from the
caller reaches the agent, the agent's tone reaches the caller; the record and metrics follow."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection

from telepath.calls.model import DisconnectReason
from telepath.cli.gateway import Gateway
from telepath.rtp.playout import MAX_QUEUED_MS
from telepath.testing.fake_custom import FakeTelepathAgent
from telepath.testing.tones import dominant_frequency, g711_to_pcm16, sine_g711
from tests.integration.conftest import Api
from tests.interop.calls.conftest import create_trunk
from tests.interop.calls.harness import Phone, authenticated_call, place_call, run_sipp

pytestmark = pytest.mark.interop

PASSWORD = "correct-horse-9"


async def _media_port_of_call(gateway: Gateway, within_s: float = 10) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while loop.time() < deadline:
        for call in gateway.manager.calls.values():
            return call.media.local_port
        await asyncio.sleep(0.02)
    raise AssertionError("no call was set up")


async def test_tone_both_ways_and_record(api: Api, gateway: Gateway, tmp_path: Path) -> None:
    async with FakeTelepathAgent(agent="tone", tone_hz=440, response_ms=1500) as agent:
        await create_trunk(api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=agent.url)
        phone = await Phone().open()
        scenario = authenticated_call("alice", phone.port, hold_ms=2500)
        sipp = asyncio.create_task(
            run_sipp(
                scenario, tmp_path, gateway.server.bound["UDP"], user="alice", password=PASSWORD
            )
        )
        rtp_port = await _media_port_of_call(gateway)
        phone.start_tone(("127.0.0.1", rtp_port), 1000, 2.0)
        result = await sipp
        await phone.close()
        assert result.returncode == 0, result.stdout + result.errors
        await asyncio.sleep(0.3)

    # caller → agent: the agent heard a 1 kHz tone
    heard = g711_to_pcm16(bytes(agent.caller_audio), "pcmu")
    assert len(heard) > 8000  # > 0.5 s of audio reached the agent
    assert abs(dominant_frequency(heard) - 1000) < 15
    # agent → caller: the phone heard the agent's 440 Hz tone, as PCMU RTP
    assert abs(phone.dominant(0) - 440) < 15
    assert agent.protocol_errors == []

    calls = (await api.get("/v1/calls")).json()["calls"]
    assert len(calls) == 1
    call = calls[0]
    assert call["status"] == "connected"
    assert call["disconnect_reason"] == DisconnectReason.CALLER_HANGUP.value
    assert call["from"] == "+15551230000"
    detail = (await api.get(f"/v1/calls/{call['id']}")).json()
    print(detail)
    assert detail["metrics"]["codec_used"] == "PCMU"
    assert 0 < detail["metrics"]["gateway_processing_us"] < 5000
    assert (
        detail["metrics"]["gateway_processing_ms"]
        == (detail["metrics"]["gateway_processing_us"] + 500) // 1000
    )
    assert detail["metrics"]["packet_loss_percent"] == 0
    assert detail["duration_seconds"] >= 2
    assert "INVITE sip:alice@" in detail["sip_trace"]
    assert "Digest <redacted>" in detail["sip_trace"]
    assert 'response="' not in detail["sip_trace"]
    assert gateway.manager.active_calls == 0


class FloodAgent(FakeTelepathAgent):
    """Sends more audio at once than playout holds (two minutes), then ``clear`` and a mark."""

    async def _greet(self, ws: ServerConnection) -> bool:
        second = sine_g711(300, 1000)
        for _ in range(MAX_QUEUED_MS // 1000 + 5):
            await self.send_audio(ws, second)
        await self.send_clear(ws)
        await self.send_mark(ws, "after-clear")
        return False


async def test_an_agent_sending_more_than_playout_holds_keeps_its_call(
    api: Api, gateway: Gateway, tmp_path: Path
) -> None:
    # Audio past the playout bound is dropped (an answer of over two minutes loses its tail);
    # the call and the agent's later messages go on: the clear empties the queue and the mark
    # after it is echoed at once. Before, the excess broke the agent's event handling for the
    # rest of the call.
    async with FloodAgent() as agent:
        await create_trunk(api, "flood", PASSWORD, ai_provider="custom", custom_endpoint=agent.url)
        placed = await place_call(
            gateway, tmp_path, "flood", PASSWORD, hold_ms=4000, caller_hangs_up=True
        )
        placed.phone.start_tone(placed.rtp, 1000, 3.5)
        async with asyncio.timeout(10):
            while "after-clear" not in agent.mark_echoes:  # noqa: ASYNC110 - the fake's list
                await asyncio.sleep(0.05)
        result = await placed.sipp
        await placed.phone.close()
        assert result.returncode == 0, result.stdout + result.errors
    calls = (await api.get("/v1/calls")).json()["calls"]
    assert [c["disconnect_reason"] for c in calls] == [DisconnectReason.CALLER_HANGUP.value]
    assert agent.protocol_errors == []
