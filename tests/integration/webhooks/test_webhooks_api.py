"""``/v1/webhooks``: validation, secret shown once and stored encrypted, tenancy, delete."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from sqlalchemy import text

from telepath.db.models import webhook_secret_context
from telepath.db.webhook_store import WebhookRepository
from tests.integration.api.seed import ISO_UTC
from tests.integration.api.test_trunk_create import REACHABLE_HOSTS, UNREACHABLE_HOSTS, err
from tests.integration.conftest import Api

pytestmark = pytest.mark.integration

URL = "https://hooks.example.com/telepath"
EVENTS_MESSAGE = (
    "events must be a non-empty list of: call.started, call.ended, agent.connected, "
    "agent.disconnected, call.error, *"
)


async def create(api: Api, **body: Any) -> dict[str, Any]:
    resp = await api.post("/v1/webhooks", {"url": URL, "events": ["call.ended"], **body})
    assert resp.status_code == 201, resp.text
    created: dict[str, Any] = resp.json()
    return created


async def test_create_shows_secret_once(api: Api) -> None:
    created = await create(api, events=["call.started", "call.ended", "call.started"])
    assert set(created) == {"id", "url", "events", "active", "created_at", "secret"}
    assert re.fullmatch(r"wh_[0-9a-z]{26}", created["id"])
    assert created["secret"].startswith("whsec_")
    assert created["events"] == ["call.started", "call.ended"]
    assert created["url"] == URL and created["active"] is True
    assert re.match(ISO_UTC, created["created_at"])

    one = (await api.get(f"/v1/webhooks/{created['id']}")).json()
    assert one == {k: v for k, v in created.items() if k != "secret"}
    listed = (await api.get("/v1/webhooks")).json()
    assert listed["webhooks"] == [one]
    assert listed["pagination"] == {"limit": 20, "offset": 0, "total": 1}
    assert created["secret"] not in str(listed)


async def test_secret_is_encrypted_at_rest(api: Api) -> None:
    created = await create(api)
    async with api.state.engine.connect() as conn:
        stored = (
            await conn.execute(
                text("SELECT secret_enc FROM webhook_endpoints WHERE id = :id"),
                {"id": created["id"]},
            )
        ).scalar_one()
    assert created["secret"] not in stored
    assert (
        api.state.keyring.decrypt(stored, webhook_secret_context(created["id"]))
        == (created["secret"])
    )


async def test_star_subscribes_to_everything(api: Api) -> None:
    assert (await create(api, events=["call.ended", "*"]))["events"] == ["*"]


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        ({"events": ["call.ended"]}, "missing_required_field", "url is required"),
        ({"url": URL}, "missing_required_field", "events is required"),
        ({"url": URL, "events": ["call.ended"], "x": 1}, "unknown_field", "Unknown field: x"),
        ({"url": 5, "events": ["*"]}, "invalid_field_type", "url must be a string"),
        (
            {"url": URL, "events": "call.ended"},
            "invalid_field_type",
            "events must be a list of strings",
        ),
        ({"url": URL, "events": []}, "invalid_events", EVENTS_MESSAGE),
        ({"url": URL, "events": ["call.answered"]}, "invalid_events", EVENTS_MESSAGE),
        ({"url": URL, "events": [1]}, "invalid_events", EVENTS_MESSAGE),
        (
            {"url": "http://hooks.example.com/x", "events": ["*"]},
            "invalid_url",
            "url must be an https:// URL",
        ),
        ({"url": "ftp://h/x", "events": ["*"]}, "invalid_url", "url must be an https:// URL"),
        ({"url": "https://", "events": ["*"]}, "invalid_url", "url must be an https:// URL"),
        (
            {"url": "https://u:p@h.example.com/", "events": ["*"]},
            "invalid_url",
            "url must be an https:// URL",
        ),
        (
            {"url": "https://h.example.com:99999/", "events": ["*"]},
            "invalid_url",
            "url must be an https:// URL",
        ),
        (
            {"url": "https://h.example.com/" + "a" * 2100, "events": ["*"]},
            "invalid_url",
            "url must be an https:// URL",
        ),
    ],
)
async def test_create_validation(api: Api, body: dict[str, Any], code: str, message: str) -> None:
    err(await api.post("/v1/webhooks", body), 400, code, message)


@pytest.mark.parametrize("url", UNREACHABLE_HOSTS)
async def test_url_host_must_be_one_to_connect_to(api: Api, url: str) -> None:
    resp = await api.post("/v1/webhooks", {"url": "https:" + url, "events": ["*"]})
    err(resp, 400, "invalid_url", "url must be an https:// URL")


@pytest.mark.parametrize("url", REACHABLE_HOSTS)
async def test_url_hosts_taken(api: Api, url: str) -> None:
    assert (await create(api, url="https:" + url))["url"] == "https:" + url


async def test_body_must_be_a_json_object(api: Api) -> None:
    resp = await api.client.post(
        "/v1/webhooks", content=b"[1]", headers={**api.auth(), "Content-Type": "application/json"}
    )
    err(resp, 400, "invalid_json")


async def test_tenancy_and_delete(api: Api) -> None:
    created = await create(api)
    other = await api.new_account_key("other")
    err(await api.get(f"/v1/webhooks/{created['id']}", key=other), 404, "not_found")
    err(await api.delete(f"/v1/webhooks/{created['id']}", key=other), 404, "not_found")
    assert (await api.get("/v1/webhooks", key=other)).json()["webhooks"] == []

    assert (await api.delete(f"/v1/webhooks/{created['id']}")).status_code == 204
    err(
        await api.get(f"/v1/webhooks/{created['id']}"),
        404,
        "not_found",
        f"Webhook '{created['id']}' not found",
    )
    err(await api.delete(f"/v1/webhooks/{created['id']}"), 404, "not_found")


async def test_delete_racing_a_delete_is_not_found(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: the loser of two deletes at once (both had read the endpoint) deleted
    it again through the ORM, which matched no row — SQLAlchemy warned (a 500 with warnings as
    errors) and both answered 204. As for trunks (``test_trunk_races.py``), the loser answers
    the documented 404. The other delete runs to its end right before this one's write."""
    created = await create(api)
    path = f"/v1/webhooks/{created['id']}"
    original = WebhookRepository.delete_endpoint
    ran: list[int] = []

    async def delete_endpoint(self: WebhookRepository, *args: Any) -> Any:
        if not ran:  # once: the other delete goes through here too
            ran.append(0)
            ran[0] = (await api.delete(path)).status_code
        return await original(self, *args)

    monkeypatch.setattr(WebhookRepository, "delete_endpoint", delete_endpoint)
    err(await api.delete(path), 404, "not_found", f"Webhook '{created['id']}' not found")
    assert ran == [204]
    err(await api.get(path), 404, "not_found")


async def test_two_deletes_at_once_are_one_204_and_one_404(api: Api) -> None:
    path = f"/v1/webhooks/{(await create(api))['id']}"
    answers = await asyncio.gather(api.delete(path), api.delete(path))
    assert sorted(a.status_code for a in answers) == [204, 404]


async def test_webhooks_require_a_key(api: Api) -> None:
    err(await api.client.get("/v1/webhooks"), 401, "missing_api_key")
    err(await api.client.post("/v1/webhooks", json={}), 401, "missing_api_key")
    err(await api.client.delete("/v1/webhooks/wh_x"), 401, "missing_api_key")


async def test_endpoint_limit(api: Api) -> None:
    for _ in range(20):
        await create(api)
    err(await api.post("/v1/webhooks", {"url": URL, "events": ["*"]}), 400, "too_many_webhooks")
    page = (await api.get("/v1/webhooks", limit=5, offset=18)).json()
    assert len(page["webhooks"]) == 2 and page["pagination"]["total"] == 20


async def test_endpoint_limit_holds_under_concurrent_creates(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: the limit was count-then-insert, so creates that counted at once
    could all insert (five at 18 made 23)."""
    for _ in range(18):
        await create(api)
    counted = WebhookRepository.count_endpoints

    async def count_slowly(self: WebhookRepository, account_id: str) -> int:
        found = await counted(self, account_id)
        await asyncio.sleep(0.05)  # the others count meanwhile, unless they must wait
        return found

    monkeypatch.setattr(WebhookRepository, "count_endpoints", count_slowly)
    answers = await asyncio.gather(
        *(api.post("/v1/webhooks", {"url": URL, "events": ["*"]}) for _ in range(5))
    )
    assert sorted(r.status_code for r in answers) == [201, 201, 400, 400, 400]
    for resp in answers:
        if resp.status_code == 400:
            err(resp, 400, "too_many_webhooks")
    assert (await api.get("/v1/webhooks")).json()["pagination"]["total"] == 20


@pytest.mark.parametrize("settings_overrides", [{"allow_insecure_webhook_urls": True}])
async def test_http_allowed_when_configured(api: Api) -> None:
    assert (await create(api, url="http://127.0.0.1:8000/hook"))["url"].startswith("http://")
    err(
        await api.post("/v1/webhooks", {"url": "ws://h/x", "events": ["*"]}),
        400,
        "invalid_url",
        "url must be an https:// (or http://) URL",
    )
