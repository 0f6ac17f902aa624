"""A real ``telepath serve`` process on a free port, as a user would run it."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

_handed_out: set[int] = set()  # never the same port twice in one test process


def free_port(kind: int = socket.SOCK_STREAM, *, also: int | None = None) -> int:
    """A loopback port free for ``kind`` (and ``also``) now, and not handed out before."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port in _handed_out:
            continue
        if also is not None:
            try:
                with socket.socket(socket.AF_INET, also) as t:
                    t.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free loopback port")


def free_sip_port() -> int:
    """A port free for both UDP and TCP: the SIP server listens on both (RFC 3261 §18). A port
    checked for UDP alone was once taken on TCP and the server failed to start (fresh-clone CI)."""
    return free_port(socket.SOCK_DGRAM, also=socket.SOCK_STREAM)


@dataclass
class LiveServer:
    """A running service and the first API key it printed."""

    base_url: str
    api_key: str
    process: subprocess.Popen[str]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(
    data_dir: Path, extra_env: dict[str, str], api_key: str | None = None, *, wait: bool = True
) -> LiveServer:
    """Start the service; wait for its first key (or, given ``api_key``, for health only);
    ``wait`` False: not at all (a test of the start itself)."""
    port = free_port()
    env = {
        **os.environ,
        "TELEPATH_DATA_DIR": str(data_dir),
        "TELEPATH_HTTP_HOST": "127.0.0.1",
        "TELEPATH_HTTP_PORT": str(port),
        "TELEPATH_SIP_HOST": "127.0.0.1",
        "TELEPATH_SIP_PORT": str(free_sip_port()),
        "TELEPATH_SIP_TLS_PORT": str(free_port()),
        "TELEPATH_SIP_DOMAIN": "sip.example.test",
        "TELEPATH_OPENAI_API_BASE": "http://127.0.0.1:9/v1",
        "TELEPATH_ELEVENLABS_API_BASE": "http://127.0.0.1:9",
        **extra_env,
    }
    if "TELEPATH_SECRET_KEY" not in extra_env:
        env.pop("TELEPATH_SECRET_KEY", None)
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "server.log"
    with log_path.open("a") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "telepath", "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    base = f"http://127.0.0.1:{port}"
    if not wait:
        return LiveServer(base, api_key or "", proc, log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited early:\n{log_path.read_text()}")
        match = re.search(r"sk_live_[A-Za-z0-9_-]+", log_path.read_text())
        key = api_key or (match.group(0) if match else "")
        if key:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    return LiveServer(base, key, proc, log_path)
            except httpx.HTTPError:
                pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"server did not start:\n{log_path.read_text()}")


async def live_api(server: LiveServer, method: str, path: str, body: Any = None) -> httpx.Response:
    """One authenticated request to a live server; fails the test unless it succeeded."""
    async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as client:
        headers = {"Authorization": f"Bearer {server.api_key}"}
        resp = await client.request(method, path, json=body, headers=headers)
    assert resp.status_code < 300, resp.text
    return resp


async def live_json(server: LiveServer, method: str, path: str, body: Any = None) -> Any:
    """:func:`live_api`'s answer, decoded."""
    return (await live_api(server, method, path, body)).json()


async def live_calls(server: LiveServer, count: int) -> list[dict[str, Any]]:
    """``GET /v1/calls`` once it lists ``count`` calls (10 s at most): an answered call's record
    is first written beside its media, just after the 200 OK, not before it."""
    listed: list[dict[str, Any]] = []
    for _ in range(100):
        listed = (await live_json(server, "GET", "/v1/calls"))["calls"]
        if len(listed) >= count:
            break
        await asyncio.sleep(0.1)
    assert len(listed) == count, listed
    return listed


def custom_trunk(user: str, password: str, agent_url: str) -> dict[str, str]:
    """``POST /v1/trunks`` body: ``user`` authenticates with ``password``; calls reach the
    custom WebSocket agent at ``agent_url``."""
    return {
        "name": f"trunk {user}",
        "sip_username": user,
        "sip_password": password,
        "ai_provider": "custom",
        "custom_endpoint": agent_url,
    }


def stop_server(server: LiveServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[LiveServer]:
    server = start_server(tmp_path / "data", {"TELEPATH_VALIDATE_PROVIDER_KEYS": "false"})
    yield server
    stop_server(server)
