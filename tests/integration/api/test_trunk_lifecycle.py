"""Auth, tenancy, list/get/update/delete/rotate, rate limits, and secrets at rest."""

from __future__ import annotations

import re
from typing import Any

import pytest
from sqlalchemy import text
from tests.integration.api.seed import CUSTOM, ELEVENLABS, ISO_UTC, OPENAI_EXAMPLE
from tests.integration.api.test_trunk_create import err
from tests.integration.conftest import Api

from telepath.db.models import trunk_secret_context
from telepath.secrets.digest import compute_ha1

pytestmark = pytest.mark.integration


async def create(api: Api, payload: dict[str, Any] = OPENAI_EXAMPLE, **over: Any) -> str:
    resp = await api.post("/v1/trunks", {**payload, **over})
    assert resp.status_code == 201, resp.text
    trunk_id: str = resp.json()["id"]
    return trunk_id


async def raw_row(api: Api, trunk_id: str) -> dict[str, Any]:
    async with api.state.engine.connect() as conn:
        row = (
            (await conn.execute(text("SELECT * FROM trunks WHERE id = :id"), {"id": trunk_id}))
            .mappings()
            .one()
        )
        return dict(row)


# --- authentication -------------------------------------------------------------------------


async def test_missing_key(api: Api) -> None:
    resp = await api.client.get("/v1/trunks")
    err(resp, 401, "missing_api_key")
    assert resp.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "header", ["Bearer sk_live_nope", "Basic abc", "Bearer", "sk_live_x", "Bearer " + "x" * 300]
)
async def test_invalid_key(api: Api, header: str) -> None:
    err(
        await api.client.get("/v1/trunks", headers={"Authorization": header}),
        401,
        "invalid_api_key",
    )


async def test_every_v1_route_requires_a_key(api: Api) -> None:
    trunk_id = await create(api)
    for method, path in [
        ("GET", "/v1/trunks"),
        ("POST", "/v1/trunks"),
        ("GET", f"/v1/trunks/{trunk_id}"),
        ("PATCH", f"/v1/trunks/{trunk_id}"),
        ("DELETE", f"/v1/trunks/{trunk_id}"),
        ("POST", f"/v1/trunks/{trunk_id}/rotate-password"),
        ("POST", f"/v1/trunks/{trunk_id}/rotate-sip-password"),
    ]:
        err(await api.client.request(method, path), 401, "missing_api_key")


async def test_revoked_key_stops_working(api: Api) -> None:
    from telepath.db.repository import AccountRepository

    key = await api.new_account_key("acme")
    assert (await api.get("/v1/trunks", key=key)).status_code == 200
    async with api.state.sessions() as session:
        repo = AccountRepository(session)
        live = await repo.authenticate(key)
        assert live is not None
        assert await repo.revoke(live.id)
        await session.commit()
    err(await api.get("/v1/trunks", key=key), 401, "invalid_api_key")


async def test_api_keys_stored_only_as_hashes(api: Api) -> None:
    async with api.state.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT * FROM api_keys"))).mappings().all()
    assert rows
    for row in rows:
        assert api.key not in " ".join(str(v) for v in row.values())
        assert re.fullmatch(r"[0-9a-f]{64}", row["key_hash"])


# --- tenancy ---------------------------------------------------------------------------------


async def test_other_account_sees_nothing(api: Api) -> None:
    trunk_id = await create(api)
    other = await api.new_account_key("other")
    listed = (await api.get("/v1/trunks", key=other)).json()
    assert listed["trunks"] == [] and listed["pagination"]["total"] == 0
    message = f"Trunk '{trunk_id}' not found"
    err(await api.get(f"/v1/trunks/{trunk_id}", key=other), 404, "not_found", message)
    err(await api.patch(f"/v1/trunks/{trunk_id}", {"name": "x"}, key=other), 404, "not_found")
    err(await api.delete(f"/v1/trunks/{trunk_id}", key=other), 404, "not_found")
    resp = await api.post(f"/v1/trunks/{trunk_id}/rotate-password", key=other)
    err(resp, 404, "not_found", message)
    # The owner still has it, unchanged.
    assert (await api.get(f"/v1/trunks/{trunk_id}")).json()["name"] == OPENAI_EXAMPLE["name"]


async def test_unknown_id(api: Api) -> None:
    err(
        await api.get("/v1/trunks/conn_doesnotexist"),
        404,
        "not_found",
        "Trunk 'conn_doesnotexist' not found",
    )


@pytest.mark.parametrize(
    ("method", "path", "kind"),
    [
        ("GET", "/v1/trunks/{id}", "Trunk"),
        ("PATCH", "/v1/trunks/{id}", "Trunk"),
        ("DELETE", "/v1/trunks/{id}", "Trunk"),
        ("POST", "/v1/trunks/{id}/rotate-password", "Trunk"),
        ("GET", "/v1/calls/{id}", "Call"),
        ("GET", "/v1/webhooks/{id}", "Webhook"),
        ("DELETE", "/v1/webhooks/{id}", "Webhook"),
    ],
)
async def test_a_long_unknown_id_is_cut_in_the_message(
    api: Api, method: str, path: str, kind: str
) -> None:
    """The trunk routes' 404 repeated the whole id of the path, 8,000 characters of it (found
    by review); the call and webhook routes already cut it to 64."""
    long_id = "conn_" + "x" * 8_000
    resp = await api.client.request(
        method, path.format(id=long_id), json={"name": "x"}, headers=api.auth()
    )
    err(resp, 404, "not_found", f"{kind} '{long_id[:64]}' not found")


# --- list ------------------------------------------------------------------------------------


async def test_list_pagination_and_filter(api: Api) -> None:
    ids = [await create(api, sip_username=f"user-{i:02d}") for i in range(5)]
    await api.patch(f"/v1/trunks/{ids[0]}", {"status": "inactive"})
    page = (await api.get("/v1/trunks", limit=2, offset=1)).json()
    assert page["pagination"] == {"limit": 2, "offset": 1, "total": 5}
    assert [t["id"] for t in page["trunks"]] == list(reversed(ids))[1:3]
    default = (await api.get("/v1/trunks")).json()
    assert default["pagination"]["limit"] == 20 and len(default["trunks"]) == 5
    inactive = (await api.get("/v1/trunks", status="inactive")).json()
    assert [t["id"] for t in inactive["trunks"]] == [ids[0]]
    assert inactive["pagination"]["total"] == 1
    item = default["trunks"][0]
    assert re.fullmatch(ISO_UTC, item["updated_at"])
    assert "sip_password" not in item and "openai_api_key" not in item


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"limit": 0}, "limit must be an integer between 1 and 100"),
        ({"limit": 101}, "limit must be an integer between 1 and 100"),
        ({"limit": "ten"}, "limit must be an integer between 1 and 100"),
        ({"offset": -1}, "offset must be an integer between 0 and 2147483647"),
        ({"status": "deleted"}, "status must be one of: active, inactive, error"),
    ],
)
async def test_list_bad_params(api: Api, params: dict[str, Any], message: str) -> None:
    err(await api.get("/v1/trunks", **params), 400, "invalid_parameter", message)


LIMIT_RULE = "limit must be an integer between 1 and 100"
OFFSET_RULE = "offset must be an integer between 0 and 2147483647"


@pytest.mark.parametrize("path", ["/v1/trunks", "/v1/calls", "/v1/webhooks"])
@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"offset": 2**31}, OFFSET_RULE),  # was "of at least 0" (found by review)
        ({"offset": 2**63}, OFFSET_RULE),
        ({"offset": -1}, OFFSET_RULE),
        ({"offset": "1e3"}, OFFSET_RULE),
        ({"limit": 0}, LIMIT_RULE),
        ({"limit": 101}, LIMIT_RULE),
        ({"limit": 2**31}, LIMIT_RULE),
        ({"limit": "ten"}, LIMIT_RULE),
    ],
)
async def test_paging_params_are_refused_with_their_real_range(
    api: Api, path: str, params: dict[str, Any], message: str
) -> None:
    err(await api.get(path, **params), 400, "invalid_parameter", message)


@pytest.mark.parametrize("path", ["/v1/trunks", "/v1/calls", "/v1/webhooks"])
async def test_paging_params_at_the_ends_of_their_range_are_taken(api: Api, path: str) -> None:
    ends: list[dict[str, Any]] = [{"offset": 2**31 - 1, "limit": 100}, {"offset": 0, "limit": 1}]
    for params in ends:
        resp = await api.get(path, **params)
        assert resp.status_code == 200, resp.text
        assert resp.json()["pagination"] == {**params, "total": 0}


# --- update ----------------------------------------------------------------------------------


async def test_patch_changes_only_given_fields(api: Api) -> None:
    trunk_id = await create(api)
    before = (await api.get(f"/v1/trunks/{trunk_id}")).json()
    resp = await api.patch(
        f"/v1/trunks/{trunk_id}",
        {"name": "Production OpenAI Agent v2", "system_prompt": "You are a specialist."},
    )
    assert resp.status_code == 200, resp.text
    after = resp.json()
    assert after["name"] == "Production OpenAI Agent v2"
    assert after["system_prompt"] == "You are a specialist."
    for same in ("id", "sip_username", "ai_provider", "created_at", "openai_api_key_hint"):
        assert after[same] == before[same]
    cleared = (await api.patch(f"/v1/trunks/{trunk_id}", {"system_prompt": None})).json()
    assert cleared["system_prompt"] is None and cleared["name"] == after["name"]


NEW_KEY = "sk-new-key-0123456789abcdef-9876"


async def test_patch_status_and_key(api: Api) -> None:
    trunk_id = await create(api)
    resp = await api.patch(
        f"/v1/trunks/{trunk_id}", {"status": "inactive", "openai_api_key": NEW_KEY}
    )
    assert resp.status_code == 200
    assert resp.json()["status"] == "inactive"
    assert resp.json()["openai_api_key_hint"] == "sk-...9876"
    row = await raw_row(api, trunk_id)
    plain = api.state.keyring.decrypt(
        row["openai_api_key_enc"], trunk_secret_context(trunk_id, "openai_api_key")
    )
    assert plain == NEW_KEY


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"sip_password": "newpassword"}, "immutable_field"),
        ({"sip_username": "other-name"}, "immutable_field"),
        ({"ai_provider": "custom"}, "immutable_field"),
        ({"status": "error"}, "invalid_field"),
        ({"name": ""}, "invalid_field"),
        ({"openai_api_key": None}, "invalid_field"),
        ({"elevenlabs_agent_id": "a"}, "invalid_field"),
        ({"name": 3}, "invalid_field_type"),
        ({"bogus": 1}, "unknown_field"),
    ],
)
async def test_patch_rejections(api: Api, body: dict[str, Any], code: str) -> None:
    trunk_id = await create(api)
    err(await api.patch(f"/v1/trunks/{trunk_id}", body), 400, code)
    assert (await api.get(f"/v1/trunks/{trunk_id}")).json()["name"] == OPENAI_EXAMPLE["name"]


async def test_patch_custom_endpoint_validated(api: Api) -> None:
    trunk_id = await create(api, CUSTOM)
    err(
        await api.patch(f"/v1/trunks/{trunk_id}", {"custom_endpoint": "http://x"}),
        400,
        "invalid_custom_endpoint",
    )
    ok = await api.patch(f"/v1/trunks/{trunk_id}", {"custom_endpoint": "wss://b.example/v2"})
    assert ok.json()["custom_endpoint"] == "wss://b.example/v2"


# --- delete and rotate -----------------------------------------------------------------------


async def test_delete(api: Api) -> None:
    trunk_id = await create(api)
    resp = await api.delete(f"/v1/trunks/{trunk_id}")
    assert resp.status_code == 204 and resp.content == b""
    err(await api.get(f"/v1/trunks/{trunk_id}"), 404, "not_found")
    err(await api.delete(f"/v1/trunks/{trunk_id}"), 404, "not_found")
    # The SIP username is free again.
    await create(api)


@pytest.mark.parametrize("path", ["rotate-password", "rotate-sip-password"])
async def test_rotate_password(api: Api, path: str) -> None:
    trunk_id = await create(api)
    resp = await api.post(f"/v1/trunks/{trunk_id}/{path}")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) == {"id", "sip_username", "sip_password", "rotated_at"}
    assert body["id"] == trunk_id and body["sip_username"] == "agent-prod-01"
    assert re.fullmatch(ISO_UTC, body["rotated_at"])
    new = body["sip_password"]
    assert len(new) >= 20 and new != OPENAI_EXAMPLE["sip_password"]
    row = await raw_row(api, trunk_id)
    realm = "sip.example.test"
    assert row["ha1_md5"] == compute_ha1("MD5", "agent-prod-01", realm, new)
    assert row["ha1_sha256"] == compute_ha1("SHA-256", "agent-prod-01", realm, new)
    old = compute_ha1("MD5", "agent-prod-01", realm, OPENAI_EXAMPLE["sip_password"])
    assert row["ha1_md5"] != old
    again = (await api.post(f"/v1/trunks/{trunk_id}/{path}")).json()["sip_password"]
    assert again != new
    assert "sip_password" not in (await api.get(f"/v1/trunks/{trunk_id}")).json()


# --- secrets at rest -------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [OPENAI_EXAMPLE, ELEVENLABS])
async def test_no_plaintext_secret_in_database(api: Api, payload: dict[str, Any]) -> None:
    trunk_id = await create(api, payload)
    row = await raw_row(api, trunk_id)
    dump = " ".join(str(v) for v in row.values())
    assert payload["sip_password"] not in dump
    key_field = "openai_api_key" if payload["ai_provider"] == "openai" else "elevenlabs_api_key"
    assert payload[key_field] not in dump
    realm = "sip.example.test"
    user = payload["sip_username"]
    assert row["ha1_md5"] == compute_ha1("MD5", user, realm, payload["sip_password"])
    assert row["ha1_sha256"] == compute_ha1("SHA-256", user, realm, payload["sip_password"])
    envelope = row[f"{key_field}_enc"]
    assert envelope.startswith(f"v1:{api.state.keyring.active_kid}:")
    context = trunk_secret_context(trunk_id, key_field)
    assert api.state.keyring.decrypt(envelope, context) == payload[key_field]
    # Bound to its row: the same envelope does not open as another trunk's secret.
    from telepath.secrets.keyring import SecretDecryptionError

    with pytest.raises(SecretDecryptionError):
        api.state.keyring.decrypt(envelope, trunk_secret_context("conn_other", key_field))


async def test_responses_never_echo_secrets(api: Api) -> None:
    created = await api.post("/v1/trunks", OPENAI_EXAMPLE)
    trunk_id = created.json()["id"]
    for resp in [
        created,
        await api.get(f"/v1/trunks/{trunk_id}"),
        await api.get("/v1/trunks"),
        await api.patch(f"/v1/trunks/{trunk_id}", {"name": "n"}),
    ]:
        assert OPENAI_EXAMPLE["sip_password"] not in resp.text
        assert OPENAI_EXAMPLE["openai_api_key"] not in resp.text


# --- rate limit ------------------------------------------------------------------------------


@pytest.mark.parametrize("settings_overrides", [{"api_rate_limit_per_minute": 3}])
async def test_rate_limit(api: Api) -> None:
    seen = []
    for _ in range(3):
        resp = await api.get("/v1/trunks")
        assert resp.status_code == 200
        seen.append(int(resp.headers["x-ratelimit-remaining"]))
        assert resp.headers["x-ratelimit-limit"] == "3"
        assert int(resp.headers["x-ratelimit-reset"]) % 60 == 0
    assert seen == [2, 1, 0]
    limited = await api.get("/v1/trunks")
    err(limited, 429, "rate_limited")
    assert limited.headers["x-ratelimit-remaining"] == "0"
    assert int(limited.headers["retry-after"]) >= 1
    # Limits are per key: another key is unaffected.
    other = await api.new_account_key("other")
    assert (await api.get("/v1/trunks", key=other)).status_code == 200


async def test_per_trunk_digest_algorithms(api: Api) -> None:
    body = {**OPENAI_EXAMPLE, "sip_digest_algorithms": " md5 "}
    created = await api.post("/v1/trunks", body)
    assert created.status_code == 201, created.text
    trunk_id = created.json()["id"]
    got = (await api.get(f"/v1/trunks/{trunk_id}")).json()
    assert got["sip_digest_algorithms"] == "MD5"
    both = await api.patch(f"/v1/trunks/{trunk_id}", {"sip_digest_algorithms": "MD5,sha-256"})
    assert both.status_code == 200 and both.json()["sip_digest_algorithms"] == "MD5,SHA-256"
    for bad in ("SHA1", "MD5,MD5", "", "MD5;SHA-256"):
        resp = await api.patch(f"/v1/trunks/{trunk_id}", {"sip_digest_algorithms": bad})
        assert resp.status_code == 400, bad
        assert resp.json()["error"]["code"] in ("invalid_field", "missing_required_field")
    cleared = await api.patch(f"/v1/trunks/{trunk_id}", {"sip_digest_algorithms": None})
    assert cleared.status_code == 200 and cleared.json()["sip_digest_algorithms"] is None


async def test_allowed_addresses(api: Api) -> None:
    body = {
        **OPENAI_EXAMPLE,
        "allowed_addresses": [" 192.0.2.7", "2001:DB8::/32", "198.51.100.0/24", "192.0.2.7/32"],
    }
    created = await api.post("/v1/trunks", body)
    assert created.status_code == 201, created.text
    trunk_id = created.json()["id"]
    got = (await api.get(f"/v1/trunks/{trunk_id}")).json()
    # canonical, in order, the duplicate dropped
    assert got["allowed_addresses"] == ["192.0.2.7/32", "2001:db8::/32", "198.51.100.0/24"]
    listed = (await api.get("/v1/trunks")).json()["trunks"]
    assert [t["allowed_addresses"] for t in listed if t["id"] == trunk_id] == [
        got["allowed_addresses"]
    ]
    changed = await api.patch(f"/v1/trunks/{trunk_id}", {"allowed_addresses": ["10.0.0.0/8"]})
    assert changed.status_code == 200 and changed.json()["allowed_addresses"] == ["10.0.0.0/8"]
    bad_values: list[tuple[object, str]] = [
        (["192.0.2.300"], "invalid_field"),
        (["192.0.2.7/24"], "invalid_field"),  # host bits set: a typo for /32, or the network?
        (["example.com"], "invalid_field"),
        ([""], "invalid_field"),
        ([f"10.0.{i}.0/24" for i in range(33)], "invalid_field"),
        ("192.0.2.7", "invalid_field_type"),
        ([7], "invalid_field_type"),
        ({"a": "192.0.2.7"}, "invalid_field_type"),
    ]
    for bad, code in bad_values:
        resp = await api.patch(f"/v1/trunks/{trunk_id}", {"allowed_addresses": bad})
        assert resp.status_code == 400, bad
        assert resp.json()["error"]["code"] == code, (bad, resp.text)
        assert resp.json()["error"]["status"] == 400
    kept = (await api.get(f"/v1/trunks/{trunk_id}")).json()
    assert kept["allowed_addresses"] == ["10.0.0.0/8"]  # a refused change changed nothing
    clears: list[list[str] | None] = [None, []]
    for clear in clears:
        cleared = await api.patch(f"/v1/trunks/{trunk_id}", {"allowed_addresses": clear})
        assert cleared.status_code == 200 and cleared.json()["allowed_addresses"] is None
    created_bad = await api.post("/v1/trunks", {**OPENAI_EXAMPLE, "allowed_addresses": ["x"]})
    assert created_bad.status_code == 400
    assert created_bad.json()["error"]["code"] == "invalid_field"


async def numbers_rows(api: Api) -> list[tuple[str, str]]:
    async with api.state.engine.connect() as conn:
        rows = await conn.execute(text("SELECT number, trunk_id FROM trunk_numbers ORDER BY 1"))
        return [(r[0], r[1]) for r in rows]


async def test_inbound_numbers(api: Api) -> None:
    body = {**OPENAI_EXAMPLE, "inbound_numbers": ["+1 415-555-0100", "+4930123456", "+14155550100"]}
    created = await api.post("/v1/trunks", body)
    assert created.status_code == 201, created.text
    trunk_id = created.json()["id"]
    got = (await api.get(f"/v1/trunks/{trunk_id}")).json()
    # canonical E.164, in order, the duplicate dropped; digest authentication by default
    assert got["inbound_numbers"] == ["+14155550100", "+4930123456"]
    assert got["sip_auth"] == "digest"
    assert await numbers_rows(api) == [("+14155550100", trunk_id), ("+4930123456", trunk_id)]

    # A number belongs to one trunk in the installation: another account's is a 409 too.
    other_key = await api.new_account_key("other-tenant")
    taken = await api.post(
        "/v1/trunks",
        {**OPENAI_EXAMPLE, "sip_username": "other-01", "inbound_numbers": ["+4930123456"]},
        key=other_key,
    )
    assert taken.status_code == 409, taken.text
    assert taken.json()["error"] == {
        "code": "conflict",
        "message": "Number '+4930123456' is already served by another trunk",
        "status": 409,
    }
    second = await api.post(
        "/v1/trunks",
        {**OPENAI_EXAMPLE, "sip_username": "other-02", "inbound_numbers": ["+4930999999"]},
        key=other_key,
    )
    assert second.status_code == 201, second.text
    clash = await api.patch(
        f"/v1/trunks/{second.json()['id']}", {"inbound_numbers": ["+14155550100"]}, key=other_key
    )
    assert clash.status_code == 409 and clash.json()["error"]["code"] == "conflict"

    # A change keeps the numbers it keeps (one row each), adds and drops the others.
    changed = await api.patch(
        f"/v1/trunks/{trunk_id}", {"inbound_numbers": ["+4930123456", "+442071234567"]}
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["inbound_numbers"] == ["+4930123456", "+442071234567"]
    assert await numbers_rows(api) == [
        ("+442071234567", trunk_id),
        ("+4930123456", trunk_id),
        ("+4930999999", second.json()["id"]),
    ]
    bad_values: list[tuple[object, str]] = [
        (["4155550100"], "invalid_field"),  # no "+": not E.164
        (["+0301234567"], "invalid_field"),
        (["+12345"], "invalid_field"),
        (["+14155550100;npdi"], "invalid_field"),
        (["support-01"], "invalid_field"),
        ([f"+1415555{i:04d}" for i in range(101)], "invalid_field"),
        ("+14155550100", "invalid_field_type"),
        ([14155550100], "invalid_field_type"),
    ]
    for bad, code in bad_values:
        resp = await api.patch(f"/v1/trunks/{trunk_id}", {"inbound_numbers": bad})
        assert resp.status_code == 400, bad
        assert resp.json()["error"]["code"] == code, (bad, resp.text)
    kept = (await api.get(f"/v1/trunks/{trunk_id}")).json()
    assert kept["inbound_numbers"] == ["+4930123456", "+442071234567"]

    # null or [] clears (any number); the numbers are free again
    clears: list[list[str] | None] = [None, []]
    for clear in clears:
        cleared = await api.patch(f"/v1/trunks/{trunk_id}", {"inbound_numbers": clear})
        assert cleared.status_code == 200 and cleared.json()["inbound_numbers"] is None
    assert await numbers_rows(api) == [("+4930999999", second.json()["id"])]
    # Deleting a trunk frees its numbers.
    assert (await api.delete(f"/v1/trunks/{second.json()['id']}", key=other_key)).status_code == 204
    assert await numbers_rows(api) == []
    reused = await api.patch(f"/v1/trunks/{trunk_id}", {"inbound_numbers": ["+4930999999"]})
    assert reused.status_code == 200 and reused.json()["inbound_numbers"] == ["+4930999999"]


async def test_allowed_caller_numbers(api: Api) -> None:
    """Canonical E.164, in order, duplicates dropped; unlike inbound numbers, a caller may be
    allowed on any number of trunks; refusals change nothing; null or [] clears."""
    callers = ["+1 415-555-0123", "+4930123456", "+14155550123"]
    created = await api.post("/v1/trunks", {**OPENAI_EXAMPLE, "allowed_caller_numbers": callers})
    assert created.status_code == 201, created.text
    trunk_id = created.json()["id"]
    got = (await api.get(f"/v1/trunks/{trunk_id}")).json()
    assert got["allowed_caller_numbers"] == ["+14155550123", "+4930123456"]
    other = await api.post(
        "/v1/trunks",
        {**OPENAI_EXAMPLE, "sip_username": "other-01", "allowed_caller_numbers": ["+4930123456"]},
    )
    assert other.status_code == 201, other.text
    bad_values: list[tuple[object, str, str | None]] = [
        (
            ["4155550123"],
            "invalid_field",
            "allowed_caller_numbers entry '4155550123' is not an E.164 number "
            "(a + and 6-15 digits, e.g. +14155550100)",
        ),
        (["anonymous"], "invalid_field", None),
        (
            [f"+1415555{i:04d}" for i in range(101)],
            "invalid_field",
            "allowed_caller_numbers may hold at most 100 numbers",
        ),
        ("+14155550123", "invalid_field_type", None),
    ]
    for bad, code, message in bad_values:
        resp = await api.patch(f"/v1/trunks/{trunk_id}", {"allowed_caller_numbers": bad})
        assert resp.status_code == 400, bad
        assert resp.json()["error"]["code"] == code, (bad, resp.text)
        if message is not None:
            assert resp.json()["error"]["message"] == message
    kept = (await api.get(f"/v1/trunks/{trunk_id}")).json()
    assert kept["allowed_caller_numbers"] == ["+14155550123", "+4930123456"]
    clears: list[list[str] | None] = [None, []]
    for clear in clears:
        cleared = await api.patch(f"/v1/trunks/{trunk_id}", {"allowed_caller_numbers": clear})
        assert cleared.status_code == 200 and cleared.json()["allowed_caller_numbers"] is None


async def test_sip_auth_address_needs_addresses_and_numbers(api: Api) -> None:
    for extra in (
        {},
        {"allowed_addresses": ["192.0.2.0/24"]},
        {"inbound_numbers": ["+14155550100"]},
    ):
        resp = await api.post("/v1/trunks", {**OPENAI_EXAMPLE, "sip_auth": "address", **extra})
        assert resp.status_code == 400, (extra, resp.text)
        assert resp.json()["error"]["code"] == "invalid_field"
        assert "allowed_addresses and inbound_numbers" in resp.json()["error"]["message"]
    assert (await api.get("/v1/trunks")).json()["trunks"] == []  # nothing was created
    assert await numbers_rows(api) == []
    routed: dict[str, Any] = {
        "sip_auth": "address",
        "allowed_addresses": ["192.0.2.0/24"],
        "inbound_numbers": ["+14155550100"],
    }
    trunk_id = await create(api, **routed)
    got = (await api.get(f"/v1/trunks/{trunk_id}")).json()
    assert got["sip_auth"] == "address" and got["inbound_numbers"] == ["+14155550100"]
    # Clearing either list while authenticating by address is refused, and changes nothing.
    clears: list[dict[str, Any]] = [{"allowed_addresses": None}, {"inbound_numbers": []}]
    for clear in clears:
        resp = await api.patch(f"/v1/trunks/{trunk_id}", {**clear, "name": "renamed"})
        assert resp.status_code == 400, (clear, resp.text)
        assert resp.json()["error"]["code"] == "invalid_field"
    kept = (await api.get(f"/v1/trunks/{trunk_id}")).json()
    assert kept["name"] == got["name"] and kept["allowed_addresses"] == ["192.0.2.0/24"]
    assert await numbers_rows(api) == [("+14155550100", trunk_id)]
    bad = await api.patch(f"/v1/trunks/{trunk_id}", {"sip_auth": "ip"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_field"
    # Back to digest (null: the default), after which the lists may go.
    back = await api.patch(f"/v1/trunks/{trunk_id}", {"sip_auth": None, "inbound_numbers": None})
    assert back.status_code == 200, back.text
    assert back.json()["sip_auth"] == "digest" and back.json()["inbound_numbers"] is None


async def test_media_encryption(api: Api) -> None:
    trunk_id = await create(api, media_encryption="required")
    assert (await api.get(f"/v1/trunks/{trunk_id}")).json()["media_encryption"] == "required"
    changed = await api.patch(f"/v1/trunks/{trunk_id}", {"media_encryption": "disabled"})
    assert changed.status_code == 200 and changed.json()["media_encryption"] == "disabled"
    bad_values: list[tuple[object, str]] = [
        ("require", "invalid_field"),  # TELEPATH_SIP_SRTP's word, not the API's
        ("", "invalid_field"),
        (True, "invalid_field_type"),
    ]
    for bad, code in bad_values:
        resp = await api.patch(f"/v1/trunks/{trunk_id}", {"media_encryption": bad})
        assert resp.status_code == 400, bad
        assert resp.json()["error"]["code"] == code, (bad, resp.text)
    cleared = await api.patch(f"/v1/trunks/{trunk_id}", {"media_encryption": None})
    assert cleared.status_code == 200 and cleared.json()["media_encryption"] is None
    created_bad = await api.post("/v1/trunks", {**OPENAI_EXAMPLE, "media_encryption": "srtp"})
    assert created_bad.status_code == 400
    assert created_bad.json()["error"]["code"] == "invalid_field"


async def test_codecs(api: Api) -> None:
    trunk_id = await create(api, codecs=["pcma", "PCMU"])
    assert (await api.get(f"/v1/trunks/{trunk_id}")).json()["codecs"] == ["PCMA", "PCMU"]
    changed = await api.patch(f"/v1/trunks/{trunk_id}", {"codecs": ["G722"]})
    assert changed.status_code == 200 and changed.json()["codecs"] == ["G722"]
    bad_values: list[tuple[object, str]] = [
        (["OPUS"], "invalid_field"),
        (["PCMU", "pcmu"], "invalid_field"),
        ([""], "invalid_field"),
        ("PCMU", "invalid_field_type"),
        ([0], "invalid_field_type"),
    ]
    for bad, code in bad_values:
        resp = await api.patch(f"/v1/trunks/{trunk_id}", {"codecs": bad})
        assert resp.status_code == 400, bad
        assert resp.json()["error"]["code"] == code, (bad, resp.text)
    assert (await api.get(f"/v1/trunks/{trunk_id}")).json()["codecs"] == ["G722"]
    clears: list[list[str] | None] = [None, []]
    for clear in clears:
        cleared = await api.patch(f"/v1/trunks/{trunk_id}", {"codecs": clear})
        assert cleared.status_code == 200 and cleared.json()["codecs"] is None


async def test_forward_sip_headers(api: Api) -> None:
    trunk_id = await create(api, forward_sip_headers=[" X-Customer-Id", "x-customer-id", "X-Q"])
    got = (await api.get(f"/v1/trunks/{trunk_id}")).json()
    assert got["forward_sip_headers"] == ["X-Customer-Id", "X-Q"]  # as first written, once
    bad_values: list[tuple[object, str]] = [
        (["Authorization"], "invalid_field"),  # credentials are never forwarded
        (["proxy-authorization"], "invalid_field"),
        (["Via"], "invalid_field"),
        (["X Customer"], "invalid_field"),
        (["X-Customer:Id"], "invalid_field"),
        ([""], "invalid_field"),
        ([f"X-H{i}" for i in range(21)], "invalid_field"),
        ("X-Customer-Id", "invalid_field_type"),
    ]
    for bad, code in bad_values:
        resp = await api.patch(f"/v1/trunks/{trunk_id}", {"forward_sip_headers": bad})
        assert resp.status_code == 400, bad
        assert resp.json()["error"]["code"] == code, (bad, resp.text)
    cleared = await api.patch(f"/v1/trunks/{trunk_id}", {"forward_sip_headers": []})
    assert cleared.status_code == 200 and cleared.json()["forward_sip_headers"] is None
