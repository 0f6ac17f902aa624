"""``telepath call``'s dialler against the real gateway: SHA-256 digest, audio both ways."""

from __future__ import annotations

import logging

import pytest

from telepath.cli.dialer import Dialer
from telepath.cli.gateway import Gateway
from telepath.testing.fake_custom import FakeTelepathAgent
from telepath.testing.tones import dominant_frequency, g711_to_pcm16
from tests.integration.conftest import Api, api, settings  # noqa: F401  (fixtures)
from tests.interop.calls.conftest import (  # noqa: F401  (fixtures)
    create_trunk,
    database_url,
    gateway,
    settings_overrides,
)

pytestmark = pytest.mark.interop


async def test_dialer_call_both_ways(
    api: Api,  # noqa: F811
    gateway: Gateway,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with FakeTelepathAgent(agent="tone", tone_hz=440, response_ms=1500) as agent:
        await create_trunk(
            api, "bob", "dialer-pass-1", ai_provider="custom", custom_endpoint=agent.url
        )
        host, port = gateway.server.bound["UDP"]
        dialer = Dialer(f"sip:bob@{host}:{port}", username="bob", password="dialer-pass-1")
        result = await dialer.run(duration_s=2.5, tone_hz=1000)
    assert result.status == 200 and result.setup_ms is not None
    assert result.codec == "PCMU"
    assert result.ended_by == "dialer"
    assert abs(dominant_frequency(result.recorded) - 440) < 15
    heard = g711_to_pcm16(bytes(agent.caller_audio), "pcmu")
    assert abs(dominant_frequency(heard) - 1000) < 15
    # The dialler answers the SHA-256 challenge when one is offered, so this call also proves
    # SHA-256 digest (RFC 8760) end to end over UDP.
    calls = (await api.get("/v1/calls")).json()["calls"]
    detail = (await api.get(f"/v1/calls/{calls[0]['id']}")).json()
    assert detail["disconnect_reason"] == "caller_hangup"
    assert "Digest <redacted>" in detail["sip_trace"]
    # nothing personal or secret at INFO: no phone number, no password, no SIP payloads
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "call_" in logged  # the call was logged...
    assert "+15550000000" not in logged and "5550000000" not in logged  # ...without the caller
    assert "dialer-pass-1" not in logged and "Digest" not in logged


async def test_dialer_wrong_password_is_403(api: Api, gateway: Gateway) -> None:  # noqa: F811
    await create_trunk(
        api, "carol", "right-pass-1", ai_provider="custom", custom_endpoint="ws://127.0.0.1:9/x"
    )
    host, port = gateway.server.bound["UDP"]
    dialer = Dialer(f"sip:carol@{host}:{port}", username="carol", password="wrong-pass-1")
    result = await dialer.run(duration_s=1)
    assert result.status == 403
    assert result.setup_ms is None
