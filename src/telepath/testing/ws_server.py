"""Common machinery of the fake agent servers: a real ``websockets`` server on loopback.

Subclasses implement ``handle(ws)`` for one session. The base class provides the handshake
behaviours every fake shares:

* ``reject_status`` (e.g. 401): answer the upgrade with that HTTP status and a JSON body;
* ``handshake_delay_s``: wait before answering the upgrade (a slow or silent agent);
* ``http_routes``: plain HTTP ``GET`` routes served on the same port (REST endpoints);

and records what the gateway sent: ``handshakes`` (path and headers of each upgrade request),
``protocol_errors`` (every frame that broke the protocol — tests assert it stays empty).
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

__all__ = ["FakeAgentServer", "Handshake", "HttpRoute"]

logger = logging.getLogger(__name__)

HttpRoute = Callable[[Request], tuple[int, Any]]
"""A plain-HTTP handler: request in, ``(status, json_body)`` out."""


@dataclass(frozen=True, slots=True)
class Handshake:
    """One WebSocket upgrade request as the fake received it."""

    path: str
    headers: dict[str, str]


def json_response(status: int, body: Any) -> Response:
    """A complete HTTP response with a JSON body."""
    data = json.dumps(body).encode()
    phrase = http.HTTPStatus(status).phrase
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return Response(status, phrase, headers, data)


class FakeAgentServer:
    """Base for the fake providers; start with ``async with`` or ``start()``/``stop()``.

    Args:
        reject_status: answer every upgrade with this HTTP status instead of 101.
        handshake_delay_s: delay before answering an upgrade.

    Set ``tls`` (a server context) before ``start()`` to serve ``wss://`` and ``https://``.
    """

    ws_path = "/"

    def __init__(self, *, reject_status: int | None = None, handshake_delay_s: float = 0.0) -> None:
        self.reject_status = reject_status
        self.handshake_delay_s = handshake_delay_s
        self.http_routes: dict[str, HttpRoute] = {}
        self.handshakes: list[Handshake] = []
        self.protocol_errors: list[str] = []
        self.sessions_ended = asyncio.Event()
        self._server: Server | None = None
        self._stopping = asyncio.Event()
        self.tls: ssl.SSLContext | None = None

    # --- life cycle ------------------------------------------------------------------------

    async def start(self) -> Self:
        """Listen on ``127.0.0.1`` with a free port."""
        self._server = await serve(
            self._session,
            "127.0.0.1",
            0,
            process_request=self._process_request,
            compression=None,
            # websockets drops a handshake not done in 10 s: a longer delay must be honoured
            open_timeout=10.0 + self.handshake_delay_s,
            max_size=16 * 1024 * 1024,
            ssl=self.tls,
        )
        return self

    async def stop(self) -> None:
        """Close every connection and stop listening."""
        self._stopping.set()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        """The bound TCP port."""
        if self._server is None:
            raise RuntimeError("server not started")
        return int(next(iter(self._server.sockets)).getsockname()[1])

    @property
    def base_http(self) -> str:
        """``http://127.0.0.1:<port>`` (``https`` with ``tls``)."""
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The WebSocket URL of the agent endpoint (``wss`` with ``tls``)."""
        scheme = "wss" if self.tls is not None else "ws"
        return f"{scheme}://127.0.0.1:{self.port}{self.ws_path}"

    # --- handshake -------------------------------------------------------------------------

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        path = request.path.split("?", 1)[0]
        is_upgrade = "websocket" in request.headers.get("Upgrade", "").lower()
        if not is_upgrade:
            route = self.http_routes.get(path)
            for prefix, handler in self.http_routes.items():  # "/x/" routes match "/x/<id>"
                if route is None and prefix.endswith("/") and path.startswith(prefix):
                    route = handler
            if route is None:
                return json_response(404, {"detail": "Not Found"})
            return json_response(*route(request))
        self.handshakes.append(
            Handshake(request.path, {k.lower(): v for k, v in request.headers.raw_items()})
        )
        if self.handshake_delay_s:
            with contextlib.suppress(TimeoutError):  # cut short by stop()
                await asyncio.wait_for(self._stopping.wait(), self.handshake_delay_s)
        if self.reject_status is not None:
            return json_response(self.reject_status, {"error": "rejected by fake"})
        return self.check_handshake(request)

    def check_handshake(self, request: Request) -> Response | None:
        """Provider-specific checks of the upgrade request (``None`` to accept)."""
        return None

    async def _session(self, ws: ServerConnection) -> None:
        try:
            await self.handle(ws)
        except ConnectionClosed:
            pass
        finally:
            self.sessions_ended.set()

    async def handle(self, ws: ServerConnection) -> None:
        """Run one session."""
        raise NotImplementedError

    # --- helpers for subclasses ------------------------------------------------------------

    def violation(self, message: str) -> None:
        """Record a protocol violation by the gateway."""
        logger.warning("fake agent: protocol violation: %s", message)
        self.protocol_errors.append(message)

    @staticmethod
    def drop(ws: ServerConnection) -> None:
        """Abort the TCP connection without a close frame."""
        ws.transport.abort()
