"""baresip (Debian's 1.0.0) over SIP/TLS: a real phone stack that verifies the gateway's
certificate against a CA file (``sip_cafile``), with MD5 digest (all libre 1.x speaks; see
``test_baresip.py``), sending its tone over the call and hanging up with BYE on the same
TLS connection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from telepath.cli.gateway import Gateway
from telepath.testing.fake_custom import FakeTelepathAgent
from telepath.testing.tones import dominant_frequency, g711_to_pcm16
from tests.certs import tls_listener
from tests.integration.conftest import Api
from tests.interop.calls.conftest import create_trunk
from tests.interop.sip.test_baresip import PASSWORD, _dial, baresip_config, require_baresip
from tests.interop.sip.waits import ended_records

pytestmark = pytest.mark.interop


@pytest.fixture
def settings_overrides(settings_overrides: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    return {
        **settings_overrides,
        "sip_digest_algorithms": "MD5",
        **tls_listener(tmp_path),
    }


async def test_baresip_call_over_tls(
    api: Api, gateway: Gateway, tmp_path: Path, settings_overrides: dict[str, Any]
) -> None:
    require_baresip()
    port = gateway.server.bound["TLS"][1]
    cafile = settings_overrides["sip_tls_cert"]
    config = baresip_config(tmp_path, port, transport="tls", extra=f"sip_cafile\t\t{cafile}\n")
    async with FakeTelepathAgent(agent="silent") as agent:
        await create_trunk(api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=agent.url)
        out = await _dial(config, port, 2, scheme_params=";transport=tls")
        assert "Call established" in out, out
        (record,) = await ended_records(api, gateway)
    assert record["status"] == "connected" and record["disconnect_reason"] == "caller_hangup"
    heard = g711_to_pcm16(bytes(agent.caller_audio), "pcmu")
    assert len(heard) > 4000, out
    assert abs(dominant_frequency(heard) - 440) < 15
    detail = (await api.get(f"/v1/calls/{record['id']}")).json()
    assert "SIP/2.0/TLS" in detail["sip_trace"]  # the whole dialog went over TLS
    assert "BYE sip:" in detail["sip_trace"]
    assert gateway.server.core.dialog_count == 0
