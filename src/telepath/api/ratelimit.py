"""Per-API-key request rate limit: a fixed one-minute window, in process memory.

Fixed windows aligned to the minute make ``X-RateLimit-Reset`` (a Unix timestamp, as the product
documents) exact and cost one dict lookup per request. A single-process service needs nothing more;
several processes would each apply the limit (documented in the README).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

WINDOW_S = 60


@dataclass(frozen=True)
class RateDecision:
    """The outcome of one request against the limit, with the values for the headers."""

    allowed: bool
    limit: int
    remaining: int
    reset_at: int

    def headers(self) -> dict[str, str]:
        """The ``X-RateLimit-*`` headers (plus ``Retry-After`` when refused)."""
        h = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_at),
        }
        if not self.allowed:
            h["Retry-After"] = str(max(1, self.reset_at - int(time.time())))
        return h


class RateLimiter:
    """Counts requests per key in the current minute window."""

    def __init__(self, limit_per_minute: int, now: Callable[[], float] = time.time) -> None:
        self.limit = limit_per_minute
        self._now = now
        self._window = -1
        self._counts: dict[str, int] = {}

    def hit(self, key_id: str) -> RateDecision:
        """Count one request for ``key_id`` and say whether it may proceed."""
        window = int(self._now()) // WINDOW_S
        if window != self._window:
            self._window = window
            self._counts.clear()
        used = self._counts.get(key_id, 0) + 1
        self._counts[key_id] = used
        reset_at = (window + 1) * WINDOW_S
        return RateDecision(
            allowed=used <= self.limit,
            limit=self.limit,
            remaining=max(0, self.limit - used),
            reset_at=reset_at,
        )
