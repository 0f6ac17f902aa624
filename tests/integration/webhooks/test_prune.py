"""Pruning settled outbox rows: in batches, each its own transaction."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event

from telepath.api.routers import webhooks as webhooks_router
from telepath.db.base import utcnow
from telepath.db.webhook_store import prune_deliveries
from telepath.webhooks.sink import DbEventSink
from tests.integration.calls_api.records import account_of
from tests.integration.conftest import Api
from tests.integration.transactions import Transactions
from tests.integration.webhooks.test_dispatcher import PAYLOAD, rows, subscribe

pytestmark = pytest.mark.integration

RETENTION = timedelta(hours=72)


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"allow_insecure_webhook_urls": True}


async def outbox(api: Api, fates: list[tuple[str, datetime | None]]) -> None:
    """One delivery per ``(status, last attempt)``, stored as the dispatcher stores an outcome
    (a settled row's next attempt is its last)."""
    await subscribe(api, "http://127.0.0.1:9/hook", ["*"])
    sink = DbEventSink(api.state.sessions)
    for _ in fates:
        await sink.emit(await account_of(api), "call.ended", PAYLOAD)
    async with api.state.sessions() as session:
        for row, (status, at) in zip(await rows(api), fates, strict=True):
            row.status, row.last_attempt_at = status, at
            if at is not None:
                row.next_attempt_at = at
            session.add(row)
        await session.commit()


async def test_a_backlog_is_pruned_in_batches_each_its_own_transaction(api: Api) -> None:
    """On SQLite the prune holds the database's write lock: one batch at a time, so the call
    records and outbox claims written meanwhile wait for a batch, never for the whole backlog."""
    old = utcnow() - RETENTION - timedelta(hours=1)
    recent = utcnow() - RETENTION + timedelta(hours=1)
    settled = [("delivered", old)] * 3 + [("failed", old)] * 2
    await outbox(api, [*settled, ("pending", old), ("delivered", recent)])
    with Transactions(api.state.engine) as log:
        pruned = await prune_deliveries(api.state.sessions, RETENTION, batch_size=2)
    assert pruned == 5
    deletes = [
        sum(s.startswith("DELETE FROM webhook_deliveries") for s in t) for t in log.committed
    ]
    assert deletes == [1, 1, 1]  # one DELETE per transaction: 2, 2, then the last 1
    left = sorted((r.status, r.last_attempt_at) for r in await rows(api))
    assert left == [("delivered", recent), ("pending", old)]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_the_prune_reads_only_rows_settled_before_the_cutoff(api: Api) -> None:
    """Settled rows younger than the retention are most of the outbox, there for 72 h: a batch
    that found its rows by status alone read them all, every batch of every sweep."""
    plans: list[list[str]] = []

    def explain(conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.startswith("DELETE FROM webhook_deliveries"):
            cursor = conn.connection.cursor()
            cursor.execute(f"EXPLAIN QUERY PLAN {statement}", parameters)
            plans.append([str(row[3]) for row in cursor.fetchall()])
            cursor.close()

    engine = api.state.engine.sync_engine
    event.listen(engine, "before_cursor_execute", explain)
    try:
        await prune_deliveries(api.state.sessions, RETENTION)
    finally:
        event.remove(engine, "before_cursor_execute", explain)
    [plan] = plans
    settled = "ix_webhook_deliveries_settled (status=? AND last_attempt_at<?)"
    assert [step for step in plan if step.endswith(settled)], plan
    assert not [step for step in plan if step.startswith("SCAN")], plan
    assert not [step for step in plan if "ix_webhook_deliveries_due" in step], plan


async def test_deleting_an_endpoint_removes_its_backlog_in_batches_each_its_own_transaction(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A busy endpoint's thousands of deliveries went in the DELETE's one transaction (the
    foreign key's cascade): on SQLite the write lock held for all of them. Now they go a batch
    at a time before the endpoint row; another account's outbox is untouched."""
    monkeypatch.setattr(webhooks_router, "DELETE_BATCH", 2)
    await outbox(api, [("pending", None)] * 4 + [("delivered", utcnow())])
    doomed = {row.endpoint_id for row in await rows(api)}
    assert len(doomed) == 1
    other_key = await api.new_account_key("other")
    await subscribe(api, "http://127.0.0.1:9/other", ["*"], key=other_key)
    other = await account_of(api, other_key)
    await DbEventSink(api.state.sessions).emit(other, "call.ended", PAYLOAD)
    with Transactions(api.state.engine) as log:
        response = await api.delete(f"/v1/webhooks/{doomed.pop()}")
    assert response.status_code == 204
    deletes = [
        sum(s.startswith("DELETE FROM webhook_deliveries") for s in t) for t in log.committed
    ]
    # 2, 2, then the last 1, each batch its own transaction; then the endpoint's own (none left)
    assert [count for count in deletes if count] == [1, 1, 1, 1]
    assert sum(s.startswith("DELETE FROM webhook_endpoints") for s in log.committed[-1]) == 1
    left = await rows(api)
    assert len(left) == 1 and left[0].account_id == other
