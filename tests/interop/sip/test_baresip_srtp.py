"""baresip (Debian's 1.0.0, libsrtp 2 through libre) calling over SIP/TLS with mandatory SRTP
(``mediaenc=srtp-mand``: ``RTP/SAVP`` with SDES keys, RFC 4568): its tone reaches the agent
through our SRTP decryption, the agent's tone reaches baresip through our encryption (libre
logs every packet it cannot authenticate, and there is none), the record's SIP trace has
the keys redacted. Over UDP the same offer gets 488: keys are only taken over TLS."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from telepath.cli.gateway import Gateway
from telepath.testing.fake_custom import FakeTelepathAgent
from telepath.testing.tones import dominant_frequency, g711_to_pcm16
from tests.certs import tls_listener
from tests.integration.conftest import Api
from tests.interop.calls.conftest import create_trunk
from tests.interop.sip.test_baresip import MODULES, PASSWORD, _dial, require_baresip
from tests.interop.sip.test_baresip import baresip_config as _baresip_config
from tests.interop.sip.waits import ended_records

pytestmark = pytest.mark.interop


@pytest.fixture
def settings_overrides(settings_overrides: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    return {
        **settings_overrides,
        "sip_digest_algorithms": "MD5",
        **tls_listener(tmp_path),
    }


def srtp_config(tmp_path: Path, port: int, transport: str, cafile: str) -> Path:
    if not (MODULES / "srtp.so").exists():
        pytest.fail("baresip-core has no srtp.so module")
    config = _baresip_config(tmp_path, port, transport=transport, extra=f"sip_cafile\t\t{cafile}\n")
    main = config / "config"  # the media encryption must be loaded before the accounts
    account = "module\t\t\taccount.so\n"
    main.write_text(main.read_text().replace(account, "module\t\t\tsrtp.so\n" + account))
    accounts = config / "accounts"
    accounts.write_text(accounts.read_text().rstrip("\n") + ";mediaenc=srtp-mand\n")
    return config


async def test_baresip_srtp_call_over_tls(
    api: Api, gateway: Gateway, tmp_path: Path, settings_overrides: dict[str, Any]
) -> None:
    require_baresip()
    port = gateway.server.bound["TLS"][1]
    config = srtp_config(tmp_path, port, "tls", settings_overrides["sip_tls_cert"])
    async with FakeTelepathAgent(agent="tone", tone_hz=1000) as agent:
        await create_trunk(api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=agent.url)
        out = await _dial(config, port, 3, scheme_params=";transport=tls")
        assert "Call established" in out, out
        (record,) = await ended_records(api, gateway)
    assert "SRTP is Enabled" in out, out
    assert "failed to decrypt" not in out and "failed to encrypt" not in out, out
    assert record["status"] == "disconnected" and record["disconnect_reason"] == "caller_hangup"
    heard = g711_to_pcm16(bytes(agent.caller_audio), "pcmu")
    assert len(heard) > 8000, out  # baresip's 440 Hz, decrypted by us
    assert abs(dominant_frequency(heard) - 440) < 15
    trace = (await api.get(f"/v1/calls/{record['id']}")).json()["sip_trace"]
    assert "RTP/SAVP" in trace
    crypto = re.findall(r"a=crypto:\S+ \S+ inline:(\S+)", trace)
    assert len(crypto) >= 2 and all(c.startswith("<redacted>") for c in crypto), trace


async def test_srtp_offer_over_udp_is_refused_with_a_reason(
    api: Api, gateway: Gateway, tmp_path: Path, settings_overrides: dict[str, Any]
) -> None:
    require_baresip()
    port = gateway.server.bound["UDP"][1]
    config = srtp_config(tmp_path, port, "udp", settings_overrides["sip_tls_cert"])
    async with FakeTelepathAgent(agent="silent") as agent:
        await create_trunk(api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=agent.url)
        out = await _dial(config, port, 2)
    assert "Call established" not in out, out
    assert "488" in out, out
