"""``GET /metrics`` of a real ``telepath serve``: the serve-time collectors are wired in."""

from __future__ import annotations

import re
import time

import httpx

from tests.integration.live.conftest import LiveServer


def test_gc_pauses_are_exported(live_server: LiveServer) -> None:
    resp = httpx.get(
        f"{live_server.base_url}/metrics",
        headers={"Authorization": f"Bearer {live_server.api_key}"},
        timeout=10,
    )
    assert resp.status_code == 200
    for generation in range(3):
        pattern = rf'^telepath_gc_pause_seconds_count\{{generation="{generation}"\}} ([0-9.e+]+)$'
        assert re.search(pattern, resp.text, re.M), f"no pause series for generation {generation}"


def test_media_clock_lateness_is_exported(live_server: LiveServer) -> None:
    resp = httpx.get(f"{live_server.base_url}/metrics", timeout=10)
    assert resp.status_code == 200
    assert re.search(r"^telepath_media_tick_lateness_seconds_count [0-9.e+]+$", resp.text, re.M)
    assert 'telepath_media_tick_lateness_seconds_bucket{le="0.002"}' in resp.text


def test_the_load_admission_runs_by_default(live_server: LiveServer) -> None:
    # TELEPATH_SIP_MAX_LOOP_LOAD defaults to on: the loop thread's CPU share is read (and
    # exported) every quarter second, and an idle gateway limits nothing. The share counts
    # the time the loop waits for a CPU, so on a crowded machine a quarter may read busy: an
    # idle reading is waited for, every reading being a share.
    deadline = time.monotonic() + 20
    readings: list[float] = []
    while not readings or not 0 < readings[-1] < 0.9:
        assert time.monotonic() < deadline, f"no idle reading of the loop's share: {readings}"
        time.sleep(0.1)
        text = httpx.get(f"{live_server.base_url}/metrics", timeout=10).text
        found = re.search(r"^telepath_event_loop_busy_ratio ([0-9.e+-]+)$", text, re.M)
        assert found, "telepath_event_loop_busy_ratio is not exported"
        readings.append(float(found.group(1)))
        assert 0 <= readings[-1] <= 1
    assert re.search(r"^telepath_sip_admission_limit_cps 0\.0$", text, re.M)
