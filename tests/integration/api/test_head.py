"""``HEAD`` on every ``GET`` route (found by review: each answered 405, so a load balancer or an
uptime monitor probing ``HEAD /healthz`` marked the service down). RFC 9110 §9.1: a
general-purpose server MUST support GET and HEAD; §9.3.2: HEAD is GET without the content —
the same status and header fields, no body."""

from __future__ import annotations

import pytest
from starlette.types import Message
from tests.integration.api.test_trunk_create import err
from tests.integration.conftest import Api

from telepath.api.app import create_app

pytestmark = pytest.mark.integration

RATE_HEADERS = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
async def test_head_on_an_unauthenticated_route(api: Api, path: str) -> None:
    got = await api.client.get(path)
    head = await api.client.head(path)
    assert head.status_code == got.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]


@pytest.mark.parametrize("path", ["/v1/trunks", "/v1/calls", "/v1/webhooks"])
async def test_head_on_an_authenticated_list(api: Api, path: str) -> None:
    got = await api.client.get(path, headers=api.auth())
    head = await api.client.head(path, headers=api.auth())
    assert head.status_code == got.status_code == 200
    assert head.content == b""
    for name in RATE_HEADERS:
        assert name in head.headers
    # one request counted, as a GET is (one less remaining than the GET before it)
    assert int(head.headers["x-ratelimit-remaining"]) == (
        int(got.headers["x-ratelimit-remaining"]) - 1
    )
    # the length of what GET would send (§9.3.2 allows it; §8.6)
    assert head.headers["content-length"] == got.headers["content-length"]


async def test_head_of_one_resource(api: Api) -> None:
    head = await api.client.head("/v1/trunks/conn_missing", headers=api.auth())
    assert head.status_code == 404
    assert head.content == b""


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer tp_nonsense"}])
async def test_head_without_a_valid_key_is_401(api: Api, headers: dict[str, str]) -> None:
    head = await api.client.head("/v1/trunks", headers=headers)
    assert head.status_code == 401
    assert head.headers["www-authenticate"] == "Bearer"
    assert head.content == b""


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", "/healthz", "GET, HEAD"),
        ("PUT", "/v1/trunks", "GET, HEAD, POST"),
        ("PUT", "/v1/trunks/conn_x", "GET, HEAD, PATCH, DELETE"),
        ("PUT", "/v1/webhooks/wh_x", "GET, HEAD, DELETE"),
    ],
)
async def test_405_allow_lists_head_with_get(api: Api, method: str, path: str, allow: str) -> None:
    resp = await api.client.request(method, path, headers=api.auth())
    err(resp, 405, "method_not_allowed")
    assert resp.headers["allow"] == allow


@pytest.mark.parametrize("path", ["/v1/trunks/conn_x/rotate-password"])
async def test_head_where_get_is_not_allowed_is_405(api: Api, path: str) -> None:
    """HEAD goes where GET goes, no further: a POST-only route refuses both."""
    head = await api.client.head(path, headers=api.auth())
    assert head.status_code == 405
    assert head.headers["allow"] == "POST"
    assert head.content == b""


async def test_head_sends_no_content_at_the_asgi_level(api: Api) -> None:
    """What the application itself sends (an HTTP client discards a HEAD answer's body on its
    own, so the check above cannot tell): the header fields of GET, an empty body."""
    app = create_app(api.state)
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "HEAD",
        "scheme": "http",
        "path": "/healthz",
        "raw_path": b"/healthz",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    await app(scope, receive, send)
    start, *bodies = sent
    assert start["type"] == "http.response.start" and start["status"] == 200
    assert (b"content-length", str(len(b'{"status":"ok"}')).encode()) in start["headers"]
    assert bodies and all(m["type"] == "http.response.body" and m["body"] == b"" for m in bodies)
