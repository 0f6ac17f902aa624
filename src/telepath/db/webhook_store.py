"""Webhook endpoints (scoped to an account) and the delivery outbox.

The outbox is claimed with a lease: a claimed row's ``next_attempt_at`` moves past the delivery
timeout, so a process that dies mid-delivery leaves the row to be retried after a restart (at
least once; receivers de-duplicate on the event id). PostgreSQL claims with ``SKIP LOCKED`` so
several dispatchers never claim the same row; a lease is taken only on a row still due, so two
claims at once on one SQLite file never take the same row either. An outcome is stored only if
the row still carries the lease its claim set: a late one, after the lease ran out and the row
was claimed again, is dropped rather than written over the newer claim.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Select, Table, bindparam, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from telepath.db.base import utcnow
from telepath.db.batches import BATCH_SIZE, in_batches
from telepath.db.models import WebhookDelivery, WebhookEndpoint
from telepath.secrets.tokens import new_id

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"


@dataclass(frozen=True)
class Claimed:
    """A delivery taken for one attempt, with what sending it needs."""

    delivery_id: str
    event_id: str
    event: str
    payload: dict[str, Any]
    created_at: datetime
    attempts: int  # attempts made before this one
    endpoint_id: str
    account_id: str  # the endpoint's account
    url: str
    secret_enc: str
    leased_until: datetime  # the claim's lease: its outcome is stored only while it still holds


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to, to be stored."""

    delivery_id: str
    status: str  # PENDING (retry at next_attempt_at), DELIVERED or FAILED
    attempts: int  # attempts made, this one included
    next_attempt_at: datetime
    attempted_at: datetime | None  # None: not attempted (held back), last_attempt_at kept
    status_code: int | None
    error: str | None
    leased_until: datetime  # the claim's (``Claimed.leased_until``)
    held: bool = False  # not sent (its secret cannot be decrypted): no attempt counted


DELIVERIES = cast(Table, WebhookDelivery.__table__)


def delivery_rows(
    endpoint_ids: Sequence[str],
    *,
    account_id: str,
    event_id: str,
    event: str,
    payload: dict[str, Any],
    now: datetime,
) -> list[dict[str, Any]]:
    """One pending delivery of the event per endpoint, due at once (rows for ``enqueue``)."""
    return [
        {
            "id": new_id("whd"),
            "endpoint_id": endpoint_id,
            "account_id": account_id,
            "event_id": event_id,
            "event": event,
            "payload": payload,
            "created_at": now,
            "status": PENDING,
            "attempts": 0,
            "next_attempt_at": now,
        }
        for endpoint_id in endpoint_ids
    ]


class WebhookRepository:
    """Endpoint CRUD within one account, and outbox operations."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    # --- endpoints -------------------------------------------------------------------------

    async def get_endpoint(self, account_id: str, endpoint_id: str) -> WebhookEndpoint | None:
        """The account's endpoint with this id, or None (another account's is None too)."""
        return await self.session.scalar(
            select(WebhookEndpoint).where(
                WebhookEndpoint.id == endpoint_id, WebhookEndpoint.account_id == account_id
            )
        )

    async def list_endpoints(
        self, account_id: str, *, limit: int, offset: int
    ) -> tuple[Sequence[WebhookEndpoint], int]:
        """A page of the account's endpoints (newest first) and their total."""
        where = WebhookEndpoint.account_id == account_id
        total = await self.session.scalar(
            select(func.count()).select_from(WebhookEndpoint).where(where)
        )
        rows = await self.session.scalars(
            select(WebhookEndpoint)
            .where(where)
            .order_by(WebhookEndpoint.created_at.desc(), WebhookEndpoint.id.desc())
            .limit(limit)
            .offset(offset)
        )
        return rows.all(), int(total or 0)

    async def count_endpoints(self, account_id: str) -> int:
        """How many endpoints the account has."""
        total = await self.session.scalar(
            select(func.count())
            .select_from(WebhookEndpoint)
            .where(WebhookEndpoint.account_id == account_id)
        )
        return int(total or 0)

    def add_endpoint(self, endpoint: WebhookEndpoint) -> None:
        """Stage a new endpoint."""
        self.session.add(endpoint)

    async def delete_endpoint(self, account_id: str, endpoint_id: str) -> bool:
        """Delete the account's endpoint, and its undelivered outbox rows with it; False when
        there was none, e.g. another request deleted it meanwhile.

        One DELETE whose matched count is the answer (as ``TrunkRepository.delete``): the
        ORM's delete of a loaded endpoint that another request had just deleted matched no
        row, warned, and both requests answered 204 (found by review).
        """
        result = await self.session.execute(
            delete(WebhookEndpoint)
            .where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.account_id == account_id)
            .execution_options(synchronize_session=False)
        )
        if not result.rowcount:  # type: ignore[attr-defined]
            return False
        await self.session.execute(
            delete(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
        )
        return True

    async def delete_deliveries_of(self, account_id: str, endpoint_id: str, *, limit: int) -> int:
        """Delete up to ``limit`` of the account's outbox rows for one endpoint, whatever their
        status; returns how many were deleted (``DELETE ... WHERE id IN (SELECT ... LIMIT)``,
        as :meth:`prune`). An endpoint's rows are all its account's; the account is in the
        condition all the same, so that no id can reach another account's rows."""
        batch = (
            select(WebhookDelivery.id)
            .where(
                WebhookDelivery.endpoint_id == endpoint_id,
                WebhookDelivery.account_id == account_id,
            )
            .limit(limit)
        )
        return await self._delete_ids(batch)

    async def _delete_ids(self, ids: Select[str]) -> int:
        """Delete the deliveries whose ids ``ids`` selects (a batch: ``LIMIT``); how many."""
        result = await self.session.execute(
            delete(WebhookDelivery)
            .where(WebhookDelivery.id.in_(ids))
            .execution_options(synchronize_session=False)
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def active_endpoints(self, account_id: str) -> Sequence[WebhookEndpoint]:
        """The account's active endpoints (event filtering is done by the caller)."""
        rows = await self.session.scalars(
            select(WebhookEndpoint).where(
                WebhookEndpoint.account_id == account_id, WebhookEndpoint.active.is_(True)
            )
        )
        return rows.all()

    # --- outbox ----------------------------------------------------------------------------

    async def enqueue(self, rows: Sequence[dict[str, Any]]) -> None:
        """Insert pending deliveries (:func:`delivery_rows`) in one ``executemany``: Core, not
        ORM objects, since every call writes several (the ORM's unit of work cost several
        times more CPU per row). A row for an (endpoint, event) that is there already is left
        alone: it is the same event written again (a journal replayed, ``db/write_journal.py``).

        Each row is ``INSERT ... SELECT ... WHERE EXISTS`` its endpoint: the endpoints come from
        a cache (``webhooks/sink.py``), and a row for one deleted meanwhile is dropped, as its
        undelivered events are, instead of failing the transaction on the foreign key — and
        with it the event's rows for the account's live endpoints."""
        if not rows:
            return
        columns = list(rows[0])
        source = select(
            *(bindparam(name, type_=DELIVERIES.c[name].type).label(name) for name in columns)
        ).where(
            select(WebhookEndpoint.id)
            .where(WebhookEndpoint.id == bindparam("endpoint_id"))
            .exists()
        )
        dialect = self.session.get_bind().dialect.name
        if dialect == "postgresql":
            statement: Any = (
                postgresql.insert(DELIVERIES).from_select(columns, source).on_conflict_do_nothing()
            )
        elif dialect == "sqlite":
            statement = sqlite.insert(DELIVERIES).from_select(columns, source)
            statement = statement.on_conflict_do_nothing()
        else:
            statement = insert(DELIVERIES).from_select(columns, source)
        await self.session.execute(statement, list(rows))

    async def claim_due(
        self,
        now: datetime,
        *,
        limit: int,
        lease: timedelta,
        per_endpoint: int | None = None,
        busy: Mapping[str, int] | None = None,
        per_account: int | None = None,
        account_busy: Mapping[str, int] | None = None,
    ) -> list[Claimed]:
        """Take up to ``limit`` due deliveries, oldest first, leasing them until ``now + lease``.

        With ``per_endpoint``, at most that many per endpoint, counting ``busy`` (deliveries
        per endpoint the caller has in flight): the rows of an endpoint at its share are passed
        over for the next ones, so one endpoint's backlog cannot fill the claim. Likewise
        ``per_account`` and ``account_busy`` per account: an account with several endpoints
        that all hold their requests cannot take every slot either — while another account
        needs them. The cap holds slots back only for an account under its share with
        deliveries in flight or due: when all that is left due belongs to accounts at their
        share and no other account is in flight (one account alone, the usual self-hosted
        install), a second pass fills the free slots without it, still per endpoint.
        """
        taken: dict[str, int] = dict(busy or {})
        account_taken: dict[str, int] = dict(account_busy or {})
        claimed = await self._claim_pass(
            now, limit, lease, per_endpoint, per_account, taken, account_taken
        )
        if per_account is not None and len(claimed) < limit:
            # Fewer than asked: all still due is at a full endpoint or a full account. An
            # account in flight under its share (its endpoints answering, or at their own
            # share) may claim again soon; otherwise the held-back slots would stay idle.
            counts = [n for n in account_taken.values() if n > 0]
            if any(n >= per_account for n in counts) and all(n >= per_account for n in counts):
                claimed += await self._claim_pass(
                    now, limit - len(claimed), lease, per_endpoint, None, taken, account_taken
                )
        return claimed

    async def _claim_pass(
        self,
        now: datetime,
        limit: int,
        lease: timedelta,
        per_endpoint: int | None,
        per_account: int | None,
        taken: dict[str, int],
        account_taken: dict[str, int],
    ) -> list[Claimed]:
        """One pass of :meth:`claim_due` under the given caps; ``taken`` and ``account_taken``
        (in flight per endpoint and per account) are updated with what it leases."""
        claimed: list[Claimed] = []
        while len(claimed) < limit:
            window = limit - len(claimed)
            full = [e for e, n in taken.items() if per_endpoint is not None and n >= per_endpoint]
            full_accounts = [
                a for a, n in account_taken.items() if per_account is not None and n >= per_account
            ]
            query = (
                select(WebhookDelivery, WebhookEndpoint)
                .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
                .where(WebhookDelivery.status == PENDING, WebhookDelivery.next_attempt_at <= now)
                .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
                .limit(window)
            )
            if full:
                query = query.where(WebhookDelivery.endpoint_id.not_in(full))
            if full_accounts:
                query = query.where(WebhookEndpoint.account_id.not_in(full_accounts))
            if self.session.get_bind().dialect.name == "postgresql":
                query = query.with_for_update(of=WebhookDelivery, skip_locked=True)
            found = (await self.session.execute(query)).all()
            picked: list[Claimed] = []
            for delivery, endpoint in found:
                if per_endpoint is not None and taken.get(endpoint.id, 0) >= per_endpoint:
                    continue  # its share is taken: excluded from the next query
                account = endpoint.account_id
                if per_account is not None and account_taken.get(account, 0) >= per_account:
                    continue  # the account's share is taken: likewise
                taken[endpoint.id] = taken.get(endpoint.id, 0) + 1
                account_taken[account] = account_taken.get(account, 0) + 1
                picked.append(
                    Claimed(
                        delivery_id=delivery.id,
                        event_id=delivery.event_id,
                        event=delivery.event,
                        payload=dict(delivery.payload),
                        created_at=delivery.created_at,
                        attempts=delivery.attempts,
                        endpoint_id=endpoint.id,
                        account_id=account,
                        url=endpoint.url,
                        secret_enc=endpoint.secret_enc,
                        leased_until=now + lease,
                    )
                )
            if picked:  # leased: no longer due, so not found again by the next query
                leased = await self._lease(picked, now, lease)
                ours = {c.delivery_id for c in leased}
                for c in picked:
                    if c.delivery_id not in ours:  # another claimer's: not in our share
                        taken[c.endpoint_id] -= 1
                        account_taken[c.account_id] -= 1
                claimed.extend(leased)
            if len(found) < window:
                break  # nothing more is due
        return claimed

    async def _lease(
        self, picked: Sequence[Claimed], now: datetime, lease: timedelta
    ) -> list[Claimed]:
        """Lease the ``picked`` rows that are still due; returns those leased.

        Still due: on SQLite the rows were read outside this transaction (the driver begins
        one at the first write), so another process's claim may have leased them since; this
        one statement, taking the write lock, checks and leases at once, and RETURNING says
        which were ours. PostgreSQL locked them as they were read (``FOR UPDATE``): all are.
        A SQLite older than 3.35 (no RETURNING) leases as before, taking all as its own —
        SQLite is for one instance, with one dispatcher."""
        statement = (
            update(DELIVERIES)
            .where(
                DELIVERIES.c.id.in_([c.delivery_id for c in picked]),
                DELIVERIES.c.status == PENDING,
                DELIVERIES.c.next_attempt_at <= now,
            )
            .values(next_attempt_at=now + lease)
        )
        if not self.session.get_bind().dialect.update_returning:
            await self.session.execute(statement)
            return list(picked)
        result = await self.session.execute(statement.returning(DELIVERIES.c.id))
        leased = set(result.scalars().all())
        return [c for c in picked if c.delivery_id in leased]

    async def record_attempts(self, outcomes: Sequence[Outcome]) -> None:
        """Store the outcomes of attempts: one Core UPDATE by id, executed for each row. A row
        that is gone — its endpoint deleted while the attempt was made, which drops its
        undelivered events — is skipped, not an error: the ORM's bulk UPDATE by primary key
        raised on it (``StaleDataError``), and the rest of the round was then never stored.

        So is a row whose claim is no longer the attempt's (its lease ran out and another
        dispatcher claimed it again, or already stored its outcome): the claim's lease is in
        the WHERE clause, so a late outcome never overwrites a newer claim's."""
        if not outcomes:
            return
        statement = (
            update(DELIVERIES)
            .where(
                DELIVERIES.c.id == bindparam("b_id"),
                DELIVERIES.c.status == PENDING,
                DELIVERIES.c.next_attempt_at == bindparam("b_leased_until"),
            )
            .values(
                status=bindparam("b_status"),
                attempts=bindparam("b_attempts"),
                next_attempt_at=bindparam("b_next_attempt_at"),
                last_attempt_at=func.coalesce(
                    bindparam("b_last_attempt_at", type_=DELIVERIES.c.last_attempt_at.type),
                    DELIVERIES.c.last_attempt_at,
                ),
                last_status_code=bindparam("b_last_status_code"),
                last_error=bindparam("b_last_error"),
            )
        )
        await self.session.execute(
            statement,
            [
                {
                    "b_id": o.delivery_id,
                    "b_status": o.status,
                    "b_attempts": o.attempts,
                    "b_next_attempt_at": o.next_attempt_at,
                    "b_last_attempt_at": o.attempted_at,
                    "b_last_status_code": o.status_code,
                    "b_last_error": o.error,
                    "b_leased_until": o.leased_until,
                }
                for o in outcomes
            ],
        )

    async def release(self, claims: Sequence[Claimed], now: datetime) -> None:
        """Make claimed deliveries due at ``now`` (their attempts cut off: a stop), those whose
        row still carries the claim's lease — as ``record_attempts``, never another claim's."""
        if not claims:
            return
        await self.session.execute(
            update(DELIVERIES)
            .where(
                DELIVERIES.c.id == bindparam("b_id"),
                DELIVERIES.c.status == PENDING,
                DELIVERIES.c.next_attempt_at == bindparam("b_leased_until"),
            )
            .values(next_attempt_at=now),
            [{"b_id": c.delivery_id, "b_leased_until": c.leased_until} for c in claims],
        )

    async def prune(self, settled_before: datetime, *, limit: int) -> int:
        """Delete up to ``limit`` delivered and failed deliveries whose last attempt was before
        ``settled_before``; pending ones are kept however old. Returns how many were deleted.

        ``DELETE ... WHERE id IN (SELECT id ... LIMIT n)``: SQLite (as built by default) and
        PostgreSQL have no ``DELETE ... LIMIT``. A settled row is never written again (every
        outcome and lease is taken on a pending row only), so the subquery's condition needs
        no second look in the DELETE: a row it found is gone or still to be pruned."""
        batch = (
            select(WebhookDelivery.id)
            .where(
                WebhookDelivery.status.in_([DELIVERED, FAILED]),
                WebhookDelivery.last_attempt_at < settled_before,
            )
            .limit(limit)
        )
        return await self._delete_ids(batch)

    async def pending_count(self) -> int:
        """Deliveries not yet delivered nor given up."""
        return (await self.pending())[0]

    async def pending(self) -> tuple[int, datetime | None]:
        """How many deliveries are neither delivered nor given up, and the earliest time one of
        them is due (its next attempt, or the end of its lease); None when there is none."""
        row = (
            await self.session.execute(
                select(func.count(), func.min(WebhookDelivery.next_attempt_at)).where(
                    WebhookDelivery.status == PENDING
                )
            )
        ).one()
        return int(row[0] or 0), row[1]

    async def deliveries_for(self, event_id: str) -> Sequence[WebhookDelivery]:
        """Every outbox row of one event (for tests and diagnostics)."""
        rows = await self.session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.event_id == event_id)
            .order_by(WebhookDelivery.id)
        )
        return rows.all()


PRUNE_BATCH = BATCH_SIZE  # deliveries deleted per transaction


async def delete_endpoint_deliveries(
    sessions: async_sessionmaker[AsyncSession],
    account_id: str,
    endpoint_id: str,
    *,
    batch_size: int = PRUNE_BATCH,
) -> int:
    """Delete every outbox row of one of the account's endpoints, ``batch_size`` at a time,
    each batch its own transaction (``db/batches.py``), before the endpoint itself is deleted:
    its foreign key's cascade would take a busy endpoint's thousands of rows in the DELETE's one
    transaction, holding SQLite's write lock from every call record write meanwhile. Rows an
    event adds meanwhile (another process's endpoint cache is up to a second old) go with the
    endpoint row's cascade. Returns how many were deleted here."""

    async def one_batch(session: AsyncSession) -> int:
        return await WebhookRepository(session).delete_deliveries_of(
            account_id, endpoint_id, limit=batch_size
        )

    return await in_batches(sessions, one_batch, batch_size)


async def prune_deliveries(
    sessions: async_sessionmaker[AsyncSession],
    older_than: timedelta,
    *,
    now: datetime | None = None,
    batch_size: int = PRUNE_BATCH,
) -> int:
    """Delete outbox rows delivered or given up more than ``older_than`` ago (their payloads
    carry phone numbers; the retention sweep, ``db/call_recorder.py``, calls this with the call
    detail retention). Returns how many were deleted.

    ``batch_size`` rows at a time, each batch its own transaction, with a pause between
    batches (``db/batches.py``): on SQLite a transaction holds the database's write lock, and a
    backlog (the first sweep after a long stop, a lowered retention, a busy endpoint's
    thousands of deliveries) deleted at once would hold up every call record write and outbox
    claim past its timeout."""
    settled_before = (now or utcnow()) - older_than

    async def one_batch(session: AsyncSession) -> int:
        return await WebhookRepository(session).prune(settled_before, limit=batch_size)

    return await in_batches(sessions, one_batch, batch_size)
