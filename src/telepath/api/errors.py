"""The one error envelope of the API, ``{"error": {"code", "message", "status"}}``, and the
exception handlers that guarantee every failure is rendered in it (never a bare 500 page).

Codes are lower-case snake (the seed's convention). Messages never contain secrets.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from telepath.db.engine import transient_error

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An error the API answers with; rendered as the envelope."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class ErrorBody(BaseModel):
    """The inside of the error envelope."""

    code: str
    message: str
    status: int


class ErrorEnvelope(BaseModel):
    """Every error response body."""

    error: ErrorBody


def envelope(status: int, code: str, message: str) -> dict[str, Any]:
    """Build the JSON body of an error."""
    return {"error": {"code": code, "message": message, "status": status}}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """Render an error as a response."""
    return JSONResponse(envelope(status, code, message), status_code=status, headers=headers)


SERVICE_UNAVAILABLE = "The database is not answering (service_unavailable, with Retry-After)"


def documented_errors(descriptions: dict[int, str], *codes: int) -> dict[int | str, dict[str, Any]]:
    """A route's documented error answers (OpenAPI ``responses``): ``codes`` described by the
    router's ``descriptions``, and the 503 every route can give while the database is down."""
    described = {**descriptions, 503: SERVICE_UNAVAILABLE}
    return {c: {"model": ErrorEnvelope, "description": described[c]} for c in (*codes, 503)}


#: At most this much of an id from the path is repeated in a 404's message: ours are shorter,
#: and a client's 8,000-character one is not echoed whole (found by review).
ID_ECHOED_MAX = 64


def not_found(kind: str, ident: str) -> ApiError:
    """The documented 404: ``Trunk 'conn_x' not found`` (the id cut to ``ID_ECHOED_MAX``)."""
    return ApiError(404, "not_found", f"{kind} '{ident[:ID_ECHOED_MAX]}' not found")


#: The range of every list's ``limit`` and ``offset`` (``Query(ge=..., le=...)``), stated
#: as such in the error: an offset past the top was told "of at least 0" (found by review).
LIMIT_MAX = 100
OFFSET_MAX = 2**31 - 1

_QUERY_RULES = {
    "limit": f"limit must be an integer between 1 and {LIMIT_MAX}",
    "offset": f"offset must be an integer between 0 and {OFFSET_MAX}",
    "status": "status must be one of: active, inactive, error",
}

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def _allowed_methods(req: Request) -> list[str]:
    allowed = []
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        scope = {**req.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in req.app.router.routes):
            allowed.append(method)
            if method == "GET":  # served as GET by app.HeadAsGet (RFC 9110 §9.3.2)
                allowed.append("HEAD")
    return allowed


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception type the stack can raise into the envelope."""

    @app.exception_handler(ApiError)
    async def _api_error(_req: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
        # Only query and path parameters reach FastAPI's validation: bodies are parsed by hand
        # (see telepath.api.trunk_input) so that every field gets its documented error code.
        for err in exc.errors():
            loc = err.get("loc", ())
            name = str(loc[-1]) if loc else "parameter"
            message = _QUERY_RULES.get(name, f"Invalid {name} parameter")
            return error_response(400, "invalid_parameter", message)
        return error_response(400, "invalid_parameter", "Invalid request parameters")

    @app.exception_handler(StarletteHTTPException)
    async def _http(req: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else "Request failed"
        headers = dict(exc.headers or {})
        if exc.status_code == 404:
            message = "No such endpoint"
        if exc.status_code == 405:
            # Starlette names only the first route's methods; RFC 9110 §15.5.6 wants them all.
            headers["Allow"] = ", ".join(_allowed_methods(req))
        return error_response(exc.status_code, code, message, headers)

    @app.exception_handler(Exception)
    async def _unexpected(_req: Request, exc: Exception) -> JSONResponse:
        # Log the type only: a message or traceback could carry request data (keys, numbers).
        logger.error("unhandled error in API request: %s", type(exc).__name__)
        return error_response(500, "internal_error", "Internal server error")

    async def _client_gone(_req: Request, _exc: Exception) -> JSONResponse:
        # The client closed its connection before its body was complete: no one is left to
        # answer and nothing is wrong here (it was an ERROR and a 500, and the server logged
        # the traceback). Some response must still be returned; the server drops it. An
        # incomplete message is a client's error (RFC 9112 §8).
        logger.debug("API request abandoned: the client disconnected before its body ended")
        return error_response(
            400, "bad_request", "The connection was closed before the request body was complete"
        )

    app.add_exception_handler(ClientDisconnect, _client_gone)

    async def _database(req: Request, exc: Exception) -> JSONResponse:
        if transient_error(exc):  # the database restarting or unreachable: not our bug
            logger.warning("API request failed: database unavailable (%s)", type(exc).__name__)
            return error_response(
                503,
                "service_unavailable",
                "The database is not answering; try again shortly",
                {"Retry-After": "5"},
            )
        return await _unexpected(req, exc)

    # Registered by class (not only as the catch-all above, which Starlette's outermost
    # middleware serves and then re-raises — to the server, which logs the whole traceback):
    # these are answered like any API error, and a bug of any common kind too.
    # (A pool timeout is a SQLAlchemyError, not a DBAPIError: named, it is served as an outage.)
    for kind in (DBAPIError, OSError, PoolTimeout):
        app.add_exception_handler(kind, _database)
    for bug in (
        ArithmeticError,
        AssertionError,
        AttributeError,
        LookupError,
        RuntimeError,
        SQLAlchemyError,
        TypeError,
        ValueError,
    ):
        app.add_exception_handler(bug, _unexpected)
