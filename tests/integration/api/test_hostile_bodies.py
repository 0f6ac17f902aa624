"""Hostile request bodies (found by review): each gets its documented 4xx, never a 500."""

from __future__ import annotations

import httpx
import pytest
from tests.integration.api.seed import CUSTOM
from tests.integration.api.test_trunk_create import err
from tests.integration.conftest import Api

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
