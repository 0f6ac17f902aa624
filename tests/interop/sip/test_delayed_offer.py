"""Delayed offer over UDP (RFC 3261 §13.2.1, Cisco CUCM's default): an INVITE without SDP gets
the gateway's offer in its 200 OK, the caller's answer in the ACK starts media, and an ACK
without a usable answer ends the call with BYE. SIPp plays the carrier; a raw UAC stages what
SIPp cannot (a malformed answer, 2xx retransmissions, BYE before ACK)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from telepath.bridges.audio import WireFormat
from telepath.calls.call import Call
from telepath.cli.gateway import Gateway
from telepath.db.models import WebhookDelivery
from telepath.rtp.dtmf import encode_dtmf
from telepath.rtp.packet import pack_rtp
from telepath.sip.message import Request, Response, make_response
from telepath.testing.fake_custom import FakeTelepathAgent
from telepath.testing.tones import dominant_frequency, g711_to_pcm16, sine_g711
from telepath.transport.media_session import MediaSession
from tests.integration.conftest import Api
from tests.integration.webhooks.receiver import Receiver
from tests.interop.calls.conftest import create_trunk, subscribe
from tests.interop.calls.harness import Phone
from tests.interop.media.sipp import require_sipp
from tests.interop.sip.sipp_scenarios import check, offerless_call, run_sipp
from tests.interop.sip.uac import CallLeg, Uac, new_branch, sdp_offer
from tests.interop.sip.waits import ended_records, until

pytestmark = pytest.mark.interop

PASSWORD = "s1pp-Secret"
CALLER_HZ = 1000
AGENT_HZ = 440
# The offer: TELEPATH_SIP_CODECS (PCMU,PCMA,G722 in conftest) in order, then telephone-event.
OFFER_CHECKS = (
    check("m=audio [0-9]+ RTP/AVP 0 8 9 101", var=1)
    + check("a=rtpmap:101 telephone-event/8000", var=2)
    + check("a=fmtp:101 0-16", var=3)
)


def _offered_port(messages: str) -> int:
    ports = re.findall(r"m=audio ([0-9]+) RTP/AVP 0 8 9 101", messages)
    assert ports, "no offer in SIPp's message log"
    return int(ports[0])


@pytest.mark.parametrize(
    ("formats", "pt", "codec"),
    [
        pytest.param("0 101", 0, "PCMU", id="pcmu"),
        # The agent was started in μ-law before the answer chose A-law: the call transcodes.
        pytest.param("8 101", 8, "PCMA", id="pcma"),
    ],
)
async def test_answer_in_ack_starts_media_both_ways(
    api: Api, gateway: Gateway, tmp_path: Path, phone: Phone, formats: str, pt: int, codec: str
) -> None:
    require_sipp()
    async with FakeTelepathAgent(agent="tone", tone_hz=AGENT_HZ, response_ms=800) as agent:
        await create_trunk(api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=agent.url)
        scenario = offerless_call(
            "alice", offer_checks=OFFER_CHECKS, answer=(phone.port, formats), hold_ms=2000
        )
        sipp = asyncio.create_task(
            run_sipp(
                scenario, tmp_path, gateway.server.bound["UDP"], user="alice", password=PASSWORD
            )
        )
        try:
            await until(lambda: bool(gateway.manager.calls) or sipp.done())
        except AssertionError:
            sipp.cancel()
            raise
        if not gateway.manager.calls:
            result = await sipp
            raise AssertionError("no call came up:\n" + result.stdout + result.errors)
        (call,) = gateway.manager.calls.values()
        media_port = call.media.local_port
        phone.start_tone(("127.0.0.1", media_port), CALLER_HZ, 1.2, pt=pt)
        result = await sipp
        assert result.returncode == 0, result.stdout + result.errors
        (record,) = await ended_records(api, gateway)

    assert _offered_port(result.messages) == media_port  # the leased port went in the offer
    assert record["status"] == "connected"
    assert record["disconnect_reason"] == "caller_hangup"
    detail = (await api.get(f"/v1/calls/{record['id']}")).json()
    assert detail["metrics"]["codec_used"] == codec
    # gateway → caller: the agent's tone, in the codec the ACK's answer chose
    assert [p for p in {t for t, _ in phone.received} if p != pt] == []
    assert abs(phone.dominant(pt) - AGENT_HZ) < 15
    # caller → agent: the phone's tone, in the law the agent was started in
    assert agent.wire == WireFormat("ulaw", 8000)
    heard = g711_to_pcm16(bytes(agent.caller_audio), "pcmu")
    assert len(heard) > 8000  # > 0.5 s of the caller reached the agent
    assert abs(dominant_frequency(heard) - CALLER_HZ) < 15
    assert agent.protocol_errors == []
    assert gateway.manager.ports.in_use == 0


@pytest.mark.parametrize(
    "answer_formats",
    [
        pytest.param(None, id="ack-without-sdp"),
        pytest.param("18", id="ack-with-no-common-codec"),  # G.729 only: we did not offer it
    ],
)
async def test_ack_without_usable_answer_gets_bye_and_a_failed_record(
    api: Api, gateway: Gateway, tmp_path: Path, phone: Phone, answer_formats: str | None
) -> None:
    require_sipp()
    async with FakeTelepathAgent(agent="silent") as agent:
        await create_trunk(api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=agent.url)
        answer = None if answer_formats is None else (phone.port, answer_formats)
        result = await run_sipp(
            offerless_call(
                "alice", offer_checks=OFFER_CHECKS, answer=answer, caller_hangs_up=False
            ),
            tmp_path,
            gateway.server.bound["UDP"],
            user="alice",
            password=PASSWORD,
        )
        assert result.returncode == 0, result.stdout + result.errors  # SIPp got our BYE
        (record,) = await ended_records(api, gateway)
        await until(lambda: bool(agent.stops))  # the bridge was closed, not just dropped

    assert "BYE sip:caller@127.0.0.1" in result.messages
    assert record["status"] == "failed"
    assert record["disconnect_reason"] == "carrier_error"
    assert [stop["reason"] for stop in agent.stops] == ["carrier_error"]  # as the record's
    detail = (await api.get(f"/v1/calls/{record['id']}")).json()
    assert "answer" in detail["error_message"]
    assert detail["metrics"]["codec_used"] is None
    assert detail["answer_time"] is not None and detail["end_time"] is not None
    trace = detail["sip_trace"]
    assert "ACK sip:" in trace and "BYE sip:" in trace and "CSeq: 2 BYE" in trace
    assert "SIP/2.0 200 OK" in trace.split("BYE sip:")[-1]  # the caller's answer to our BYE
    assert phone.received == []  # no media was ever sent
    assert len(agent.handshakes) == 1
    assert gateway.manager.ports.in_use == 0
    assert gateway.manager.active_calls == 0
    assert gateway.server.core.dialog_count == 0
    assert gateway.manager.counters.get("delayed_offer_failed") == 1


async def _offered(uac: Uac, api: Api, agent: FakeTelepathAgent) -> tuple[CallLeg, Response]:
    """An offerless INVITE through the challenge, answered with 200 OK (not yet ACKed)."""
    await create_trunk(api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=agent.url)
    leg = CallLeg(uac, "alice")
    await leg.challenge(None)
    ok = await leg.answered(leg.authenticated_invite(PASSWORD, None))
    assert ok.content_type == "application/sdp"
    assert re.search(rb"m=audio [0-9]+ RTP/AVP 0 8 9 101", ok.body)
    return leg, ok


async def _answer_bye(uac: Uac, *, after: int) -> None:
    """Wait for the gateway's BYE (a message index >= ``after``) and answer it 200."""
    bye = await uac.wait_for(lambda m: isinstance(m, Request) and m.method == "BYE", after=after)
    assert isinstance(bye.message, Request)
    uac.send(make_response(bye.message, 200).to_bytes())


async def test_malformed_answer_in_ack_gets_bye(api: Api, gateway: Gateway, uac: Uac) -> None:
    async with FakeTelepathAgent(agent="silent") as agent:
        leg, _ = await _offered(uac, api, agent)
        start = len(uac.received)
        uac.send(leg.build("ACK", cseq_method="ACK", body=b"v=0\r\nnot an SDP answer\r\n"))
        await _answer_bye(uac, after=start)
        (record,) = await ended_records(api, gateway)
    assert record["status"] == "failed"
    assert record["disconnect_reason"] == "carrier_error"
    detail = (await api.get(f"/v1/calls/{record['id']}")).json()
    assert detail["error_message"] == "the SDP answer in the ACK is malformed"
    assert gateway.manager.ports.in_use == 0


async def test_2xx_retransmissions_repeat_the_offer_and_bye_before_ack_ends_the_call(
    api: Api, gateway: Gateway, uac: Uac
) -> None:
    async with FakeTelepathAgent(agent="silent") as agent:
        leg, ok = await _offered(uac, api, agent)

        # No ACK: the gateway retransmits its 200 OK (§13.3.1.4), each copy the same offer.
        def oks() -> list[Response]:
            sent = [r.message for r in uac.responses(leg.call_id, "INVITE")]
            return [m for m in sent if isinstance(m, Response) and m.status == 200]

        await uac.wait_for(lambda _: len(oks()) >= 2)
        assert {m.body for m in oks()} == {ok.body}
        await leg.bye()  # the caller gives up before ACKing
        (record,) = await ended_records(api, gateway)
        await until(lambda: bool(agent.stops))
    assert record["status"] == "failed"
    assert record["disconnect_reason"] == "caller_hangup"
    assert gateway.manager.ports.in_use == 0
    assert gateway.server.core.dialog_count == 0


async def test_shutdown_while_waiting_for_the_ack_ends_the_call_cleanly(
    api: Api, gateway: Gateway, uac: Uac
) -> None:
    async with FakeTelepathAgent(agent="silent") as agent:
        leg, _ = await _offered(uac, api, agent)
        # The gateway is stopped before the caller ACKs (drain time 0: nothing to wait for).
        await asyncio.wait_for(gateway.manager.drain(0), 10)
        (record,) = await ended_records(api, gateway)
        await until(lambda: bool(agent.stops))  # the agent was told, not just dropped
        assert gateway.manager.ports.in_use == 0
        # §15: no BYE before the ACK; once the late ACK arrives, the BYE follows at once.
        start = len(uac.received)
        uac.send(leg.build("ACK", cseq_method="ACK"))
        await _answer_bye(uac, after=start)
    assert record["status"] == "failed"
    assert record["disconnect_reason"] == "shutdown"
    assert [stop["reason"] for stop in agent.stops] == ["shutdown"]


async def test_update_before_the_ack_gets_491_with_an_offer_and_200_without(
    api: Api, gateway: Gateway, uac: Uac, phone: Phone
) -> None:
    async with FakeTelepathAgent(agent="silent") as agent:
        leg, _ = await _offered(uac, api, agent)
        invite_cseq = leg.cseq

        async def update(body: bytes) -> int:
            leg.cseq += 1
            start = len(uac.received)
            uac.send(leg.build("UPDATE", body=body))
            got = await uac.wait_for(
                lambda m: isinstance(m, Response) and m.cseq.method == "UPDATE", after=start
            )
            assert isinstance(got.message, Response)
            return got.message.status

        # RFC 3311 §5.2: our offer (in the 200) is unanswered until the ACK: a new offer is
        # glare; a session refresh without SDP is fine. Neither is 481: the dialog exists.
        assert await update(sdp_offer(phone.port)) == 491
        assert await update(b"") == 200
        last = leg.cseq
        leg.cseq = invite_cseq
        uac.send(leg.build("ACK", cseq_method="ACK", body=sdp_offer(phone.port)))
        leg.cseq = last
        await until(lambda: gateway.manager.active_calls == 1 and bool(gateway.manager.calls))
        await leg.bye()
        (record,) = await ended_records(api, gateway)
    assert record["status"] == "connected"
    assert record["disconnect_reason"] == "caller_hangup"


async def test_dtmf_info_before_the_ack_reaches_the_agent_once_the_call_is_up(
    api: Api, gateway: Gateway, uac: Uac, phone: Phone
) -> None:
    """A digit sent by INFO between our 200 (with the offer) and the caller's ACK is answered
    200 and delivered when the call is up, not dropped."""
    async with FakeTelepathAgent(agent="silent") as agent:
        leg, _ = await _offered(uac, api, agent)
        invite_cseq = leg.cseq
        leg.cseq += 1
        start = len(uac.received)
        info = leg.build(
            "INFO",
            headers=[("Content-Type", "application/dtmf-relay")],
            body=b"Signal=5\r\nDuration=160\r\n",
        )
        uac.send(info)
        ok = await uac.response(200, leg.call_id, method="INFO", after=start)
        assert ok.status == 200
        last = leg.cseq
        leg.cseq = invite_cseq
        uac.send(leg.build("ACK", cseq_method="ACK", body=sdp_offer(phone.port)))
        leg.cseq = last
        await until(lambda: agent.digits == ["5"])
        await leg.bye()
        (record,) = await ended_records(api, gateway)
    assert record["disconnect_reason"] == "caller_hangup"


async def test_bye_right_after_the_ack_while_the_media_opens_ends_the_call(
    api: Api, gateway: Gateway, uac: Uac, phone: Phone, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller ACKs (with its answer) and hangs up at once: its BYE lands while the call's
    media opens, before the call is up. That BYE ended the dialog (RFC 3261 §15.1.2: answered
    200, no BYE of ours after it); the call is ended with it, as a caller hang-up — it used to
    come up on a dialog already over and talk to nobody until the media timeout."""
    opening = MediaSession.open.__func__  # type: ignore[attr-defined]
    entered: list[bool] = []

    async def after_the_bye(cls: type[MediaSession], *args: Any, **kwargs: Any) -> Any:
        entered.append(True)
        await until(lambda: gateway.server.core.counters["request_BYE"] >= 1)
        return await opening(cls, *args, **kwargs)

    monkeypatch.setattr(MediaSession, "open", classmethod(after_the_bye))
    async with FakeTelepathAgent(agent="silent") as agent:
        leg, _ = await _offered(uac, api, agent)
        uac.send(leg.build("ACK", cseq_method="ACK", body=sdp_offer(phone.port)))
        await leg.bye()
        (record,) = await ended_records(api, gateway)
        await until(lambda: bool(agent.stops))  # the agent was told, not left talking
    assert entered == [True]
    assert record["status"] == "connected"
    assert record["disconnect_reason"] == "caller_hangup"
    assert agent.stops[0]["reason"] == "caller_hangup"
    assert not [
        r for r in uac.received if isinstance(r.message, Request) and r.message.method == "BYE"
    ]
    assert gateway.manager.ports.in_use == 0
    assert gateway.server.core.dialog_count == 0


async def test_an_offerless_re_invite_while_the_media_opens_gets_491_then_our_offer(
    api: Api, gateway: Gateway, uac: Uac, phone: Phone, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A re-INVITE without SDP (a session refresh) right after the ACK, while the call's
    media opens: its 2xx would have to carry our offer (RFC 3261 §14.2), and there is no call
    yet to take the answer in its ACK, so it gets 491 (§14.1: the UAC tries again a little
    later) — it got 200 without SDP. Once the call is up, the same re-INVITE gets our offer."""
    opening = MediaSession.open.__func__  # type: ignore[attr-defined]
    released = asyncio.Event()

    async def after_the_reinvite(cls: type[MediaSession], *args: Any, **kwargs: Any) -> Any:
        await released.wait()
        return await opening(cls, *args, **kwargs)

    monkeypatch.setattr(MediaSession, "open", classmethod(after_the_reinvite))

    async def reinvite() -> Response:
        leg.cseq += 1
        branch = new_branch()
        start = len(uac.received)
        uac.send(leg.build("INVITE", branch=branch, body=b""))
        got = await uac.wait_for(
            lambda m: isinstance(m, Response) and m.cseq.method == "INVITE" and m.status >= 200,
            after=start,
        )
        assert isinstance(got.message, Response)
        return got.message

    async with FakeTelepathAgent(agent="silent") as agent:
        leg, _ = await _offered(uac, api, agent)
        uac.send(leg.build("ACK", cseq_method="ACK", body=sdp_offer(phone.port)))
        pending = await reinvite()
        assert (pending.status, pending.body) == (491, b"")
        uac.send(leg.build("ACK", branch=pending.top_via.branch, cseq_method="ACK"))
        released.set()
        await until(lambda: gateway.manager.active_calls == 1)
        offered = await reinvite()
        assert offered.status == 200 and offered.content_type == "application/sdp"
        assert re.search(rb"m=audio [0-9]+ RTP/AVP", offered.body)
        uac.send(leg.build("ACK", cseq_method="ACK", body=sdp_offer(phone.port)))
        await leg.bye()
        (record,) = await ended_records(api, gateway)
    assert record["status"] == "connected"
    assert record["disconnect_reason"] == "caller_hangup"


async def _queued_events(api: Api, call_id: str) -> list[str]:
    """The webhook events queued for ``call_id`` (the outbox rows: they commit with the
    record's end, so they are all there once the record is final)."""
    async with api.state.sessions() as session:
        rows = (await session.execute(select(WebhookDelivery))).scalars().all()
    return [row.event for row in rows if row.payload.get("call_id") == call_id]


@pytest.mark.parametrize(("ending", "reason"), [("bye", "caller_hangup"), ("drain", "shutdown")])
async def test_a_call_that_ends_before_its_ack_for_no_fault_is_no_call_error(
    api: Api, gateway: Gateway, uac: Uac, receiver: Receiver, ending: str, reason: str
) -> None:
    """A caller who hangs up before ACKing, or a gateway stopping meanwhile, is no error:
    call.error is for connection_failed, ai_provider_error and lost (docs/webhooks.md) — it
    went out, severity critical, for these too."""
    await subscribe(api, receiver.url)  # every event
    async with FakeTelepathAgent(agent="silent") as agent:
        leg, _ = await _offered(uac, api, agent)
        if ending == "bye":
            await leg.bye()
        else:
            await asyncio.wait_for(gateway.manager.drain(0), 10)
        (record,) = await ended_records(api, gateway)
    assert record["status"] == "failed"
    assert record["disconnect_reason"] == reason
    assert "call.error" not in await _queued_events(api, record["id"])


#: An answer (or offer) numbering PCMU 96 and telephone-event 97, where our offer had 0 and 101.
RENUMBERED = (
    "v=0\r\no=caller 1 {version} IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio {port} RTP/AVP 96 97\r\na=rtpmap:96 PCMU/8000\r\n"
    "a=rtpmap:97 telephone-event/8000\r\na=fmtp:97 0-16\r\na=ptime:20\r\n"
)


async def _renumbered_call(
    uac: Uac, api: Api, gateway: Gateway, agent: FakeTelepathAgent, phone: Phone
) -> tuple[CallLeg, Call]:
    """A delayed-offer call whose answer in the ACK renumbers our PCMU and telephone-event."""
    leg, _ = await _offered(uac, api, agent)
    answer = RENUMBERED.format(version=1, port=phone.port).encode()
    uac.send(leg.build("ACK", cseq_method="ACK", body=answer))
    await until(lambda: bool(gateway.manager.calls))
    (call,) = gateway.manager.calls.values()
    return leg, call


async def test_an_answer_renumbering_our_types_still_gets_the_caller_s_audio_and_keys(
    api: Api, gateway: Gateway, uac: Uac, phone: Phone
) -> None:
    """Our offer (in the 200) has PCMU as 0 and telephone-event as 101; the ACK's answer maps
    PCMU to 96 and telephone-event to 97, as RFC 3264 §6.1 allows (SHOULD, not MUST, reuse the
    offer's numbers). Each side's numbers are what it receives (§5.1): the caller sends 0 and
    101 and we send 96 — its audio and its key press were dropped as unnegotiated types."""
    async with FakeTelepathAgent(agent="tone", tone_hz=AGENT_HZ, response_ms=200) as agent:
        leg, call = await _renumbered_call(uac, api, gateway, agent, phone)
        phone.dtmf_pt = 101
        phone.start_tone(("127.0.0.1", call.media.local_port), CALLER_HZ, 1.0, pt=0)
        phone.press("5")
        await until(lambda: agent.digits == ["5"])
        await until(lambda: len(agent.caller_audio) > 4000)  # > 0.5 s of μ-law
        await leg.bye()
        (record,) = await ended_records(api, gateway)
    assert record["disconnect_reason"] == "caller_hangup"
    heard = g711_to_pcm16(bytes(agent.caller_audio), "pcmu")
    assert abs(dominant_frequency(heard) - CALLER_HZ) < 15
    assert {t for t, _ in phone.received} == {96}  # we send with the answer's number
    sent = g711_to_pcm16(phone.audio(96), "pcmu")  # PCMU, whatever its number
    assert abs(dominant_frequency(sent) - AGENT_HZ) < 15
    assert gateway.manager.ports.in_use == 0


async def test_a_re_offer_with_the_answer_s_numbers_is_then_received_with_them(
    api: Api, gateway: Gateway, uac: Uac, phone: Phone
) -> None:
    """After that answer, the caller re-offers with its numbers (96, 97) and we answer with
    them (RFC 3264 §6.1): now it sends 96 and 97, and those are what we must read (the media
    follows the re-offer's numbers, not only the first answer's)."""
    async with FakeTelepathAgent(agent="silent") as agent:
        leg, call = await _renumbered_call(uac, api, gateway, agent, phone)
        leg.cseq += 1
        start = len(uac.received)
        offer = RENUMBERED.format(version=2, port=phone.port).encode()
        uac.send(leg.build("INVITE", body=offer))
        ok = await uac.response(200, leg.call_id, method="INVITE", after=start)
        uac.send(leg.build("ACK", cseq_method="ACK"))
        assert b"m=audio" in ok.body and b" RTP/AVP 96 97\r\n" in ok.body
        assert phone.transport is not None  # raw: the Phone encodes PT 96 as A-law
        dest = ("127.0.0.1", call.media.local_port)
        seq = 100
        for i in range(25):  # 0.5 s of PCMU as 96, paced
            payload = sine_g711(CALLER_HZ, 20, "pcmu", phase=i * 160)
            phone.transport.sendto(pack_rtp(96, seq, i * 160, 0x5EED, payload, i == 0), dest)
            seq += 1
            await asyncio.sleep(0.02)
        for dtmf in encode_dtmf("6", 100):
            packet = pack_rtp(97, seq, 25 * 160, 0x5EED, dtmf.payload, dtmf.marker)
            phone.transport.sendto(packet, dest)
            seq += 1
        await until(lambda: agent.digits == ["6"])
        await until(lambda: len(agent.caller_audio) > 3200)  # > 0.4 s of μ-law
        await leg.bye()
        await ended_records(api, gateway)
    heard = g711_to_pcm16(bytes(agent.caller_audio), "pcmu")
    assert abs(dominant_frequency(heard) - CALLER_HZ) < 15
