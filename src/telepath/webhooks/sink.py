"""``DbEventSink``: call control's ``EventSink``, writing events to the webhook outbox.

An event is kept whole until it is written: its outbox rows (one per subscribed endpoint) are
made in the writer, so an event whose account's endpoints cannot be read yet — the database
down before this process ever read them — is kept and retried like any write, not lost.

The events that tell of a call's end are not written here but in the call record's own
transaction (``prepare`` makes them, ``db/call_recorder.py`` writes them with
``outbox_rows``): a crash between two commits cannot leave an ended call whose ``call.ended``
was never queued."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from telepath.db.base import utcnow
from telepath.db.engine import transient_error
from telepath.db.group_commit import GroupCommit, outage_proof
from telepath.db.webhook_store import WebhookRepository, delivery_rows
from telepath.db.write_journal import replay_journal
from telepath.lookup_cache import LookupCache
from telepath.metrics import Metrics
from telepath.secrets.tokens import new_id
from telepath.webhooks.events import iso_ms, subscribed

logger = logging.getLogger(__name__)

ENQUEUE_TIMEOUT_S = 10.0
REPLAY_TIMEOUT_S = 30.0  # a dead process's journal: how long its replay may hold up recovery
JOURNAL = "webhook_events"  # the writer's name in journal files


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


@dataclass(frozen=True, slots=True)
class _Event:
    """One event as emitted; its outbox rows (one per subscribed endpoint) are made when it is
    written, so an event whose endpoints cannot be read yet (the database down) is kept whole."""

    account_id: str
    event: str
    event_id: str  # the receivers' idempotency key: the same however often it is written
    payload: dict[str, Any]  # plain JSON (``normalize_payload``)
    at: datetime


def _journaled(item: _Event) -> dict[str, Any]:
    return asdict(item)


def _from_journal(item: dict[str, Any]) -> _Event:
    event = _Event(**item)
    if not isinstance(event.payload, dict) or not isinstance(event.at, datetime):
        raise ValueError("not a webhook event")
    return event


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
        journal: where events kept through an outage are copied (``db/write_journal.py``).
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        metrics: Metrics | None = None,
        on_enqueued: Callable[[], None] | None = None,
        timeout_s: float = ENQUEUE_TIMEOUT_S,
        journal: Path | None = None,
    ) -> None:
        self._sessions = sessions
        self._metrics = metrics
        self._on_enqueued = on_enqueued
        self._timeout_s = timeout_s
        self.failures = 0
        # an event's outbox rows wait for the next transaction with the others' (a call writes
        # several events at once; see db/group_commit.py)
        self._group: GroupCommit[_Event] = outage_proof(
            self._insert,
            self._insert_one,
            name="webhook-outbox-writer",
            writer="webhook_events",
            metrics=metrics,
            journal=journal,
            encode=_journaled,
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

    def prepare(self, account_id: str, event: str, payload: dict[str, Any]) -> dict[str, Any]:
        """``event`` ready to be written in another writer's transaction (the call record's):
        its identity and time are fixed now, and it can be journaled with that write."""
        return _journaled(
            _Event(account_id, event, new_id("evt"), normalize_payload(payload), utcnow())
        )

    async def outbox_rows(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The outbox rows of prepared events (none for an event nobody subscribes to). Raises
        when the endpoints can be neither read nor served stale: the write is then kept."""
        return [row for item in events for row in await self._rows(_from_journal(item))]

    def enqueued(self) -> None:
        """Another writer committed outbox rows: wake the dispatcher."""
        if self._on_enqueued is not None:
            self._on_enqueued()

    async def emit(self, account_id: str, event: str, payload: dict[str, Any]) -> None:
        """Queue ``event`` for the account's subscribed endpoints.

        When the account's endpoints are cached and none subscribes to ``event`` — most events
        of most accounts — this returns without suspending: no task, no timer, no JSON (every
        call emits four events; at hundreds of calls a second that was measurable).
        """
        if not self.wants(account_id, event):
            return
        item = _Event(account_id, event, new_id("evt"), normalize_payload(payload), utcnow())
        # until written, failed, or kept for retry (an outage: it is written once it is back)
        await self._group.write(item, self._timeout_s, functools.partial(self._settled, event))

    def _submit(self, item: _Event) -> asyncio.Future[None]:
        done = self._group.submit(item)
        done.add_done_callback(functools.partial(self._settled, item.event))
        return done

    def _settled(self, event: str, done: asyncio.Future[None]) -> None:
        """An event's rows landed or were given up (counted)."""
        if done.cancelled():
            return
        error = done.exception()
        if error is not None:
            self._failed(event, error)

    def _failed(self, event: str, error: BaseException) -> None:
        self.failures += 1
        if self._metrics is not None:
            self._metrics.webhook_enqueue_failures.inc()
        logger.error("webhook event %s not queued: %s", event, type(error).__name__)

    @property
    def parked(self) -> int:
        """Events kept for retry after a transient database failure."""
        return self._group.parked

    async def replay(self, path: Path, timeout_s: float = REPLAY_TIMEOUT_S) -> int:
        """Queue again the events a dead process kept in its journal ``path``."""
        return await replay_journal(path, _from_journal, self._submit, timeout_s)

    async def close(self, timeout_s: float = 5.0) -> int:
        """One last attempt for events kept for retry; returns how many were lost (with a
        journal: left on disk for the next start)."""
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

    async def _rows(self, item: _Event) -> list[dict[str, Any]]:
        """The event's outbox rows, one per subscribed endpoint (none: nobody listens). Raises
        when the endpoints can be neither read nor served stale (the event is then kept)."""
        targets = [
            eid
            for eid, events in await self._endpoints(item.account_id)
            if subscribed(events, item.event)
        ]
        return delivery_rows(
            targets,
            account_id=item.account_id,
            event_id=item.event_id,
            event=item.event,
            payload=item.payload,
            now=item.at,
        )

    async def _insert(self, batch: list[_Event]) -> None:
        """One transaction for the rows of every event in ``batch`` (group commit)."""
        rows = [row for item in batch for row in await self._rows(item)]
        if not rows:
            return
        async with self._sessions() as session:
            await WebhookRepository(session).enqueue(rows)
            await session.commit()
        if self._on_enqueued is not None:
            self._on_enqueued()  # the dispatcher, for low latency

    async def _insert_one(self, item: _Event) -> None:
        await self._insert([item])
