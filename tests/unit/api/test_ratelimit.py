"""The fixed-window limiter, on an injected clock."""

from __future__ import annotations

import pytest

from telepath.api.ratelimit import AuthFailureLimiter, RateLimiter

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


def test_auth_failures_limit_an_address_until_the_window_ends() -> None:
    now = [125.0]
    limiter = AuthFailureLimiter(2, now=lambda: now[0])
    assert limiter.retry_after("192.0.2.1", "sk_bad") is None
    limiter.failed("192.0.2.1", "sk_bad")
    assert limiter.retry_after("192.0.2.1", "sk_bad") is None  # one failure: under the limit
    limiter.failed("192.0.2.1", "sk_bad")
    assert limiter.retry_after("192.0.2.1", "sk_bad") == 55  # to the end of the minute
    assert limiter.retry_after("192.0.2.2", "sk_bad") is None  # another address
    now[0] = 179.5
    assert limiter.retry_after("192.0.2.1", "sk_bad") == 1  # never 0
    now[0] = 180.0
    assert limiter.retry_after("192.0.2.1", "sk_bad") is None


def test_a_recently_authenticated_key_passes_a_limited_address() -> None:
    """Clients behind one NAT or proxy share an address: one guessing keys does not lock out
    another whose key authenticated recently."""
    limiter = AuthFailureLimiter(1, now=lambda: 60.0)
    limiter.succeeded("sk_good")
    limiter.failed("192.0.2.1", "sk_guess")
    assert limiter.retry_after("192.0.2.1", "sk_good") is None
    assert limiter.retry_after("192.0.2.1", "sk_other") is not None


def test_a_key_whose_lookup_fails_is_no_longer_trusted() -> None:
    """A key once authenticated, then revoked (leaked): its failed lookup forgets it, or it
    would pass a limited address for ever, each request costing the lookup the limit saves."""
    limiter = AuthFailureLimiter(1, now=lambda: 60.0)
    limiter.succeeded("k")
    limiter.failed("192.0.2.1", "sk_guess")
    assert limiter.retry_after("192.0.2.1", "k") is None  # still trusted: looked up
    limiter.failed("192.0.2.1", "k")  # that lookup found no live key: revoked
    assert limiter.retry_after("192.0.2.1", "k") is not None
    assert limiter.tracked() == (1, 0)


def test_auth_failure_memory_is_bounded() -> None:
    limiter = AuthFailureLimiter(1, max_addresses=3, max_trusted=2, now=lambda: 60.0)
    for n in range(10):
        limiter.failed(f"192.0.2.{n}", "sk_x")
        limiter.succeeded(f"sk_{n}")
    assert limiter.tracked() == (3, 2)
    # the first addresses are held to their limit; those past the table's size are not counted
    assert limiter.retry_after("192.0.2.0", "sk_x") is not None
    assert limiter.retry_after("192.0.2.9", "sk_x") is None
    # the keys most recently authenticated are the ones kept
    assert limiter.retry_after("192.0.2.0", "sk_9") is None
    assert limiter.retry_after("192.0.2.0", "sk_0") is not None


def test_a_key_in_use_stays_remembered() -> None:
    limiter = AuthFailureLimiter(1, max_trusted=2, now=lambda: 60.0)
    limiter.succeeded("sk_busy")
    limiter.succeeded("sk_once")
    limiter.succeeded("sk_busy")  # used again: now the most recent
    limiter.succeeded("sk_new")
    limiter.failed("192.0.2.1", "sk_guess")
    assert limiter.retry_after("192.0.2.1", "sk_busy") is None
    assert limiter.retry_after("192.0.2.1", "sk_once") is not None
