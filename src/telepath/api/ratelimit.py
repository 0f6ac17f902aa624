"""Per-API-key request rate limit, and per-address failed-authentication limit: fixed one-minute
windows, in process memory.

Fixed windows aligned to the minute make ``X-RateLimit-Reset`` (a Unix timestamp, as the product
documents) exact and cost one dict lookup per request. A single-process service needs nothing more;
several processes would each apply the limit (documented in the README).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
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


#: Client addresses whose failures are counted in one window; past it a new address is not
#: counted (each is then held to no limit, and the table to this size: ~100 bytes an entry).
MAX_TRACKED_ADDRESSES = 100_000
#: Keys remembered as recently authenticated (their SHA-256, least recently used dropped).
MAX_TRUSTED_KEYS = 10_000


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class AuthFailureLimiter:
    """Failed API key lookups per client address, in a fixed one-minute window.

    Each bogus key cost a database lookup, from the pool the gateway's trunk lookups share,
    and a client could send them without end (found by review). Past ``limit_per_minute``
    failures an address is refused (429) before the lookup until the window ends — except
    with a key that authenticated recently (remembered by its hash, forgotten when a lookup
    of it fails: revoked): clients behind one NAT or one proxy share an address, and one
    guessing keys must not lock out the others. A
    valid key not seen since the process started is refused with the guesses until the
    window ends: it cannot be told from one without the lookup.

    Memory is bounded: the counts are cleared every window and hold at most
    ``max_addresses`` addresses; the remembered keys are at most ``max_trusted``."""

    def __init__(
        self,
        limit_per_minute: int,
        *,
        max_addresses: int = MAX_TRACKED_ADDRESSES,
        max_trusted: int = MAX_TRUSTED_KEYS,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.limit = limit_per_minute
        self._max_addresses = max_addresses
        self._max_trusted = max_trusted
        self._now = now
        self._window = -1
        self._failures: dict[str, int] = {}
        self._trusted: OrderedDict[bytes, None] = OrderedDict()

    def _current(self) -> int:
        window = int(self._now()) // WINDOW_S
        if window != self._window:
            self._window = window
            self._failures.clear()
        return window

    def retry_after(self, address: str, token: str) -> int | None:
        """Seconds ``address`` must wait before ``token`` is looked up; None: look it up."""
        window = self._current()
        if self._failures.get(address, 0) < self.limit or _digest(token) in self._trusted:
            return None
        return max(1, (window + 1) * WINDOW_S - int(self._now()))

    def failed(self, address: str, token: str) -> None:
        """Count a lookup of ``token`` from ``address`` that found no live key. ``token`` is
        no longer trusted: a key revoked (leaked, say) after it authenticated would otherwise
        pass a limited address for ever, each request costing the lookup this limit saves."""
        self._trusted.pop(_digest(token), None)
        self._current()
        if address in self._failures or len(self._failures) < self._max_addresses:
            self._failures[address] = self._failures.get(address, 0) + 1

    def succeeded(self, token: str) -> None:
        """Remember ``token`` as one that authenticated."""
        digest = _digest(token)
        self._trusted[digest] = None
        self._trusted.move_to_end(digest)
        while len(self._trusted) > self._max_trusted:
            self._trusted.popitem(last=False)

    def tracked(self) -> tuple[int, int]:
        """How many addresses and keys are held (for tests)."""
        return len(self._failures), len(self._trusted)
