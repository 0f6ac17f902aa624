"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from telepath import __version__
from telepath.api.errors import error_response, install_error_handlers
from telepath.api.routers import calls, trunks, webhooks
from telepath.api.state import ApiState
from telepath.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from telepath.metrics import merge_expositions

READY_TIMEOUT_S = 2.0
logger = logging.getLogger(__name__)


def _openapi_without_422(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """FastAPI documents a 422 for every parameterised route; we answer 400 instead."""

    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        spec = get_openapi(title=app.title, version=app.version, routes=app.routes)
        for path in spec.get("paths", {}).values():
            for op in path.values():
                op.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            spec.get("components", {}).get("schemas", {}).pop(name, None)
        _link_created_trunk(spec)
        spec["components"]["securitySchemes"] = {"bearerAuth": {"type": "http", "scheme": "bearer"}}
        spec["security"] = [{"bearerAuth": []}]
        app.openapi_schema = spec
        return spec

    return build


def _link_created_trunk(spec: dict[str, Any]) -> None:
    """OpenAPI links from the 201 of ``POST /v1/trunks`` to every ``{trunk_id}`` operation."""
    created = spec["paths"]["/v1/trunks"]["post"]["responses"]["201"]
    links = created.setdefault("links", {})
    for path, ops in spec["paths"].items():
        if "{trunk_id}" not in path:
            continue
        for op in ops.values():
            links[op["operationId"]] = {
                "operationId": op["operationId"],
                "parameters": {"trunk_id": "$response.body#/id"},
            }


class HeadAsGet:
    """Serve ``HEAD`` as ``GET`` without the content (RFC 9110 §9.3.2), on every route.

    RFC 9110 §9.1: a general-purpose server MUST support GET and HEAD; FastAPI routes a method
    only where it is declared, so every HEAD was a 405 (found by review: a load balancer or an
    uptime monitor probing ``HEAD /healthz`` marked the service down). The request goes on as a
    GET, so it is authenticated, rate-limited and answered exactly as one (status and header
    fields, ``Content-Length`` included, as §9.3.2 allows); only the body is dropped. Where GET
    is not allowed neither is HEAD (405, ``Allow`` from ``errors._allowed_methods``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_without_body)


def create_app(state: ApiState) -> FastAPI:
    """Build the API around already-opened services (the caller owns their lifecycle)."""
    app = FastAPI(
        title="Telepath API",
        version=__version__,
        description="Manage SIP trunks that bridge phone calls to AI voice agents.",
        # A path with a trailing slash is an unknown path (404 envelope), not Starlette's bare
        # 307 to the slashless one: sent before authentication, with a Location built from the
        # Host header, and a client following it re-sent its body (passwords, keys) to it.
        redirect_slashes=False,
    )
    app.state.telepath = state
    install_error_handlers(app)

    @app.middleware("http")
    async def _rate_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        headers = getattr(request.state, "rate_headers", None)
        if headers:
            for name, value in headers.items():
                response.headers.setdefault(name, value)
        return response

    @app.middleware("http")
    async def _no_nul(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        # No id we issue and no parameter we take holds a NUL, and PostgreSQL refuses one in
        # text (found by review: GET /v1/trunks/%00 was a 500 there). Checked here, once, for
        # every route: a path is then no resource, a query parameter invalid.
        if "\x00" in request.scope["path"]:
            return error_response(404, "not_found", "Not found: no id contains a NUL character")
        if any(
            "\x00" in name or "\x00" in value for name, value in request.query_params.multi_items()
        ):
            return error_response(
                400, "invalid_parameter", "Query parameters must not contain NUL characters"
            )
        return await call_next(request)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        try:
            async with asyncio.timeout(READY_TIMEOUT_S), state.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:
            logger.warning("readiness check failed: %s", type(exc).__name__)
            return error_response(503, "not_ready", "The database is not answering")
        if state.workers_ready is not None and not state.workers_ready():
            return error_response(503, "not_ready", "A SIP worker process is being restarted")
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        own = state.metrics.render()
        if state.more_metrics is None:
            return Response(own, media_type=METRICS_CONTENT_TYPE)
        merged = merge_expositions([own, *await state.more_metrics()])
        return Response(merged, media_type=METRICS_CONTENT_TYPE)

    # Added last: outside the middlewares above, so they, routing and the error handlers all
    # see a GET.
    app.add_middleware(HeadAsGet)
    app.include_router(trunks.router)
    app.include_router(calls.router)
    app.include_router(webhooks.router)
    app.openapi = _openapi_without_422(app)  # type: ignore[method-assign]
    return app
