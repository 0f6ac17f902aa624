"""TLS and SHA-256 digest (RFC 8760), which neither SIPp nor baresip from Debian speak: a Python
client over ``ssl`` places the call, answering the first (SHA-256) challenge of the default
order, and hangs up. Also SHA-256 over UDP, and MD5 still accepted from the same challenge."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from telepath.cli.gateway import Gateway
from telepath.testing.fake_custom import FakeTelepathAgent
from tests.certs import tls_listener
from tests.integration.conftest import Api
from tests.interop.calls.conftest import create_trunk
from tests.interop.sip.uac import CallLeg, Uac, challenge_params
from tests.interop.sip.waits import ended_records

pytestmark = pytest.mark.interop

PASSWORD = "tls-and-sha256"
MEDIA_PORT = 40002


@pytest.fixture
def settings_overrides(settings_overrides: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    overrides = dict(settings_overrides)
    overrides.pop("sip_digest_algorithms")  # the default order: SHA-256, then MD5
    return {**overrides, **tls_listener(tmp_path)}


@pytest.fixture
async def agent(api: Api) -> AsyncIterator[FakeTelepathAgent]:
    async with FakeTelepathAgent(agent="silent") as fake:
        await create_trunk(api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=fake.url)
        yield fake


def client_context(settings_cert: Path) -> ssl.SSLContext:
    """Verifies the gateway's certificate and its IP address, like a carrier would."""
    ctx = ssl.create_default_context(cafile=str(settings_cert))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


async def _call(uac: Uac, algorithm: str) -> tuple[CallLeg, list[dict[str, str]]]:
    leg = CallLeg(uac, "alice")
    await leg.challenge(MEDIA_PORT)
    offered = [challenge_params(c) for c in leg.challenges]
    ok = await leg.answered(leg.authenticated_invite(PASSWORD, MEDIA_PORT, algorithm=algorithm))
    assert ok.content_type == "application/sdp" and b"m=audio " in ok.body
    uac.send(leg.ack())
    return leg, offered


async def test_tls_call_with_sha256_digest(
    api: Api, gateway: Gateway, agent: FakeTelepathAgent
) -> None:
    settings = api.state.settings
    assert settings.sip_tls_cert is not None
    target = gateway.server.bound["TLS"]
    uac = await Uac.open("TLS", target, client_context(settings.sip_tls_cert))
    try:
        leg, offered = await _call(uac, "SHA-256")
        # RFC 8760 §2.4: one challenge per algorithm, most preferred first, same realm.
        assert [c["algorithm"] for c in offered] == ["SHA-256", "MD5"]
        assert {c["realm"] for c in offered} == {"sip.example.test"}
        assert all(c["qop"] == "auth" for c in offered)
        assert leg.ok is not None
        contact = leg.ok.headers.get("Contact") or ""
        # a SIPS Request-URI makes the dialog secure: our Contact is SIPS too (§12.1.1), and
        # without the deprecated transport=tls (RFC 5630 §3.1.3)
        assert contact == f"<sips:telepath@127.0.0.1:{target[1]}>"
        assert gateway.manager.active_calls == 1
        await leg.bye()
    finally:
        await uac.close()
    calls = await ended_records(api, gateway)
    assert len(calls) == 1 and calls[0]["disconnect_reason"] == "caller_hangup"
    detail = (await api.get(f"/v1/calls/{calls[0]['id']}")).json()
    assert "--- in TLS 127.0.0.1:" in detail["sip_trace"]
    assert len(agent.handshakes) == 1


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
async def test_udp_call_with_default_challenge_order(
    api: Api, gateway: Gateway, agent: FakeTelepathAgent, algorithm: str
) -> None:
    uac = await Uac.open("UDP", gateway.server.bound["UDP"])
    try:
        leg, offered = await _call(uac, algorithm)
        assert [c["algorithm"] for c in offered] == ["SHA-256", "MD5"]
        assert len({c["nonce"] for c in offered}) == 1  # one nonce for both challenges
        await leg.bye()
    finally:
        await uac.close()
    await ended_records(api, gateway)


async def test_sha256_wrong_password_is_403(gateway: Gateway, agent: FakeTelepathAgent) -> None:
    uac = await Uac.open("UDP", gateway.server.bound["UDP"])
    try:
        leg = CallLeg(uac, "alice")
        await leg.challenge(MEDIA_PORT)
        start = len(uac.received)
        uac.send(leg.authenticated_invite("not-it", MEDIA_PORT, algorithm="SHA-256"))
        await uac.response(403, leg.call_id, after=start)
    finally:
        await uac.close()
    assert len(agent.handshakes) == 0


async def test_tls_rejects_a_client_that_does_not_trust_it(gateway: Gateway) -> None:
    """The listener really is TLS: a verifying client without our CA fails the handshake."""
    with pytest.raises(ssl.SSLCertVerificationError):
        await Uac.open("TLS", gateway.server.bound["TLS"], ssl.create_default_context())
