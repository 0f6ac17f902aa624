"""What the API needs at run time, built once by ``telepath serve`` (or a test)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from telepath.api.provider_checks import ProviderValidator
from telepath.api.ratelimit import AuthFailureLimiter, RateLimiter
from telepath.api.trunk_input import BODY_TIMEOUT_S
from telepath.config import Settings
from telepath.metrics import Metrics
from telepath.secrets.keyring import Keyring


@dataclass
class ApiState:
    """Shared services of the API process."""

    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    keyring: Keyring
    validator: ProviderValidator
    limiter: RateLimiter
    # failed authentications per client address (deps.authenticate)
    auth_failures: AuthFailureLimiter
    # key id -> last time (monotonic minute) its last_used_at was written; throttles writes.
    key_touch: dict[str, int] = field(default_factory=dict)
    metrics: Metrics = field(default_factory=Metrics)
    # Told the id of a trunk deleted or deactivated through this process: the gateway in the
    # same process ends that trunk's live calls (``CallManager.trunk_removed``).
    trunk_removed: list[Callable[[str], object]] = field(default_factory=list)
    # With SIP worker processes: their metrics (Prometheus text), merged into ``/metrics``.
    more_metrics: Callable[[], Awaitable[list[bytes]]] | None = None
    # With SIP worker processes: False while one is not serving (``/readyz`` answers 503).
    workers_ready: Callable[[], bool] | None = None
    # For long maintenance statements (the retention sweep): no statement timeout. None: as
    # ``sessions`` (SQLite, or no timeout configured).
    maintenance_sessions: async_sessionmaker[AsyncSession] | None = None
    # Seconds to receive a request body (``trunk_input.read_body``; 408 past it).
    body_timeout_s: float = BODY_TIMEOUT_S
