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
from tests.interop.sip.uac import CallLeg, Uac, new_branch, sdp_offer

Message = Request | Response

pytestmark = pytest.mark.interop


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
        statuses = []
        for leg in legs:

            def is_final(m: Message, cid: str = leg.call_id) -> bool:
                return isinstance(m, Response) and m.status >= 300 and m.call_id == cid

            final = await uac.wait_for(is_final)
            statuses.append(final.message.status)  # type: ignore[union-attr]
            if final.message.status == 503:  # type: ignore[union-attr]
                assert final.message.headers.get("Retry-After") == "1"
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
