"""The benchmark gateway's environment (bench/procs.py ``gateway_env``)."""

from __future__ import annotations

import pytest
from bench.procs import gateway_env

pytestmark = pytest.mark.unit


def test_the_callers_telepath_settings_never_reach_the_bench_gateway() -> None:
    base = {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "TELEPATH_STUN_SERVER": "stun.example.net:3478",  # would query an outside host
        "TELEPATH_SIP_WORKERS": "4",
        "TELEPATH_SIP_MAX_CPS": "10",
        "BENCH_MAX_CPS": "150",
    }
    env = gateway_env(base, {"TELEPATH_SIP_MAX_CPS": "0", "TELEPATH_LOG_LEVEL": "WARNING"})
    assert env == {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "BENCH_MAX_CPS": "150",
        "TELEPATH_SIP_MAX_CPS": "0",
        "TELEPATH_LOG_LEVEL": "WARNING",
    }
    assert base["TELEPATH_STUN_SERVER"]  # the caller's own environment is left alone


def test_a_lower_case_telepath_variable_is_dropped_too() -> None:
    # pydantic-settings reads TELEPATH_* names case-insensitively (Settings has no
    # case_sensitive=True): telepath_stun_server is TELEPATH_STUN_SERVER to the gateway
    base = {"PATH": "/usr/bin", "telepath_stun_server": "stun.example.net:3478"}
    assert gateway_env(base, {}) == {"PATH": "/usr/bin"}


@pytest.mark.parametrize(
    "name",
    [
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "no_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "ws_proxy",
        "WSS_PROXY",
    ],
)
def test_the_callers_proxy_settings_never_reach_the_bench_gateway(name: str) -> None:
    # websockets' get_proxy and aiohttp's trust_env would send the gateway's agent and
    # webhook traffic through the caller's proxy instead of to the fakes on loopback
    base = {"PATH": "/usr/bin", name: "http://proxy.example.net:3128"}
    assert gateway_env(base, {}) == {"PATH": "/usr/bin"}
