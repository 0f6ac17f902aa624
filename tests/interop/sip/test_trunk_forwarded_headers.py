"""A trunk's ``forward_sip_headers``: the INVITE's headers of those names reach its agent's
``start`` (case-insensitively, first value, control characters dropped), over real SIP."""

from __future__ import annotations

import pytest

from telepath.cli.gateway import Gateway
from telepath.testing.fake_custom import FakeTelepathAgent
from tests.integration.conftest import Api
from tests.interop.calls.conftest import create_trunk
from tests.interop.sip.uac import CallLeg, Uac
from tests.interop.sip.waits import ended_records

pytestmark = pytest.mark.interop

MEDIA_PORT = 40008
PASSWORD = "headers-pass-1"


async def test_forwarded_headers_reach_the_agent(api: Api, gateway: Gateway, uac: Uac) -> None:
    async with FakeTelepathAgent(agent="silent") as agent:
        await create_trunk(
            api,
            "crm",
            PASSWORD,
            ai_provider="custom",
            custom_endpoint=agent.url,
            forward_sip_headers=["X-Customer-Id", "X-Absent", "X-Queue"],
        )
        sent = [
            ("x-customer-id", "cust-42"),  # any case
            ("X-Customer-Id", "second"),  # only the first value
            ("X-Queue", "sales\x7f"),  # a control character is dropped
            ("X-Other", "not forwarded"),
        ]
        leg = CallLeg(uac, "crm")
        await leg.challenge(MEDIA_PORT, headers=sent)
        await leg.answered(leg.authenticated_invite(PASSWORD, MEDIA_PORT, headers=sent))
        uac.send(leg.ack())
        await leg.bye()
        await ended_records(api, gateway)
    (start,) = [m for m in agent.received if m["type"] == "start"]
    assert start["call"]["sip_headers"] == {"X-Customer-Id": "cust-42", "X-Queue": "sales"}
