"""CPU of one ``wss://`` agent connection (TCP, TLS, WebSocket upgrade, one message, close), on
the gateway's side only, with the shared client context against a context built per connection.

The baseline is what every call to a ``wss://`` agent did until 2026-12-05: build a context
(``ssl.create_default_context``, which parses the system's CA bundle) for each connection. Both
run in the same process, interleaved, against a local TLS WebSocket server in its own thread; the
client thread's CPU (``time.thread_time``) is what is counted. The CA bundle is the system's
plus the local server's certificate, as a production gateway loads it.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection, serve

from bench.common import print_table, trusted_test_ca
from telepath.bridges import ws_socket
from telepath.bridges.tls import client_context
from telepath.bridges.ws_socket import AgentSocket


def _server(cert: Path, key: Path, ready: threading.Event, port: list[int]) -> None:
    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async def main() -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        async with serve(echo, "127.0.0.1", 0, ssl=context) as srv:
            port.append(next(iter(srv.sockets)).getsockname()[1])
            ready.set()
            await asyncio.Future()  # until the process ends (daemon thread)

    asyncio.run(main())


async def _connections(url: str, n: int) -> float:
    """Client-thread CPU seconds per connection over ``n`` connections."""
    t0 = time.thread_time()
    for _ in range(n):
        sock = await AgentSocket.open(url, timeout_s=10, max_size=1 << 20)
        await sock.send("x")
        await sock.recv()
        await sock.close()
    return (time.thread_time() - t0) / n


def run(quick: bool = False) -> dict[str, Any]:
    n = 20 if quick else 50
    rounds = 2 if quick else 3
    tmp = Path(tempfile.mkdtemp(prefix="bench-tls-"))
    cert, key, bundle = trusted_test_ca(tmp)
    previous = os.environ.get("SSL_CERT_FILE")
    os.environ["SSL_CERT_FILE"] = str(bundle)
    ready, port = threading.Event(), list[int]()
    threading.Thread(target=_server, args=(cert, key, ready, port), daemon=True).start()
    ready.wait(10)
    url = f"wss://127.0.0.1:{port[0]}/"
    ms: dict[str, list[float]] = {"shared": [], "per-connection": []}
    try:
        for _ in range(rounds):
            for mode in ms:
                # per-connection: the baseline, a new context for each connection as before
                setattr(  # noqa: B010 (the module's name for it, replaced for the baseline)
                    ws_socket,
                    "client_context",
                    client_context if mode == "shared" else ssl.create_default_context,
                )
                ms[mode].append(1000 * asyncio.run(_connections(url, n)))
    finally:
        setattr(ws_socket, "client_context", client_context)  # noqa: B010
        if previous is None:
            os.environ.pop("SSL_CERT_FILE", None)
        else:
            os.environ["SSL_CERT_FILE"] = previous
    rows = [
        {"mode": mode, "connections": n * rounds, "cpu_ms_per_connection": round(min(v), 2)}
        for mode, v in ms.items()
    ]
    print_table(
        "wss:// agent connection, gateway side (CA bundle: the system's + the local CA)",
        ["client context", "connections", "CPU ms each (best of rounds)"],
        [[r["mode"], r["connections"], r["cpu_ms_per_connection"]] for r in rows],
    )
    shared, per = (round(min(ms[mode]), 2) for mode in ("shared", "per-connection"))
    print(f"  shared context: {per / shared:.1f}x less CPU per connection", flush=True)
    return {"rows": rows, "summary": {"ratio": round(per / shared, 1), "goals": {}}}
