"""The gateway's HTTP sessions keep no cookies: one is shared by every account's webhook
deliveries (and the provider key checks), so a cookie one account's receiver set was sent to
another account's endpoint on the same host (webhook.site, Zapier, ...)."""

from __future__ import annotations

import pytest
from aiohttp import web

from telepath.bridges.http_client import new_session

pytestmark = pytest.mark.integration


async def test_a_cookie_set_by_one_endpoint_is_not_sent_to_another() -> None:
    seen: list[str | None] = []

    async def hook(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        response = web.Response(text="ok")
        response.set_cookie("tenant", "a-secret", path="/")
        return response

    app = web.Application()
    app.router.add_post("/a", hook)
    app.router.add_post("/b", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "localhost", 0)
    await site.start()
    port = runner.addresses[0][1]
    session = new_session()
    try:
        for path in ("/a", "/b"):
            async with session.post(f"http://localhost:{port}{path}", data=b"{}") as answer:
                assert answer.status == 200
    finally:
        await session.close()
        await runner.cleanup()
    assert seen == [None, None]
