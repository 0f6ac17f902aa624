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
