"""The fixed-window limiter, on an injected clock."""

from __future__ import annotations

import pytest

from telepath.api.ratelimit import RateLimiter

pytestmark = pytest.mark.unit


def test_window_counts_and_resets() -> None:
    now = [120.0]
    limiter = RateLimiter(2, now=lambda: now[0])
    first, second, third = (limiter.hit("k") for _ in range(3))
    assert (first.allowed, second.allowed, third.allowed) == (True, True, False)
    assert (first.remaining, second.remaining, third.remaining) == (1, 0, 0)
    assert third.reset_at == 180
    assert limiter.hit("other").allowed
    now[0] = 180.0
    fresh = limiter.hit("k")
    assert fresh.allowed and fresh.remaining == 1 and fresh.reset_at == 240
    assert "Retry-After" in third.headers() and "Retry-After" not in fresh.headers()
