"""A trunk's ``codecs`` decide what its calls negotiate, over real SIP on loopback: the offer of
PCMU, PCMA and telephone-event is answered with the trunk's first choice, an offer without any
of its codecs gets 488, and a delayed offer offers only its codecs."""

from __future__ import annotations

import pytest

from telepath.cli.gateway import Gateway
from telepath.sdp import parse
from telepath.testing.fake_custom import FakeTelepathAgent
from tests.integration.conftest import Api
from tests.interop.calls.conftest import create_trunk
from tests.interop.sip.uac import CallLeg, Uac
from tests.interop.sip.waits import ended_records

pytestmark = pytest.mark.interop

MEDIA_PORT = 40006


def codec_names(sdp: bytes) -> list[str]:
    """The encoding names of an SDP body's first stream, in its order."""
    media = parse(sdp).media[0]
    table = media.rtpmap()
    return [table[pt][0] for pt in media.payload_types() if pt in table]


PASSWORD = "codecs-pass-1"


async def test_a_trunks_codecs_decide(api: Api, gateway: Gateway, uac: Uac) -> None:
    async with FakeTelepathAgent(agent="silent") as agent:
        for user, codecs in (("alaw-only", ["PCMA"]), ("default", None), ("hd-only", ["G722"])):
            await create_trunk(
                api, user, PASSWORD, ai_provider="custom", custom_endpoint=agent.url, codecs=codecs
            )
        chosen: dict[str, str] = {}
        for user in ("alaw-only", "default"):
            leg = CallLeg(uac, user)
            await leg.challenge(MEDIA_PORT)
            ok = await leg.answered(leg.authenticated_invite(PASSWORD, MEDIA_PORT))
            uac.send(leg.ack())
            chosen[user] = codec_names(ok.body)[0]
            await leg.bye()
        # Without SDP (a delayed offer) the trunk offers only its own codecs (+ telephone-event).
        leg = CallLeg(uac, "alaw-only")
        await leg.challenge(None)
        ok = await leg.answered(leg.authenticated_invite(PASSWORD, None))
        offered = codec_names(ok.body)
        uac.send(leg.ack())  # no answer in the ACK: the call ends at once, as a failed setup
        # An offer without any of the trunk's codecs (PCMU/PCMA only, trunk G.722 only): 488.
        refused = CallLeg(uac, "hd-only")
        await refused.challenge(MEDIA_PORT)
        start = len(uac.received)
        uac.send(refused.authenticated_invite(PASSWORD, MEDIA_PORT))
        final = await uac.response(488, refused.call_id, after=start)
        await ended_records(api, gateway, count=3)
    assert chosen == {"alaw-only": "PCMA", "default": "PCMU"}
    assert offered == ["PCMA", "telephone-event"]
    assert (final.headers.get("Warning") or "").startswith("305 ")  # incompatible media format


async def test_a_call_refused_before_its_agent_is_dialled_leaves_no_record(
    api: Api, gateway: Gateway, uac: Uac
) -> None:
    # README "Calls": a refusal before the agent is dialled (here 488, no common codec: RFC 3264
    # §6) is counted in telepath_calls_rejected_total, not recorded — no call record, no webhook.
    async with FakeTelepathAgent(agent="silent") as agent:
        refused_trunk = await create_trunk(
            api,
            "g722-only",
            PASSWORD,
            ai_provider="custom",
            custom_endpoint=agent.url,
            codecs=["G722"],
        )
        answered_trunk = await create_trunk(
            api, "any-codec", PASSWORD, ai_provider="custom", custom_endpoint=agent.url
        )
        refused = CallLeg(uac, "g722-only")
        await refused.challenge(MEDIA_PORT)  # the UAC offers PCMU and PCMA only
        start = len(uac.received)
        uac.send(refused.authenticated_invite(PASSWORD, MEDIA_PORT))
        await uac.response(488, refused.call_id, after=start)
        assert agent.handshakes == []  # the agent was never dialled
        # A call answered after it: its record is written after any the refusal would have left.
        leg = CallLeg(uac, "any-codec")
        await leg.challenge(MEDIA_PORT)
        await leg.answered(leg.authenticated_invite(PASSWORD, MEDIA_PORT))
        uac.send(leg.ack())
        await leg.bye()
        calls = await ended_records(api, gateway, count=1)
    assert [c["trunk_id"] for c in calls] == [answered_trunk["id"]]
    assert refused_trunk["id"] != answered_trunk["id"]
    rejected = api.state.metrics.registry.get_sample_value(
        "telepath_calls_rejected_total", {"reason": "no_common_codec"}
    )
    assert rejected == 1
