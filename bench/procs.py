"""The processes a benchmark drives: a real ``telepath serve``, the echo agent, the phones."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import httpx

from bench.common import ROOT, free_port


class Worker:
    """A ``python -m bench.workers ROLE`` subprocess spoken to over stdin/stdout lines."""

    def __init__(self, role: str, *args: str) -> None:
        self.role = role
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.workers", role, *args],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def recv(self, timeout_s: float = 60) -> str:
        """The next stdout line (raises on timeout or exit)."""
        assert self.proc.stdout is not None
        out: list[str] = []
        t = threading.Thread(target=lambda: out.append(self.proc.stdout.readline()))  # type: ignore[union-attr]
        t.daemon = True
        t.start()
        t.join(timeout_s)
        if not out or not out[0]:
            raise RuntimeError(f"worker {self.role} gave no answer")
        return out[0].strip()

    def recv_json(self, timeout_s: float = 60) -> Any:
        return json.loads(self.recv(timeout_s))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def gateway_env(base: Mapping[str, str], settings: Mapping[str, str]) -> dict[str, str]:
    """The bench gateway's environment: ``base`` (the bench's own) without any ``TELEPATH_*``
    variable, then ``settings``. A setting exported in the shell that runs the bench would
    otherwise change what is measured, or reach outside the machine (an exported
    ``TELEPATH_STUN_SERVER`` would have the gateway query that host). The prefix is matched
    in any case, as pydantic-settings reads the names (``telepath_stun_server`` is the same
    setting). Every ``*_proxy`` variable goes too, in any case (``http_proxy``, ``HTTPS_PROXY``,
    ``all_proxy``, ``ws_proxy``, ``no_proxy``...: urllib's ``getproxies_environment`` reads any
    name ending in ``_proxy``): websockets' ``get_proxy`` and aiohttp's ``trust_env`` would
    route the gateway's agent and webhook traffic through the shell's proxy, not to the fakes
    on loopback."""
    env = {
        k: v
        for k, v in base.items()
        if not k.upper().startswith("TELEPATH_") and not k.lower().endswith("_proxy")
    }
    env.update(settings)
    return env


class Gateway:
    """``telepath serve`` as a subprocess with its own data dir, ports and an API key."""

    def __init__(self, extra_env: dict[str, str] | None = None, rtp_span: int = 2400) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="telepath-bench-"))
        self.sip_port = free_port(both=True)
        self.http_port = free_port(__import__("socket").SOCK_STREAM)
        rtp_min = random.randrange(40000, 60000 - rtp_span, 2)
        settings = {
            "TELEPATH_DATA_DIR": str(self.tmp),
            "TELEPATH_HTTP_HOST": "127.0.0.1",
            "TELEPATH_HTTP_PORT": str(self.http_port),
            "TELEPATH_SIP_HOST": "127.0.0.1",
            "TELEPATH_SIP_PORT": str(self.sip_port),
            "TELEPATH_SIP_TLS_PORT": str(free_port(__import__("socket").SOCK_STREAM)),
            "TELEPATH_SIP_DIGEST_ALGORITHMS": "MD5,SHA-256",  # SIPp answers the first, MD5 only
            "TELEPATH_VALIDATE_PROVIDER_KEYS": "false",
            "TELEPATH_ALLOW_INSECURE_AGENT_URLS": "true",
            "TELEPATH_SIP_RATE_LIMIT_PER_S": "1000000",
            "TELEPATH_SIP_RATE_BURST": "1000000",
            "TELEPATH_SIP_MAX_CALLS": "100000",
            # new calls/s admitted: set to the capacity measured at zero failures (README)
            "TELEPATH_SIP_MAX_CPS": os.environ.get("BENCH_MAX_CPS", "150"),
            "TELEPATH_API_RATE_LIMIT_PER_MINUTE": "1000000",
            "TELEPATH_LOG_LEVEL": "WARNING",
            "TELEPATH_SIP_CODECS": "PCMU,PCMA",
            "TELEPATH_RTP_PORT_MIN": str(rtp_min),
            "TELEPATH_RTP_PORT_MAX": str(rtp_min + rtp_span),
            **(extra_env or {}),
        }
        env = gateway_env(os.environ, settings)
        # BENCH_PROBE=1: time the per-frame callbacks in situ (bench/probe/sitecustomize.py)
        self.probe_file: Path | None = None
        if os.environ.get("BENCH_PROBE") == "1":
            self.probe_file = self.tmp / "probe.jsonl"
            probe_dir = str(ROOT / "bench" / "probe")
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [probe_dir, env.get("PYTHONPATH")]))
            env["BENCH_PROBE_OUT"] = str(self.probe_file)
        self.log = open(self.tmp / "gateway.log", "w")
        # BENCH_GATEWAY_PROFILE=/path/out.prof: run the gateway under cProfile (written on exit)
        profile = os.environ.get("BENCH_GATEWAY_PROFILE")
        prefix = ["-m", "cProfile", "-o", profile] if profile else []
        # BENCH_GATEWAY_PYTHON=/path/python: the gateway on another interpreter (a venv of
        # another Python version with the package installed), the rest of the bench unchanged
        python = os.environ.get("BENCH_GATEWAY_PYTHON", sys.executable)
        self.proc = subprocess.Popen(
            [python, *prefix, "-m", "telepath", "serve"],
            cwd=self.tmp,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        self.key = self._read_key()
        self.http = httpx.Client(
            base_url=f"http://127.0.0.1:{self.http_port}",
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=30,
        )
        self._wait_ready()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def pids(self) -> list[int]:
        """``telepath serve`` and its SIP worker processes (TELEPATH_SIP_WORKERS)."""
        children: list[int] = []
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{self.pid}/task"):
                with open(f"/proc/{self.pid}/task/{task}/children") as f:
                    children += [int(c) for c in f.read().split()]
        return [self.pid, *children]

    def _read_key(self) -> str:
        assert self.proc.stdout is not None
        stdout: IO[str] = self.proc.stdout
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = stdout.readline()
            if not line:
                break
            m = re.search(r"(sk_live_\S+)", line)
            if m:
                # keep draining stdout so the gateway never blocks on a full pipe
                threading.Thread(target=stdout.read, daemon=True).start()
                return m.group(1)
        raise RuntimeError(f"telepath serve printed no API key; see {self.tmp / 'gateway.log'}")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if self.http.get("/healthz").status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError("telepath serve did not become healthy")

    def create_trunk(self, username: str, password: str, agent_url: str) -> str:
        body = {
            "name": f"bench {username}",
            "sip_username": username,
            "sip_password": password,
            "ai_provider": "custom",
            "custom_endpoint": agent_url,
        }
        r = self.http.post("/v1/trunks", json=body)
        r.raise_for_status()
        return str(r.json()["id"])

    def calls_since(self, start_iso: str) -> list[dict[str, Any]]:
        """Every call record (detail view) that started at or after ``start_iso``."""
        ids: list[str] = []
        offset = 0
        while True:
            r = self.http.get(
                "/v1/calls", params={"start_date": start_iso, "limit": 100, "offset": offset}
            )
            r.raise_for_status()
            data = r.json()
            items = data["calls"]
            ids += [c["id"] for c in items]
            offset += len(items)
            if not items or offset >= data.get("pagination", {}).get("total", 0):
                break
        return [self.http.get(f"/v1/calls/{i}").json() for i in ids]

    def metrics(self) -> str:
        return self.http.get("/metrics").text

    def stop(self) -> None:
        self.http.close()
        self.proc.terminate()
        try:
            self.proc.wait(40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
