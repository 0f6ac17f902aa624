"""Call control end to end: barge-in, DTMF, agent hang-up, provider failure, an unreachable
agent, media timeout and the webhooks of a normal call — each with real SIPp signalling, real
RTP from a ``Phone`` and a provider fake, each checked against the call record."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from telepath.bridges.base import BridgeError, BridgeReason
from telepath.bridges.custom import events as ev
from telepath.bridges.custom.bridge import TelepathAgentBridge
from telepath.calls import manager as manager_module
from telepath.calls.call import Call
from telepath.calls.model import DisconnectReason
from telepath.cli.gateway import Gateway
from telepath.db.call_recorder import DbCallRecorder
from telepath.sip.message import Request, Response
from telepath.testing.fake_custom import FakeTelepathAgent
from telepath.testing.fake_elevenlabs import FakeElevenLabs
from telepath.testing.fake_openai import FakeOpenAIRealtime
from telepath.testing.tones import sine_g711
from telepath.transport import media_pacer
from telepath.transport.media_session import MediaSession
from telepath.webhooks.signing import verify_signature
from tests.integration.conftest import Api
from tests.integration.transactions import Transactions
from tests.integration.webhooks.receiver import Receiver
from tests.interop.calls.conftest import (
    GATEWAY_SETTINGS,
    configure,
    create_trunk,
    hung_up,
    provider_trunk,
    record,
    subscribe,
)
from tests.interop.calls.harness import (
    ACK_2XX,
    ACK_TXN,
    HEADER,
    IN_DIALOG,
    INVITE,
    Phone,
    SippResult,
    connected_call,
    frame_tone,
    free_tcp_port,
    is_loud,
    place_call,
    rejected_call,
    rtpmaps,
    run_sipp,
    settled,
    wait_until,
)
from tests.interop.sip.sipp_scenarios import SDP_BODY
from tests.interop.sip.uac import CallLeg, Uac, sdp_offer

pytestmark = pytest.mark.interop

PASSWORD = "correct-horse-9"
AGENT_HZ = 440
FRAME_MS = 20


def heard_all_but_stalls(phone: Phone, skipped_before: int, frames: int) -> None:
    """``frames`` of loud audio reached ``phone``, less what host stalls cost: the pacer skips
    the frame times of a stall rather than bursting them (``media_pacer.skipped_frames``), and
    a frame either side of the audio may be cut (as always allowed)."""
    lost = media_pacer.skipped_frames() - skipped_before
    heard = phone.loud_frames(0)
    assert heard >= frames - 2 - lost, (heard, frames, lost)


def _events(receiver: Receiver, secret: str) -> dict[str, list[dict[str, Any]]]:
    """Delivered webhooks by type; every one must carry a valid signature."""
    by_type: dict[str, list[dict[str, Any]]] = {}
    for req in list(receiver.requests):
        assert verify_signature(secret, req.headers["telepath-signature"], req.body)
        assert req.headers["idempotency-key"]
        envelope = json.loads(req.body)
        by_type.setdefault(envelope["type"], []).append(envelope["data"])
    return by_type


async def _delivered(receiver: Receiver, secret: str, *types: str) -> dict[str, list[Any]]:
    await wait_until(lambda: set(types) <= set(_events(receiver, secret)), what=f"webhooks {types}")
    return _events(receiver, secret)


def _first_lines(trace: str) -> list[str]:
    """Method (or ``SIP/2.0 <status>``) of every message in a record's SIP trace."""
    found = re.findall(r"^--- (?:in|out).*\n(\S+) (\S+)", trace, re.M)
    return [f"{a} {b}" if a == "SIP/2.0" else a for a, b in found]


async def _refused_with_480(gateway: Gateway, tmp_path: Path) -> tuple[SippResult, Phone]:
    """SIPp calls as ``alice``, expecting the 480 of a call whose agent could not be had; the
    result and the (closed) phone whose RTP port it offered."""
    phone = await Phone().open()
    scenario = rejected_call("alice", phone.port, 480)
    result = await run_sipp(
        scenario, tmp_path, gateway.server.bound["UDP"], user="alice", password=PASSWORD
    )
    await phone.close()
    return result, phone


async def _custom_trunk(api: Api, url: str) -> None:
    await _custom_trunk_of(api, "alice", url)


async def _custom_trunk_of(api: Api, user: str, url: str) -> dict[str, Any]:
    return await create_trunk(api, user, PASSWORD, ai_provider="custom", custom_endpoint=url)


# --- barge-in ------------------------------------------------------------------------------


class _LateClearAgent(FakeTelepathAgent):
    """Sends a long answer at once, then ``clear`` after ``delay_s`` of real time (the caller
    talked over it); ``frames_at_clear`` is what the phone had received at that moment."""

    def __init__(self, phone: Phone, delay_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.phone = phone
        self.delay_s = delay_s
        self.frames_at_clear: int | None = None

    async def send_clear(self, ws: ServerConnection) -> None:
        await asyncio.sleep(self.delay_s)
        self.frames_at_clear = len(self.phone.received)
        await super().send_clear(ws)


async def test_barge_in_custom_agent_stops_playout(
    api: Api, gateway: Gateway, tmp_path: Path
) -> None:
    phone = await Phone().open()
    # 4 s of answer queued, cleared after 0.6 s of real time
    agent = _LateClearAgent(phone, 0.6, tone_hz=AGENT_HZ, response_ms=5000, clear_after_ms=4000)
    async with agent:
        await _custom_trunk(api, agent.url)
        placed = await place_call(gateway, tmp_path, "alice", PASSWORD, hold_ms=2000)
        await placed.phone.close()  # place_call's own phone is unused: we answer from ours
        placed.phone = phone
        phone.start_tone(placed.rtp, 1000, 1.8)
        result = await placed.sipp
        await phone.close()
    assert result.returncode == 0, result.stdout + result.errors
    await settled(gateway)
    assert agent.frames_at_clear is not None
    after_clear = phone.received[agent.frames_at_clear :]
    before_clear = phone.received[: agent.frames_at_clear]
    loud_before = sum(1 for pt, p in before_clear if pt == 0 and is_loud(p))
    loud_after = sum(1 for pt, p in after_clear if pt == 0 and is_loud(p))
    assert loud_before >= 15  # the caller heard the start of the answer (~0.6 s)
    assert loud_after <= 2  # and at most the frame in flight after the clear
    detail = await record(api, placed.call_id)
    assert detail["disconnect_reason"] == "caller_hangup"
    agent_turns = [t for t in detail["turns"] if t["speaker"] == "agent"]
    # what the caller heard (~0.6 s before the clear), not the 5 s the agent sent
    assert agent_turns and 300 <= agent_turns[0]["duration_ms"] <= 1500


class _LateBargeInOpenAI(FakeOpenAIRealtime):
    """Speech starts ``delay_s`` after the answer was sent (OpenAI sends audio faster than
    real time, so only part of it has been played by then)."""

    def __init__(self, delay_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.delay_s = delay_s

    async def _barge_in(
        self, ws: ServerConnection, response_id: str, item: str, sent_ms: int
    ) -> None:
        await asyncio.sleep(self.delay_s)
        await super()._barge_in(ws, response_id, item, sent_ms)


async def test_barge_in_openai_truncates_at_what_was_heard(
    api: Api, gateway: Gateway, tmp_path: Path
) -> None:
    fake = _LateBargeInOpenAI(0.7, tone_hz=AGENT_HZ, response_ms=5000, barge_in_after_ms=4000)
    async with fake:
        await provider_trunk(api, gateway, fake, PASSWORD)
        placed = await place_call(gateway, tmp_path, "alice", PASSWORD, hold_ms=2200)
        result = await placed.tone_until_end(2.0)
    assert result.returncode == 0, result.stdout + result.errors
    await settled(gateway)
    assert fake.protocol_errors == []
    truncates = [e for e in fake.received if e["type"] == "conversation.item.truncate"]
    assert len(truncates) == 1, [e["type"] for e in fake.received]
    heard_ms = placed.phone.loud_frames(0) * FRAME_MS
    # what the caller heard of the answer, nothing more (the late deltas were dropped)
    assert 400 <= heard_ms <= 1000
    assert abs(truncates[0]["audio_end_ms"] - heard_ms) <= 3 * FRAME_MS
    detail = await record(api, placed.call_id)
    assert detail["disconnect_reason"] == "caller_hangup"
    # the caller spoke (2 s of tone) until it hung up, 0.2 s later: that is a turn of its own
    (spoken,) = [t for t in detail["turns"] if t["speaker"] == "caller"]
    assert 1800 <= spoken["duration_ms"] <= 2100, detail["turns"]


class _WatchedElevenLabs(FakeElevenLabs):
    """Notes how many packets the caller's phone had received when ``interruption`` went out."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.phone: Phone | None = None
        self.frames_at_interruption: int | None = None

    async def _interrupt(self, ws: ServerConnection, turn: int) -> None:
        assert self.phone is not None
        self.frames_at_interruption = len(self.phone.received)
        await super()._interrupt(ws, turn)


REPLY_HZ = 880


async def test_barge_in_elevenlabs_flushes_the_interrupted_turn(
    api: Api, gateway: Gateway, tmp_path: Path, receiver: Receiver
) -> None:
    hook = await subscribe(api, receiver.url)
    # a 6 s answer, sent at once (queued at the gateway); 200 ms of caller speech interrupts it,
    # then come two late chunks of it (to be dropped) and a 600 ms reply at another pitch
    fake = _WatchedElevenLabs(
        tone_hz=AGENT_HZ,
        response_ms=6000,
        barge_in_on_speech_ms=200,
        reply_ms=600,
        reply_hz=REPLY_HZ,
    )
    async with fake:
        await provider_trunk(api, gateway, fake, PASSWORD)
        placed = await place_call(gateway, tmp_path, "alice", PASSWORD, hold_ms=3500)
        fake.phone = placed.phone
        # the caller hears 0.5 s of the answer, then talks over it for 1 s, then listens
        await wait_until(lambda: placed.phone.loud_frames(0) >= 25, what="the agent's answer")
        placed.phone.start_tone(placed.rtp, 1000, 1.0, then_silence_s=3.0)
        result = await placed.sipp
        await placed.phone.close()
    assert result.returncode == 0, result.stdout + result.errors
    await settled(gateway)
    assert fake.protocol_errors == []
    assert [m["type"] for m in fake.sent].count("interruption") == 1
    cut = fake.frames_at_interruption
    assert cut is not None
    assert {pt for pt, _ in placed.phone.received} == {0}
    tones = [frame_tone(payload) for _, payload in placed.phone.received]

    def answer(hz: float | None) -> bool:
        return hz is not None and abs(hz - AGENT_HZ) < 100

    def reply(hz: float | None) -> bool:
        return hz is not None and abs(hz - REPLY_HZ) < 100

    before, after = tones[:cut], tones[cut:]
    assert sum(map(answer, before)) >= 25  # the caller heard the start of the answer
    # Over 5 s of the answer was still queued (~250 frames) and the late chunks add 10 more:
    # after the interruption only the frames already in flight may carry it.
    assert sum(map(answer, after)) <= 3, tones[cut - 5 : cut + 40]
    replied = [i for i, hz in enumerate(after) if reply(hz)]
    assert len(replied) >= 600 // FRAME_MS - 2  # the call went on: the new turn was played
    assert not any(map(answer, after[replied[0] :]))  # and the old one never came back
    assert not any(map(reply, before))
    detail = await record(api, placed.call_id)
    assert detail["status"] == "connected"
    assert detail["disconnect_reason"] == "caller_hangup"
    assert detail["error_message"] is None
    assert [t["speaker"] for t in detail["turns"]] == ["agent", "caller", "agent"]
    interrupted, caller, new_turn = detail["turns"]
    # heard before the interruption (~0.7 s), not the 6 s the agent sent
    assert 500 <= interrupted["duration_ms"] <= 2000 and caller["duration_ms"] > 0
    assert new_turn["duration_ms"] == 600  # the reply alone: the late chunks were dropped
    events = await _delivered(receiver, hook["secret"], "agent.connected", "call.ended")
    assert "call.error" not in events
    assert events["agent.connected"][0]["agent_type"] == "elevenlabs"
    assert events["agent.connected"][0]["agent_id"] == "agent_fake"
    ended = events["call.ended"][0]
    assert ended["call_id"] == placed.call_id
    assert ended["status"] == "connected"
    assert ended["disconnect_reason"] == "caller_hangup"


# --- DTMF ----------------------------------------------------------------------------------


async def test_rfc4733_digit_reaches_the_agent(api: Api, gateway: Gateway, tmp_path: Path) -> None:
    async with FakeTelepathAgent(agent="silent") as agent:
        await _custom_trunk(api, agent.url)
        placed = await place_call(gateway, tmp_path, "alice", PASSWORD, hold_ms=2000)
        placed.phone.start_tone(placed.rtp, 1000, 1.8)
        await asyncio.sleep(0.4)
        placed.phone.press("5")
        await wait_until(lambda: agent.digits, what="the digit at the agent")
        result = await placed.sipp
        await placed.phone.close()
    assert result.returncode == 0, result.stdout + result.errors
    assert agent.digits == ["5"]  # once, although the end packet was sent three times
    assert agent.protocol_errors == []
    await settled(gateway)
    assert (await record(api, placed.call_id))["disconnect_reason"] == "caller_hangup"


# --- agent hang-up -------------------------------------------------------------------------


async def test_agent_hangup_plays_queued_audio_then_bye(
    api: Api, gateway: Gateway, tmp_path: Path
) -> None:
    async with FakeTelepathAgent(tone_hz=AGENT_HZ, response_ms=1000, hangup=True) as agent:
        await _custom_trunk(api, agent.url)
        skipped = media_pacer.skipped_frames()
        placed = await place_call(
            gateway, tmp_path, "alice", PASSWORD, hold_ms=3000, caller_hangs_up=False
        )
        result = await placed.tone_until_end(3.0)  # returns once our BYE was answered
    assert result.returncode == 0, result.stdout + result.errors
    # the whole 1 s goodbye reached the caller before the BYE (a hang-up that did not wait for
    # it cuts it after a few frames), but for what host stalls cost (seen in full runs: 47 and
    # 43 of 50, after "media pacer stalled")
    heard_all_but_stalls(placed.phone, skipped, 1000 // FRAME_MS)
    assert abs(placed.phone.dominant(0, voiced_only=True) - AGENT_HZ) < 15
    await settled(gateway)
    detail = await record(api, placed.call_id)
    assert detail["status"] == "connected"
    assert detail["disconnect_reason"] == "agent_hangup"
    assert detail["error_message"] is None
    assert agent.protocol_errors == []


# --- provider failure ----------------------------------------------------------------------


@pytest.mark.parametrize("failure", ["drop", "close", "error"])
async def test_provider_failure_mid_call(
    api: Api, gateway: Gateway, tmp_path: Path, receiver: Receiver, failure: str
) -> None:
    hook = await subscribe(api, receiver.url)
    async with FakeTelepathAgent(agent="silent", after_start=failure) as agent:
        await _custom_trunk(api, agent.url)
        placed = await place_call(
            gateway, tmp_path, "alice", PASSWORD, hold_ms=2000, caller_hangs_up=False
        )
        result = await placed.tone_until_end(1.0)  # our BYE, answered
    assert result.returncode == 0, result.stdout + result.errors
    assert "BYE sip:" in result.messages
    await settled(gateway)
    detail = await record(api, placed.call_id)
    assert detail["status"] == "disconnected"
    assert detail["disconnect_reason"] == "ai_provider_error"
    assert detail["error_message"]
    events = await _delivered(receiver, hook["secret"], "call.error", "call.ended")
    assert events["call.error"][0]["call_id"] == placed.call_id
    error = events["call.error"][0]
    assert error["error"] == error["error_message"] == detail["error_message"]
    assert error["error_code"] == "ai_provider_error"
    assert error["severity"] == "warning"  # answered; the agent failed mid-call
    assert events["call.ended"][0]["disconnect_reason"] == "ai_provider_error"
    assert events["call.ended"][0]["status"] == "disconnected"  # Dropped, as the record
    assert gateway.manager.ports.in_use == 0


# --- final status --------------------------------------------------------------------------


async def test_a_call_that_ended_normally_stays_connected_one_whose_agent_failed_is_dropped(
    api: Api, gateway: Gateway, receiver: Receiver
) -> None:
    """``status`` is the call's final status (reference §1.6-1.7, §7 row 12): a call answered
    and hung up is ``connected`` (the dashboard's Completed), as while it was up; one whose
    agent failed mid-call is ``disconnected`` (Dropped). Every answered call's end used to be
    ``disconnected``, so ``?status=connected`` listed only the calls still up."""
    hook = await subscribe(api, receiver.url, ["call.ended"])
    phone = await Phone().open()
    legs: list[CallLeg] = []
    try:
        async with (
            FakeTelepathAgent(agent="silent") as agent,
            FakeTelepathAgent(agent="silent", after_start="error") as failing,
        ):
            await _custom_trunk_of(api, "alice", agent.url)
            await _custom_trunk_of(api, "bob", failing.url)
            sip_port = gateway.server.bound["UDP"][1]
            for user, call_id in (("alice", "up"), ("alice", "done"), ("bob", "drop")):
                legs.append(await connected_call(sip_port, user, PASSWORD, call_id, phone.port))
                if call_id == "done":
                    await legs[-1].bye()
            await wait_until(lambda: gateway.manager.active_calls == 1, what="two calls ended")
            await wait_until(lambda: len(_ended(receiver, hook)) == 2, what="two call.ended")
            calls = (await api.get("/v1/calls")).json()["calls"]
            dropped_id, done_id, up_id = (c["id"] for c in calls)  # newest first

            completed = await record(api, done_id)
            assert (completed["status"], completed["disconnect_reason"]) == (
                "connected",
                "caller_hangup",
            )
            assert completed["end_time"] is not None
            failed = await record(api, dropped_id)
            assert (failed["status"], failed["disconnect_reason"]) == (
                "disconnected",
                "ai_provider_error",
            )
            assert (await record(api, up_id))["end_time"] is None

            async def listed(status: str) -> set[str]:
                resp = await api.get("/v1/calls", status=status)
                assert resp.status_code == 200, resp.text
                return {c["id"] for c in resp.json()["calls"]}

            # the completed call beside the one still up; the dropped one alone
            assert await listed("connected") == {done_id, up_id}
            assert await listed("disconnected") == {dropped_id}
            assert await listed("failed") == set()
            ended = _ended(receiver, hook)
            assert ended[done_id]["status"] == "connected"
            assert ended[dropped_id]["status"] == "disconnected"
            await legs[0].bye()
    finally:
        for leg in legs:
            await leg.uac.close()
        await phone.close()
    await settled(gateway)
    assert (await record(api, up_id))["status"] == "connected"


def _ended(receiver: Receiver, hook: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The delivered ``call.ended`` events, by call."""
    ended = _events(receiver, hook["secret"]).get("call.ended", [])
    return {e["call_id"]: e for e in ended}


# --- agent unreachable ---------------------------------------------------------------------


@pytest.mark.parametrize("how", ["http_401", "closed_port"])
async def test_unreachable_agent_is_refused_with_480(
    api: Api, gateway: Gateway, tmp_path: Path, receiver: Receiver, how: str
) -> None:
    hook = await subscribe(api, receiver.url)
    async with FakeTelepathAgent(reject_status=401) as agent:
        url = agent.url if how == "http_401" else f"ws://127.0.0.1:{free_tcp_port()}/agent"
        await _custom_trunk(api, url)
        result, phone = await _refused_with_480(gateway, tmp_path)
    assert result.returncode == 0, result.stdout + result.errors
    assert "SIP/2.0 200 OK" not in result.messages
    await settled(gateway)
    assert gateway.manager.ports.in_use == 0
    assert not gateway.manager._tasks
    assert phone.received == []
    [call] = (await api.get("/v1/calls")).json()["calls"]
    detail = await record(api, call["id"])
    assert detail["status"] == "failed"
    assert detail["disconnect_reason"] == "connection_failed"
    assert detail["error_message"]
    assert detail["answer_time"] is None
    assert "SIP/2.0 480" in detail["sip_trace"]
    assert "Digest <redacted>" in detail["sip_trace"]
    events = await _delivered(receiver, hook["secret"], "call.error")
    assert events["call.error"][0]["disconnect_reason"] == "connection_failed"
    assert events["call.error"][0]["severity"] == "critical"  # the caller got no agent
    assert "call.started" not in events


async def test_a_ws_agent_is_not_dialled_once_insecure_agent_urls_are_off(
    api: Api, gateway: Gateway, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """TELEPATH_ALLOW_INSECURE_AGENT_URLS was checked only when a trunk was saved: a ws://
    trunk made while it was on was dialled in cleartext (its Authorization header and all)
    after it was turned off. The setting now holds when the call is placed: the call fails as
    an unreachable agent's does (480, ``connection_failed``), the agent never contacted, and
    the warning names neither the URL (a token in it) nor the headers."""
    async with FakeTelepathAgent(agent="silent") as agent:
        await create_trunk(
            api,
            "alice",
            PASSWORD,
            ai_provider="custom",
            custom_endpoint=f"{agent.url}?token=url-s3cret",
            custom_headers={"Authorization": "Bearer hdr-s3cret"},
        )
        configure(gateway, allow_insecure_agent_urls=False)  # the operator turned it off
        result, phone = await _refused_with_480(gateway, tmp_path)
        assert result.returncode == 0, result.stdout + result.errors
        await settled(gateway)
        assert agent.handshakes == []
        port = str(agent.port)
    [call] = (await api.get("/v1/calls")).json()["calls"]
    detail = await record(api, call["id"])
    assert (detail["status"], detail["disconnect_reason"]) == ("failed", "connection_failed")
    assert "SIP/2.0 480" in detail["sip_trace"]
    said = [r for r in caplog.records if "TELEPATH_ALLOW_INSECURE_AGENT_URLS" in r.getMessage()]
    assert [r.levelname for r in said] == ["WARNING"]
    logged = caplog.text + detail["error_message"]
    assert "s3cret" not in logged and port not in said[0].getMessage()


async def test_a_prompt_the_elevenlabs_agent_does_not_allow_refuses_the_call_with_480(
    api: Api, gateway: Gateway, tmp_path: Path
) -> None:
    """An ElevenLabs trunk's system prompt goes as the prompt override, which an agent that
    does not enable it refuses at set-up (``override_error``, close 1008) — its setting changed
    after the trunk was made, or key checks are off, as here. The caller gets the 480 a carrier
    can fail over on; the record says why: ``ai_provider_error``, not an unreachable agent."""
    async with FakeElevenLabs() as fake:  # no override enabled, as a new agent
        configure(gateway, elevenlabs_api_base=fake.base_http, elevenlabs_ws_url=fake.url)
        await create_trunk(
            api,
            "alice",
            PASSWORD,
            ai_provider="elevenlabs",
            elevenlabs_agent_id="agent_fake",
            elevenlabs_api_key="sk-valid-el-key",
            system_prompt="You are a test agent.",
        )
        result, phone = await _refused_with_480(gateway, tmp_path)
    assert result.returncode == 0, result.stdout + result.errors
    assert [m["type"] for m in fake.sent] == ["error"]
    await settled(gateway)
    assert gateway.manager.ports.in_use == 0
    [call] = (await api.get("/v1/calls")).json()["calls"]
    detail = await record(api, call["id"])
    assert (detail["status"], detail["disconnect_reason"]) == ("failed", "ai_provider_error")
    assert detail["answer_time"] is None
    assert "SIP/2.0 480" in detail["sip_trace"]


# --- media timeout -------------------------------------------------------------------------


async def test_media_timeout_ends_the_call(api: Api, gateway: Gateway, tmp_path: Path) -> None:
    configure(gateway, rtp_inactivity_timeout_s=1.0)
    async with FakeTelepathAgent(agent="silent") as agent:
        await _custom_trunk(api, agent.url)
        placed = await place_call(
            gateway, tmp_path, "alice", PASSWORD, hold_ms=3000, caller_hangs_up=False
        )
        result = await placed.tone_until_end(0.5)  # then the caller's media goes silent
    assert result.returncode == 0, result.stdout + result.errors
    await settled(gateway)
    detail = await record(api, placed.call_id)
    assert detail["status"] == "connected"
    assert detail["disconnect_reason"] == "media_timeout"
    # the agent was told the call ended, and why: stop.reason is the record's reason
    assert [stop["reason"] for stop in agent.stops] == ["media_timeout"]
    assert gateway.manager.ports.in_use == 0


async def test_a_caller_that_only_receives_is_not_a_media_timeout(
    api: Api, gateway: Gateway, tmp_path: Path
) -> None:
    """A re-INVITE offering a=recvonly (RFC 3264 §6.1: the caller will not send): we answer
    sendonly and go on sending, and the caller's silence is no media timeout (it was one)."""
    configure(gateway, rtp_inactivity_timeout_s=1.0)

    def middle(port: int) -> str:
        sdp = SDP_BODY % {"version": 3, "media_port": port, "direction": "recvonly"}
        extra = "Content-Type: application/sdp"
        return (
            '  <pause milliseconds="200"/>\n'
            + IN_DIALOG
            % {"user": "alice", "cseq": 3, "method": "INVITE", "extra": extra, "body": sdp}
            + '  <recv response="100" optional="true"/>\n'
            + '  <recv response="200"/>\n'
            + ACK_2XX % {"user": "alice", "cseq": 3}
        )

    async with FakeTelepathAgent() as agent:
        await _custom_trunk(api, agent.url)
        placed = await place_call(gateway, tmp_path, "alice", PASSWORD, hold_ms=3000, middle=middle)
        result = await placed.tone_until_end(0.3)  # then the caller says nothing
    assert result.returncode == 0, result.stdout + result.errors
    await settled(gateway)
    detail = await record(api, placed.call_id)
    assert detail["disconnect_reason"] == "caller_hangup"  # at 3 s, not at the timeout's 1 s
    assert "a=sendonly" in result.messages  # our answer to the re-INVITE


# --- maximum call duration -----------------------------------------------------------------


async def test_max_call_duration_ends_a_live_call(
    api: Api, gateway: Gateway, tmp_path: Path, receiver: Receiver
) -> None:
    # The caller keeps talking and the agent keeps answering: only the limit ends the call.
    configure(gateway, max_call_duration_s=1.5)
    hook = await subscribe(api, receiver.url, ["call.ended"])
    async with FakeTelepathAgent() as agent:
        await _custom_trunk(api, agent.url)
        placed = await place_call(
            gateway, tmp_path, "alice", PASSWORD, hold_ms=6000, caller_hangs_up=False
        )
        result = await placed.tone_until_end(6.0)
    assert result.returncode == 0, result.stdout + result.errors  # SIPp got our BYE
    await settled(gateway)
    detail = await record(api, placed.call_id)
    assert detail["status"] == "connected"
    assert detail["disconnect_reason"] == "max_duration"
    kept = placed.call.record  # the API's times are whole seconds; the record's are not
    assert kept.answer_time is not None and kept.end_time is not None
    lasted = (kept.end_time - kept.answer_time).total_seconds()
    assert 1.4 <= lasted < 4.0, lasted  # the limit, not the caller's 6 s
    assert "BYE" in _first_lines(detail["sip_trace"])
    assert [s.get("reason") for s in agent.stops] == ["max_duration"]
    ended = (await _delivered(receiver, hook["secret"], "call.ended"))["call.ended"]
    assert ended[0]["disconnect_reason"] == "max_duration"
    # the media clock's lateness is measured for the gateway's metrics (one per wake-up)
    late = api.state.metrics.registry.get_sample_value("telepath_media_tick_lateness_seconds_count")
    assert late is not None and late >= 50  # 1.5 s of calls at one wake-up per 20 ms
    assert gateway.manager.ports.in_use == 0 and not gateway.manager.calls


async def test_the_end_time_is_when_the_call_ended_not_when_its_teardown_did(
    api: Api, gateway: Gateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller hangs up; closing the agent then takes a while (an agent that does not answer
    the close frame holds it up to 5 s): the record's end, the billed duration's, is the
    hang-up, not the end of the teardown."""
    teardown_started: list[datetime] = []
    async with FakeTelepathAgent() as agent:
        await _custom_trunk(api, agent.url)
        placed = await place_call(gateway, tmp_path, "alice", PASSWORD, hold_ms=1000)
        bridge = placed.call.bridge
        close = bridge.close

        async def slow_close(reason: BridgeReason = BridgeReason.CALLER_HANGUP) -> None:
            teardown_started.append(datetime.now(UTC))
            await asyncio.sleep(0.3)
            await close(reason)

        monkeypatch.setattr(bridge, "close", slow_close)
        result = await placed.tone_until_end(0.8)
    assert result.returncode == 0, result.stdout + result.errors
    await settled(gateway)
    assert (await record(api, placed.call_id))["disconnect_reason"] == "caller_hangup"
    end_time = placed.call.record.end_time
    assert end_time is not None and len(teardown_started) == 1
    assert end_time <= teardown_started[0]


def _end_noted_and_agent_slow_to_close(
    monkeypatch: pytest.MonkeyPatch, call: Call, then: Callable[[], None] | None = None
) -> list[int]:
    """The packets sent when the call's end is first decided (the list filled then; ``then``
    runs just after the end), and the agent's close taking a second (the window in which the
    media must stay quiet)."""
    sent_at_end: list[int] = []
    end = call.end
    close = call.bridge.close

    def end_noting_the_packets_sent(
        reason: DisconnectReason, error: str | None = None, send_bye: bool = True
    ) -> None:
        if not sent_at_end:
            sent_at_end.append(call.media.stats().packets_sent)
        end(reason, error, send_bye)
        if then is not None:
            then()

    async def slow_close(reason: BridgeReason = BridgeReason.CALLER_HANGUP) -> None:
        await asyncio.sleep(1.0)
        await close(reason)

    monkeypatch.setattr(call, "end", end_noting_the_packets_sent)
    monkeypatch.setattr(call.bridge, "close", slow_close)
    return sent_at_end


async def test_audio_cut_off_by_the_hang_up_is_neither_sent_nor_counted_while_the_agent_closes(
    api: Api, gateway: Gateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller hangs up in the middle of a long answer and closing the agent then takes a
    second: from the BYE on no RTP goes to the caller (it has left), and the agent's turn lasts
    what the caller heard up to its BYE, not that plus the second the close took (README: audio
    cut off by a hang-up is not counted)."""
    async with FakeTelepathAgent(tone_hz=AGENT_HZ, response_ms=6000) as agent:
        await _custom_trunk(api, agent.url)
        skipped_before = media_pacer.skipped_frames()
        placed = await place_call(gateway, tmp_path, "alice", PASSWORD, hold_ms=1500)
        call, phone = placed.call, placed.phone
        sent_at_bye = _end_noted_and_agent_slow_to_close(monkeypatch, call)
        phone.start_tone(placed.rtp, 1000, 1.0)
        result = await placed.sipp
        await settled(gateway)  # the teardown, with the agent's slow close
        await asyncio.sleep(0.1)  # a packet still on its way
        await phone.close()
    stalled = media_pacer.skipped_frames() - skipped_before  # skipped audio: played, not heard
    assert result.returncode == 0, result.stdout + result.errors
    detail = await record(api, placed.call_id)
    assert detail["disconnect_reason"] == "caller_hangup"
    (before_bye,) = sent_at_bye
    assert len(phone.received) <= before_bye, (len(phone.received), before_bye)
    heard_ms = FRAME_MS * sum(1 for pt, p in phone.received[:before_bye] if pt == 0 and is_loud(p))
    (answer,) = [t for t in detail["turns"] if t["speaker"] == "agent"]
    assert heard_ms >= 500, heard_ms
    assert -FRAME_MS <= answer["duration_ms"] - heard_ms <= (3 + stalled) * FRAME_MS, (
        answer,
        heard_ms,
        stalled,
    )


async def test_a_re_offer_handled_after_the_end_sends_no_more_audio(
    api: Api, gateway: Gateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the end is decided the media is held; a re-INVITE (or an ACK's answer) crossing
    our BYE ends in ``update_media`` with a sendrecv SDP, which un-held it: the queued agent
    audio went on to a caller who had left, until the agent's close was done."""
    async with FakeTelepathAgent(tone_hz=AGENT_HZ, response_ms=6000) as agent:
        await _custom_trunk(api, agent.url)
        placed = await place_call(gateway, tmp_path, "alice", PASSWORD, hold_ms=1500)
        call, phone = placed.call, placed.phone
        sent_at_end = _end_noted_and_agent_slow_to_close(
            monkeypatch,
            call,
            then=lambda: call.update_media(call.negotiated),  # sendrecv, as the re-offer's
        )
        phone.start_tone(placed.rtp, 1000, 1.0)
        result = await placed.sipp
        await settled(gateway)
        await asyncio.sleep(0.1)  # a packet still on its way
        await phone.close()
    assert result.returncode == 0, result.stdout + result.errors
    (at_end,) = sent_at_end
    assert len(phone.received) <= at_end, (len(phone.received), at_end)


# --- a trunk removed mid-call --------------------------------------------------------------


async def _two_calls_one_trunk_removed(
    api: Api,
    gateway: Gateway,
    tmp_path: Path,
    remove: Callable[[dict[str, Any]], Awaitable[None]],
) -> dict[str, Any]:
    """Calls on trunks alice and bob; ``remove`` takes alice's trunk away mid-call. Checks that
    alice's call ended at once (our BYE, ``trunk_deleted``) and bob's went on to its end;
    returns alice's call record."""
    # One fake agent per trunk: a fake checks the message order of one call at a time.
    async with FakeTelepathAgent() as agent, FakeTelepathAgent() as other:
        doomed = await create_trunk(
            api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=agent.url
        )
        await create_trunk(api, "bob", PASSWORD, ai_provider="custom", custom_endpoint=other.url)
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        kept = await place_call(gateway, tmp_path / "b", "bob", PASSWORD, hold_ms=4000)
        ended = await place_call(
            gateway, tmp_path / "a", "alice", PASSWORD, hold_ms=8000, caller_hangs_up=False
        )
        await remove(doomed)
        ended_result, kept_result = await asyncio.gather(
            ended.tone_until_end(8.0), kept.tone_until_end(4.0)
        )
    assert ended_result.returncode == 0, ended_result.stdout + ended_result.errors  # our BYE
    assert kept_result.returncode == 0, kept_result.stdout + kept_result.errors
    await settled(gateway)
    gone = await record(api, ended.call_id)
    assert gone["disconnect_reason"] == "trunk_deleted"
    assert gone["duration_seconds"] < 4  # not the caller's 8 s
    assert [s.get("reason") for s in agent.stops if s.get("reason") == "trunk_deleted"]
    assert (await record(api, kept.call_id))["disconnect_reason"] == "caller_hangup"
    assert gateway.manager.ports.in_use == 0 and not gateway.manager.calls
    assert not agent.protocol_errors and not other.protocol_errors
    return gone


@pytest.mark.parametrize("removal", ["delete", "deactivate"])
async def test_removing_a_trunk_ends_its_live_calls_and_no_others(
    api: Api, gateway: Gateway, tmp_path: Path, removal: str
) -> None:
    # Leaked credentials: the operator deletes or deactivates the trunk, and the calls placed
    # with them must stop now, not when the caller tires. Other trunks' calls go on.
    async def through_the_api(trunk: dict[str, Any]) -> None:
        path = f"/v1/trunks/{trunk['id']}"
        if removal == "delete":
            assert (await api.delete(path)).status_code == 204
        else:
            assert (await api.patch(path, {"status": "inactive"})).status_code == 200

    gone = await _two_calls_one_trunk_removed(api, gateway, tmp_path, through_the_api)
    assert "BYE" in _first_lines(gone["sip_trace"])


async def _delete_elsewhere(api: Api, trunk_id: str) -> None:
    """Delete a trunk as another process would: this process's API never hears of it."""
    engine = create_async_engine(api.state.settings.database_url)
    try:
        async with engine.begin() as conn:
            statement = text("DELETE FROM trunks WHERE id = :id")
            deleted = await conn.execute(statement, {"id": trunk_id})
            assert deleted.rowcount == 1
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    "settings_overrides", [{**GATEWAY_SETTINGS, "trunk_recheck_s": 0.5}], ids=["recheck 0.5 s"]
)
@pytest.mark.parametrize(
    "statement",
    ["DELETE FROM trunks WHERE id = :id", "UPDATE trunks SET status = 'inactive' WHERE id = :id"],
    ids=["deleted", "deactivated"],
)
async def test_a_trunk_removed_by_another_process_ends_its_live_calls(
    api: Api, gateway: Gateway, tmp_path: Path, statement: str
) -> None:
    # The API that deletes the trunk may not be the gateway's process: the gateway rechecks
    # the trunks of its live calls itself, and other trunks' calls go on.
    async def outside_the_api(trunk: dict[str, Any]) -> None:
        # A change another process makes (a second API instance, an admin script): this
        # process's API never hears of it.
        engine = create_async_engine(api.state.settings.database_url)
        try:
            async with engine.begin() as conn:
                changed = await conn.execute(text(statement), {"id": trunk["id"]})
                assert changed.rowcount == 1
        finally:
            await engine.dispose()

    await _two_calls_one_trunk_removed(api, gateway, tmp_path, outside_the_api)


@pytest.mark.parametrize(
    ("settings_overrides", "removal"),
    [
        ({**GATEWAY_SETTINGS, "trunk_recheck_s": 0}, "api"),
        ({**GATEWAY_SETTINGS, "trunk_recheck_s": 0.2}, "database"),
    ],
    ids=["through the API, recheck off", "by another process, recheck 0.2 s"],
)
@pytest.mark.parametrize("stage", ["agent_connecting", "awaiting_ack"])
async def test_removing_a_trunk_stops_its_calls_still_being_set_up(
    api: Api, gateway: Gateway, tmp_path: Path, stage: str, removal: str
) -> None:
    """A call of the trunk still being set up when the trunk is deleted used to finish its
    set-up, 200 OK, and — without the recheck (off for the API's removal) — run until the
    caller hung up, up to the 4 h limit; the recheck looked only at live calls. Now one whose
    agent is still being dialled gets 480, as an INVITE to an inactive trunk does, and its
    agent's connection is closed: no record (never answered, as after a CANCEL). One answered
    with our offer and awaiting its ACK (a delayed offer) gets BYE once the ACK is in (RFC 3261
    §15), its agent a ``stop`` and its record ``trunk_deleted``. Another trunk's call goes on."""
    slow = stage == "agent_connecting"
    async with (
        FakeTelepathAgent(agent="silent", handshake_delay_s=1.5 if slow else 0) as agent,
        FakeTelepathAgent() as other,
    ):
        doomed = await _custom_trunk_of(api, "alice", agent.url)
        await _custom_trunk_of(api, "bob", other.url)
        kept = await place_call(gateway, tmp_path, "bob", PASSWORD, hold_ms=3000)
        phone = await Phone().open()
        uac = await Uac.open("UDP", gateway.server.bound["UDP"])
        try:
            leg = CallLeg(uac, "alice")
            media_port = None if stage == "awaiting_ack" else phone.port
            await leg.challenge(media_port)
            start = len(uac.received)
            uac.send(leg.authenticated_invite(PASSWORD, media_port))
            if slow:
                await wait_until(lambda: len(agent.handshakes) == 1, what="the agent dialled")
            else:
                await leg.uac.response(200, leg.call_id, method="INVITE", after=start)
            if removal == "api":
                assert (await api.delete(f"/v1/trunks/{doomed['id']}")).status_code == 204
            else:
                await _delete_elsewhere(api, doomed["id"])
            if slow:
                final = await uac.wait_for(
                    lambda m: isinstance(m, Response) and m.status >= 200, after=start
                )
                assert isinstance(final.message, Response) and final.message.status == 480
            else:
                ok = await uac.response(200, leg.call_id, method="INVITE", after=start)
                leg.to_tag = ok.to.tag
                uac.send(leg.build("ACK", cseq_method="ACK", body=sdp_offer(phone.port)))
                bye = await uac.wait_for(
                    lambda m: isinstance(m, Request) and m.method == "BYE", after=start
                )
                assert bye.message.call_id == leg.call_id
            kept_result = await kept.tone_until_end(3.0)
            await settled(gateway)
        finally:
            await uac.close()
            await phone.close()
    assert kept_result.returncode == 0, kept_result.stdout + kept_result.errors
    assert (await record(api, kept.call_id))["disconnect_reason"] == "caller_hangup"
    calls = (await api.get("/v1/calls")).json()["calls"]
    if slow:
        assert agent.starts == []  # its connection closed before it started
        assert [c["id"] for c in calls] == [kept.call_id]
    else:
        assert [s["reason"] for s in agent.stops] == ["trunk_deleted"]
        [gone] = [c for c in calls if c["id"] != kept.call_id]
        assert gone["disconnect_reason"] == "trunk_deleted"
    assert gateway.manager.ports.in_use == 0 and not gateway.manager.calls
    assert not agent.protocol_errors and not other.protocol_errors


@pytest.mark.parametrize(
    "settings_overrides", [{**GATEWAY_SETTINGS, "trunk_recheck_s": 0.2}], ids=["recheck 0.2 s"]
)
async def test_live_calls_go_on_when_the_trunk_recheck_fails(
    api: Api,
    gateway: Gateway,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A database that cannot answer is no reason to drop calls: only a trunk known to be gone
    # or inactive ends them. Said once per outage, without a trace (not every round).
    checked = 0

    async def unreachable(trunk_ids: object) -> set[str]:
        nonlocal checked
        checked += 1
        raise OSError("database unreachable")

    async with FakeTelepathAgent() as agent:
        await _custom_trunk(api, agent.url)
        placed = await place_call(gateway, tmp_path, "alice", PASSWORD, hold_ms=2500)
        monkeypatch.setattr(gateway.manager.directory, "inactive_among", unreachable)
        result = await placed.tone_until_end(2.5)
    assert result.returncode == 0, result.stdout + result.errors
    await settled(gateway)
    assert checked >= 3  # it was asked, and failed, several times while the call was up
    assert (await record(api, placed.call_id))["disconnect_reason"] == "caller_hangup"
    said = [r for r in caplog.records if "trunks of live calls" in r.getMessage()]
    assert len(said) == 1 and said[0].exc_info is None, said
    assert "OSError" in said[0].getMessage()


# --- webhooks of a normal call -------------------------------------------------------------


async def test_webhooks_of_a_normal_call(
    api: Api, gateway: Gateway, tmp_path: Path, receiver: Receiver
) -> None:
    hook = await subscribe(api, receiver.url)
    async with FakeTelepathAgent(tone_hz=AGENT_HZ, response_ms=500) as agent:
        await _custom_trunk(api, agent.url)
        placed = await place_call(gateway, tmp_path, "alice", PASSWORD, hold_ms=1500)
        result = await placed.tone_until_end(1.4)
    assert result.returncode == 0, result.stdout + result.errors
    await settled(gateway)
    events = await _delivered(
        receiver,
        hook["secret"],
        "call.started",
        "agent.connected",
        "agent.disconnected",
        "call.ended",
    )
    assert "call.error" not in events
    for kind in ("call.started", "agent.connected", "agent.disconnected", "call.ended"):
        assert [e["call_id"] for e in events[kind]] == [placed.call_id]
    connected = events["agent.connected"][0]
    assert connected["ai_provider"] == connected["agent_type"] == "custom"
    assert connected["agent_id"] is None  # a custom agent's URL may carry credentials
    disconnected = events["agent.disconnected"][0]
    assert disconnected["reason"] == "caller_hangup" and disconnected["error_message"] is None
    ended = events["call.ended"][0]
    detail = await record(api, placed.call_id)
    assert ended["disconnect_reason"] == detail["disconnect_reason"] == "caller_hangup"
    assert ended["metrics"]["codec_used"] == "PCMU"
    assert ended["metrics"]["packet_loss_percent"] == 0
    for name in ("gateway_processing_ms", "gateway_processing_us"):
        assert ended["metrics"][name] == detail["metrics"][name], name
    assert ended["duration_seconds"] == detail["duration_seconds"]
    assert len({r.headers["telepath-event-id"] for r in receiver.requests}) == 4


async def test_a_call_s_end_and_its_events_are_one_transaction(
    api: Api, gateway: Gateway, tmp_path: Path, receiver: Receiver
) -> None:
    # The outbox is what makes "a restart loses none" true: the record's end and the events
    # that tell of it commit together, so no crash between two commits can leave a call ended
    # in the database whose call.ended was never queued (nothing would ever send it: recovery
    # closes only records left open).
    hook = await subscribe(api, receiver.url, ["call.ended", "agent.disconnected"])
    async with FakeTelepathAgent(tone_hz=AGENT_HZ, response_ms=300) as agent:
        await _custom_trunk(api, agent.url)
        with Transactions(api.state.engine) as log:
            placed = await place_call(gateway, tmp_path, "alice", PASSWORD, hold_ms=1000)
            result = await placed.tone_until_end(0.9)
            assert result.returncode == 0, result.stdout + result.errors
            await settled(gateway)
    with_events = [t for t in log.committed if any("'call.ended'" in s for s in t)]
    assert len(with_events) == 1
    (together,) = with_events
    assert any(s.startswith(("UPDATE calls", "INSERT INTO calls")) for s in together)
    assert any("'agent.disconnected'" in s for s in together)
    events = await _delivered(receiver, hook["secret"], "call.ended", "agent.disconnected")
    assert [e["call_id"] for e in events["call.ended"]] == [placed.call_id]


# --- the same endings through the provider bridges --------------------------------------------


@pytest.mark.parametrize(
    ("provider", "failure"),
    [
        ("openai", "drop"),
        ("openai", "error"),
        ("openai", "failed_response"),
        ("openai", "close-normal"),  # 1000 mid-session: the record says so (it said nothing)
        ("elevenlabs", "error"),
        ("elevenlabs", "close"),
    ],
)
async def test_provider_bridge_failure_mid_call(
    api: Api, gateway: Gateway, tmp_path: Path, receiver: Receiver, provider: str, failure: str
) -> None:
    hook = await subscribe(api, receiver.url)
    fake: FakeOpenAIRealtime | FakeElevenLabs = (
        FakeOpenAIRealtime(agent="silent", after_setup=failure)
        if provider == "openai"
        else FakeElevenLabs(agent="silent", after_setup=failure)
    )
    async with fake:
        await provider_trunk(api, gateway, fake, PASSWORD)
        placed = await place_call(
            gateway, tmp_path, "alice", PASSWORD, hold_ms=2000, caller_hangs_up=False
        )
        result = await placed.tone_until_end(1.0)
    assert result.returncode == 0, result.stdout + result.errors
    await settled(gateway)
    detail = await record(api, placed.call_id)
    assert detail["disconnect_reason"] == "ai_provider_error"
    assert detail["error_message"]
    # RFC 3261 §15: the callee sends BYE only once the caller's ACK arrived
    methods = _first_lines(detail["sip_trace"])
    assert methods.index("ACK", methods.index("SIP/2.0 200")) < methods.index("BYE")
    events = await _delivered(receiver, hook["secret"], "call.error", "call.ended")
    assert events["call.ended"][0]["disconnect_reason"] == "ai_provider_error"


@pytest.mark.parametrize("provider", ["openai", "elevenlabs"])
async def test_provider_end_call_hangs_up_after_playout(
    api: Api, gateway: Gateway, tmp_path: Path, provider: str
) -> None:
    fake: FakeOpenAIRealtime | FakeElevenLabs = (
        FakeOpenAIRealtime(tone_hz=AGENT_HZ, response_ms=1000, end_call=True)
        if provider == "openai"
        else FakeElevenLabs(tone_hz=AGENT_HZ, response_ms=1000, end_call=True)
    )
    async with fake:
        await provider_trunk(api, gateway, fake, PASSWORD)
        skipped = media_pacer.skipped_frames()
        placed = await place_call(
            gateway, tmp_path, "alice", PASSWORD, hold_ms=3000, caller_hangs_up=False
        )
        result = await placed.tone_until_end(3.0)
    assert result.returncode == 0, result.stdout + result.errors
    assert fake.protocol_errors == []
    heard_all_but_stalls(placed.phone, skipped, 1000 // FRAME_MS)  # the goodbye was heard
    await settled(gateway)
    detail = await record(api, placed.call_id)
    assert detail["disconnect_reason"] == "agent_hangup"


@pytest.mark.parametrize("provider", ["openai", "elevenlabs"])
async def test_the_provider_s_session_limit_is_recorded_as_session_limit(
    api: Api, gateway: Gateway, tmp_path: Path, receiver: Receiver, provider: str
) -> None:
    """The provider ending the session at its maximum length — OpenAI's ``session_expired``,
    ElevenLabs' ``max_duration_exceeded`` after the agent's goodbye — ends the call as
    ``session_limit`` (the README's reason), not ``agent_hangup`` or ``ai_provider_error``: in
    the record, ``call.ended``, ``agent.disconnected`` and the calls' metrics outcome, after
    the goodbye played. A limit is no failure: no ``call.error`` and no error message."""
    hook = await subscribe(api, receiver.url)
    outcome = 'telepath_calls_total{outcome="session_limit"}'
    before = _sample((await api.client.get("/metrics")).text, outcome)
    fake: FakeOpenAIRealtime | FakeElevenLabs = (
        FakeOpenAIRealtime(agent="silent", after_setup="session_expired")
        if provider == "openai"
        else FakeElevenLabs(tone_hz=AGENT_HZ, response_ms=200, max_duration=True, goodbye_ms=800)
    )
    async with fake:
        await provider_trunk(api, gateway, fake, PASSWORD)
        skipped = media_pacer.skipped_frames()
        placed = await place_call(
            gateway, tmp_path, "alice", PASSWORD, hold_ms=3000, caller_hangs_up=False
        )
        result = await placed.tone_until_end(3.0)  # our BYE, answered
    assert result.returncode == 0, result.stdout + result.errors
    assert fake.protocol_errors == []
    if provider == "elevenlabs":  # the first message and the whole goodbye were heard
        heard_all_but_stalls(placed.phone, skipped, 1000 // FRAME_MS)
    await settled(gateway)
    detail = await record(api, placed.call_id)
    assert (detail["status"], detail["disconnect_reason"]) == ("connected", "session_limit")
    assert detail["error_message"] is None
    events = await _delivered(receiver, hook["secret"], "agent.disconnected", "call.ended")
    assert events["call.ended"][0]["disconnect_reason"] == "session_limit"
    assert events["agent.disconnected"][0]["reason"] == "session_limit"
    assert "call.error" not in events
    after = _sample((await api.client.get("/metrics")).text, outcome)
    assert after - before == 1


# --- DTMF by SIP INFO, CANCEL while the agent connects ----------------------------------------


async def test_sip_info_digit_reaches_the_agent(api: Api, gateway: Gateway, tmp_path: Path) -> None:
    """Each INFO is answered 200; a key reaches the agent as the key (``signal=a`` as ``A``,
    which the agent's ``dtmf`` takes; as ``a`` it was dropped), a flash (16) is no key and is
    not passed on (it went unanswered: an IndexError)."""
    infos = [
        IN_DIALOG
        % {
            "user": "alice",
            "method": "INFO",
            "cseq": cseq,
            "extra": "Content-Type: application/dtmf-relay",
            "body": f"\n      {signal}\n      Duration=160",
        }
        + '  <recv response="200"/>\n'
        for cseq, signal in [(5, "Signal=7"), (6, "Signal=16"), (7, "signal=a")]
    ]
    middle = '  <pause milliseconds="500"/>\n' + "".join(infos)
    async with FakeTelepathAgent(agent="silent") as agent:
        await _custom_trunk(api, agent.url)
        placed = await place_call(gateway, tmp_path, "alice", PASSWORD, hold_ms=1000, middle=middle)
        result = await placed.tone_until_end(2.0)
        assert result.returncode == 0, result.stdout + result.errors
        await settled(gateway)
    assert agent.digits == ["7", "A"]
    assert agent.protocol_errors == []


CANCEL = """  <send>
    <![CDATA[
      CANCEL sip:%(user)s@[remote_ip]:[remote_port] SIP/2.0
      [last_Via:]
      From: "Caller" <sip:+15551230000@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:%(user)s@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 2 CANCEL
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
"""


ROUTE_SET = ' rrs="true"'


def _cancelled_call(user: str, media_port: int, *, by_bye: bool = False) -> str:
    """An authenticated call given up after the 180: with CANCEL, or (``by_bye``) with BYE on
    the 180's early dialog; the caller then ACKs the INVITE's 487."""
    common = {
        "user": user,
        "media_port": media_port,
        "formats": "0 101",
        "rtpmaps": rtpmaps("0 101"),
    }
    if by_bye:  # the route set of the 180 kept for the BYE
        give_up = IN_DIALOG % {"user": user, "method": "BYE", "cseq": 3, "extra": "", "body": ""}
    else:
        give_up = CANCEL % {"user": user}
    return "".join(
        [
            HEADER,
            INVITE % {**common, "txn": ' start_txn="inv1"', "cseq": 1, "auth": ""},
            '  <recv response="100" optional="true" response_txn="inv1"/>\n',
            '  <recv response="401" auth="true" response_txn="inv1"/>\n',
            ACK_TXN % {**common, "txn": "inv1", "cseq": 1},
            INVITE
            % {**common, "txn": ' start_txn="inv2"', "cseq": 2, "auth": "\n      [authentication]"},
            '  <recv response="100" optional="true" response_txn="inv2"/>\n',
            f'  <recv response="180"{ROUTE_SET if by_bye else ""} response_txn="inv2"/>\n',
            '  <pause milliseconds="300"/>\n',
            give_up,
            '  <recv response="200"/>\n',
            '  <recv response="487" response_txn="inv2"/>\n',
            ACK_TXN % {**common, "txn": "inv2", "cseq": 2},
            "</scenario>\n",
        ]
    )


async def _place_and_cancel(gateway: Gateway, tmp_path: Path, phone: Phone) -> SippResult:
    """SIPp calls alice from ``phone``'s port and cancels after the 180 (then ACKs the 487)."""
    return await run_sipp(
        _cancelled_call("alice", phone.port),
        tmp_path,
        gateway.server.bound["UDP"],
        user="alice",
        password=PASSWORD,
    )


async def _set_up_and_cancel(
    api: Api, gateway: Gateway, tmp_path: Path, agent_url: str
) -> tuple[SippResult, Phone]:
    """A call to a custom trunk on ``agent_url`` cancelled while it sets up, the gateway settled
    after it: the dialler's result and the caller's phone (closed)."""
    await _custom_trunk(api, agent_url)
    phone = await Phone().open()
    result = await _place_and_cancel(gateway, tmp_path, phone)
    await phone.close()
    await settled(gateway)
    return result, phone


async def test_cancel_while_the_agent_connects(
    api: Api, gateway: Gateway, tmp_path: Path, receiver: Receiver
) -> None:
    hook = await subscribe(api, receiver.url)
    async with FakeTelepathAgent(handshake_delay_s=5) as agent:
        result, phone = await _set_up_and_cancel(api, gateway, tmp_path, agent.url)
    assert result.returncode == 0, result.stdout + result.errors
    assert len(agent.handshakes) == 1  # the agent was being dialled when the caller gave up
    assert gateway.manager.ports.in_use == 0
    assert phone.received == []
    assert (await api.get("/v1/calls")).json()["calls"] == []
    assert receiver.requests == [] and hook["id"]


async def test_a_cancel_as_the_agent_s_connect_fails_is_a_cancel(
    api: Api, gateway: Gateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller's CANCEL and the agent's connection failing in the same turn of the loop:
    both done when the set-up looks. It read the failure first — a 480 after the 487 (dropped),
    ``rejected_agent_unreachable`` and a failed ``connection_failed`` record for a call the
    caller had given up, where a CANCEL leaves no record. The CANCEL is read first now."""
    refused: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def failing_with_the_cancel(self: TelepathAgentBridge, *args: Any) -> None:
        await refused  # fails as the CANCEL arrives

    cancel = manager_module._Setup.cancel

    def cancel_and_fail(setup: Any) -> None:
        cancel(setup)
        if not refused.done():
            refused.set_exception(
                BridgeError("refused", reason=BridgeReason.CONNECTION_FAILED, retryable=True)
            )

    monkeypatch.setattr(TelepathAgentBridge, "start", failing_with_the_cancel)
    monkeypatch.setattr(manager_module._Setup, "cancel", cancel_and_fail)
    async with FakeTelepathAgent() as agent:
        result, phone = await _set_up_and_cancel(api, gateway, tmp_path, agent.url)
    assert result.returncode == 0, result.stdout + result.errors
    assert refused.done()
    assert gateway.manager.counters.get("cancelled_during_setup") == 1
    assert "rejected_agent_unreachable" not in gateway.manager.counters
    assert gateway.manager.ports.in_use == 0
    assert (await api.get("/v1/calls")).json()["calls"] == []


async def test_a_bye_on_the_early_dialog_while_the_agent_connects_ends_the_set_up(
    api: Api, gateway: Gateway, tmp_path: Path, receiver: Receiver
) -> None:
    """RFC 3261 §15: the caller may end the early dialog of our 180 with BYE. It gets 200,
    the INVITE 487 (§15.1.2), and the set-up ends as a CANCEL's does: the agent's connection
    closed, the port let go, no call. The BYE used to get 481, and the call was answered."""
    hook = await subscribe(api, receiver.url)
    async with FakeTelepathAgent(handshake_delay_s=5) as agent:
        await _custom_trunk(api, agent.url)
        phone = await Phone().open()
        result = await run_sipp(
            _cancelled_call("alice", phone.port, by_bye=True),
            tmp_path,
            gateway.server.bound["UDP"],
            user="alice",
            password=PASSWORD,
        )
        await phone.close()
        await settled(gateway)
    assert result.returncode == 0, result.stdout + result.errors
    assert len(agent.handshakes) == 1  # the agent was being dialled when the caller gave up
    assert gateway.manager.counters.get("cancelled_during_setup") == 1
    assert gateway.manager.ports.in_use == 0 and gateway.manager.active_calls == 0
    assert gateway.server.core.dialog_count == 0
    assert phone.received == []
    assert (await api.get("/v1/calls")).json()["calls"] == []
    assert receiver.requests == [] and hook["id"]


async def test_cancel_while_the_call_s_ports_open_is_the_call_s_end(
    api: Api, gateway: Gateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CANCEL that comes once the agent is connected, while the call's media opens: the 487
    it got is the INVITE's answer — no 200 after it (§17.2.1; one went, and a call came up
    that the caller had given up), the agent and ports let go."""
    opening = MediaSession.open.__func__  # type: ignore[attr-defined]
    entered: list[bool] = []

    async def after_the_cancel(cls: type[MediaSession], *args: Any, **kwargs: Any) -> Any:
        entered.append(True)
        await wait_until(lambda: gateway.server.core.counters["request_CANCEL"] >= 1)
        return await opening(cls, *args, **kwargs)

    monkeypatch.setattr(MediaSession, "open", classmethod(after_the_cancel))
    async with FakeTelepathAgent(agent="silent") as agent:
        await _custom_trunk(api, agent.url)
        phone = await Phone().open()
        result = await _place_and_cancel(gateway, tmp_path, phone)
        await settled(gateway)
        await phone.close()
    assert result.returncode == 0, result.stdout + result.errors
    assert entered == [True] and len(agent.handshakes) == 1  # connected, then cancelled
    assert gateway.manager.counters.get("cancelled_during_setup") == 1
    assert gateway.server.core.dialog_count == 0
    assert gateway.manager.ports.in_use == 0 and gateway.manager.active_calls == 0
    assert phone.received == []
    blocks = result.messages.split("-----------------------------------------------")
    answers = [b for b in blocks if "CSeq: 2 INVITE" in b and "SIP/2.0 " in b]
    assert any("SIP/2.0 487" in b for b in answers)
    assert not any("SIP/2.0 200" in b for b in answers)  # no 200 to the cancelled INVITE


async def test_a_call_id_that_is_not_utf8_reaches_the_agent_as_text(
    api: Api, gateway: Gateway
) -> None:
    """A Call-ID with a byte that is not UTF-8 (RFC 3261 §25.1 allows any octet in a word):
    the agent gets it as valid text, the byte as U+FFFD — its JSON cannot carry the raw byte,
    and the call used to fail there (500) after the agent's socket had opened."""
    async with FakeTelepathAgent(agent="silent") as agent:
        await _custom_trunk(api, agent.url)
        phone = await Phone().open()
        try:
            sip_port = gateway.server.bound["UDP"][1]
            leg = await connected_call(sip_port, "alice", PASSWORD, "a\udcffb@x", phone.port)
            await wait_until(lambda: agent.start_message is not None, what="the agent's start")
            await leg.bye()
            await leg.uac.close()
        finally:
            await phone.close()
        await settled(gateway)
    assert agent.start_message is not None
    assert agent.start_message.call.sip_call_id == "a\ufffdb@x"
    assert agent.protocol_errors == []
    [call] = (await api.get("/v1/calls")).json()["calls"]
    assert (call["status"], call["disconnect_reason"]) == ("connected", "caller_hangup")


@pytest.mark.parametrize("where", ["agent_start", "media_open"])
async def test_a_setup_that_fails_unexpectedly_lets_the_agent_go(
    api: Api, gateway: Gateway, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """A bug in a set-up once the agent's socket is open — in the bridge's start after it
    connected (its ``start`` message cannot be serialized), or opening the call's media —
    closes the agent's connection (it used to stay open for ever, pinged), answers the INVITE
    500 (RFC 3261 §21.5.1) and leaves a ``failed`` record, reason ``unknown``."""

    def unserializable(self: ev.Start) -> str:
        raise ValueError("simulated serialization failure")

    async def no_media(cls: type[MediaSession], *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("simulated bug")

    if where == "agent_start":
        monkeypatch.setattr(ev.Start, "to_json", unserializable)
    else:
        monkeypatch.setattr(MediaSession, "open", classmethod(no_media))
    async with FakeTelepathAgent(agent="silent") as agent:
        await _custom_trunk(api, agent.url)
        phone = await Phone().open()
        uac = await Uac.open("UDP", gateway.server.bound["UDP"])
        try:
            leg = CallLeg(uac, "alice")
            await leg.challenge(phone.port)
            start = len(uac.received)
            uac.send(leg.authenticated_invite(PASSWORD, phone.port))
            await uac.response(500, leg.call_id, method="INVITE", after=start)
            await wait_until(agent.sessions_ended.is_set, what="the agent's connection to close")
            await settled(gateway)
        finally:
            await uac.close()
            await phone.close()
    assert len(agent.handshakes) == 1
    assert agent.protocol_errors == []  # no stop without a start
    assert gateway.manager.ports.in_use == 0
    [call] = (await api.get("/v1/calls")).json()["calls"]
    detail = await record(api, call["id"])
    assert (detail["status"], detail["disconnect_reason"]) == ("failed", "unknown")
    assert detail["error_message"] == "internal error"
    assert detail["answer_time"] is None
    assert "SIP/2.0 500" in detail["sip_trace"]


# --- an internal failure ---------------------------------------------------------------------


class RealTimeAgent(FakeTelepathAgent):
    """Speaks in 20 ms messages at real-time pace for two seconds — from a task of its own, so
    the connection goes on reading what the gateway sends meanwhile, as a provider does (a
    handler that stopped reading for two seconds left the gateway's close frame unread behind
    a full queue, and both sides waited out their close timeouts)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.speaking: set[asyncio.Task[None]] = set()

    async def _greet(self, ws: ServerConnection) -> bool:
        task = asyncio.get_running_loop().create_task(self._speak(ws))
        self.speaking.add(task)
        task.add_done_callback(self.speaking.discard)
        return False

    async def _speak(self, ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            for n in range(100):
                await self.send_audio(ws, sine_g711(AGENT_HZ, 20, phase=n * 160))
                await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    "part", ["_media_pump", "_agent_pump", "_on_caller_audio", "_on_agent_audio"]
)
async def test_a_failing_part_of_a_call_ends_the_call_cleanly(
    api: Api, gateway: Gateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, part: str
) -> None:
    # A bug in one of a call's tasks, or in the audio handlers the sockets call, must not leave
    # a half-dead call behind (no media timeout or agent hang-up would ever be acted on, or the
    # event loop closes the socket under it): the call ends with BYE and a record.
    calls = 0
    original = getattr(Call, part)

    def broken(self: Call, *args: object) -> None:
        nonlocal calls
        calls += 1
        if calls > 25:  # half a second into the audio: by then it comes through the sinks
            raise RuntimeError("simulated bug")
        original(self, *args)

    async def broken_task(self: Call) -> None:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(Call, part, broken_task if part.endswith("pump") else broken)
    async with RealTimeAgent() as agent:
        await _custom_trunk(api, agent.url)
        placed = await place_call(
            gateway, tmp_path, "alice", PASSWORD, hold_ms=5000, caller_hangs_up=False
        )
        result = await placed.tone_until_end(1.0)  # our BYE, answered
    assert result.returncode == 0, result.stdout + result.errors
    await settled(gateway)
    detail = await record(api, placed.call_id)
    assert detail["status"] == "disconnected"
    assert detail["disconnect_reason"] == "unknown"
    assert detail["error_message"] == "internal error"
    assert gateway.manager.ports.in_use == 0


async def test_a_media_close_that_raises_still_ends_the_call_and_writes_its_record(
    api: Api, gateway: Gateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The media's close raising (uvloop's ValueError from a send to an address of the other
    # family was one way) stopped the call's teardown there: the call stayed in the manager
    # for good and its record was never closed. Its end must go on whatever the close did.
    close = MediaSession.close

    async def raising_close(self: MediaSession) -> Any:
        await close(self)  # the ports go back; then it raises, as a bug would
        raise ValueError("socket family mismatch or a DNS lookup is required")

    monkeypatch.setattr(MediaSession, "close", raising_close)
    async with RealTimeAgent() as agent:
        await _custom_trunk(api, agent.url)
        placed = await place_call(gateway, tmp_path, "alice", PASSWORD, hold_ms=500)
        result = await placed.tone_until_end(1.0)
    assert result.returncode == 0, result.stdout + result.errors
    await settled(gateway)
    detail = await record(api, placed.call_id)
    assert detail["status"] == "connected"
    assert detail["disconnect_reason"] == "caller_hangup"
    assert gateway.manager.ports.in_use == 0


# --- a lossy, jittery caller ------------------------------------------------------------------


def _rfc3550_jitter_ms(sent: list[tuple[int, float]], clock_rate: int = 8000) -> float:
    """The call's mean of the interarrival jitter estimate (RFC 3550 §6.4.1, §A.8) of packets
    that arrive as they left: the record's ``jitter_ms`` (telepath-product.md §1.7, "Average RTP
    jitter"), the estimate averaged over every packet after the first — not its last value, which
    the estimate's ramp from 0 puts ~20 % above the mean over these 90 packets."""
    jitter = 0.0
    samples: list[float] = []
    previous: float | None = None
    for timestamp, at in sent:
        transit = at * clock_rate - timestamp
        if previous is not None:
            jitter += (abs(transit - previous) - jitter) / 16
            samples.append(jitter)
        previous = transit
    return sum(samples) / len(samples) * 1000 / clock_rate


async def test_loss_and_jitter_of_the_callers_line_reach_the_record_webhook_and_metrics(
    api: Api, gateway: Gateway, tmp_path: Path, receiver: Receiver
) -> None:
    """One frame in ten never arrives and every odd one is 6 ms late: the record, the
    ``call.ended`` webhook and ``/metrics`` say 10 % loss and the line's RFC 3550 jitter, and
    the agent still hears one frame per 20 ms (the lost ones concealed, no gap)."""
    hook = await subscribe(api, receiver.url, ["call.ended"])
    before = (await api.client.get("/metrics")).text
    async with FakeTelepathAgent(tone_hz=AGENT_HZ, response_ms=500) as agent:
        await _custom_trunk(api, agent.url)
        placed = await place_call(gateway, tmp_path, "alice", PASSWORD, hold_ms=3000)
        placed.phone.start_tone(placed.rtp, 1000, 2.0, drop_every=10, odd_late_ms=6)
        result = await placed.sipp
        await placed.phone.close()
    assert result.returncode == 0, result.stdout + result.errors
    await settled(gateway)
    sent = placed.phone.sent
    assert len(sent) == 90  # 100 frames, 10 of them lost on the way
    expected_jitter = _rfc3550_jitter_ms(sent)
    assert expected_jitter > 3  # the line really was jittery

    detail = await record(api, placed.call_id)
    metrics = detail["metrics"]
    assert metrics["packet_loss_percent"] == 10.0
    assert metrics["jitter_us"] / 1000 == pytest.approx(expected_jitter, abs=1.0)
    assert metrics["jitter_ms"] == (metrics["jitter_us"] + 500) // 1000
    ended = (await _delivered(receiver, hook["secret"], "call.ended"))["call.ended"][0]
    assert ended["metrics"]["packet_loss_percent"] == 10.0
    assert ended["metrics"]["jitter_ms"] == metrics["jitter_ms"]
    assert ended["metrics"]["jitter_us"] == metrics["jitter_us"]
    assert ended["media_warnings"] == []

    after = (await api.client.get("/metrics")).text
    for name, value in (
        ("telepath_rtp_packet_loss_percent", 10.0),
        ("telepath_rtp_jitter_ms", metrics["jitter_us"] / 1000),
    ):
        count = _sample(after, f"{name}_count") - _sample(before, f"{name}_count")
        total = _sample(after, f"{name}_sum") - _sample(before, f"{name}_sum")
        assert count == 1, name
        assert total == pytest.approx(value, abs=0.01), name

    audio = [m for m in agent.received if m["type"] == "audio"]
    assert [m["seq"] for m in audio] == list(range(1, len(audio) + 1))
    assert [m["timestamp_ms"] for m in audio] == [FRAME_MS * i for i in range(len(audio))]
    assert len(audio) >= 100  # the ten lost frames were concealed, not skipped

    media = detail["media"]  # the media report: counted, addressed, nothing to warn about
    assert (media["packets_received"], media["packets_lost"]) == (90, 10)
    assert media["concealed_frames"] >= 10 and media["packets_sent"] > 0
    assert media["remote_sdp_address"] == f"127.0.0.1:{placed.phone.port}"
    assert media["remote_rtp_address"] == media["remote_sdp_address"]
    assert media["local_address"].startswith("127.0.0.1:") and media["srtp"] is None
    assert media["warnings"] == [] and media["send_errors"] == 0


async def test_a_caller_whose_rtp_never_arrives_is_reported_as_no_inbound_rtp(
    api: Api, gateway: Gateway, tmp_path: Path, receiver: Receiver
) -> None:
    """One-way audio, the commonest trunk failure: the call is answered and the agent speaks,
    but not one RTP packet of the caller's arrives (here it sends none). The record says so,
    and where our audio went; the ``call.ended`` webhook names the warning, so a user's system
    can alert on it without fetching every record."""
    hook = await subscribe(api, receiver.url, ["call.ended"])
    warned = 'telepath_call_media_warnings_total{code="no_inbound_rtp"}'
    before = _sample((await api.client.get("/metrics")).text, warned)
    async with FakeTelepathAgent(tone_hz=AGENT_HZ, response_ms=500) as agent:
        await _custom_trunk(api, agent.url)
        placed = await place_call(gateway, tmp_path, "alice", PASSWORD, hold_ms=1500)
        result = await placed.sipp
        await placed.phone.close()
    assert result.returncode == 0, result.stdout + result.errors
    await settled(gateway)
    detail = await record(api, placed.call_id)
    media = detail["media"]
    assert media["packets_received"] == 0 and media["packets_sent"] > 0
    # nothing received, nothing measured: not a perfect line (0 % loss, 0 ms jitter)
    assert detail["metrics"]["packet_loss_percent"] is None
    assert detail["metrics"]["jitter_ms"] is None
    assert detail["metrics"]["gateway_processing_ms"] is not None  # we did send
    assert media["remote_rtp_address"] is None
    assert media["remote_sdp_address"] == f"127.0.0.1:{placed.phone.port}"
    (warning,) = media["warnings"]
    assert warning["code"] == "no_inbound_rtp"
    assert media["local_address"] in warning["message"]
    assert placed.phone.loud_frames() > 0  # our side was fine: the agent's tone got through
    ended = (await _delivered(receiver, hook["secret"], "call.ended"))["call.ended"][0]
    assert ended["media_warnings"] == ["no_inbound_rtp"]
    assert ended["metrics"]["packet_loss_percent"] is None and ended["metrics"]["jitter_ms"] is None
    # and Prometheus counts it, for an alert on the rate of one-way-audio calls
    assert _sample((await api.client.get("/metrics")).text, warned) - before == 1


def _sample(exposition: str, name: str) -> float:
    """One sample (its name with any labels, as exposed) of a Prometheus text exposition (0
    when absent)."""
    found = re.search(rf"^{re.escape(name)} (\S+)$", exposition, re.M)
    return float(found.group(1)) if found else 0.0


# --- a slow database ----------------------------------------------------------------------------


def _hold_start_writes(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Make the call record's first write wait until the returned event is set (a database
    that stalls: a lock held, a failover under way)."""
    recorder = gateway.manager.recorder
    assert isinstance(recorder, DbCallRecorder)
    monkeypatch.setattr(recorder, "_timeout_s", 60.0)  # no giving up on the write meanwhile
    original = recorder.call_started
    release = asyncio.Event()

    async def stalled(record: Any) -> None:
        await release.wait()
        await original(record)

    monkeypatch.setattr(recorder, "call_started", stalled)
    return release


async def test_audio_flows_while_the_records_first_write_is_stalled(
    api: Api, gateway: Gateway, tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call's audio does not wait for the database: with the record's first write held, the
    caller's tone reaches the agent and the agent's greeting the caller; once the write goes
    through, the record and the webhooks are complete."""
    hook = await subscribe(api, receiver.url, ["call.started", "call.ended"])
    release = _hold_start_writes(gateway, monkeypatch)
    async with FakeTelepathAgent(tone_hz=AGENT_HZ, response_ms=500) as agent:
        await _custom_trunk(api, agent.url)
        placed = await place_call(gateway, tmp_path, "alice", PASSWORD, hold_ms=4000)
        placed.phone.start_tone(placed.rtp, 1000, 3.5)
        await wait_until(
            lambda: len(agent.caller_audio) >= 4000 and placed.phone.loud_frames() >= 10,
            within_s=3.5,
            what="audio both ways while the record's first write is held",
        )
        assert not release.is_set()
        release.set()
        await hung_up(api, gateway, placed)
    events = await _delivered(receiver, hook["secret"], "call.started", "call.ended")
    assert [e["call_id"] for e in events["call.started"]] == [placed.call_id]


async def test_a_call_that_ends_while_its_first_write_is_stalled_keeps_the_order(
    api: Api, gateway: Gateway, tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller hangs up before the record's first write went through: the end is written
    (and ``call.ended`` sent) after the start, never overwritten by it, never before it."""
    hook = await subscribe(api, receiver.url, ["call.started", "call.ended"])
    release = _hold_start_writes(gateway, monkeypatch)
    async with FakeTelepathAgent(tone_hz=AGENT_HZ, response_ms=500) as agent:
        await _custom_trunk(api, agent.url)
        placed = await place_call(gateway, tmp_path, "alice", PASSWORD, hold_ms=800)
        result = await placed.tone_until_end(0.6)
        await wait_until(lambda: not gateway.manager.calls, what="the call's end")
        assert not release.is_set()
        release.set()
    assert result.returncode == 0, result.stdout + result.errors
    await settled(gateway)
    detail = await record(api, placed.call_id)
    assert (detail["status"], detail["disconnect_reason"]) == ("connected", "caller_hangup")
    assert detail["end_time"] is not None
    await _delivered(receiver, hook["secret"], "call.started", "call.ended")
    order = [json.loads(r.body) for r in receiver.requests]
    assert [e["type"] for e in sorted(order, key=lambda e: str(e["created_at"]))] == [
        "call.started",
        "call.ended",
    ]


async def test_a_key_press_during_the_teardown_starts_no_send_to_the_agent(
    api: Api, gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A digit by SIP INFO while the call is ending — our BYE sent, its answer awaited, the
    agent let go: its send to the agent used to start a task after the teardown had cancelled
    and awaited the call's own, a task nothing cancelled, which ran after the agent's ``stop``.
    Once the teardown began no new one starts; a digit before it still reaches the agent."""
    closing: set[int] = set()
    after_close: list[str] = []
    close, send_dtmf = TelepathAgentBridge.close, TelepathAgentBridge.send_dtmf

    async def noting_close(
        self: TelepathAgentBridge, reason: BridgeReason = BridgeReason.CALLER_HANGUP
    ) -> None:
        closing.add(id(self))
        await close(self, reason)

    async def noting_dtmf(self: TelepathAgentBridge, digit: str) -> None:
        if id(self) in closing:
            after_close.append(digit)
        await send_dtmf(self, digit)

    monkeypatch.setattr(TelepathAgentBridge, "close", noting_close)
    monkeypatch.setattr(TelepathAgentBridge, "send_dtmf", noting_dtmf)

    async def press(leg: CallLeg, digit: str) -> None:
        leg.cseq += 1
        start = len(leg.uac.received)
        body = f"Signal={digit}\r\nDuration=160\r\n".encode()
        headers = [("Content-Type", "application/dtmf-relay")]
        leg.uac.send(leg.build("INFO", headers=headers, body=body))
        await leg.uac.response(200, leg.call_id, method="INFO", after=start)

    async with FakeTelepathAgent(agent="silent") as agent:
        await _custom_trunk(api, agent.url)
        phone = await Phone().open()
        sip_port = gateway.server.bound["UDP"][1]
        leg = await connected_call(sip_port, "alice", PASSWORD, "keys@teardown", phone.port)
        try:
            await press(leg, "1")
            await wait_until(lambda: agent.digits == ["1"], what="the first digit")
            [call] = gateway.manager.calls.values()
            start = len(leg.uac.received)
            call.end(DisconnectReason.MAX_DURATION, "ended by the test")
            await leg.uac.wait_for(
                lambda m: isinstance(m, Request) and m.method == "BYE", after=start
            )  # left unanswered: the call waits for its answer
            await wait_until(lambda: bool(closing), what="the agent's close")
            await press(leg, "2")
            await settled(gateway)
        finally:
            await leg.uac.close()
            await phone.close()
    assert after_close == []
    assert agent.digits == ["1"]
    assert [s["reason"] for s in agent.stops] == ["max_duration"]
