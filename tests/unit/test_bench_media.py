"""The media benchmark's pacing figures and verdict (bench/media_bench.py, bench/media.py)."""

from __future__ import annotations

from typing import Any

import pytest
from bench import media, media_bench

pytestmark = pytest.mark.unit


def arrivals(intervals: list[float], start: float = 100.0) -> list[float]:
    """One stream's arrival times: a packet at ``start``, the next 1 s later (the first second
    is left out of the figures), then one after each interval."""
    times = [start, start + 1.0]
    for gap in intervals:
        times.append(times[-1] + gap)
    return times


def test_no_packet_is_no_figure() -> None:
    figures = media_bench.pacing([[], []])
    assert figures["dev_p50"] is None
    assert figures["dev_p99"] is None
    assert figures["received"] == 0


def test_pacing_percentiles_are_nearest_rank() -> None:
    # 100 intervals: 98 on time, one 1 ms late, one 10 ms late. Nearest rank: p99 is the
    # 99th smallest (1 ms), p50 the 50th (0); devs[int(n x 0.99)] read the 100th (10 ms).
    figures = media_bench.pacing([arrivals([0.020] * 98 + [0.021, 0.030])])
    assert figures["dev_p99"] == pytest.approx(1.0, abs=1e-6)
    assert figures["dev_p50"] == pytest.approx(0.0, abs=1e-6)
    assert figures["received"] == 102


def session(**changes: Any) -> dict[str, Any]:
    """250 streams for 10 s, all of it received, well paced."""
    row: dict[str, Any] = {
        "mode": "session",
        "streams": 250,
        "dev_p99": 0.5,
        "received": 250 * 10 * 50,
    }
    row.update(changes)
    return row


def test_a_well_paced_session_with_its_packets_passes() -> None:
    assert media.pacing_verdict(session(), 10.0) == "PASS"
    assert media.pacing_verdict(session(dev_p99=2.5), 10.0) == "FAIL"


def test_no_pacing_data_is_no_pass() -> None:
    assert media.pacing_verdict(session(dev_p99=None, received=0), 10.0) == "INVALID"
    assert media.pacing_verdict(session(dev_p99=None), 10.0) == "n/a"


def test_a_session_that_received_too_little_is_invalid() -> None:
    owed = 250 * (10 - 1) * 50  # each stream's packets after the first second
    assert media.pacing_verdict(session(received=int(0.94 * owed)), 10.0) == "INVALID"
    assert media.pacing_verdict(session(received=int(0.96 * owed)), 10.0) == "PASS"
    assert media.pacing_verdict(session(received=None), 10.0) == "INVALID"
