"""Behind NAT: with TELEPATH_PUBLIC_ADDRESS set, the 200 OK's Contact and the SDP answer carry
that address (RFC 3261 §8.1.1.8 Contact, RFC 4566 c=), not the bound one."""

from __future__ import annotations

from typing import Any

import pytest

from telepath.cli.gateway import Gateway
from telepath.sip.message import Response
from telepath.testing.fake_custom import FakeTelepathAgent
from tests.integration.conftest import Api
from tests.interop.calls.conftest import create_trunk
from tests.interop.sip.uac import CallLeg, Uac

pytestmark = pytest.mark.interop

PUBLIC = "203.0.113.9"


@pytest.fixture
def settings_overrides(settings_overrides: dict[str, Any]) -> dict[str, Any]:
    return {**settings_overrides, "public_address": PUBLIC}


async def test_contact_and_sdp_carry_the_public_address(
    api: Api, gateway: Gateway, uac: Uac
) -> None:
    async with FakeTelepathAgent(agent="silent") as agent:
        await create_trunk(
            api, "natted", "nat-pass-123", ai_provider="custom", custom_endpoint=agent.url
        )
        leg = CallLeg(uac, "natted")
        await leg.challenge(40004)
        ok = await leg.answered(leg.authenticated_invite("nat-pass-123", 40004))
        uac.send(leg.ack())
    contact = ok.headers.get("Contact") or ""
    assert f"@{PUBLIC}:" in contact
    (ringing,) = [
        r.message
        for r in uac.received
        if isinstance(r.message, Response) and r.message.status == 180
    ]
    assert f"@{PUBLIC}:" in (ringing.headers.get("Contact") or "")  # an early dialog's (§12.1.1)
    sdp = ok.body.decode()
    assert f"c=IN IP4 {PUBLIC}" in sdp
    assert f"IN IP4 {PUBLIC}" in sdp.split("o=", 1)[1].splitlines()[0]
    assert "127.0.0.1" not in sdp


class TestIpv6:
    """An IPv6 public address: bracketed in SIP (RFC 3261 §25.1 IPv6reference), bare in SDP
    (RFC 4566 §5.7, IP6). Unbracketed, the Contact's host and port ran together."""

    PUBLIC6 = "2001:db8::9"

    @pytest.fixture
    def settings_overrides(self, settings_overrides: dict[str, Any]) -> dict[str, Any]:
        return {**settings_overrides, "public_address": self.PUBLIC6}

    async def test_contact_brackets_it_and_sdp_does_not(
        self, api: Api, gateway: Gateway, uac: Uac
    ) -> None:
        async with FakeTelepathAgent(agent="silent") as agent:
            await create_trunk(
                api, "natted6", "nat-pass-123", ai_provider="custom", custom_endpoint=agent.url
            )
            leg = CallLeg(uac, "natted6")
            await leg.challenge(40006)
            ok = await leg.answered(leg.authenticated_invite("nat-pass-123", 40006))
            uac.send(leg.ack())
        port = gateway.server.bound["UDP"][1]
        assert ok.headers.get("Contact") == f"<sip:telepath@[{self.PUBLIC6}]:{port}>"
        sdp = ok.body.decode()
        assert f"c=IN IP6 {self.PUBLIC6}\r\n" in sdp
