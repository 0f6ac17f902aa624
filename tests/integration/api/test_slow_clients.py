"""Slow clients hold no database connection (found by review).

The pool (PostgreSQL 5 + 10, file SQLite alike) is shared with the gateway's trunk lookups,
call-record writes and webhook dispatch. A request's session kept the connection of its key
lookup while the body trickled in (uvicorn has no body timeout), and every session was closed
only once its response had been sent: fifteen slow uploads, or slow readers of a large call
record, took every connection, and everything else waited for the pool until it timed out — a
500. Here the pool has one connection, so one stalled request is enough to show it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.types import Message, Scope
from tests.integration.api.seed import CUSTOM
from tests.integration.api.test_trunk_create import err
from tests.integration.conftest import Api

from telepath.api.app import create_app
from telepath.api.state import ApiState
from telepath.db.engine import sessionmaker_for

pytestmark = pytest.mark.integration

POOL_TIMEOUT_S = 1.0


@contextlib.asynccontextmanager
async def _one_connection(api: Api) -> AsyncIterator[tuple[httpx.AsyncClient, ApiState]]:
    """The API over a pool of exactly one connection that gives up after ``POOL_TIMEOUT_S``."""
    url = api.state.engine.url.render_as_string(hide_password=False)
    engine = create_async_engine(url, pool_size=1, max_overflow=0, pool_timeout=POOL_TIMEOUT_S)
    state = dataclasses.replace(api.state, engine=engine, sessions=sessionmaker_for(engine))
    try:
        transport = httpx.ASGITransport(app=create_app(state))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            # The key's last use is written on its first request of a minute (and committed):
            # done here, so the requests under test are the common case.
            assert (await client.get("/v1/trunks", headers=api.auth())).status_code == 200
            yield client, state
    finally:
        await engine.dispose()


class StalledBody:
    """A request body that sends its first part, then waits for ``release``."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.reading = asyncio.Event()  # the server asked for more than the first part
        self.release = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.raw[:10]
        self.reading.set()
        await self.release.wait()
        yield self.raw[10:]


async def _other_trunk(api: Api) -> str:
    created = await api.post("/v1/trunks", {**CUSTOM, "sip_username": "other-trunk"})
    assert created.status_code == 201, created.text
    return f"/v1/trunks/{created.json()['id']}"


# Each route that reads a body: method, path, body, its success status.
UPLOADS = [
    ("POST", "/v1/trunks", CUSTOM, 201),
    ("PATCH", "{trunk}", {"name": "renamed"}, 200),
    ("POST", "/v1/webhooks", {"url": "https://hooks.example.com/t", "events": ["*"]}, 201),
]


@pytest.mark.parametrize(("method", "path", "payload", "status"), UPLOADS)
async def test_a_stalled_body_holds_no_connection(
    api: Api, method: str, path: str, payload: dict[str, Any], status: int
) -> None:
    target = path.format(trunk=await _other_trunk(api))
    async with _one_connection(api) as (client, _state):
        body = StalledBody(json.dumps(payload).encode())
        headers = {**api.auth(), "Content-Type": "application/json"}
        upload = asyncio.create_task(client.request(method, target, content=body, headers=headers))
        await asyncio.wait_for(body.reading.wait(), 5)
        listed = await client.get("/v1/trunks", headers=api.auth())
        assert listed.status_code == 200, listed.text
        body.release.set()
        answer = await asyncio.wait_for(upload, 10)
        assert answer.status_code == status, answer.text


@pytest.mark.parametrize(("method", "path", "payload", "status"), UPLOADS)
async def test_a_body_stalled_past_the_limit_is_a_408(
    api: Api, method: str, path: str, payload: dict[str, Any], status: int
) -> None:
    target = path.format(trunk=await _other_trunk(api))
    async with _one_connection(api) as (client, state):
        state.body_timeout_s = 0.3
        body = StalledBody(json.dumps(payload).encode())
        headers = {**api.auth(), "Content-Type": "application/json"}
        answer = await asyncio.wait_for(
            client.request(method, target, content=body, headers=headers), 10
        )
        err(answer, 408, "request_timeout", "The request body was not received within 0.3 s")
        assert answer.headers["connection"] == "close"
        assert (await client.get("/v1/trunks", headers=api.auth())).status_code == 200


async def test_a_slowly_read_response_holds_no_connection(api: Api) -> None:
    """A client that reads its answer slowly (a call record with a 256 KB SIP trace) did not
    let go of the connection until the last byte was sent. Driven as raw ASGI here: the
    client takes the headers, then stops reading."""
    async with _one_connection(api) as (client, state):
        app = create_app(state)
        started = asyncio.Event()
        release = asyncio.Event()

        async def receive() -> Message:
            await release.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                started.set()
                await release.wait()

        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/v1/trunks",
            "raw_path": b"/v1/trunks",
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"host", b"testserver"),
                (b"authorization", api.auth()["Authorization"].encode()),
            ],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
        }
        slow = asyncio.create_task(app(scope, receive, send))
        try:
            await asyncio.wait_for(started.wait(), 5)
            listed = await client.get("/v1/trunks", headers=api.auth())
            assert listed.status_code == 200, listed.text
        finally:
            release.set()
            await asyncio.wait_for(slow, 10)


async def test_an_exhausted_pool_is_a_503(api: Api) -> None:
    """Waiting past the pool's timeout (SQLAlchemy's ``TimeoutError``) was taken for a bug: a
    500 ``internal_error`` where the README promises 503 while the database cannot serve."""
    async with _one_connection(api) as (client, state):
        async with state.engine.connect() as held:
            await held.execute(text("SELECT 1"))
            answer = await client.get("/v1/trunks", headers=api.auth())
        err(answer, 503, "service_unavailable")
        assert answer.headers["retry-after"] == "5"
        assert (await client.get("/v1/trunks", headers=api.auth())).status_code == 200


def _raw_scope(api: Api, method: str, path: str) -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"authorization", api.auth()["Authorization"].encode()),
            (b"content-type", b"application/json"),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


@pytest.mark.parametrize(("method", "path", "payload", "status"), UPLOADS)
async def test_a_client_gone_mid_body_is_no_error(
    api: Api,
    method: str,
    path: str,
    payload: dict[str, Any],
    status: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A client that closed its connection while sending the body (starlette's
    ``ClientDisconnect``) was an ERROR "unhandled error in API request" and a 500, and the
    exception went on to the server, which logged its traceback: nobody is left to answer."""
    target = path.format(trunk=await _other_trunk(api))
    part: list[Message] = [
        {"type": "http.request", "body": json.dumps(payload).encode()[:10], "more_body": True}
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        # the first part of the body, then gone (and a server says so again if asked again)
        return part.pop() if part else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    with caplog.at_level(logging.DEBUG):
        await asyncio.wait_for(
            create_app(api.state)(_raw_scope(api, method, target), receive, send), 10
        )
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not [m for m in sent if m.get("status") == 500]
    # nothing was created or changed
    listed = (await api.get("/v1/trunks")).json()["trunks"]
    assert [t["name"] for t in listed] == ["Custom WebSocket Agent"]
    assert (await api.get("/v1/webhooks")).json()["webhooks"] == []
