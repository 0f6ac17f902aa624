"""Call set-up cost per provider kind: gateway CPU per call at a fixed rate, each provider's
local fake over plain WebSocket and over TLS (as the real ones are reached).

Each call: INVITE → 401 → INVITE (digest) → agent connect (for ElevenLabs with an API key, a
signed-URL request first) → 200 → ACK → BYE. The ``custom`` row (the bench echo agent over
``ws://``) is the baseline of the same run: what a provider adds is the difference to it.
``SSL_CERT_FILE`` is the system's CA bundle plus the fakes' certificate, as a production
gateway loads it. Until 2026-12-05 a TLS row cost ~20 ms more per call (a TLS context built per
connection); this is the benchmark that shows such a thing.
"""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path
from typing import Any

from bench.common import print_table, trusted_test_ca
from bench.cps import PASSWORD, USER, _measure, _wait_idle
from bench.procs import Gateway, Worker
from bench.sipp import bench_scenario, run_sipp

RATE = 50  # calls/s: well under capacity, so CPU per call is the set-up's own cost


def agent_process(kind: str, agent: Worker, fake: Worker) -> Worker:
    """The process a row's calls talk to, whose CPU is the row's ``agent_cpu_pct``: the echo
    agent for ``custom``, the provider's fake otherwise (the echo agent sits idle then; until
    2026-12-08 the OpenAI and ElevenLabs rows showed its CPU)."""
    return agent if kind == "custom" else fake


def _trunk(gw: Gateway, kind: str, url: str) -> None:
    body: dict[str, Any] = {
        "name": f"bench {kind}",
        "sip_username": USER,
        "sip_password": PASSWORD,
        "ai_provider": kind,
    }
    if kind == "openai":
        body["openai_api_key"] = "sk-bench-key"
    elif kind == "elevenlabs":
        # a private agent (the signed-URL request first); the fake accepts keys sk-valid...
        body.update(elevenlabs_api_key="sk-valid-bench", elevenlabs_agent_id="agent_bench")
    else:
        body["custom_endpoint"] = url
    gw.http.post("/v1/trunks", json=body).raise_for_status()


def run(quick: bool = False) -> dict[str, Any]:
    seconds = 3.0 if quick else 6.0
    tmp = Path(tempfile.mkdtemp(prefix="bench-providers-"))
    cert, key, bundle = trusted_test_ca(tmp)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the gateway's RTP goes here
    sink.bind(("127.0.0.1", 0))
    scenario = bench_scenario(USER, sink.getsockname()[1], 200)
    agent = Worker("agent")
    agent_url = agent.recv_json()["url"]
    rows: list[dict[str, Any]] = []
    try:
        for kind, tls in (
            ("custom", False),
            ("openai", False),
            ("openai", True),
            ("elevenlabs", False),
            ("elevenlabs", True),
        ):
            fake = Worker("provider", kind, *([str(cert), str(key)] if tls else []))
            env = {
                "TELEPATH_SIP_MAX_CPS": "0",
                "TELEPATH_SIP_MAX_LOOP_LOAD": "0",
                "SSL_CERT_FILE": str(bundle),
            }
            try:
                urls = fake.recv_json() if kind != "custom" else {}
                if kind == "openai":
                    env["TELEPATH_OPENAI_REALTIME_URL"] = urls["url"]
                elif kind == "elevenlabs":
                    env["TELEPATH_ELEVENLABS_WS_URL"] = urls["url"]
                    env["TELEPATH_ELEVENLABS_API_BASE"] = urls["http"]
                gw = Gateway(extra_env=env)
                try:
                    _trunk(gw, kind, agent_url)
                    warm_up = ("127.0.0.1", gw.sip_port)
                    run_sipp(warm_up, 10, 10, scenario=scenario, user=USER, password=PASSWORD)
                    _wait_idle(gw.pids)
                    label = f"{kind} ({'TLS' if tls else 'plain'})"
                    peer = agent_process(kind, agent, fake)
                    row = _measure(gw, peer, label, RATE, seconds, scenario)
                    row["provider"], row["tls"] = kind, tls
                    rows.append(row)
                finally:
                    gw.stop()
            finally:
                fake.close()
    finally:
        agent.close()
        sink.close()
    base = rows[0]["server_cpu_ms_per_call"]
    print_table(
        f"Call set-up per provider at {RATE}/s (local fakes; baseline: the custom echo agent)",
        ["provider", "completed", "CPU ms/call", "vs custom", "set-up ms"],
        [
            [
                r["kind"],
                f"{r['completed']}/{r['attempted']}",
                r["server_cpu_ms_per_call"],
                f"{r['server_cpu_ms_per_call'] - base:+.2f}",
                r["setup_ms_mean"],
            ]
            for r in rows
        ],
    )
    return {"rows": rows, "summary": {"goals": {}}}
