"""The per-call media counters /metrics adds as each call ends."""

from __future__ import annotations

import pytest

from telepath.metrics import Metrics

pytestmark = pytest.mark.unit


def test_refused_sends_are_a_counter_of_their_own() -> None:
    metrics = Metrics()
    metrics.rtp_send_errors.inc(0)
    metrics.rtp_send_errors.inc(7)
    assert metrics.registry.get_sample_value("telepath_rtp_send_errors_total") == 7.0
    assert b"telepath_rtp_send_errors_total 7.0" in metrics.render()
