"""``DbEventSink``: call control's ``EventSink``, writing events to the webhook outbox."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import Callable
from datetime import datetime
from enum import Enum
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from telepath.db.base import utcnow
from telepath.db.engine import transient_error
from telepath.db.group_commit import GroupCommit
from telepath.db.webhook_store import WebhookRepository, delivery_rows
from telepath.lookup_cache import LookupCache
from telepath.metrics import Metrics
from telepath.secrets.tokens import new_id
from telepath.webhooks.events import iso_ms, subscribed

logger = logging.getLogger(__name__)

ENQUEUE_TIMEOUT_S = 10.0


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso_ms(value)
    if isinstance(value, Enum):
        return value.value
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def normalize_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload as plain JSON types (datetimes as ISO 8601 UTC, enums as their values)."""
    result: dict[str, Any] = json.loads(json.dumps(payload, default=_jsonable))
    return result


ENDPOINT_CACHE_TTL_S = 5.0
ENDPOINT_STALE_IF_ERROR_S = 600.0
ENDPOINT_STALE_WAIT_S = 2.0  # a silent database: known endpoints served after this long
RETRY_AFTER_ERROR_S = 30.0  # while the database is down: one read attempt per entry this often
_generation = 0


def endpoints_changed() -> None:
    """Tell every sink in this process that webhook endpoints were created or deleted."""
    global _generation
    _generation += 1


class DbEventSink:
    """Queues each event once per subscribed, active endpoint of the account.

    ``emit`` only writes outbox rows (group-committed with other events'); delivery happens in the
    ``WebhookDispatcher``. It never raises into call control: a failed write is logged and
    counted (``failures`` and ``telepath_webhook_enqueue_failures_total``); one that failed on a
    transient database error is kept and retried until it lands (``db/group_commit.py``).

    Args:
        sessions: the session factory.
        metrics: optional metrics to count failures in.
        on_enqueued: called after rows were written, e.g. ``dispatcher.wake`` for low latency.
        timeout_s: the longest ``emit`` may wait for the database.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        metrics: Metrics | None = None,
        on_enqueued: Callable[[], None] | None = None,
        timeout_s: float = ENQUEUE_TIMEOUT_S,
    ) -> None:
        self._sessions = sessions
        self._metrics = metrics
        self._on_enqueued = on_enqueued
        self._timeout_s = timeout_s
        self.failures = 0
        self._jobs: set[asyncio.Future[None]] = set()  # events being queued
        # an event's outbox rows wait for the next transaction with the others' (a call writes
        # several events at once; see db/group_commit.py)
        self._group: GroupCommit[list[dict[str, Any]]] = GroupCommit(
            self._insert, self._insert_one, name="webhook-outbox-writer", retryable=transient_error
        )
        if metrics is not None:
            metrics.db_writes_parked.labels(writer="webhook_events").set_function(
                lambda: self._group.parked
            )
        # While the database is unreachable, the endpoints known before still get the events
        # (kept with them until it is back).
        self._cache: LookupCache[str, list[tuple[str, list[str]]]] = LookupCache(
            ENDPOINT_CACHE_TTL_S,
            lambda: _generation,
            stale_if_error_s=ENDPOINT_STALE_IF_ERROR_S,
            stale_on=transient_error,
            retry_after_error_s=RETRY_AFTER_ERROR_S,
            stale_wait_s=ENDPOINT_STALE_WAIT_S,
        )

    @property
    def transactions(self) -> int:
        """Outbox transactions committed (group commit: fewer than events under load)."""
        return self._group.transactions

    def wants(self, account_id: str, event: str) -> bool:
        """False when the account's endpoints are cached and none subscribes to ``event``."""
        known = self._cache.peek(account_id)
        return known is None or any(subscribed(events, event) for _, events in known)

    async def emit(self, account_id: str, event: str, payload: dict[str, Any]) -> None:
        """Queue ``event`` for the account's subscribed endpoints.

        When the account's endpoints are cached and none subscribes to ``event`` — most events
        of most accounts — this returns without suspending: no task, no timer, no JSON (every
        call emits four events; at hundreds of calls a second that was measurable).
        """
        if not self.wants(account_id, event):
            return
        job = asyncio.ensure_future(self._queue(account_id, event, payload))
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)
        try:
            # shield: a caller that gives up leaves the event to finish on its own (the endpoint
            # lookup of a silent database takes longer than this wait)
            async with asyncio.timeout(self._timeout_s):
                await asyncio.shield(job)
        except TimeoutError:
            logger.warning("webhook event %s still pending; kept for retry", event)

    async def _queue(self, account_id: str, event: str, payload: dict[str, Any]) -> None:
        """Write the event's outbox rows; never raises (a failure is counted and logged)."""
        try:
            rows = await self._rows(account_id, event, payload)
        except Exception as exc:  # the endpoints could not be read, nor served stale: lost
            self._failed(event, exc)
            return
        if not rows:
            return
        done = self._group.submit(rows)
        done.add_done_callback(functools.partial(self._settled, event))
        with contextlib.suppress(Exception):  # counted by ``_settled``
            await done

    def _settled(self, event: str, done: asyncio.Future[None]) -> None:
        """An event's rows landed (wake the dispatcher) or were given up."""
        if done.cancelled():
            return
        error = done.exception()
        if error is not None:
            self._failed(event, error)
        elif self._on_enqueued is not None:
            self._on_enqueued()

    def _failed(self, event: str, error: BaseException) -> None:
        self.failures += 1
        if self._metrics is not None:
            self._metrics.webhook_enqueue_failures.inc()
        logger.error("webhook event %s not queued: %s", event, type(error).__name__)

    @property
    def parked(self) -> int:
        """Events kept for retry after a transient database failure."""
        return self._group.parked

    async def close(self, timeout_s: float = 5.0) -> int:
        """One last attempt for events kept for retry; returns how many were lost."""
        if self._jobs:  # events still reading their endpoints
            await asyncio.wait(set(self._jobs), timeout=timeout_s)
        return await self._group.close(timeout_s)

    async def _endpoints(self, account_id: str) -> list[tuple[str, list[str]]]:
        """The account's active endpoints as (id, events), cached: every call emits several
        events, and most accounts have no or few endpoints. The cache is dropped at once when
        this process changes endpoints (:func:`endpoints_changed`) and after
        ``ENDPOINT_CACHE_TTL_S`` otherwise (another process may have changed them)."""
        return await self._cache.get(account_id, lambda: self._load_endpoints(account_id))

    async def _load_endpoints(self, account_id: str) -> list[tuple[str, list[str]]]:
        async with self._sessions() as session:
            rows = await WebhookRepository(session).active_endpoints(account_id)
            return [(e.id, list(e.events)) for e in rows]

    async def _rows(
        self, account_id: str, event: str, payload: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """The event's outbox rows, one per subscribed endpoint (none: nobody listens)."""
        data = normalize_payload(payload)
        targets = [
            eid for eid, events in await self._endpoints(account_id) if subscribed(events, event)
        ]
        if not targets:
            return []
        return delivery_rows(
            targets,
            account_id=account_id,
            event_id=new_id("evt"),
            event=event,
            payload=data,
            now=utcnow(),
        )

    async def _insert(self, batch: list[list[dict[str, Any]]]) -> None:
        """One transaction for the rows of every event in ``batch`` (group commit)."""
        async with self._sessions() as session:
            await WebhookRepository(session).enqueue([row for rows in batch for row in rows])
            await session.commit()

    async def _insert_one(self, rows: list[dict[str, Any]]) -> None:
        await self._insert([rows])
