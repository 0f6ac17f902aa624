"""Transfer end to end: the agent asks for a transfer, we send REFER (RFC 3515) to the carrier
(SIPp), the carrier accepts (202) and reports success in a NOTIFY sipfrag; the agent gets the
result, the call ends with BYE and the record says ``transferred``. A refused REFER is reported
to the agent as a failure and the call goes on."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection

from telepath.bridges.custom import events as ev
from telepath.calls import call as call_module
from telepath.cli.gateway import Gateway
from telepath.testing.fake_custom import FakeTelepathAgent
from telepath.testing.fake_openai import FakeOpenAIRealtime
from tests.integration.conftest import Api
from tests.interop.calls.conftest import create_trunk, provider_trunk, record
from tests.interop.calls.harness import ANSWER_REQUEST, place_call, settled, wait_until

pytestmark = pytest.mark.interop

TARGET = "sip:+15550001111@carrier.example"

ANSWER_REFER = '  <recv request="REFER" crlf="true"/>\n' + ANSWER_REQUEST

_NOTIFY = """  <send retrans="500">
    <![CDATA[
      NOTIFY [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: "Caller" <sip:+15551230000@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:%(user)s@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: %(cseq)d NOTIFY
      Max-Forwards: 70
      Event: refer
      Subscription-State: %(state)s
      Content-Type: message/sipfrag
      Content-Length: [len]

      %(frag)s
    ]]>
  </send>
  <recv response="200"/>
"""


def notify(
    user: str,
    *,
    cseq: int = 5,
    state: str = "terminated;reason=noresource",
    frag: str = "SIP/2.0 200 OK",
) -> str:
    """The carrier's NOTIFY of our REFER's subscription (RFC 3515 §2.4.4), a sipfrag body."""
    return _NOTIFY % {"user": user, "cseq": cseq, "state": state, "frag": frag}


async def test_refer_accepted_ends_the_call_as_transferred(
    api: Api, gateway: Gateway, tmp_path: Path
) -> None:
    async with FakeTelepathAgent(agent="tone", response_ms=400, transfer_to=TARGET) as agent:
        await create_trunk(
            api, "xfer", "xfer-pass-1", ai_provider="custom", custom_endpoint=agent.url
        )
        middle = ANSWER_REFER % {"status": "202 Accepted"} + notify("xfer")
        placed = await place_call(
            gateway, tmp_path, "xfer", "xfer-pass-1", caller_hangs_up=False, middle=middle
        )
        result = await placed.sipp
        await placed.phone.close()
        assert result.returncode == 0, result.stdout + result.errors
        await wait_until(lambda: agent.transfer_results, what="the transfer result")
        await settled(gateway)
    assert agent.transfer_results[0]["request_id"] == "xfer-1"
    assert agent.transfer_results[0]["ok"] is True
    refer = [m for m in result.messages.split("\n\n") if m.lstrip().startswith("REFER ")]
    assert refer and f"Refer-To: <{TARGET}>" in refer[0]
    rec = await record(api, placed.call_id)
    assert rec["disconnect_reason"] == "transferred"
    assert "REFER " in rec["sip_trace"] and "NOTIFY " in rec["sip_trace"]


async def test_the_agents_words_before_a_transfer_are_heard_before_the_refer(
    api: Api, gateway: Gateway, tmp_path: Path
) -> None:
    """OpenAI Realtime calls ``transfer_call`` at the end of its response while seconds of
    that response's audio (sent faster than real time) still wait to be played: the REFER went
    out at once, the carrier took the caller and the announcement was cut. The REFER now waits
    for the queued audio to play, as an agent's hang-up does."""
    async with FakeOpenAIRealtime(agent="tone", response_ms=3000, transfer_to=TARGET) as fake:
        await provider_trunk(api, gateway, fake, "xfer-pass-6")
        middle = ANSWER_REFER % {"status": "202 Accepted"} + notify("alice")
        placed = await place_call(
            gateway, tmp_path, "alice", "xfer-pass-6", caller_hangs_up=False, middle=middle
        )
        result = await placed.sipp
        await placed.phone.close()
        assert result.returncode == 0, result.stdout + result.errors
        await settled(gateway)
    # Most of the 150 frames (20 ms) of the response: not all, as a pacer stall past 60 ms
    # under load drops frames (skip_frame); the REFER at once let the caller hear ~4.
    assert placed.phone.loud_frames(0) >= 100
    rec = await record(api, placed.call_id)
    assert rec["disconnect_reason"] == "transferred"
    # The transfer ended the call: no response asked of the model after it (billed, unheard).
    assert [e["type"] for e in fake.received if e["type"] != "input_audio_buffer.append"] == [
        "session.update",
        "response.create",  # the greeting, whose end called transfer_call: nothing after it
    ]


async def test_a_caller_who_hangs_up_while_the_announcement_plays_gets_no_refer(
    api: Api, gateway: Gateway, tmp_path: Path
) -> None:
    """The caller's BYE during the wait for the announcement to play ends the call there: no
    REFER after it (SIPp would fail on the unexpected request), the record says so."""
    async with FakeOpenAIRealtime(agent="tone", response_ms=4000, transfer_to=TARGET) as fake:
        await provider_trunk(api, gateway, fake, "xfer-pass-7")
        placed = await place_call(gateway, tmp_path, "alice", "xfer-pass-7", hold_ms=1000)
        result = await placed.sipp
        await placed.phone.close()
        assert result.returncode == 0, result.stdout + result.errors
        await settled(gateway)
    assert "REFER " not in result.messages
    rec = await record(api, placed.call_id)
    assert rec["disconnect_reason"] == "caller_hangup"


class _InterruptedAnnouncementAgent(FakeTelepathAgent):
    """Asks for its transfer at the end of a long announcement (queued faster than real time),
    then, ``after_s`` later, sends ``clear`` (the caller spoke: barge-in) or, with
    ``hangup_instead``, ``hangup``; records when it did and when the transfer result came."""

    def __init__(self, *, after_s: float, hangup_instead: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.after_s = after_s
        self.hangup_instead = hangup_instead
        self.acted_at: float | None = None
        self.result_at: float | None = None

    async def _on_start(self, ws: ServerConnection, start: ev.Start) -> bool:
        done = await super()._on_start(ws, start)  # the announcement, then xfer-1
        await asyncio.sleep(self.after_s)
        self.acted_at = asyncio.get_running_loop().time()
        if self.hangup_instead:
            await ws.send(ev.Hangup(reason="done").to_json())
        else:
            await self.send_clear(ws)
        return done

    async def _on_transfer_result(self, ws: ServerConnection, result: dict[str, Any]) -> None:
        self.result_at = asyncio.get_running_loop().time()


async def test_a_barge_in_during_the_announcement_sends_the_refer_at_once(
    api: Api, gateway: Gateway, tmp_path: Path
) -> None:
    """The REFER waited for as long as the audio queued when the transfer was asked for (5 s
    here), whatever happened meanwhile: a barge-in 0.5 s in flushed the announcement, and the
    REFER still came seconds later, cutting off whatever the agent said next. It waits for the
    announcement itself: flushed, it is over, and the REFER goes at once (the unit test
    ``test_a_flushed_announcement_lets_the_refer_go_at_once`` shows the at once)."""
    async with _InterruptedAnnouncementAgent(
        agent="tone", response_ms=5000, transfer_to=TARGET, after_s=0.5
    ) as agent:
        await create_trunk(
            api, "xferclear", "xfer-pass-8", ai_provider="custom", custom_endpoint=agent.url
        )
        middle = ANSWER_REFER % {"status": "202 Accepted"} + notify("xferclear")
        placed = await place_call(
            gateway, tmp_path, "xferclear", "xfer-pass-8", caller_hangs_up=False, middle=middle
        )
        placed.phone.start_tone(placed.rtp, 1000, 0.0, then_silence_s=8.0)  # a line, quiet
        result = await placed.sipp
        await placed.phone.close()
        assert result.returncode == 0, result.stdout + result.errors
        await wait_until(lambda: agent.result_at is not None, what="the transfer result")
        await settled(gateway)
    # that the REFER went at the flush, not after the dropped audio's time, is the unit test's
    # (test_call_refer_timers: no clock in a test); here the whole exchange, end to end
    assert agent.acted_at is not None and agent.result_at is not None
    assert agent.result_at > agent.acted_at  # the result came after the barge-in
    assert [(r["request_id"], r["ok"]) for r in agent.transfer_results] == [("xfer-1", True)]
    rec = await record(api, placed.call_id)
    assert rec["disconnect_reason"] == "transferred"


async def test_an_agent_hang_up_while_the_transfer_waits_cancels_it(
    api: Api, gateway: Gateway, tmp_path: Path
) -> None:
    """The agent hangs up while its transfer waits for the announcement to play: the REFER
    and the hang-up raced (a REFER then our BYE, or the BYE alone). The later word wins: no
    REFER (SIPp would fail on it), and the call ends as the agent's hang-up once the
    announcement has played (no transfer result: nothing follows an agent's hang-up)."""
    async with _InterruptedAnnouncementAgent(
        agent="tone", response_ms=2000, transfer_to=TARGET, after_s=0.5, hangup_instead=True
    ) as agent:
        await create_trunk(
            api, "xferhup", "xfer-pass-9", ai_provider="custom", custom_endpoint=agent.url
        )
        placed = await place_call(
            gateway, tmp_path, "xferhup", "xfer-pass-9", caller_hangs_up=False
        )
        result = await placed.sipp
        await placed.phone.close()
        assert result.returncode == 0, result.stdout + result.errors
        await settled(gateway)
    assert "REFER " not in result.messages
    assert agent.transfer_results == []
    assert placed.phone.loud_frames(0) >= 50  # the announcement played before the hang-up
    rec = await record(api, placed.call_id)
    assert rec["disconnect_reason"] == "agent_hangup"


async def test_refer_refused_is_reported_and_the_call_goes_on(
    api: Api, gateway: Gateway, tmp_path: Path
) -> None:
    async with FakeTelepathAgent(agent="tone", response_ms=400, transfer_to=TARGET) as agent:
        await create_trunk(
            api, "noxfer", "xfer-pass-2", ai_provider="custom", custom_endpoint=agent.url
        )
        middle = ANSWER_REFER % {"status": "603 Decline"}
        placed = await place_call(
            gateway, tmp_path, "noxfer", "xfer-pass-2", hold_ms=1500, middle=middle
        )
        result = await placed.sipp
        await placed.phone.close()
        assert result.returncode == 0, result.stdout + result.errors
        await settled(gateway)
    assert agent.transfer_results and agent.transfer_results[0]["ok"] is False
    rec = await record(api, placed.call_id)
    assert rec["disconnect_reason"] == "caller_hangup"  # the caller hung up later, as planned


class _TwoTransfersAgent(FakeTelepathAgent):
    """Asks for a second transfer (``xfer-2``, elsewhere) right after its first (``xfer-1``),
    before the carrier could answer the first REFER."""

    async def _on_start(self, ws: ServerConnection, start: ev.Start) -> bool:
        done = await super()._on_start(ws, start)  # the greeting, then xfer-1
        await ws.send(ev.Transfer(target=OTHER_TARGET, request_id="xfer-2").to_json())
        return done


OTHER_TARGET = "sip:+15550002222@carrier.example"


async def test_a_transfer_asked_for_while_one_is_pending_is_refused_at_once(
    api: Api, gateway: Gateway, tmp_path: Path
) -> None:
    """One REFER at a time: the NOTIFYs of two REFERs in a dialog are told apart only by the
    Event header's id (RFC 3515 §2.4.6), which we do not track — so the second request is
    answered at once (ok false, "transfer in progress"), no second REFER goes, and the first
    gets its own result (the results used to cross: the first's went to the second)."""
    async with _TwoTransfersAgent(agent="tone", response_ms=400, transfer_to=TARGET) as agent:
        await create_trunk(
            api, "xfer2", "xfer-pass-3", ai_provider="custom", custom_endpoint=agent.url
        )
        middle = ANSWER_REFER % {"status": "202 Accepted"} + notify("xfer2")
        placed = await place_call(
            gateway, tmp_path, "xfer2", "xfer-pass-3", caller_hangs_up=False, middle=middle
        )
        result = await placed.sipp
        await placed.phone.close()
        assert result.returncode == 0, result.stdout + result.errors
        await wait_until(lambda: len(agent.transfer_results) >= 2, what="both transfer results")
        await settled(gateway)
    by_id = {r["request_id"]: r for r in agent.transfer_results}
    assert len(agent.transfer_results) == 2
    assert by_id["xfer-2"] == {
        "type": "transfer_result",
        "request_id": "xfer-2",
        "ok": False,
        "detail": "transfer in progress",
    }
    assert by_id["xfer-1"]["ok"] is True
    rec = await record(api, placed.call_id)
    assert rec["disconnect_reason"] == "transferred"
    refers = [line for line in rec["sip_trace"].splitlines() if line.startswith("Refer-To:")]
    assert refers == [f"Refer-To: <{TARGET}>"]  # one REFER, the first transfer's


async def test_a_transfer_target_that_is_no_uri_is_refused_and_nothing_is_sent(
    api: Api, gateway: Gateway, tmp_path: Path
) -> None:
    """The agent's target, written into Refer-To as it came, let a caller who talked the model
    into it add headers of its choosing to our REFER (a CR LF in the target). It is refused to
    the agent, no REFER goes out, and the call goes on."""
    forged = "sip:a@b>\r\nX-Injected: 1\r\nContact: <sip:x"
    async with FakeTelepathAgent(agent="tone", response_ms=400, transfer_to=forged) as agent:
        await create_trunk(
            api, "badxfer", "xfer-pass-3", ai_provider="custom", custom_endpoint=agent.url
        )
        placed = await place_call(gateway, tmp_path, "badxfer", "xfer-pass-3", hold_ms=1500)
        result = await placed.sipp
        await placed.phone.close()
        assert result.returncode == 0, result.stdout + result.errors
        await settled(gateway)
    assert agent.transfer_results and agent.transfer_results[0]["ok"] is False
    assert "X-Injected" not in result.messages and "REFER " not in result.messages
    rec = await record(api, placed.call_id)
    assert rec["disconnect_reason"] == "caller_hangup"  # the caller hung up later, as planned


async def test_a_bare_number_as_target_is_refused_and_the_call_goes_on(
    api: Api, gateway: Gateway, tmp_path: Path
) -> None:
    """A target with no scheme (a bare number, as a model may well say it) used to fail the
    bridge's own pattern: "malformed agent message", and the caller was dropped as
    ai_provider_error. It reaches call control's URI check (docs/custom-agent-protocol.md):
    ok false, "invalid transfer target", no REFER, and the call goes on."""
    bare = "+14155550123"
    async with FakeTelepathAgent(agent="tone", response_ms=400, transfer_to=bare) as agent:
        await create_trunk(
            api, "barexfer", "xfer-pass-7", ai_provider="custom", custom_endpoint=agent.url
        )
        placed = await place_call(gateway, tmp_path, "barexfer", "xfer-pass-7", hold_ms=1500)
        result = await placed.sipp
        await placed.phone.close()
        assert result.returncode == 0, result.stdout + result.errors
        await settled(gateway)
    assert agent.transfer_results == [
        {
            "type": "transfer_result",
            "request_id": "xfer-1",
            "ok": False,
            "detail": "invalid transfer target",
        }
    ]
    assert "REFER " not in result.messages
    rec = await record(api, placed.call_id)
    assert rec["disconnect_reason"] == "caller_hangup"  # the caller hung up later, as planned


async def test_a_carrier_bye_after_accepting_the_refer_ends_the_call_as_transferred(
    api: Api, gateway: Gateway, tmp_path: Path
) -> None:
    """A blind transfer whose carrier answers our REFER 202 and then ends our leg with BYE,
    before any final NOTIFY (or with the NOTIFY lost or behind the BYE): the call used to end
    as ``caller_hangup`` and the agent never heard how its transfer went. The carrier accepted
    the transfer and took the caller off our leg (RFC 3515 lets the dialog end before the
    subscription's outcome): the record says ``transferred`` and the agent gets ok true."""
    async with FakeTelepathAgent(agent="tone", response_ms=400, transfer_to=TARGET) as agent:
        await create_trunk(
            api, "xferbye", "xfer-pass-4", ai_provider="custom", custom_endpoint=agent.url
        )
        middle = ANSWER_REFER % {"status": "202 Accepted"}
        placed = await place_call(
            gateway, tmp_path, "xferbye", "xfer-pass-4", hold_ms=100, middle=middle
        )
        result = await placed.sipp  # REFER → 202, then the carrier's BYE → 200
        await placed.phone.close()
        assert result.returncode == 0, result.stdout + result.errors
        await settled(gateway)
    assert [(r["request_id"], r["ok"]) for r in agent.transfer_results] == [("xfer-1", True)]
    assert [s["reason"] for s in agent.stops] == ["transferred"]
    rec = await record(api, placed.call_id)
    assert rec["disconnect_reason"] == "transferred"


class _RetryingAgent(FakeTelepathAgent):
    """Asks for a second transfer (``xfer-2``, elsewhere) once its first one failed."""

    async def _on_transfer_result(self, ws: ServerConnection, result: dict[str, Any]) -> None:
        if result["request_id"] == "xfer-1" and result["ok"] is False:
            await ws.send(ev.Transfer(target=OTHER_TARGET, request_id="xfer-2").to_json())


async def _first_fails_then_second_succeeds(
    api: Api, gateway: Gateway, tmp_path: Path, user: str, password: str, after_first: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A call whose carrier accepts transfer ``xfer-1`` (then ``after_first``: what it sends
    next, or nothing) and ``xfer-2`` (then a final 200 NOTIFY), the agent asking for the second
    once told the first failed: the agent's transfer results and the call's record."""
    async with _RetryingAgent(agent="tone", response_ms=400, transfer_to=TARGET) as agent:
        await create_trunk(api, user, password, ai_provider="custom", custom_endpoint=agent.url)
        middle = (
            ANSWER_REFER % {"status": "202 Accepted"}  # xfer-1
            + after_first
            + ANSWER_REFER % {"status": "202 Accepted"}  # xfer-2
            + notify(user, cseq=6)
        )
        placed = await place_call(
            gateway, tmp_path, user, password, caller_hangs_up=False, middle=middle
        )
        result = await placed.sipp
        await placed.phone.close()
        assert result.returncode == 0, result.stdout + result.errors
        await wait_until(lambda: len(agent.transfer_results) >= 2, what="both transfer results")
        await settled(gateway)
    return agent.transfer_results, await record(api, placed.call_id)


async def test_a_refer_whose_notify_never_comes_fails_after_a_bounded_wait(
    api: Api, gateway: Gateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A carrier that answers our REFER 202 and then never sends a NOTIFY: the transfer used
    to stay pending for the rest of the call, and every later transfer was refused with
    "transfer in progress". After ``REFER_NOTIFY_WAIT_S`` (32 s, Timer N of RFC 6665 §4.1.2.4;
    1 s here) it counts as failed: the agent is told (ok false), and its next transfer goes
    out as a REFER of its own."""
    monkeypatch.setattr(call_module, "REFER_NOTIFY_WAIT_S", 1.0)
    results, rec = await _first_fails_then_second_succeeds(
        api,
        gateway,
        tmp_path,
        "xferlost",
        "xfer-pass-5",
        after_first="",  # no NOTIFY ever
    )
    first, second = results
    assert (first["request_id"], first["ok"]) == ("xfer-1", False)
    assert "NOTIFY" in first["detail"]
    assert gateway.manager.counters.get("transfer_failed") == 1  # the timed-out one counts
    assert (second["request_id"], second["ok"]) == ("xfer-2", True)
    assert rec["disconnect_reason"] == "transferred"
    refers = [line for line in rec["sip_trace"].splitlines() if line.startswith("Refer-To:")]
    assert refers == [f"Refer-To: <{TARGET}>", f"Refer-To: <{OTHER_TARGET}>"]


async def test_a_refer_whose_subscription_runs_out_after_a_trying_fails(
    api: Api, gateway: Gateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A carrier that accepts our REFER, sends one NOTIFY ``100 Trying`` (its subscription
    ``active;expires=1``) and then nothing: the transfer used to stay pending for the rest of
    the call (the first NOTIFY stopped the only timer), every later transfer refused as
    "transfer in progress". A subscription that ran out with no final NOTIFY ended without an
    outcome (RFC 6665 §4.1.2.4 / §4.4.1): after its ``expires`` and a grace (Timer N's 32 s;
    1 s here) the agent is told it failed, and its next transfer goes out."""
    monkeypatch.setattr(call_module, "REFER_NOTIFY_WAIT_S", 1.0)
    trying = notify("xfertry", state="active;expires=1", frag="SIP/2.0 100 Trying")
    results, rec = await _first_fails_then_second_succeeds(
        api,
        gateway,
        tmp_path,
        "xfertry",
        "xfer-pass-6",
        after_first=trying,  # then silence
    )
    first, second = results
    assert (first["request_id"], first["ok"]) == ("xfer-1", False)
    assert "subscription" in first["detail"]
    assert (second["request_id"], second["ok"]) == ("xfer-2", True)
    assert rec["disconnect_reason"] == "transferred"
