"""Hostile request bodies (found by review): each gets its documented 4xx, never a 500."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from tests.integration.api.seed import CUSTOM, OPENAI_EXAMPLE
from tests.integration.api.test_trunk_create import err
from tests.integration.api.test_trunk_registration import REGISTRATION
from tests.integration.conftest import Api

from telepath.api.trunk_input import MAX_BODY_BYTES

pytestmark = pytest.mark.integration


async def _send(api: Api, method: str, path: str, raw: bytes) -> httpx.Response:
    headers = {**api.auth(), "Content-Type": "application/json"}
    return await api.client.request(method, path, content=raw, headers=headers)


async def _targets(api: Api) -> list[tuple[str, str]]:
    created = await api.post("/v1/trunks", CUSTOM)
    assert created.status_code == 201, created.text
    trunk = f"/v1/trunks/{created.json()['id']}"
    return [("POST", "/v1/trunks"), ("PATCH", trunk), ("POST", "/v1/webhooks")]


@pytest.mark.parametrize("depth", [1_000, 100_000])
async def test_deeply_nested_json_is_invalid_json(api: Api, depth: int) -> None:
    """``{"name": [[[...]]]}`` nested past the interpreter's recursion limit made json.loads
    raise RecursionError: a 500."""
    raw = b'{"name": ' + b"[" * depth + b"]" * depth + b"}"
    for method, path in await _targets(api):
        err(await _send(api, method, path, raw), 400, "invalid_json")


# Found by review: a lone surrogate cannot be encoded to UTF-8 (for the database, the keyring or
# the JSON answer), and PostgreSQL refuses NUL in text: both were 500s.
UNSTORABLE = ["\ud800", "\udfff", "\u0000"]


def _raw(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=True).encode()  # \uXXXX escapes, as a client sends


@pytest.mark.parametrize("char", UNSTORABLE)
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/trunks", {**OPENAI_EXAMPLE, "name": "a{c}b"}),
        ("POST", "/v1/trunks", {**OPENAI_EXAMPLE, "system_prompt": "a{c}b"}),
        ("POST", "/v1/trunks", {**OPENAI_EXAMPLE, "openai_voice": "a{c}b"}),
        (
            "POST",
            "/v1/trunks",
            {**OPENAI_EXAMPLE, "registration": {**REGISTRATION, "password": "pw{c}pw"}},
        ),
        ("POST", "/v1/trunks", {**OPENAI_EXAMPLE, "inbound_numbers": ["+14155550100", "{c}"]}),
        ("POST", "/v1/trunks", {**OPENAI_EXAMPLE, "x{c}": 1}),
        ("PATCH", "{trunk}", {"name": "a{c}b"}),
        ("PATCH", "{trunk}", {"system_prompt": "{c}"}),
        # A URL is no exception, a trunk's or a webhook's alike: invalid_field, as documented
        # (README's API table, docs/webhooks.md), not invalid_custom_endpoint / invalid_url.
        ("POST", "/v1/trunks", {**CUSTOM, "custom_endpoint": "wss://agent.example.com/{c}"}),
        ("PATCH", "{trunk}", {"custom_endpoint": "wss://agent.example.com/{c}"}),
        ("POST", "/v1/webhooks", {"url": "https://hooks.example.com/{c}", "events": ["*"]}),
        ("POST", "/v1/webhooks", {"url": "https://hooks{c}.example.com/", "events": ["*"]}),
        ("POST", "/v1/webhooks", {"url": "https://hooks.example.com/", "events": ["{c}"]}),
    ],
)
async def test_unstorable_characters_are_invalid_field(
    api: Api, char: str, method: str, path: str, body: dict[str, Any]
) -> None:
    created = await api.post("/v1/trunks", {**CUSTOM, "sip_username": "other-trunk"})
    assert created.status_code == 201, created.text
    path = path.format(trunk=f"/v1/trunks/{created.json()['id']}")
    text = json.dumps(body).replace("{c}", json.dumps(char)[1:-1])
    resp = await _send(api, method, path, text.encode())
    err(resp, 400, "invalid_field")
    assert "\\u" not in resp.json()["error"]["message"]  # the value is not echoed
    listed = (await api.get("/v1/trunks")).json()["trunks"]
    assert [t["id"] for t in listed] == [created.json()["id"]]


async def test_a_surrogate_pair_is_one_character(api: Api) -> None:
    body = {**OPENAI_EXAMPLE, "name": "Agent \U0001f600", "system_prompt": "Smile \U0001f600"}
    resp = await _send(api, "POST", "/v1/trunks", _raw(body))  # sent as \ud83d\ude00
    assert resp.status_code == 201, resp.text
    assert resp.json()["name"] == "Agent \U0001f600"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/trunks/%00"),
        ("GET", "/v1/trunks/conn_%00x"),
        ("PATCH", "/v1/trunks/%00"),
        ("DELETE", "/v1/trunks/%00"),
        ("POST", "/v1/trunks/%00/rotate-password"),
        ("GET", "/v1/calls/%00"),
        ("GET", "/v1/webhooks/%00"),
        ("DELETE", "/v1/webhooks/%00"),
    ],
)
async def test_nul_in_a_path_id_is_not_found(api: Api, method: str, path: str) -> None:
    err(await _send(api, method, path, b'{"name": "x"}'), 404, "not_found")


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/v1/calls", "trunk_id=%00"),
        ("/v1/calls", "trunk_id=conn_%00"),
        ("/v1/trunks", "status=%00"),
        ("/v1/webhooks", "limit=1%00"),
    ],
)
async def test_nul_in_a_query_parameter_is_invalid(api: Api, path: str, query: str) -> None:
    err(await api.client.get(f"{path}?{query}", headers=api.auth()), 400, "invalid_parameter")


@pytest.mark.parametrize(("field", "width"), [("openai_voice", 50), ("openai_model", 100)])
async def test_values_fit_their_columns(api: Api, field: str, width: int) -> None:
    """Found by review: the identifier rule allows 200 characters, the columns are narrower;
    PostgreSQL refused a longer value (a 500) where SQLite silently stored it."""
    err(
        await api.post("/v1/trunks", {**OPENAI_EXAMPLE, field: "v" * (width + 1)}),
        400,
        "invalid_field",
    )
    created = await api.post("/v1/trunks", {**OPENAI_EXAMPLE, field: "v" * width})
    assert created.status_code == 201, created.text
    trunk = f"/v1/trunks/{created.json()['id']}"
    err(await api.patch(trunk, {field: "w" * (width + 1)}), 400, "invalid_field")
    assert (await api.get(trunk)).json()[field] == "v" * width
    changed = await api.patch(trunk, {field: "w" * width})
    assert changed.status_code == 200, changed.text
    assert changed.json()[field] == "w" * width


CHUNK = 64 * 1024


class Body:
    """A request body streamed in 64 KiB chunks (chunked unless a length is declared),
    counting the chunks the server pulled."""

    def __init__(self, total: int, prefix: bytes = b'{"name": "') -> None:
        self.total = total
        self.prefix = prefix
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        sent = 0
        while sent < self.total:
            chunk = (self.prefix if sent == 0 else b"") + b"n" * CHUNK
            self.pulled += 1
            sent += len(chunk)
            yield chunk


@pytest.mark.parametrize("declared", [False, True])
async def test_oversized_bodies_are_refused_without_reading_them(api: Api, declared: bool) -> None:
    """Found by review: bodies were read whole, however large, before the 413 check."""
    targets = await _targets(api)
    for method, path in targets:
        body = Body(16 * 1024 * 1024)
        headers = {**api.auth(), "Content-Type": "application/json"}
        if declared:
            headers["Content-Length"] = str(body.total)
        resp = await api.client.request(method, path, content=body, headers=headers)
        err(resp, 413, "payload_too_large", f"Request body exceeds {MAX_BODY_BYTES} bytes")
        # Declared: refused before reading; streamed: reading stops past the limit.
        assert body.pulled <= (0 if declared else MAX_BODY_BYTES // CHUNK + 1), (method, path)


async def test_a_streamed_body_within_the_limit_is_read(api: Api) -> None:
    raw = _raw({**CUSTOM, "system_prompt": "p" * 30_000})

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(raw), 1000):
            yield raw[start : start + 1000]

    headers = {**api.auth(), "Content-Type": "application/json"}
    resp = await api.client.post("/v1/trunks", content=chunks(), headers=headers)
    assert resp.status_code == 201, resp.text
