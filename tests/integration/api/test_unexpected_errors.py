"""A bug in a request's handling is a 500 in the error envelope, logged by its type alone — and
not handed on to the server, which logged it again with its whole traceback (a message or a
local could carry the request's data: numbers, keys). Only Starlette's outermost middleware
serves a catch-all ``Exception`` handler, and it re-raises."""

from __future__ import annotations

import logging

import httpx
import pytest
from tests.integration.conftest import Api

from telepath.api.app import create_app

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("kind", [ValueError, KeyError, TypeError, RuntimeError, AttributeError])
async def test_a_bug_is_answered_500_and_not_raised_on(
    api: Api, kind: type[Exception], caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(api.state)

    async def broken() -> None:
        raise kind("+4930123456 sk-secret")

    app.add_api_route("/v1/broken", broken)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    with caplog.at_level(logging.ERROR):
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            answer = await client.get("/v1/broken")
    assert answer.status_code == 500
    assert answer.json()["error"] == {
        "code": "internal_error",
        "message": "Internal server error",
        "status": 500,
    }
    assert "+4930123456" not in caplog.text and kind.__name__ in caplog.text
