"""Provider key validation against local servers that answer like OpenAI and ElevenLabs
(valid, invalid, restricted, rate-limited keys, unknown model/agent, outage, unreachable)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from tests.integration.conftest import Api

from telepath.testing.fake_provider_http import PROMPT_OVERRIDE, FakeProviderHttp

pytestmark = pytest.mark.integration

PROMPT = "You are a helpful sales agent."


@pytest.fixture
def fake() -> Iterator[FakeProviderHttp]:
    # "agent_prompt" enables the system prompt override; the others do not (ElevenLabs' default)
    with FakeProviderHttp(agent_overrides={"agent_prompt": {PROMPT_OVERRIDE}}) as server:
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


def elevenlabs_trunk(key: str, agent: str = "agent_ok", **extra: Any) -> dict[str, Any]:
    return {
        "name": "sales line",
        "ai_provider": "elevenlabs",
        "sip_username": "sales-line",
        "sip_password": "s3cur3P@ssw0rd!",
        "elevenlabs_api_key": key,
        "elevenlabs_agent_id": agent,
        **extra,
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


def assert_prompt_refused(resp: Any) -> None:
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert (error["code"], error["status"]) == ("invalid_system_prompt", 400)
    assert '"System prompt"' in error["message"] and "Security settings" in error["message"]
    assert "system_prompt" in error["message"]


@pytest.mark.parametrize(
    ("key", "agent", "prompt", "status"),
    [
        ("sk-valid-1", "agent_ok", PROMPT, 400),  # the agent does not enable the override
        ("sk-valid-1", "agent_prompt", PROMPT, 201),
        ("sk-valid-1", "agent_ok", None, 201),  # no prompt, no override sent
        ("sk-valid-1", "agent_ok", "", 201),
        ("sk-restricted-1", "agent_ok", PROMPT, 201),  # overrides unreadable: not refused
    ],
)
async def test_an_elevenlabs_system_prompt_needs_the_agents_prompt_override(
    api: Api, key: str, agent: str, prompt: str | None, status: int
) -> None:
    """The system prompt is sent as ElevenLabs' prompt override, which the service refuses
    (close 1008, ``override_error``) unless the agent enables it: every call on such a trunk
    failed at set-up. The create is refused at once instead, when the agent shows it off."""
    resp = await api.post("/v1/trunks", elevenlabs_trunk(key, agent, system_prompt=prompt))
    if status == 400:
        assert_prompt_refused(resp)
        assert await trunk_count(api) == 0
    else:
        assert resp.status_code == status, resp.text


async def test_a_patch_is_checked_against_the_agents_prompt_override(
    api: Api, fake: FakeProviderHttp
) -> None:
    """A prompt set on a trunk whose agent does not enable the override, or an agent changed
    to one that does not while the trunk has a prompt, is refused; nothing is changed."""
    created = await api.post("/v1/trunks", elevenlabs_trunk("sk-valid-1", "agent_ok"))
    assert created.status_code == 201, created.text
    path = f"/v1/trunks/{created.json()['id']}"
    assert_prompt_refused(await api.patch(path, {"system_prompt": PROMPT}))
    assert (await api.get(path)).json()["system_prompt"] is None
    reads = len(fake.requests)
    ok = await api.patch(path, {"system_prompt": PROMPT, "elevenlabs_agent_id": "agent_prompt"})
    assert ok.status_code == 200, ok.text
    assert fake.requests[reads].path == "/v1/convai/agents/agent_prompt"
    assert fake.requests[reads].headers.get("xi-api-key") == "sk-valid-1"  # the stored key
    assert_prompt_refused(await api.patch(path, {"elevenlabs_agent_id": "agent_ok"}))
    kept = (await api.get(path)).json()
    assert (kept["elevenlabs_agent_id"], kept["system_prompt"]) == ("agent_prompt", PROMPT)
    cleared = await api.patch(path, {"system_prompt": None, "elevenlabs_agent_id": "agent_ok"})
    assert cleared.status_code == 200, cleared.text
    reads = len(fake.requests)
    assert (await api.patch(path, {"system_prompt": ""})).status_code == 200
    assert (await api.patch(path, {"name": "Renamed"})).status_code == 200
    assert len(fake.requests) == reads  # nothing to check: no key, agent or prompt set


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
        api, fake, "POST", "/v1/trunks", openai_trunk("sk-valid-" + "1" * 20)
    )
    assert (held, status) == (0, 201)
    [created] = (await api.get("/v1/trunks")).json()["trunks"]
    path = f"/v1/trunks/{created['id']}"
    held, status = await _checkedout_while_checking(
        api, fake, "PATCH", path, {"openai_api_key": "sk-valid-" + "2" * 20, "name": "Renamed"}
    )
    assert (held, status) == (0, 200)
    changed = (await api.get(path)).json()
    assert changed["name"] == "Renamed"
    assert (created["openai_api_key_hint"], changed["openai_api_key_hint"]) == (
        "sk-...1111",
        "sk-...2222",
    )


@pytest.mark.parametrize(
    ("key", "prompt", "status"),
    [
        ("sk-valid-1", PROMPT, 400),  # the agent's overrides are read whole, and show it off
        ("sk-restricted-1", None, 201),  # the 401's detail is read whole: signed-URL fallback
    ],
)
async def test_answers_in_two_parts_are_read_whole(
    api: Api, fake: FakeProviderHttp, key: str, prompt: str | None, status: int
) -> None:
    """aiohttp's ``content.read(n)`` returns what has arrived, not ``n`` bytes: an answer whose
    body came in two TCP segments (through a proxy, on a slow link) was read in part."""
    fake.split_body_pause_s = 0.05
    resp = await api.post("/v1/trunks", elevenlabs_trunk(key, system_prompt=prompt))
    assert resp.status_code == status, resp.text
