"""TELEPATH_SIP_MAX_CPS: new call attempts past the rate get 503 + Retry-After before any work
(no challenge, no database), while the authenticated retry of an admitted attempt goes through."""

from __future__ import annotations

from typing import Any

import pytest

from telepath.cli.gateway import Gateway
from telepath.sip.message import Request, Response
from telepath.testing.fake_custom import FakeTelepathAgent
from tests.integration.conftest import Api
from tests.interop.calls.conftest import create_trunk
from tests.interop.sip.uac import (
    CallLeg,
    Uac,
    challenge_params,
    digest_authorization,
    new_branch,
    request_uri,
    sdp_offer,
)

Message = Request | Response

pytestmark = pytest.mark.interop


async def _finals(uac: Uac, legs: list[CallLeg]) -> list[int]:
    """Each leg's final status (>= 300), in the legs' order; each 503 says Retry-After 1."""
    statuses = []
    for leg in legs:

        def is_final(m: Message, cid: str = leg.call_id) -> bool:
            return isinstance(m, Response) and m.status >= 300 and m.call_id == cid

        final = (await uac.wait_for(is_final)).message
        assert isinstance(final, Response)
        statuses.append(final.status)
        if final.status == 503:
            assert final.headers.get("Retry-After") == "1"
    return statuses


@pytest.fixture
def settings_overrides(settings_overrides: dict[str, Any]) -> dict[str, Any]:
    return {**settings_overrides, "sip_max_cps": 2}


async def test_attempts_past_the_rate_get_503_admitted_ones_complete(
    api: Api, gateway: Gateway, uac: Uac
) -> None:
    async with FakeTelepathAgent(agent="silent") as agent:
        await create_trunk(
            api, "rated", "rated-pass-1", ai_provider="custom", custom_endpoint=agent.url
        )
        legs = [CallLeg(uac, "rated") for _ in range(5)]
        for leg in legs:
            uac.send(leg.build("INVITE", branch=new_branch(), body=sdp_offer(40006)))
        statuses = await _finals(uac, legs)
        assert sorted(statuses) == [401, 401, 503, 503, 503]
        # an admitted attempt completes: its authenticated INVITE is not counted again
        admitted = legs[statuses.index(401)]
        admitted.challenges = [
            r.message.headers.get("WWW-Authenticate") or ""
            for r in uac.responses(admitted.call_id)
            if getattr(r.message, "status", 0) == 401
        ]
        ok = await admitted.answered(admitted.authenticated_invite("rated-pass-1", 40006))
        assert ok.status == 200
        uac.send(admitted.ack())
    assert gateway.manager.counters.get("rejected_rate") == 3


async def test_made_up_credentials_are_no_retry_and_get_the_rate_limit(
    api: Api, gateway: Gateway, uac: Uac
) -> None:
    # An Authorization whose nonce we never issued is no retry of an admitted attempt: it is
    # counted against the rate like a first INVITE, so forging one does not skip admission.
    await create_trunk(
        api, "forged", "forged-pass-1", ai_provider="custom", custom_endpoint="ws://127.0.0.1:9"
    )
    forged = (
        'Digest username="forged", realm="telepath", nonce="bogus", uri="sip:forged@x", '
        'response="00000000000000000000000000000000", algorithm=MD5'
    )
    legs = [CallLeg(uac, "forged") for _ in range(5)]
    for leg in legs:
        uac.send(
            leg.build(
                "INVITE",
                branch=new_branch(),
                headers=[("Authorization", forged)],
                body=sdp_offer(40006),
            )
        )
    assert sorted(await _finals(uac, legs)) == [401, 401, 503, 503, 503]
    assert gateway.manager.counters.get("rejected_rate") == 3


async def test_a_challenge_answered_twice_is_admitted_once(
    api: Api, gateway: Gateway, uac: Uac
) -> None:
    # The nonce of an admitted attempt's challenge skips admission for its retry only: a new
    # call answering the same challenge again (the same nonce, nc 2) is a new attempt.
    async with FakeTelepathAgent(agent="silent") as agent:
        await create_trunk(
            api, "twice", "twice-pass-1", ai_provider="custom", custom_endpoint=agent.url
        )
        first = CallLeg(uac, "twice")
        await first.challenge(40006)
        for _ in range(2):  # the bucket (two a second) emptied by other callers' attempts
            other = CallLeg(uac, "twice")
            uac.send(other.build("INVITE", branch=new_branch(), body=sdp_offer(40008)))
        ok = await first.answered(first.authenticated_invite("twice-pass-1", 40006))
        assert ok.status == 200
        uac.send(first.ack())
        again = CallLeg(uac, "twice")
        auth = digest_authorization(
            challenge_params(first.challenges[-1]),
            username="twice",
            password="twice-pass-1",
            method="INVITE",
            uri=request_uri(again.build("INVITE", body=b"")),
            nc=2,
        )
        uac.send(
            again.build(
                "INVITE",
                branch=new_branch(),
                headers=[("Authorization", auth)],
                body=sdp_offer(40010),
            )
        )
        refused = await uac.response(503, again.call_id)
        assert refused.headers.get("Retry-After") == "1"
        await first.bye()
