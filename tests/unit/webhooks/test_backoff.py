"""Retry spacing of webhook deliveries."""

from __future__ import annotations

import pytest

from telepath.webhooks.dispatcher import backoff_delay

pytestmark = pytest.mark.unit


def test_backoff_doubles_and_is_capped() -> None:
    delays = [backoff_delay(n, 30.0, 3600.0) for n in range(1, 9)]
    assert delays == [30, 60, 120, 240, 480, 960, 1920, 3600]


def test_backoff_before_any_failure_is_the_base() -> None:
    assert backoff_delay(0, 5.0, 60.0) == 5.0
