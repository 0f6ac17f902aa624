"""A real HTTP server on 127.0.0.1 that records webhook requests and answers from a script."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

GATE_LIMIT_S = 30.0  # a gate nobody opens: the handler answers after this anyway


@dataclass(frozen=True)
class Received:
    """One request as it arrived."""

    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    peer: tuple[str, int]  # the sender's address: one per TCP connection


class Receiver:
    """Answers each POST with the next (status, delay_s) of ``script``, then ``default``.

    With ``gate``, every request is held (accepted, read, unanswered) until the test sets it.
    """

    def __init__(
        self,
        script: list[tuple[int, float]] | None = None,
        default: int = 200,
        tls: ssl.SSLContext | None = None,
        gate: threading.Event | None = None,
    ) -> None:
        self.tls = tls  # a server context: https://
        self.gate = gate
        self.script = list(script or [])
        self.default = default
        self.requests: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as any real receiver

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.requests.append(
                        Received(
                            path=self.path,
                            headers={k.lower(): v for k, v in self.headers.items()},
                            body=body,
                            peer=self.client_address[:2],
                        )
                    )
                    status, delay = (
                        receiver.script.pop(0) if receiver.script else (receiver.default, 0.0)
                    )
                if delay:
                    time.sleep(delay)
                if receiver.gate is not None:
                    receiver.gate.wait(GATE_LIMIT_S)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:  # the client gave up (timeout test)
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                return

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                return

        self._server = Server(("127.0.0.1", 0), Handler)
        if tls is not None:  # each connection's handshake runs in its own thread
            self._server.socket = tls.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{host!s}:{port}/hook"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self.gate is not None:
            self.gate.set()  # no handler left hanging
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@contextmanager
def running(receiver: Receiver) -> Iterator[Receiver]:
    """Serve for the duration of the block."""
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()
