"""Fixtures for end-to-end calls: API + gateway in-process on real sockets, SQLite store."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from telepath.cli.gateway import Gateway, start_gateway
from telepath.testing.fake_elevenlabs import FakeElevenLabs
from telepath.testing.fake_openai import FakeOpenAIRealtime
from tests.conftest import migrated_sqlite
from tests.integration.conftest import Api, api, settings  # noqa: F401  (fixtures)
from tests.integration.webhooks.receiver import Receiver, running
from tests.interop.calls.harness import PlacedCall, settled
from tests.interop.media.sipp import require_sipp


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return migrated_sqlite(tmp_path)


GATEWAY_SETTINGS: dict[str, Any] = {
    "sip_host": "127.0.0.1",
    "sip_port": 0,
    "rtp_port_min": 31000,
    "rtp_port_max": 32998,
    "allow_insecure_agent_urls": True,
    "allow_insecure_webhook_urls": True,
    "sip_codecs": "PCMU,PCMA,G722",
    "rtp_inactivity_timeout_s": 4.0,
    "provider_timeout_s": 3.0,
    "webhook_backoff_base_s": 0.2,
    # A test that ends with a call up leaves nobody to answer the gateway's BYE: the record is
    # written after this wait (2 s by default, and many tests end so). Peers that answer do so
    # on loopback in milliseconds.
    "sip_bye_wait_s": 0.5,
    # SIPp 3.6 answers only the first challenge and only does MD5 (see sip/auth.py).
    "sip_digest_algorithms": "MD5,SHA-256",
    # These tests share the loop thread with the test code (FFTs, fakes): its CPU share says
    # nothing about the gateway's load here. The load admission has its own tests.
    "sip_max_loop_load": 0,
}


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """The gateway's test settings; a test parametrizes ``settings_overrides`` to change them."""
    return dict(GATEWAY_SETTINGS)


@pytest.fixture
async def gateway(api: Api) -> AsyncIterator[Gateway]:  # noqa: F811
    require_sipp()
    gw = await start_gateway(api.state.settings, api.state)
    try:
        yield gw
    finally:
        await gw.stop(0)


async def create_trunk(api: Api, username: str, password: str, **fields: Any) -> dict[str, Any]:  # noqa: F811
    body = {
        "name": f"trunk {username}",
        "sip_username": username,
        "sip_password": password,
        **fields,
    }
    resp = await api.post("/v1/trunks", body)
    assert resp.status_code == 201, resp.text
    data: dict[str, Any] = resp.json()
    return data


def configure(gateway: Gateway, **changes: Any) -> None:
    """Point call control at the provider fakes (``openai_realtime_url``, ``elevenlabs_*``...).

    The fakes listen on ports chosen at start, after the settings were built, so the test
    replaces the fields ``CallControlConfig.from_settings`` took from them.
    """
    gateway.manager.config = dataclasses.replace(gateway.manager.config, **changes)


async def provider_trunk(
    api: Api,  # noqa: F811  (shadows the imported fixture, as in create_trunk)
    gateway: Gateway,
    fake: FakeOpenAIRealtime | FakeElevenLabs,
    password: str,
    *,
    api_key: str | None = None,
) -> None:
    """Point the gateway at a provider fake and create trunk ``alice`` for that provider."""
    if isinstance(fake, FakeOpenAIRealtime):
        configure(gateway, openai_realtime_url=fake.url)
        key = api_key or "sk-valid-test-key"
        await create_trunk(api, "alice", password, ai_provider="openai", openai_api_key=key)
    else:
        configure(gateway, elevenlabs_api_base=fake.base_http, elevenlabs_ws_url=fake.url)
        await create_trunk(
            api,
            "alice",
            password,
            ai_provider="elevenlabs",
            elevenlabs_agent_id="agent_fake",
            elevenlabs_api_key=api_key or "sk-valid-el-key",
        )


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A local HTTP server that records webhook deliveries."""
    with running(Receiver()) as r:
        yield r


async def subscribe(api: Api, url: str, events: list[str] | None = None) -> dict[str, Any]:  # noqa: F811
    """Register a webhook endpoint; the answer carries the signing secret (shown once)."""
    resp = await api.post("/v1/webhooks", {"url": url, "events": events or ["*"]})
    assert resp.status_code == 201, resp.text
    created: dict[str, Any] = resp.json()
    assert created["secret"].startswith("whsec_")
    return created


async def record(api: Api, call_id: str) -> dict[str, Any]:  # noqa: F811
    """``GET /v1/calls/{id}``."""
    resp = await api.get(f"/v1/calls/{call_id}")
    assert resp.status_code == 200, resp.text
    data: dict[str, Any] = resp.json()
    return data


async def hung_up(api: Api, gateway: Gateway, placed: PlacedCall) -> dict[str, Any]:  # noqa: F811
    """Wait for SIPp's caller to hang up as its scenario says; the call's record, checked to be
    a caller hang-up."""
    result = await placed.sipp
    await placed.phone.close()
    assert result.returncode == 0, result.stdout + result.errors
    await settled(gateway)
    detail = await record(api, placed.call_id)
    assert (detail["status"], detail["disconnect_reason"]) == ("connected", "caller_hangup")
    return detail
