"""``TELEPATH_LOG_FORMAT=json`` on a real ``telepath serve``: every line on stderr is JSON.

uvicorn's own lines ("Started server process", "Uvicorn running on", a port it cannot bind)
used to go out through the handler of uvicorn's default logging config, in plain text and
without a call id, beside our JSON lines: a log shipper parsing JSON dropped or mangled them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.integration.live.conftest import free_port, free_sip_port


def _serve(data_dir: Path, http_port: int) -> tuple[subprocess.Popen[bytes], Path]:
    """``telepath serve`` with JSON logs; its stderr (the log) apart from stdout (where the
    first API key is printed, deliberately not logged)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "TELEPATH_DATA_DIR": str(data_dir),
        "TELEPATH_HTTP_HOST": "127.0.0.1",
        "TELEPATH_HTTP_PORT": str(http_port),
        "TELEPATH_SIP_HOST": "127.0.0.1",
        "TELEPATH_SIP_PORT": str(free_sip_port()),
        "TELEPATH_SIP_TLS_PORT": str(free_port()),
        "TELEPATH_SIP_DOMAIN": "sip.example.test",
        "TELEPATH_SIP_DRAIN_TIMEOUT_S": "1",
        "TELEPATH_VALIDATE_PROVIDER_KEYS": "false",
        "TELEPATH_LOG_FORMAT": "json",
        "TELEPATH_LOG_LEVEL": "INFO",
    }
    env.pop("TELEPATH_SECRET_KEY", None)
    stderr = data_dir / "stderr.log"
    with stderr.open("wb") as err, (data_dir / "stdout.log").open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "telepath", "serve"], env=env, stdout=out, stderr=err
        )
    return proc, stderr


def _json_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of ``path`` decoded; fails on the first that is not one JSON object."""
    lines = []
    for line in path.read_text().splitlines():
        try:
            data = json.loads(line)
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}\n{path.read_text()}") from None
        assert isinstance(data, dict), line
        assert {"time", "level", "logger", "call_id", "message"} <= data.keys(), line
        lines.append(data)
    return lines


def test_every_line_of_a_run_is_json(tmp_path: Path) -> None:
    port = free_port()
    proc, stderr = _serve(tmp_path / "data", port)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, stderr.read_text()
            assert time.monotonic() < deadline, stderr.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        # a request with a query string: no access log line either way (it could carry a number)
        httpx.get(f"http://127.0.0.1:{port}/healthz?to=%2B15551230000", timeout=5)
        # nor a WebSocket upgrade's, which uvicorn logged at INFO (path and query) when it
        # refused one, access log or not: the API serves no WebSocket
        upgrade = {
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        }
        refused = httpx.get(
            f"http://127.0.0.1:{port}/v1/calls?to=%2B15551230001", headers=upgrade, timeout=5
        )
        assert refused.status_code != 101
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, stderr.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = _json_lines(stderr)
    messages = [line["message"] for line in lines]
    # uvicorn's lines among them, through our handler
    assert any(m.startswith("Uvicorn running on") for m in messages), messages
    assert any(line["logger"].startswith("uvicorn") for line in lines), messages
    assert any(m.startswith("draining calls") for m in messages), messages
    assert not any("15551230000" in m for m in messages), messages
    assert not any("15551230001" in m for m in messages), messages


def test_a_port_taken_is_said_in_json(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc, stderr = _serve(tmp_path / "data", taken.getsockname()[1])
        try:
            code = proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert code != 0
    lines = _json_lines(stderr)
    errors = [line for line in lines if line["level"] == "ERROR"]
    assert any("address already in use" in line["message"].lower() for line in errors), lines
