"""A trunk's ``allowed_addresses``: its INVITEs and REGISTERs must come from one of them, over
real SIP on loopback (the raw UAC sends from 127.0.0.1). Right credentials from elsewhere get
the same 403 as wrong ones, are counted, are not banned, and a change through the API applies
to the next call."""

from __future__ import annotations

from typing import Any

import pytest

from telepath.cli.gateway import Gateway
from telepath.testing.fake_custom import FakeTelepathAgent
from tests.integration.conftest import Api
from tests.interop.calls.conftest import create_trunk
from tests.interop.sip.test_register import Registration
from tests.interop.sip.uac import CallLeg, Uac
from tests.interop.sip.waits import ended_records

pytestmark = pytest.mark.interop

MEDIA_PORT = 40002
PASSWORD = "allowlist-pass-1"


@pytest.fixture
def settings_overrides(settings_overrides: dict[str, Any]) -> dict[str, Any]:
    return {**settings_overrides, "sip_auth_failures_before_ban": 3}


async def invite(uac: Uac, user: str, status: int) -> CallLeg:
    leg = CallLeg(uac, user)
    await leg.challenge(MEDIA_PORT)
    start = len(uac.received)
    uac.send(leg.authenticated_invite(PASSWORD, MEDIA_PORT))
    final = await uac.response(status, leg.call_id, after=start)
    if status == 200:
        leg.to_tag = final.to.tag
        uac.send(leg.ack())
    return leg


async def test_calls_and_registrations_only_from_allowed_sources(
    api: Api, gateway: Gateway, uac: Uac
) -> None:
    async with FakeTelepathAgent(agent="silent") as agent:
        carrier = await create_trunk(
            api,
            "carrier",
            PASSWORD,
            ai_provider="custom",
            custom_endpoint=agent.url,
            allowed_addresses=["192.0.2.0/24", "2001:db8::/32"],
        )
        await create_trunk(
            api,
            "local",
            PASSWORD,
            ai_provider="custom",
            custom_endpoint=agent.url,
            allowed_addresses=["127.0.0.0/8"],
        )
        # More refusals than the ban threshold (3 here): right credentials, wrong place.
        for _ in range(5):
            await invite(uac, "carrier", 403)
        lhost, lport = uac.local
        contact = [("Contact", f"<sip:carrier@{lhost}:{lport}>")]
        refused = await Registration(uac, "carrier").send(contact, PASSWORD, status=403)
        assert refused.status == 403
        assert len(agent.handshakes) == 0  # no agent was ever connected for them
        metrics = api.state.metrics.render().decode()
        assert 'telepath_sip_auth_failures_total{reason="source_not_allowed"} 6.0' in metrics
        assert 'telepath_calls_rejected_total{reason="source_not_allowed"} 5.0' in metrics

        # The source was not banned: the trunk that allows it is served at once.
        leg = await invite(uac, "local", 200)
        await leg.bye()
        assert len(agent.handshakes) == 1

        # A change through the API applies to the next call, in both directions.
        trunk_id = carrier["id"]
        opened = await api.patch(f"/v1/trunks/{trunk_id}", {"allowed_addresses": ["127.0.0.1"]})
        assert opened.status_code == 200
        leg = await invite(uac, "carrier", 200)
        await leg.bye()
        closed = await api.patch(f"/v1/trunks/{trunk_id}", {"allowed_addresses": ["10.0.0.0/8"]})
        assert closed.status_code == 200
        await invite(uac, "carrier", 403)
        cleared = await api.patch(f"/v1/trunks/{trunk_id}", {"allowed_addresses": None})
        assert cleared.status_code == 200
        leg = await invite(uac, "carrier", 200)
        await leg.bye()
        records = await ended_records(api, gateway, count=3)
    assert {r["disconnect_reason"] for r in records} == {"caller_hangup"}
