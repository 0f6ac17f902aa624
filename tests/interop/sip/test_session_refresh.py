"""RFC 4028 with SIPp as a carrier that asks the gateway to refresh (``refresher=uas``): the
gateway's UPDATEs (or re-INVITEs, when the carrier's Allow lacks UPDATE) arrive at half the
interval over real sockets, and the call lives on until the caller hangs up.

RFC 4028 §4 puts Min-SE at 90 s at least; to see refreshes within seconds, the test lowers the
running UA core's floor (only its ``min_se``) and asks for a 6 s interval: refreshes every 3 s.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from telepath.calls.call import Call
from telepath.cli.gateway import Gateway
from telepath.sip.message import Request, make_response
from telepath.testing.fake_custom import FakeTelepathAgent
from tests.integration.conftest import Api
from tests.interop.calls.conftest import create_trunk
from tests.interop.calls.harness import Phone
from tests.interop.media.sipp import require_sipp
from tests.interop.sip.sipp_scenarios import SDP_BODY, call, check, run_sipp
from tests.interop.sip.uac import CallLeg, Message, Uac, sdp_offer
from tests.interop.sip.waits import ended_records, until

pytestmark = pytest.mark.interop

PASSWORD = "s1pp-Secret"
INTERVAL = 6
ASK_US_TO_REFRESH = ("Supported: timer", f"Session-Expires: {INTERVAL};refresher=uas")

# The carrier's 200 to a refresh: it keeps the interval and leaves refreshing to the gateway.
OK_TO_REFRESH = """  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:caller@[local_ip]:[local_port];transport=[transport]>
      Require: timer
      Session-Expires: %(interval)d;refresher=uac
%(extra)s      Content-Length: [len]
%(body)s
    ]]>
  </send>
"""


@pytest.fixture
def settings_overrides(settings_overrides: dict[str, Any]) -> dict[str, Any]:
    # SIPp sends no RTP here: the media timeout must not end the call before the refreshes
    return {**settings_overrides, "rtp_inactivity_timeout_s": 30.0}


def _expect_refresh(method: str, var: int) -> str:
    checks = check(f"{INTERVAL};refresher=uac", header="Session-Expires", var=var)
    if method == "INVITE":
        checks += check("m=audio [0-9]+ RTP/AVP 0", var=var + 1)  # our last SDP, offered again
    return (
        f'  <recv request="{method}" timeout="{INTERVAL * 1000}">\n'
        f"    <action>\n{checks}    </action>\n  </recv>\n"
    )


def _answer_refresh(method: str, media_port: int) -> str:
    if method == "UPDATE":
        return OK_TO_REFRESH % {"interval": INTERVAL, "extra": "", "body": ""}
    body = SDP_BODY % {"version": 1, "media_port": media_port, "direction": "sendrecv"}
    return OK_TO_REFRESH % {
        "interval": INTERVAL,
        "extra": "      Content-Type: application/sdp\n",
        "body": body,
    } + ('  <recv request="ACK"/>\n')


@pytest.mark.parametrize(
    ("allow", "method"),
    [
        pytest.param("INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE", "UPDATE", id="update"),
        pytest.param("INVITE, ACK, BYE, CANCEL, OPTIONS", "INVITE", id="reinvite"),
    ],
)
async def test_gateway_refreshes_when_the_carrier_asks_it_to(
    api: Api, gateway: Gateway, tmp_path: Path, phone: Phone, allow: str, method: str
) -> None:
    require_sipp()
    core = gateway.server.core
    core.config = dataclasses.replace(core.config, min_se=2)
    middle = "".join(
        _expect_refresh(method, 10 * n) + _answer_refresh(method, phone.port) for n in (1, 2)
    )
    scenario = call(
        "alice",
        phone.port,
        hold_ms=500,
        middle=middle,
        headers=(*ASK_US_TO_REFRESH, f"Allow: {allow}"),
        # §9: the refresher the carrier asked for is the one the 200 names
        answer_checks=check(f"{INTERVAL};refresher=uas", header="Session-Expires", var=1)
        + check("timer", header="Require", var=2),
    )
    async with FakeTelepathAgent(agent="silent") as agent:
        await create_trunk(api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=agent.url)
        result = await run_sipp(
            scenario, tmp_path, gateway.server.bound["UDP"], user="alice", password=PASSWORD
        )
        assert result.returncode == 0, result.stdout + result.errors
    (record,) = await ended_records(api, gateway)
    # refreshed twice past the first expiry (6 - 2 s): the caller, not the timer, ended it
    assert record["disconnect_reason"] == "caller_hangup"
    assert record["duration_seconds"] >= INTERVAL
    trace = (await api.get(f"/v1/calls/{record['id']}")).json()["sip_trace"]
    refreshes = re.findall(rf"^{method} sip:caller@127\.0\.0\.1:[0-9]+", trace, re.M)
    assert len(refreshes) == 2


async def test_delayed_offer_refresh_offers_only_the_codec_in_use(
    api: Api, gateway: Gateway, uac: Uac, phone: Phone
) -> None:
    """After an offerless INVITE our 200 offered every codec; the re-INVITE refresh must offer
    only the one the caller's answer chose, or a refresh could switch codec mid-call."""
    timer = _we_refresh(gateway)
    async with FakeTelepathAgent(agent="silent") as agent:
        await create_trunk(api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=agent.url)
        leg = CallLeg(uac, "alice")
        await leg.challenge(None, timer)
        ok = await leg.answered(leg.authenticated_invite(PASSWORD, None, headers=timer))
        assert re.search(rb"m=audio [0-9]+ RTP/AVP 0 8 9 101", ok.body)  # every codec offered
        answer = sdp_offer(phone.port).replace(b"RTP/AVP 0 8 101", b"RTP/AVP 8 101")
        start = len(uac.received)
        uac.send(leg.build("ACK", cseq_method="ACK", body=answer))  # the caller picks PCMA
        refresh = await _our_refresh(uac, start)
        assert isinstance(refresh, Request)
        assert re.search(rb"m=audio [0-9]+ RTP/AVP 8 101\r\n", refresh.body), refresh.body
        start = len(uac.received)
        _accept_refresh(uac, refresh, answer)
        ack = await uac.wait_for(
            lambda m: isinstance(m, Request) and m.method == "ACK", after=start
        )
        assert isinstance(ack.message, Request) and ack.message.cseq.seq == refresh.cseq.seq
        leg.cseq += 1  # our BYE comes after the caller's INVITEs (CSeq is per direction)
        await leg.bye()
        (record,) = await ended_records(api, gateway)
    assert record["disconnect_reason"] == "caller_hangup"
    detail = (await api.get(f"/v1/calls/{record['id']}")).json()
    assert detail["metrics"]["codec_used"] == "PCMA"


async def test_a_refresh_after_the_caller_held_us_offers_sendrecv_and_resumes_the_media(
    api: Api, gateway: Gateway, uac: Uac, phone: Phone
) -> None:
    """The caller holds us (a=sendonly; our answer a=recvonly); our next re-INVITE refresh offers
    what WE want, a=sendrecv, with the next o= version (RFC 6337 §5.1, RFC 3264 §8) — it
    offered our a=recvonly answer again, which a resuming caller can only answer sendonly or
    inactive (§6.1). The caller's sendrecv answer brings the agent's audio back."""
    timer = _we_refresh(gateway)
    async with FakeTelepathAgent(agent="silent") as agent:
        leg, call = await _answered(api, gateway, uac, phone, agent.url, timer)

        leg.cseq += 1
        start = len(uac.received)
        uac.send(leg.build("INVITE", headers=timer, body=sdp_offer(phone.port, "sendonly")))
        held = (await uac.response(200, leg.call_id, method="INVITE", after=start)).body
        assert b"a=recvonly" in held
        start = len(uac.received)
        uac.send(leg.build("ACK", cseq_method="ACK"))
        await until(lambda: call.negotiated.on_hold)
        await asyncio.sleep(0.1)
        quiet = len(phone.received)

        refresh = await _our_refresh(uac, start)
        assert isinstance(refresh, Request)
        assert len(phone.received) == quiet  # held until now: nothing sent
        assert b"a=sendrecv" in refresh.body and b"a=recvonly" not in refresh.body, refresh.body
        assert _origin_version(refresh.body) == _origin_version(held) + 1  # RFC 3264 §8
        _accept_refresh(uac, refresh, sdp_offer(phone.port, "sendrecv"))
        await until(lambda: not call.negotiated.on_hold)
        assert call.negotiated.direction == "sendrecv"
        await until(lambda: len(phone.received) > quiet + 3)  # the agent is heard again

        # The accepted refresh is the last SDP we sent: the next one counts from it (§8).
        leg.cseq += 1
        start = len(uac.received)
        uac.send(leg.build("INVITE", headers=timer, body=sdp_offer(phone.port, "sendonly")))
        again = (await uac.response(200, leg.call_id, method="INVITE", after=start)).body
        uac.send(leg.build("ACK", cseq_method="ACK"))
        assert b"a=recvonly" in again
        assert _origin_version(again) == _origin_version(refresh.body) + 1
        await leg.bye()
        (record,) = await ended_records(api, gateway)
    assert record["disconnect_reason"] == "caller_hangup"


async def test_a_refresh_after_the_caller_disabled_the_audio_offers_it_live_and_resumes_it(
    api: Api, gateway: Gateway, uac: Uac, phone: Phone
) -> None:
    """The caller disables the audio (m=audio 0, RFC 3264 §8.2; our answer has port 0). Our
    next re-INVITE refresh (RFC 4028 §10) offers the call's stream live again in its slot
    (§8.1): our RTP port, the call's codec, a=sendrecv — it offered port 0 again, which the
    caller must answer with port 0 (§6), so the audio could never come back. The caller's
    answer with a port brings the agent's audio back."""
    timer = _we_refresh(gateway)
    async with FakeTelepathAgent(agent="silent") as agent:
        leg, call = await _answered(api, gateway, uac, phone, agent.url, timer)

        leg.cseq += 1
        start = len(uac.received)
        disabling = sdp_offer(phone.port).replace(f"m=audio {phone.port} ".encode(), b"m=audio 0 ")
        uac.send(leg.build("INVITE", headers=timer, body=disabling))
        disabled = (await uac.response(200, leg.call_id, method="INVITE", after=start)).body
        assert b"m=audio 0 " in disabled
        start = len(uac.received)
        uac.send(leg.build("ACK", cseq_method="ACK"))
        await until(lambda: call.negotiated.remote_port == 0)

        refresh = await _our_refresh(uac, start)
        assert isinstance(refresh, Request)
        quiet = len(phone.received)
        (m_line,) = [line for line in refresh.body.split(b"\r\n") if line.startswith(b"m=")]
        assert m_line == f"m=audio {call.media.local_port} RTP/AVP 0 101".encode(), refresh.body
        assert b"a=sendrecv" in refresh.body
        assert _origin_version(refresh.body) == _origin_version(disabled) + 1  # RFC 3264 §8
        _accept_refresh(uac, refresh, sdp_offer(phone.port, "sendrecv"))
        await until(lambda: call.negotiated.remote_port == phone.port)
        assert call.negotiated.direction == "sendrecv" and not call.negotiated.on_hold
        await until(lambda: len(phone.received) > quiet + 3)  # the agent is heard again
        await leg.bye()
        (record,) = await ended_records(api, gateway)
    assert record["disconnect_reason"] == "caller_hangup"


def _we_refresh(gateway: Gateway) -> list[tuple[str, str]]:
    """Lowers the running core's Min-SE floor (RFC 4028 §4) and returns the caller's headers
    that leave the refreshing to us, by re-INVITE (no UPDATE in its Allow)."""
    core = gateway.server.core
    core.config = dataclasses.replace(core.config, min_se=2)
    return [
        ("Supported", "timer"),
        ("Session-Expires", f"{INTERVAL};refresher=uas"),
        ("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS"),
    ]


async def _answered(
    api: Api, gateway: Gateway, uac: Uac, phone: Phone, agent_url: str, timer: list[tuple[str, str]]
) -> tuple[CallLeg, Call]:
    """A call from ``alice``, with an offer, answered and ACKed: its leg and the gateway's call."""
    await create_trunk(api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=agent_url)
    leg = CallLeg(uac, "alice")
    await leg.challenge(phone.port, timer)
    await leg.answered(leg.authenticated_invite(PASSWORD, phone.port, headers=timer))
    uac.send(leg.ack())
    await until(lambda: bool(gateway.manager.calls))
    (call,) = gateway.manager.calls.values()
    return leg, call


async def _our_refresh(uac: Uac, start: int) -> Message:
    """Our next re-INVITE refresh (RFC 4028 §10) after the caller's message ``start``."""
    got = await uac.wait_for(
        lambda m: isinstance(m, Request) and m.method == "INVITE", after=start, within_s=8
    )
    return got.message


def _accept_refresh(uac: Uac, refresh: Request, body: bytes) -> None:
    """The caller's 200 to our refresh: it keeps the interval and leaves refreshing to us."""
    uac.send(
        make_response(
            refresh,
            200,
            headers=[("Session-Expires", f"{INTERVAL};refresher=uac")],
            body=body,
        ).to_bytes()
    )


def _origin_version(sdp: bytes) -> int:
    """The session version of an SDP's ``o=`` line (RFC 4566 §5.2)."""
    match = re.search(rb"^o=\S+ \S+ ([0-9]+) ", sdp, re.M)
    assert match is not None, sdp
    return int(match.group(1))
