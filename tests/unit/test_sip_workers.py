"""SIP worker processes: per-process limits split between workers; metrics merged."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
from prometheus_client.parser import text_string_to_metric_families

from telepath.cli import workers
from telepath.cli.workers import worker_settings
from telepath.config import Settings
from telepath.metrics import Metrics, merge_expositions


def _settings(**kw: object) -> Settings:
    base: dict[str, object] = {
        "rtp_port_min": 20000,
        "rtp_port_max": 30000,
        "sip_max_calls": 501,
        "sip_max_cps": 300.0,
        "sip_rate_limit_per_s": 50.0,
        "sip_rate_burst": 201,
        "sip_workers": 3,
    }
    return Settings(**{**base, **kw})  # type: ignore[arg-type]


def test_one_worker_keeps_the_settings() -> None:
    s = _settings(sip_workers=1)
    assert worker_settings(s, 0, 1) is s


def test_port_ranges_are_disjoint_even_and_inside_the_configured_one() -> None:
    s = _settings()
    parts = [worker_settings(s, i, 3) for i in range(3)]
    ranges = [(p.rtp_port_min, p.rtp_port_max) for p in parts]
    assert ranges[0][0] == 20000 and ranges[-1][1] == 30000
    for (_, high), (next_low, _) in zip(ranges, ranges[1:], strict=False):
        assert high < next_low
        assert next_low == high + 1  # no port left out between two workers
    assert all(low % 2 == 0 and high > low for low, high in ranges)


def test_limits_are_split() -> None:
    s = _settings()
    part = worker_settings(s, 1, 3)
    assert part.sip_max_calls == 167  # ceil(501 / 3): the total is never below the setting
    assert part.sip_max_cps == pytest.approx(100.0)
    assert part.sip_rate_limit_per_s == pytest.approx(50 / 3)
    assert part.sip_rate_burst == 67
    assert worker_settings(_settings(sip_max_cps=0.0), 1, 3).sip_max_cps == 0  # 0 stays "off"
    # the rest is the same
    assert part.sip_port == s.sip_port and part.database_url == s.database_url


def test_a_range_too_small_to_split_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="too small for TELEPATH_SIP_WORKERS"):
        _settings(rtp_port_min=20000, rtp_port_max=20003)
    _settings(rtp_port_min=20000, rtp_port_max=20005)  # two ports each: enough


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_metrics_of_several_workers_add_up() -> None:
    front, worker = Metrics(), Metrics()
    front.record_call_started("a")
    front.record_call_ended("a", outcome="caller_hangup", setup_ms=20)
    front.record_call_started("b")  # still up
    worker.record_call_started("c")
    worker.record_call_ended("c", outcome="caller_hangup", setup_ms=200)
    worker.record_call_started("d")
    worker.record_call_ended("d", outcome="agent_hangup", setup_ms=30)
    front.loop_busy.set(0.25)
    worker.loop_busy.set(0.75)
    merged = _samples(merge_expositions([front.render(), worker.render()]))
    assert merged[("telepath_calls_total", (("outcome", "caller_hangup"),))] == 2
    assert merged[("telepath_calls_total", (("outcome", "agent_hangup"),))] == 1
    assert merged[("telepath_active_calls", ())] == 1
    assert merged[("telepath_call_setup_seconds_count", ())] == 3
    assert merged[("telepath_call_setup_seconds_sum", ())] == pytest.approx(0.25)
    assert merged[("telepath_call_setup_seconds_bucket", (("le", "0.025"),))] == 1
    assert merged[("telepath_call_setup_seconds_bucket", (("le", "0.05"),))] == 2
    assert merged[("telepath_call_setup_seconds_bucket", (("le", "+Inf"),))] == 3
    assert merged[("telepath_event_loop_busy_ratio", ())] == 0.75  # the busiest, not a sum
    created = ("telepath_calls_created", (("outcome", "caller_hangup"),))
    firsts = [_samples(m.render())[created] for m in (front, worker)]
    assert merged[created] == min(firsts)


def test_merging_one_exposition_changes_nothing() -> None:
    metrics = Metrics()
    metrics.record_call_started("a")
    metrics.record_call_ended("a", outcome="caller_hangup", setup_ms=20)
    assert _samples(merge_expositions([metrics.render()])) == _samples(metrics.render())


async def test_a_late_metrics_answer_is_not_taken_for_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(workers, "METRICS_TIMEOUT_S", 0.2)
    pool = workers.WorkerPool(_settings(sip_workers=2), -1, ("127.0.0.1", 5060), {}, [b"k"] * 2)
    front, worker_end = socket.socketpair()
    worker = pool._workers[1]
    worker.reader, worker.writer = await asyncio.open_connection(sock=front)
    reader, writer = await asyncio.open_connection(sock=worker_end)
    try:
        assert await pool.metrics() == []  # the worker is slow: nothing, and no error
        assert await reader.readline() == b"metrics 1\n"
        writer.write(struct.pack("!II", 1, 4) + b"late")  # the answer to the first, too late

        async def answer_second() -> None:
            assert await reader.readline() == b"metrics 2\n"
            writer.write(struct.pack("!II", 2, 5) + b"fresh")

        monkeypatch.setattr(workers, "METRICS_TIMEOUT_S", 10)  # this one is answered
        answering = asyncio.create_task(answer_second())
        assert await pool.metrics() == [b"fresh"]
        await answering
    finally:
        writer.close()
        worker.writer.close()
