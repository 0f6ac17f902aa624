"""Inbound numbers and address authentication over real SIP on loopback.

A trunk with ``sip_auth`` "address" takes INVITEs for its numbers from its allowed sources
without a challenge — a carrier that answers none (SIPp plays one). From anywhere else, or for
another number, the INVITE is challenged like any unknown one. A digest trunk with
``inbound_numbers`` is reached by its number in the Request-URI and refuses other numbers.
A Request-URI naming a trunk's username is that trunk's call, whatever number another
account's trunk claims and the To header carries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from telepath.cli.gateway import Gateway
from telepath.sip.message import Response
from telepath.testing.fake_custom import FakeTelepathAgent
from tests.integration.conftest import Api
from tests.interop.calls.conftest import create_trunk
from tests.interop.calls.harness import Phone
from tests.interop.media.sipp import require_sipp
from tests.interop.sip.sipp_scenarios import run_sipp, unchallenged_call
from tests.interop.sip.uac import (
    CallLeg,
    Message,
    Uac,
    challenge_params,
    new_branch,
    sdp_offer,
)
from tests.interop.sip.waits import ended_records

pytestmark = pytest.mark.interop

MEDIA_PORT = 40004
PASSWORD = "numbers-pass-1"


async def address_trunk(
    api: Api, user: str, agent_url: str, network: str, number: str
) -> dict[str, Any]:
    """A custom-agent trunk taking calls for ``number`` from ``network`` without a challenge."""
    return await create_trunk(
        api,
        user,
        PASSWORD,
        ai_provider="custom",
        custom_endpoint=agent_url,
        sip_auth="address",
        allowed_addresses=[network],
        inbound_numbers=[number],
    )


async def test_a_carrier_that_answers_no_challenge_reaches_its_number(
    api: Api, gateway: Gateway, tmp_path: Path, phone: Phone
) -> None:
    require_sipp()
    async with FakeTelepathAgent(agent="silent") as agent:
        trunk = await address_trunk(api, "carrier-ip", agent.url, "127.0.0.0/8", "+14155550100")
        result = await run_sipp(
            unchallenged_call("+14155550100", phone.port, hold_ms=800),
            tmp_path,
            gateway.server.bound["UDP"],
            user="unused",
            password="unused",
        )
        assert result.returncode == 0, result.stdout + result.errors
        (record,) = await ended_records(api, gateway)
    assert "SIP/2.0 401" not in result.messages  # never challenged
    assert record["trunk_id"] == trunk["id"]
    assert record["to"] == "+14155550100"
    assert record["disconnect_reason"] == "caller_hangup"
    assert len(agent.handshakes) == 1


async def trunk_of_account(api: Api, key: str, user: str, **fields: Any) -> dict[str, Any]:
    """A trunk created by the account whose API key is ``key`` (``create_trunk``: the default
    account's)."""
    body = {"name": f"trunk {user}", "sip_username": user, "sip_password": PASSWORD, **fields}
    resp = await api.post("/v1/trunks", body, key=key)
    assert resp.status_code == 201, resp.text
    data: dict[str, Any] = resp.json()
    return data


async def invite(
    leg: CallLeg, status: int, *, password: str | None = PASSWORD, algorithm: str = "MD5"
) -> int:
    """Place ``leg``'s INVITE and return the first final status. A 401 is answered with
    ``password``'s digest (unless None), whose final status must be ``status`` (200: ACKed)."""
    branch = new_branch()
    start = len(leg.uac.received)
    leg.uac.send(leg.build("INVITE", branch=branch, body=sdp_offer(MEDIA_PORT)))

    def final(message: Message) -> bool:
        return (
            isinstance(message, Response)
            and message.call_id == leg.call_id
            and (message.status >= 200)
        )

    first = (await leg.uac.wait_for(final, after=start)).message
    assert isinstance(first, Response)
    if first.status >= 300:  # the ACK of a failure is part of its transaction (§17.1.1.3)
        leg.uac.send(leg.build("ACK", branch=branch, to_tag=first.to.tag, cseq_method="ACK"))
    if first.status != 401 or password is None:
        return first.status
    leg.challenges = first.headers.get_all("WWW-Authenticate")
    start = len(leg.uac.received)
    leg.uac.send(leg.authenticated_invite(password, MEDIA_PORT, algorithm=algorithm))
    answer = await leg.uac.response(status, leg.call_id, after=start)
    if status == 200:
        leg.to_tag = answer.to.tag
        leg.uac.send(leg.ack())
    return 401


async def test_numbers_route_and_restrict(api: Api, gateway: Gateway, uac: Uac) -> None:
    host, port = uac.target

    def to(number: str) -> str:
        return f"sip:{number}@{host}:{port}"

    async with FakeTelepathAgent(agent="silent") as agent:
        await address_trunk(api, "far-carrier", agent.url, "192.0.2.0/24", "+14155550111")
        numbered = await create_trunk(
            api,
            "numbered",
            PASSWORD,
            ai_provider="custom",
            custom_endpoint=agent.url,
            inbound_numbers=["+14155550122"],
            sip_digest_algorithms="SHA-256",
        )
        # Not from its carrier's addresses: challenged like any unknown INVITE; then even the
        # right credentials end in 403.
        assert await invite(CallLeg(uac, "far-carrier", uri=to("+14155550111")), 403) == 401
        # A number nobody serves: challenged too (no oracle for which numbers exist).
        assert await invite(CallLeg(uac, "nobody", uri=to("+14155550199")), 0, password=None) == 401

        # A digest trunk reached by its number: the challenge is its own (SHA-256 only here).
        leg = CallLeg(uac, "numbered", uri=to("+14155550122"))
        assert await invite(leg, 200, algorithm="SHA-256") == 401
        assert [challenge_params(c).get("algorithm") for c in leg.challenges] == ["SHA-256"]
        await leg.bye()
        # Or by its username, the dialled number in To (an origination URI with the username).
        leg = CallLeg(uac, "numbered", to_uri=to("+14155550122"))
        assert await invite(leg, 200, algorithm="SHA-256") == 401
        await leg.bye()
        # Its credentials for another number, or for no number at all, are refused with 404.
        for other in (CallLeg(uac, "numbered", uri=to("+14155550123")), CallLeg(uac, "numbered")):
            assert await invite(other, 404, algorithm="SHA-256") == 401
        records = await ended_records(api, gateway, count=2)
    assert [(r["trunk_id"], r["to"]) for r in records] == [(numbered["id"], "+14155550122")] * 2
    # the agent is told the dialled number both times
    starts = [m for m in agent.received if m["type"] == "start"]
    assert [m["call"]["called"] for m in starts] == ["+14155550122"] * 2
    counters = gateway.manager.counters
    assert counters.get("rejected_source_not_allowed") == 1
    assert counters.get("rejected_number_not_served") == 2


async def test_allowed_caller_numbers_refuse_other_callers_after_the_digest(
    api: Api, gateway: Gateway, uac: Uac
) -> None:
    """A trunk allowing the caller answers — its From written with visual separators
    (sip:+1-415-555-0100), recorded in the canonical form the list matched; one allowing only
    another caller refuses with 403 — after the challenge, so the list is no oracle."""
    async with FakeTelepathAgent(agent="silent") as agent:
        await create_trunk(
            api,
            "callers-ok",
            PASSWORD,
            ai_provider="custom",
            custom_endpoint=agent.url,
            allowed_caller_numbers=["+1 415 555 0100"],
        )
        await create_trunk(
            api,
            "callers-other",
            PASSWORD,
            ai_provider="custom",
            custom_endpoint=agent.url,
            allowed_caller_numbers=["+15559990000"],
        )
        leg = CallLeg(uac, "callers-ok", from_user="+1-415-555-0100")
        assert await invite(leg, 200) == 401
        await leg.bye()
        assert await invite(CallLeg(uac, "callers-other"), 403) == 401  # as +15551230000
        records = await ended_records(api, gateway)
    assert [r["disconnect_reason"] for r in records] == ["caller_hangup"]  # the 403: no call
    assert records[0]["from"] == "+14155550100"  # as admission matched it
    starts = [m for m in agent.received if m["type"] == "start"]
    assert [m["call"]["caller"] for m in starts] == ["+14155550100"]  # the agent is told so
    assert len(agent.handshakes) == 1


async def test_a_number_in_to_never_takes_another_account_s_named_trunk(
    api: Api, gateway: Gateway, uac: Uac
) -> None:
    """Account B's trunk set up the Quickstart way (digest, no numbers), its carrier sending to
    ``sip:<B's username>@gw`` with the dialled number in To; account A's address-auth trunk
    claims that number for the carrier's addresses. B's calls stay B's: challenged with B's
    own challenge (SHA-256 only here), answered by B's agent with B's credentials, and A's
    agent never hears of them."""
    host, port = uac.target
    number = "+14155550100"
    async with (
        FakeTelepathAgent(agent="silent") as b_agent,
        FakeTelepathAgent(agent="silent") as a_agent,
    ):
        b_trunk = await create_trunk(
            api,
            "b-support",
            PASSWORD,
            ai_provider="custom",
            custom_endpoint=b_agent.url,
            sip_digest_algorithms="SHA-256",
        )
        a_key = await api.new_account_key("tenant-a")
        await trunk_of_account(
            api,
            a_key,
            "a-squatter",
            ai_provider="custom",
            custom_endpoint=a_agent.url,
            sip_auth="address",
            allowed_addresses=["127.0.0.0/8"],  # the carrier's (shared) addresses
            inbound_numbers=[number],
        )
        # B's carrier: the Request-URI names B's trunk (in any case), the number only in To
        for named in ("b-support", "B-Support"):
            uri, to = f"sip:{named}@{host}:{port}", f"sip:{number}@{host}:{port}"
            leg = CallLeg(uac, "b-support", uri=uri, to_uri=to)
            assert await invite(leg, 200, algorithm="SHA-256") == 401
            assert [challenge_params(c).get("algorithm") for c in leg.challenges] == ["SHA-256"]
            await leg.bye()
        records = await ended_records(api, gateway, count=2)
        assert [(r["trunk_id"], r["to"]) for r in records] == [(b_trunk["id"], number)] * 2
        assert len(b_agent.handshakes) == 2
        assert a_agent.handshakes == []
        # The number itself in the Request-URI is still A's, unchallenged: numbers are claimed
        # first come, first served (README, "Security"); so is A's own username with its own
        # number in To
        await answered_unchallenged(CallLeg(uac, "a-caller", uri=f"sip:{number}@{host}:{port}"))
        own = CallLeg(uac, "a-squatter", to_uri=f"sip:{number}@{host}:{port}")
        await answered_unchallenged(own)
        assert len(a_agent.handshakes) == 2


async def answered_unchallenged(leg: CallLeg) -> None:
    """``leg``'s INVITE answered 200 at once (no challenge); ACKed, then hung up."""
    assert await invite(leg, 200, password=None) == 200
    leg.to_tag = (await leg.uac.response(200, leg.call_id, method="INVITE")).to.tag
    leg.uac.send(leg.ack())
    await leg.bye()


async def test_a_registrar_s_number_in_to_never_takes_another_account_s_named_trunk(
    api: Api, gateway: Gateway
) -> None:
    """The same through a registration: A's trunk registers with the carrier's shared
    registrar (127.0.0.2) and lists B's number; an INVITE from that registrar to B's username
    with the number in To is challenged for B, not admitted as A's registrar's call — while
    the number in the Request-URI from the registrar is still A's, unchallenged."""
    gw = gateway.server.bound["UDP"]
    registrar = await Uac.open("UDP", gw, host="127.0.0.2")  # never answers: not needed
    number = "+14155550177"
    try:
        async with (
            FakeTelepathAgent(agent="silent") as b_agent,
            FakeTelepathAgent(agent="silent") as a_agent,
        ):
            b_trunk = await create_trunk(
                api,
                "b-registrar",
                PASSWORD,
                ai_provider="custom",
                custom_endpoint=b_agent.url,
                sip_digest_algorithms="SHA-256",
            )
            a_key = await api.new_account_key("tenant-a")
            await trunk_of_account(
                api,
                a_key,
                "a-registered",
                ai_provider="custom",
                custom_endpoint=a_agent.url,
                registration={
                    "registrar": f"sip:127.0.0.2:{registrar.local[1]}",
                    "username": "a-account",
                    "password": "carrier-secret-7",
                },
                inbound_numbers=[number],
            )
            to = f"sip:{number}@127.0.0.1:{gw[1]}"
            leg = CallLeg(registrar, "b-registrar", to_uri=to)
            assert await invite(leg, 200, algorithm="SHA-256") == 401
            assert [challenge_params(c).get("algorithm") for c in leg.challenges] == ["SHA-256"]
            await leg.bye()
            (record,) = await ended_records(api, gateway)
            assert record["trunk_id"] == b_trunk["id"]
            assert len(b_agent.handshakes) == 1
            assert a_agent.handshakes == []
            # the number itself in the Request-URI, from the registrar: A's, unchallenged
            await answered_unchallenged(CallLeg(registrar, "a-caller", uri=to, to_uri=to))
            assert len(a_agent.handshakes) == 1
    finally:
        await registrar.close()
