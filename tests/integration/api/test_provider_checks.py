"""Provider key validation against local servers that answer like OpenAI and ElevenLabs
(valid, invalid, restricted, rate-limited keys, unknown model/agent, outage, unreachable)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from tests.integration.conftest import Api

from telepath.testing.fake_provider_http import FakeProviderHttp

pytestmark = pytest.mark.integration


@pytest.fixture
def fake() -> Iterator[FakeProviderHttp]:
    with FakeProviderHttp() as server:
        yield server


@pytest.fixture
def settings_overrides(fake: FakeProviderHttp) -> dict[str, Any]:
    return {
        "validate_provider_keys": True,
        "openai_api_base": fake.openai_api_base,
        "elevenlabs_api_base": fake.elevenlabs_api_base,
    }


def openai_trunk(key: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "support line",
        "ai_provider": "openai",
        "sip_username": "support-line",
        "sip_password": "s3cur3P@ssw0rd!",
        "openai_api_key": key,
        **extra,
    }


def elevenlabs_trunk(key: str, agent: str = "agent_ok") -> dict[str, Any]:
    return {
        "name": "sales line",
        "ai_provider": "elevenlabs",
        "sip_username": "sales-line",
        "sip_password": "s3cur3P@ssw0rd!",
        "elevenlabs_api_key": key,
        "elevenlabs_agent_id": agent,
    }


async def trunk_count(api: Api) -> int:
    total: int = (await api.get("/v1/trunks")).json()["pagination"]["total"]
    return total


@pytest.mark.parametrize(
    ("key", "status", "code"),
    [
        ("sk-valid-1", 201, None),
        ("sk-restricted-1", 201, None),  # restricted keys cannot read models but can call
        ("sk-ratelimited-1", 201, None),  # a rate-limited key is still a valid key
        ("sk-wrong", 401, "invalid_provider_credentials"),
        ("sk-outage-1", 502, "provider_unavailable"),
    ],
)
async def test_openai_key_check(
    api: Api, fake: FakeProviderHttp, key: str, status: int, code: str | None
) -> None:
    resp = await api.post("/v1/trunks", openai_trunk(key))
    assert resp.status_code == status, resp.text
    if code is not None:
        assert resp.json()["error"]["code"] == code
        assert resp.json()["error"]["status"] == status
        assert key not in resp.text  # the key is never echoed back
        assert await trunk_count(api) == 0  # nothing created
    seen = [r for r in fake.requests if r.path.startswith("/v1/models/")]
    assert seen and seen[-1].headers.get("authorization") == f"Bearer {key}"


async def test_openai_unknown_model(api: Api) -> None:
    resp = await api.post("/v1/trunks", openai_trunk("sk-valid-1", openai_model="missing-model"))
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "model_not_available"


@pytest.mark.parametrize(
    ("key", "agent", "status", "code"),
    [
        ("sk-valid-1", "agent_ok", 201, None),
        ("sk-restricted-1", "agent_ok", 201, None),  # signed-URL fallback succeeds
        ("sk-noperm-1", "agent_ok", 401, "invalid_provider_credentials"),
        ("sk-wrong", "agent_ok", 401, "invalid_provider_credentials"),
        ("sk-valid-1", "agent_missing", 400, "invalid_elevenlabs_agent_id"),
        ("sk-outage-1", "agent_ok", 502, "provider_unavailable"),
    ],
)
async def test_elevenlabs_key_check(
    api: Api, fake: FakeProviderHttp, key: str, agent: str, status: int, code: str | None
) -> None:
    resp = await api.post("/v1/trunks", elevenlabs_trunk(key, agent))
    assert resp.status_code == status, resp.text
    if code is not None:
        assert resp.json()["error"]["code"] == code
        assert await trunk_count(api) == 0
    agent_reads = [r for r in fake.requests if r.path.startswith("/v1/convai/agents/")]
    assert agent_reads and agent_reads[-1].headers.get("xi-api-key") == key


async def test_patch_revalidates_changed_key(api: Api) -> None:
    created = await api.post("/v1/trunks", openai_trunk("sk-valid-1"))
    assert created.status_code == 201
    trunk_id = created.json()["id"]
    resp = await api.patch(f"/v1/trunks/{trunk_id}", {"openai_api_key": "sk-wrong"})
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "invalid_provider_credentials"
    ok = await api.patch(f"/v1/trunks/{trunk_id}", {"openai_api_key": "sk-valid-2"})
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("provider", ["openai", "elevenlabs"])
async def test_unreachable_provider_is_502(
    api: Api, settings_overrides: dict[str, Any], provider: str
) -> None:
    api.state.validator.openai_api_base = "http://127.0.0.1:9/v1"
    api.state.validator.elevenlabs_api_base = "http://127.0.0.1:9"
    body = openai_trunk("sk-valid-1") if provider == "openai" else elevenlabs_trunk("sk-valid-1")
    resp = await api.post("/v1/trunks", body)
    assert resp.status_code == 502
    assert resp.json()["error"]["code"] == "provider_unavailable"
    assert await trunk_count(api) == 0


async def _checkedout_while_checking(
    api: Api, fake: FakeProviderHttp, method: str, path: str, body: dict[str, Any]
) -> tuple[int, int]:
    """The database connections the API holds while the provider is asked (it answers only
    once they are counted), and the request's status."""
    hold = fake.hold_answers()
    before = len(fake.requests)
    request = asyncio.create_task(api.client.request(method, path, json=body, headers=api.auth()))
    try:
        async with asyncio.timeout(10):
            while len(fake.requests) == before:  # noqa: ASYNC110 - the fake runs in a thread
                await asyncio.sleep(0.01)
        checked_out = api.state.engine.pool.checkedout()  # type: ignore[attr-defined]
    finally:
        hold.set()
    resp = await request
    return checked_out, resp.status_code


async def test_no_database_connection_is_held_while_a_key_is_checked(
    api: Api, fake: FakeProviderHttp
) -> None:
    """A create or change waited for the provider (up to provider_timeout_s) holding a pooled
    connection, which the gateway's trunk lookups share: a few slow checks starved calls."""
    assert api.state.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    held, status = await _checkedout_while_checking(
        api, fake, "POST", "/v1/trunks", openai_trunk("sk-valid-1")
    )
    assert (held, status) == (0, 201)
    [created] = (await api.get("/v1/trunks")).json()["trunks"]
    path = f"/v1/trunks/{created['id']}"
    held, status = await _checkedout_while_checking(
        api, fake, "PATCH", path, {"openai_api_key": "sk-valid-2", "name": "Renamed"}
    )
    assert (held, status) == (0, 200)
    changed = (await api.get(path)).json()
    assert changed["name"] == "Renamed"
    assert changed["openai_api_key_hint"] != created["openai_api_key_hint"]
