"""Webhook cost: CPU per event written to the outbox and per delivery sent, against the HTTP
client alone as the baseline of the same run.

In one process (``time.process_time``: the event loop and the database threads): a SQLite
store with one endpoint subscribed to everything, ``DbEventSink.emit`` N times, then one
``WebhookDispatcher.run_once`` that delivers the N rows (signed, recorded) to a keep-alive HTTP
receiver in another process; the baseline POSTs the same number of bodies with a bare
``aiohttp.ClientSession`` (the dispatcher's client) at the same concurrency, and, for reference,
with ``httpx.AsyncClient`` (the dispatcher's client until 2026-12-06). Every call emits four
events (``call.started``, ``agent.connected``, ``agent.disconnected``, ``call.ended``), so per
call multiply by four.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource
from sqlalchemy import select

from bench.common import print_table
from telepath.cli.runtime import bootstrap_first_key, open_state
from telepath.config import Settings
from telepath.db.base import utcnow
from telepath.db.models import Account, WebhookEndpoint, webhook_secret_context
from telepath.secrets.tokens import new_id
from telepath.webhooks.dispatcher import WebhookDispatcher
from telepath.webhooks.sink import DbEventSink

RECEIVER = r"""
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
ThreadingHTTPServer.request_queue_size = 256
s = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_port, flush=True)
s.serve_forever()
"""
PAYLOAD = {
    "call_id": "call_bench",
    "trunk_id": "trk_bench",
    "status": "completed",
    "disconnect_reason": "caller_hangup",
    "metrics": {"carrier_lag_ms": 12.5, "ai_latency_ms": 310.0, "packet_loss_percent": 0.0},
}
CONCURRENCY = 16  # the dispatcher's default
CALL_EVENTS = ("call.started", "agent.connected", "agent.disconnected", "call.ended")


class _OwnSettings(Settings):
    """``Settings`` from the values passed alone: no environment variable, no file."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def bench_settings(data_dir: Path) -> Settings:
    """The bench's own state in ``data_dir``, whatever the shell exported. ``Settings()`` reads
    every ``TELEPATH_*`` variable (in any case): an exported ``TELEPATH_DATABASE_URL`` would
    have this suite migrate that database, add a ``*`` endpoint to its account and deliver
    some 2000 fake events to that account's real endpoints (``bench.procs.gateway_env`` keeps
    them from the gateways the other suites start)."""
    return _OwnSettings(data_dir=data_dir)


async def _measure(url: str, n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as data:
        async with open_state(bench_settings(Path(data))) as state:
            await bootstrap_first_key(state)
            async with state.sessions() as session:
                account = (await session.scalars(select(Account))).one().id
                endpoint = new_id("wh")
                secret = state.keyring.encrypt("whsec_bench", webhook_secret_context(endpoint))
                session.add(
                    WebhookEndpoint(
                        id=endpoint,
                        account_id=account,
                        url=url,
                        events=["*"],
                        secret_enc=secret,
                        active=True,
                        created_at=utcnow(),
                    )
                )
                await session.commit()
            sink = DbEventSink(state.sessions)
            await sink.emit(account, "call.started", PAYLOAD)  # warm: endpoint cache, pool
            c0 = time.process_time()
            for _ in range(n):
                await sink.emit(account, "call.ended", PAYLOAD)
            c1 = time.process_time()

            async def call() -> None:
                for event in (
                    "call.started",
                    "agent.connected",
                    "agent.disconnected",
                    "call.ended",
                ):
                    await sink.emit(account, event, PAYLOAD)

            # the same number of events from n/4 calls at once (group commit: shared transactions)
            t0 = time.process_time()
            await asyncio.gather(*(call() for _ in range(n // 4)))
            t1 = time.process_time()
            c1 += t1 - t0  # the delivery below is timed from c1
            dispatcher = WebhookDispatcher(
                state.sessions, state.keyring, concurrency=CONCURRENCY, allow_insecure=True
            )  # its receiver is http:// on loopback
            delivered = await dispatcher.run_once()
            c2 = time.process_time()
            await dispatcher.aclose()
    body = b'{"type":"call.ended","data":' + repr(PAYLOAD).encode() + b"}"
    gate = asyncio.Semaphore(CONCURRENCY)
    async with aiohttp.ClientSession() as http:

        async def post() -> None:
            async with gate, http.post(url, data=body) as response:
                await response.read()

        await post()
        c3 = time.process_time()
        await asyncio.gather(*(post() for _ in range(n)))
        c4 = time.process_time()
    async with httpx.AsyncClient() as client:

        async def post_httpx() -> None:
            async with gate, client.stream("POST", url, content=body) as response:
                await response.aread()

        await post_httpx()
        c5 = time.process_time()
        await asyncio.gather(*(post_httpx() for _ in range(n)))
        c6 = time.process_time()
    return {
        "events": n,
        "delivered": delivered,
        "emit_ms": 1000 * (c1 - c0 - (t1 - t0)) / n,
        "emit_concurrent_ms": 1000 * (t1 - t0) / (n // 4 * 4),
        "deliver_ms": 1000 * (c2 - c1) / max(delivered, 1),
        "bare_post_ms": 1000 * (c4 - c3) / n,
        "bare_httpx_post_ms": 1000 * (c6 - c5) / n,
    }


def run(quick: bool = False) -> dict[str, Any]:
    n = 300 if quick else 1000
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout is not None
        url = f"http://127.0.0.1:{int(receiver.stdout.readline())}/hook"
        rounds = [asyncio.run(_measure(url, n)) for _ in range(1 if quick else 2)]
    finally:
        receiver.kill()
    keys = ("emit_ms", "emit_concurrent_ms", "deliver_ms", "bare_post_ms", "bare_httpx_post_ms")
    best = {k: round(min(r[k] for r in rounds), 3) for k in keys}
    print_table(
        f"Webhooks: CPU per event (one endpoint, {n} events, concurrency {CONCURRENCY}; best of "
        f"{len(rounds)})",
        [
            "outbox write (emit), one at a time",
            f"the same, {n // 4} calls at once",
            "delivery (sign, POST, record)",
            "bare aiohttp POST (baseline)",
            "bare httpx POST",
        ],
        [[best[k] for k in keys]],
    )
    alone = 4 * (best["emit_ms"] + best["deliver_ms"])
    busy = 4 * (best["emit_concurrent_ms"] + best["deliver_ms"])
    print(
        f"  a call's four events to one endpoint: {alone:.1f} ms of CPU alone, {busy:.1f} ms "
        "when calls overlap",
        flush=True,
    )
    return {"rows": rounds, "best_ms": best, "summary": {"goals": {}}}
