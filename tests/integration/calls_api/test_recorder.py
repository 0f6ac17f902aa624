"""``DbCallRecorder`` idempotency and failure isolation; detail retention."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import String, event, func, select, text

from telepath.calls.model import CallStatus, DisconnectReason
from telepath.config import Settings
from telepath.db.base import utcnow
from telepath.db.call_recorder import (
    DbCallRecorder,
    _final_fields,
    _from_journal,
    _journaled,
    _Write,
    close_instance_calls,
    close_lost_calls,
    purge_call_details,
    retention_loop,
)
from telepath.db.engine import make_engine, sessionmaker_for
from telepath.db.models import CallRow, WebhookDelivery
from telepath.db.write_journal import WriteJournal
from telepath.metrics import Metrics
from telepath.webhooks.sink import DbEventSink
from tests.integration.calls_api.records import account_of, ended, started
from tests.integration.conftest import Api
from tests.integration.transactions import Transactions

pytestmark = pytest.mark.integration

LONGEST_CALL = timedelta(hours=4, minutes=10)  # the default cap plus the slack


async def count_rows(api: Api) -> int:
    async with api.state.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(CallRow)) or 0)


async def test_started_twice_and_ended_twice_is_one_record(api: Api) -> None:
    account = await account_of(api)
    recorder = DbCallRecorder(api.state.sessions)
    record = started(account)
    await recorder.call_started(record)
    await recorder.call_started(record)
    final = ended(record)
    await recorder.call_ended(final)
    await recorder.call_ended(final)
    assert await count_rows(api) == 1
    assert recorder.failures == 0
    detail = (await api.get(f"/v1/calls/{record.id}")).json()
    assert detail["status"] == "connected" and detail["duration_seconds"] == 342
    assert detail["disconnect_reason"] == "caller_hangup"  # completed: the final status


async def test_ended_without_started_inserts_the_full_record(api: Api) -> None:
    record = ended(started(await account_of(api)), seconds=10)
    await DbCallRecorder(api.state.sessions).call_ended(record)
    detail = (await api.get(f"/v1/calls/{record.id}")).json()
    assert detail["duration_seconds"] == 10
    assert detail["metrics"]["codec_used"] == "G722"
    assert len(detail["turns"]) == 2


async def test_late_start_does_not_undo_the_end(api: Api) -> None:
    account = await account_of(api)
    recorder = DbCallRecorder(api.state.sessions)
    record = started(account)
    snapshot = started(account, id=record.id)  # what call_started would have carried
    await recorder.call_ended(ended(record))
    await recorder.call_started(snapshot)
    detail = (await api.get(f"/v1/calls/{record.id}")).json()
    assert detail["status"] == "connected" and detail["end_time"] is not None
    assert detail["disconnect_reason"] == "caller_hangup"


async def test_failed_call_is_recorded(api: Api) -> None:
    record = started(await account_of(api))
    record.status = CallStatus.FAILED
    record.disconnect_reason = DisconnectReason.CONNECTION_FAILED
    record.error_message = "agent unreachable"
    record.end_time = record.start_time + timedelta(seconds=2)
    await DbCallRecorder(api.state.sessions).call_ended(record)
    detail = (await api.get(f"/v1/calls/{record.id}")).json()
    assert detail["status"] == "failed"
    assert detail["disconnect_reason"] == "connection_failed"
    assert detail["error_message"] == "agent unreachable"
    assert detail["duration_seconds"] == 0 and detail["answer_time"] is None
    assert detail["sip_trace"] is None and detail["turns"] == []


async def test_write_failures_never_reach_call_control(tmp_path: Path) -> None:
    # A database without the schema: every write fails.
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")
    try:
        metrics = Metrics()
        recorder = DbCallRecorder(sessionmaker_for(engine), metrics)
        record = started("acct_x")
        await recorder.call_started(record)
        await recorder.call_ended(ended(record))
        assert recorder.failures == 2
        text = metrics.render().decode()
        assert 'telepath_call_record_failures_total{operation="call_started"} 1.0' in text
        assert 'telepath_call_record_failures_total{operation="call_ended"} 1.0' in text
        # The call was still counted.
        assert 'telepath_calls_total{outcome="caller_hangup"} 1.0' in text
        assert "telepath_active_calls 0.0" in text
    finally:
        await engine.dispose()


async def test_recorder_keeps_call_metrics(api: Api) -> None:
    metrics = Metrics()
    recorder = DbCallRecorder(api.state.sessions, metrics)
    account = await account_of(api)
    one, two = started(account), started(account)
    await recorder.call_started(one)
    await recorder.call_started(two)
    assert "telepath_active_calls 2.0" in metrics.render().decode()
    await recorder.call_ended(ended(one))
    await recorder.call_ended(ended(one))  # a repeat is not counted twice
    text = metrics.render().decode()
    assert "telepath_active_calls 1.0" in text
    assert 'telepath_calls_total{outcome="caller_hangup"} 1.0' in text
    assert "telepath_call_setup_seconds_count 1.0" in text
    assert 'telepath_call_setup_seconds_bucket{le="0.25"} 1.0' in text
    assert "telepath_rtp_jitter_ms_count 1.0" in text
    assert "telepath_rtp_packet_loss_percent_count 1.0" in text


# --- retention ------------------------------------------------------------------------------


async def test_purge_drops_detail_and_keeps_aggregates(api: Api) -> None:
    account = await account_of(api)
    recorder = DbCallRecorder(api.state.sessions)
    now = utcnow()
    old = ended(started(account, start=now - timedelta(hours=100)))
    recent = ended(started(account, start=now - timedelta(hours=1)), seconds=60)
    stuck = started(account, start=now - timedelta(hours=80))  # never ended (crash)
    for record in (old, recent):
        await recorder.call_ended(record)
    await recorder.call_started(stuck)

    purge = partial(
        purge_call_details, api.state.sessions, timedelta(hours=72), open_after=LONGEST_CALL
    )
    # with no cap on a call's length an open record may be a live call: kept
    no_cap = await purge_call_details(api.state.sessions, timedelta(hours=72), open_after=None)
    assert no_cap == 1
    assert await purge() == 1  # the stuck one: older than the retention and than any call
    assert await purge() == 0

    gone = (await api.get(f"/v1/calls/{old.id}")).json()
    assert gone["sip_trace"] is None and gone["turns"] == [] and gone["media"] is None
    assert gone["detail_purged_at"] is not None
    assert gone["duration_seconds"] == 342 and gone["disconnect_reason"] == "caller_hangup"
    assert gone["metrics"]["ai_latency_ms"] == 215 and gone["metrics"]["codec_used"] == "G722"
    kept = (await api.get(f"/v1/calls/{recent.id}")).json()
    assert kept["sip_trace"] and len(kept["turns"]) == 2 and kept["detail_purged_at"] is None
    assert kept["media"] == recent.media
    assert (await api.get(f"/v1/calls/{stuck.id}")).json()["detail_purged_at"] is not None

    # A late end of a purged call updates aggregates but never brings the detail back.
    await recorder.call_ended(ended(stuck, seconds=5))
    late = (await api.get(f"/v1/calls/{stuck.id}")).json()
    assert late["duration_seconds"] == 5 and late["sip_trace"] is None and late["turns"] == []
    assert late["media"] is None
    # the same by the one-at-a-time path (a batch that failed, a database without ON CONFLICT)
    values = {"id": old.id, "updated_at": utcnow(), **_final_fields(ended(old, seconds=7))}
    assert values["media"] and values["sip_trace"]
    await recorder._upsert(values, [])
    again = (await api.get(f"/v1/calls/{old.id}")).json()
    assert again["duration_seconds"] == 7
    assert (again["sip_trace"], again["turns"], again["media"]) == (None, [], None)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_the_purge_reads_only_records_not_purged_yet(api: Api) -> None:
    """Purged records stay past the cutoff for good (their aggregates are kept): a sweep that
    read them by ``end_time`` alone would read every past call, every round."""
    plans: list[list[str]] = []

    def explain(conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.startswith("UPDATE calls"):
            cursor = conn.connection.cursor()
            cursor.execute(f"EXPLAIN QUERY PLAN {statement}", parameters)
            plans.append([str(row[3]) for row in cursor.fetchall()])
            cursor.close()

    engine = api.state.engine.sync_engine
    event.listen(engine, "before_cursor_execute", explain)
    try:
        for open_after in (None, LONGEST_CALL):
            await purge_call_details(api.state.sessions, timedelta(hours=72), open_after=open_after)
    finally:
        event.remove(engine, "before_cursor_execute", explain)
    ended_only, with_orphans = plans
    by_end = "SEARCH calls USING INDEX ix_calls_unpurged_end (end_time<?)"
    assert by_end in ended_only
    assert by_end in with_orphans
    assert "SEARCH calls USING INDEX ix_calls_unpurged_end (end_time=?)" in with_orphans
    assert not [step for plan in plans for step in plan if step.startswith("SCAN")]
    assert not [step for plan in plans for step in plan if "ix_calls_end_time" in step]


async def test_a_backlog_is_purged_in_batches_each_its_own_transaction(api: Api) -> None:
    """On SQLite the purge holds the database's write lock: one batch at a time, so the call
    records written meanwhile wait for a batch, never for the whole backlog."""
    account = await account_of(api)
    recorder = DbCallRecorder(api.state.sessions)
    old = [ended(started(account, start=utcnow() - timedelta(hours=100))) for _ in range(5)]
    for record in old:
        await recorder.call_ended(record)
    with Transactions(api.state.engine) as log:
        purged = await purge_call_details(
            api.state.sessions, timedelta(hours=72), open_after=None, batch_size=2
        )
    assert purged == 5
    updates = [sum(s.startswith("UPDATE calls") for s in t) for t in log.committed]
    assert updates == [1, 1, 1]  # one UPDATE per transaction: 2, 2, then the last 1
    async with api.state.sessions() as session:
        kept = await session.scalar(
            select(func.count()).select_from(CallRow).where(CallRow.detail_purged_at.is_(None))
        )
    assert kept == 0


async def test_retention_loop_purges_and_stops(api: Api, settings: Settings) -> None:
    account = await account_of(api)
    old = ended(
        started(account, start=utcnow() - timedelta(hours=settings.call_retention_hours + 5))
    )
    await DbCallRecorder(api.state.sessions).call_ended(old)
    await _run_retention_until(
        api, settings, lambda: _field(api, old.id, "detail_purged_at"), "purged"
    )


async def _field(api: Api, call_id: str, name: str) -> Any:
    return (await api.get(f"/v1/calls/{call_id}")).json()[name]


async def _run_retention_until(
    api: Api, settings: Settings, check: Callable[[], Awaitable[Any]], what: str
) -> None:
    """Run the retention loop (every 50 ms) until ``check()`` is truthy, then stop it."""
    stop = asyncio.Event()
    task = asyncio.create_task(retention_loop(api.state.sessions, settings, stop, interval_s=0.05))
    for _ in range(100):
        if await check():
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail(f"retention loop: not {what}")
    stop.set()
    await asyncio.wait_for(task, 2)


async def test_retention_disabled_with_zero_hours(api: Api, settings: Settings) -> None:
    disabled = settings.model_copy(update={"call_retention_hours": 0, "call_max_duration_s": 0})
    await asyncio.wait_for(retention_loop(api.state.sessions, disabled, asyncio.Event()), 1)


async def test_records_left_open_past_the_longest_call_are_closed_as_lost(api: Api) -> None:
    account = await account_of(api)
    recorder = DbCallRecorder(api.state.sessions)
    now = utcnow()
    answered = started(account, start=now - timedelta(hours=5))
    answered.answer_time = answered.start_time + timedelta(seconds=1)
    never_answered = started(account, start=now - timedelta(hours=5))
    live = started(account, start=now - timedelta(hours=3))  # may still be up
    done = ended(started(account, start=now - timedelta(hours=6)))
    for record in (answered, never_answered, live):
        await recorder.call_started(record)
    await recorder.call_ended(done)

    assert await close_lost_calls(api.state.sessions, timedelta(hours=4, minutes=10)) == 2
    assert await close_lost_calls(api.state.sessions, timedelta(hours=4, minutes=10)) == 0
    lost = (await api.get(f"/v1/calls/{answered.id}")).json()
    assert lost["status"] == "disconnected" and lost["disconnect_reason"] == "lost"
    assert lost["end_time"] is None  # not known
    failed = (await api.get(f"/v1/calls/{never_answered.id}")).json()
    assert failed["status"] == "failed" and failed["disconnect_reason"] == "lost"
    still = (await api.get(f"/v1/calls/{live.id}")).json()
    assert still["status"] == "connected" and still["disconnect_reason"] is None
    kept = (await api.get(f"/v1/calls/{done.id}")).json()
    assert kept["disconnect_reason"] == "caller_hangup"


async def test_the_open_records_of_a_dead_process_are_closed_with_an_end(api: Api) -> None:
    account = await account_of(api)
    dead = DbCallRecorder(api.state.sessions, instance_id="gw_dead")
    alive = DbCallRecorder(api.state.sessions, instance_id="gw_alive")
    now = utcnow()
    answered = started(account, start=now - timedelta(seconds=70))
    answered.answer_time = answered.start_time + timedelta(seconds=1)
    answered.metrics.codec_used = "PCMU"
    ringing = started(account, start=now - timedelta(seconds=2))
    done = ended(started(account, start=now - timedelta(minutes=9)), seconds=60)
    other = started(account, start=now - timedelta(seconds=30))
    for record in (answered, ringing, done):
        await dead.call_started(record)
    await dead.call_ended(done)
    await alive.call_started(other)

    closed = [
        c.record for c in await close_instance_calls(api.state.sessions, ["gw_dead"], now=now)
    ]
    assert sorted(r.id for r in closed) == sorted([answered.id, ringing.id])
    assert await close_instance_calls(api.state.sessions, ["gw_dead"], now=now) == []
    by_id = {r.id: r for r in closed}
    assert by_id[answered.id].duration_seconds == 69
    assert by_id[answered.id].metrics.codec_used == "PCMU"  # what the events are built from
    lost = (await api.get(f"/v1/calls/{answered.id}")).json()
    assert lost["status"] == "disconnected" and lost["disconnect_reason"] == "lost"
    assert lost["end_time"] is not None and lost["duration_seconds"] == 69
    assert "instance" not in json.dumps(lost)  # internal: never shown
    failed = (await api.get(f"/v1/calls/{ringing.id}")).json()
    assert failed["status"] == "failed" and failed["disconnect_reason"] == "lost"
    assert failed["duration_seconds"] == 0
    kept = (await api.get(f"/v1/calls/{done.id}")).json()
    assert kept["disconnect_reason"] == "caller_hangup" and kept["duration_seconds"] == 60
    untouched = (await api.get(f"/v1/calls/{other.id}")).json()
    assert untouched["status"] == "connected" and untouched["disconnect_reason"] is None

    # an end estimated from the process's last sign of life, before this call was answered
    late = started(account, start=now - timedelta(seconds=5))
    late.answer_time = now - timedelta(seconds=4)
    await DbCallRecorder(api.state.sessions, instance_id="gw_late").call_started(late)
    (closed_late,) = [
        c.record
        for c in await close_instance_calls(
            api.state.sessions, ["gw_late"], now=now - timedelta(seconds=20)
        )
    ]
    assert closed_late.end_time == late.answer_time  # never before the call was up
    assert closed_late.duration_seconds == 0


async def test_retention_loop_closes_lost_calls_even_without_purging(
    api: Api, settings: Settings
) -> None:
    only_sweep = settings.model_copy(
        update={"call_retention_hours": 0, "call_max_duration_s": 3600}
    )
    stuck = started(await account_of(api), start=utcnow() - timedelta(hours=2))
    await DbCallRecorder(api.state.sessions).call_started(stuck)

    async def closed() -> bool:
        return bool(await _field(api, stuck.id, "disconnect_reason") == "lost")

    await _run_retention_until(api, only_sweep, closed, "closed as lost")


async def test_a_live_call_longer_than_the_retention_keeps_its_detail_when_it_ends(
    api: Api, settings: Settings
) -> None:
    """Retention of 1 h and a call up for 2 h (calls may last 4 h): the sweep leaves the open
    record alone, and the call's end writes its trace, turns and media. An open record older
    than the longest call is an orphan: its detail ages like any other."""
    short = settings.model_copy(update={"call_retention_hours": 1, "call_max_duration_s": 14400})
    account = await account_of(api)
    recorder = DbCallRecorder(api.state.sessions)
    live = started(account, start=utcnow() - timedelta(hours=2))
    orphan = started(account, start=utcnow() - timedelta(hours=5))
    for record in (live, orphan):
        await recorder.call_started(record)

    async def orphan_purged() -> bool:
        return await _field(api, orphan.id, "detail_purged_at") is not None

    await _run_retention_until(api, short, orphan_purged, "orphan purged")
    assert await _field(api, live.id, "detail_purged_at") is None

    final = ended(live, seconds=7200)  # it ends now
    await recorder.call_ended(final)
    detail = (await api.get(f"/v1/calls/{live.id}")).json()
    assert detail["sip_trace"] == final.sip_trace and len(detail["turns"]) == 2
    assert detail["media"] == final.media and detail["detail_purged_at"] is None


# --- group commit -------------------------------------------------------------------------


async def test_concurrent_writes_share_transactions_and_all_land(api: Api) -> None:
    account = await account_of(api)
    recorder = DbCallRecorder(api.state.sessions)
    records = [started(account) for _ in range(40)]
    await asyncio.gather(*(recorder.call_started(r) for r in records))
    # the same records end while others start: starts and ends share batches
    late = [started(account) for _ in range(10)]
    await asyncio.gather(
        *(recorder.call_ended(ended(r, seconds=7)) for r in records),
        *(recorder.call_started(r) for r in late),
    )
    assert recorder.failures == 0
    assert await count_rows(api) == 50
    # 90 writes issued together: the first goes alone, the rest queue behind it
    assert recorder.transactions < 90 / 4
    for r in records[:3]:
        detail = (await api.get(f"/v1/calls/{r.id}")).json()
        assert detail["duration_seconds"] == 7 and detail["disconnect_reason"] == "caller_hangup"
        assert detail["status"] == "connected" and detail["end_time"] is not None  # completed
    still_up = (await api.get(f"/v1/calls/{late[0].id}")).json()
    assert still_up["status"] == "connected" and still_up["end_time"] is None
    assert still_up["disconnect_reason"] is None


async def test_a_bad_row_in_a_batch_costs_no_other_row(api: Api) -> None:
    account = await account_of(api)
    recorder = DbCallRecorder(api.state.sessions)
    good = [started(account) for _ in range(5)]
    orphan = started("acct_does_not_exist")  # the foreign key fails
    await asyncio.gather(
        *(recorder.call_started(r) for r in good[:2]),
        recorder.call_ended(ended(orphan)),
        *(recorder.call_started(r) for r in good[2:]),
    )
    assert recorder.failures == 1
    assert await count_rows(api) == 5


async def _subscribed_sink(api: Api) -> tuple[str, DbEventSink]:
    account = await account_of(api)
    resp = await api.post("/v1/webhooks", {"url": "https://hooks.example.com/t", "events": ["*"]})
    assert resp.status_code == 201, resp.text
    return account, DbEventSink(api.state.sessions)


async def _deliveries(api: Api) -> list[tuple[str, str]]:
    async with api.state.sessions() as session:
        rows = await session.execute(select(WebhookDelivery.event, WebhookDelivery.event_id))
        return sorted((event, event_id) for event, event_id in rows.all())


@pytest.mark.parametrize("batched", [True, False])
async def test_a_call_s_end_and_its_events_land_together(api: Api, batched: bool) -> None:
    account, sink = await _subscribed_sink(api)
    recorder = DbCallRecorder(api.state.sessions, outbox=sink)
    if not batched:  # the one-at-a-time path (a batch that failed; no ON CONFLICT)
        recorder._group._batch = None
    assert recorder.queues_events
    call = started(account)
    await recorder.call_started(call)
    events = [sink.prepare(account, e, {"call_id": call.id}) for e in ("call.error", "call.ended")]
    await recorder.call_ended(ended(call), events)
    assert await _deliveries(api) == sorted((e["event"], e["event_id"]) for e in events)
    assert (await api.get(f"/v1/calls/{call.id}")).json()["duration_seconds"] == 342


async def test_events_that_fail_for_good_do_not_cost_the_record_its_end(api: Api) -> None:
    account, sink = await _subscribed_sink(api)
    metrics = Metrics()
    recorder = DbCallRecorder(api.state.sessions, metrics, outbox=sink)
    call = started(account)
    await recorder.call_started(call)
    postgres = api.state.engine.dialect.name == "postgresql"
    refuse = (
        [
            "CREATE FUNCTION refuse_rows() RETURNS trigger AS "
            "$$ BEGIN RAISE EXCEPTION 'refused'; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER refuse BEFORE INSERT ON webhook_deliveries "
            "FOR EACH ROW EXECUTE FUNCTION refuse_rows()",
        ]
        if postgres
        else [
            "CREATE TRIGGER refuse BEFORE INSERT ON webhook_deliveries "
            "BEGIN SELECT RAISE(ABORT, 'refused'); END"
        ]
    )
    async with api.state.engine.begin() as conn:
        for statement in refuse:
            await conn.execute(text(statement))
    try:
        await recorder.call_ended(ended(call), [sink.prepare(account, "call.ended", {})])
    finally:
        async with api.state.engine.begin() as conn:
            await conn.execute(
                text(
                    "DROP TRIGGER refuse ON webhook_deliveries"
                    if postgres
                    else "DROP TRIGGER refuse"
                )
            )
            if postgres:
                await conn.execute(text("DROP FUNCTION refuse_rows()"))
    assert recorder.failures == 0
    assert (await api.get(f"/v1/calls/{call.id}")).json()["duration_seconds"] == 342
    assert await _deliveries(api) == []
    assert metrics.registry.get_sample_value("telepath_webhook_enqueue_failures_total") == 1


@pytest.mark.parametrize("batched", [True, False])
async def test_a_replayed_end_whose_events_cannot_be_read_is_still_written(
    api: Api, tmp_path: Path, batched: bool
) -> None:
    """A call's end journaled by another version, its event carrying a key this one does not
    know: making the event's rows raised (TypeError) before the fallback that writes the record
    without its events, and the record was never closed. The record matters more."""
    account, sink = await _subscribed_sink(api)
    metrics = Metrics()
    recorder = DbCallRecorder(api.state.sessions, metrics, outbox=sink)
    if not batched:
        recorder._group._batch = None
    call = started(account)
    await recorder.call_started(call)
    event = sink.prepare(account, "call.ended", {"call_id": call.id}) | {"channel": "sip"}
    values = {"id": call.id, "updated_at": utcnow(), "instance_id": None}
    values |= _final_fields(ended(call))
    path = tmp_path / "gw_old.call_records.jsonl"
    journal = WriteJournal(path, _journaled)
    journal.kept(_Write("call_ended", values, [event]))
    journal.detach()  # that process stopped
    assert await recorder.replay(path) == 1
    assert recorder.failures == 0
    assert (await api.get(f"/v1/calls/{call.id}")).json()["duration_seconds"] == 342
    assert await _deliveries(api) == []
    assert metrics.registry.get_sample_value("telepath_webhook_enqueue_failures_total") == 1


# Found by review: what a caller sends is written into columns the database bounds or refuses.
# The From/To user part is kept as sent when it is not an E.164 number, with no length limit
# (the SIP parser caps only the whole message, 64 KB) — VARCHAR(128) on PostgreSQL refused a
# longer one (22001, not transient); a NUL (``sip:a%00b@...``, a NUL in an INVITE's body in the
# trace, in an agent's error text) PostgreSQL refuses in any text; an unpaired surrogate no
# driver can encode. The record's start and its end (retried without its events) both failed:
# no record, no ``call.ended``. SQLite enforces no lengths, so only PostgreSQL showed the first.
LONG_NUMBER = "1" * 200


def _cut(name: str) -> int:
    """The column's width, as the model defines it."""
    kind = CallRow.__table__.c[name].type
    assert isinstance(kind, String) and isinstance(kind.length, int)
    return kind.length


@pytest.mark.parametrize("batched", [True, False])
async def test_a_number_longer_than_its_column_is_stored_cut_with_its_events(
    api: Api, batched: bool
) -> None:
    account, sink = await _subscribed_sink(api)
    recorder = DbCallRecorder(api.state.sessions, outbox=sink)
    if not batched:
        recorder._group._batch = None
    call = started(account, from_number=LONG_NUMBER, to_number="sip-user-" + "x" * 300)
    await recorder.call_started(call)
    assert (await api.get(f"/v1/calls/{call.id}")).status_code == 200  # the start landed
    events = [sink.prepare(account, "call.ended", {"call_id": call.id})]
    await recorder.call_ended(ended(call), events)
    assert recorder.failures == 0
    stored = (await api.get(f"/v1/calls/{call.id}")).json()
    assert stored["from"] == LONG_NUMBER[: _cut("from_number")]
    assert stored["to"] == ("sip-user-" + "x" * 300)[: _cut("to_number")]
    assert stored["duration_seconds"] == 342
    assert await _deliveries(api) == [("call.ended", events[0]["event_id"])]


@pytest.mark.parametrize(
    ("field", "sent", "stored"),
    [
        ("from_number", "a\x00b", "a\ufffdb"),
        ("to_number", "\udcff1", "\ufffd1"),
        ("error_message", "agent said \x00", "agent said \ufffd"),
        (
            "sip_trace",
            "INVITE sip:x SIP/2.0\r\n\r\nv=0\x00",
            "INVITE sip:x SIP/2.0\r\n\r\nv=0\ufffd",
        ),
    ],
    ids=["nul-in-number", "surrogate-in-number", "nul-in-error", "nul-in-trace"],
)
async def test_text_the_database_refuses_is_stored_replaced(
    api: Api, field: str, sent: str, stored: str
) -> None:
    account, sink = await _subscribed_sink(api)
    recorder = DbCallRecorder(api.state.sessions, outbox=sink)
    call = started(account)
    final = ended(call)
    setattr(final, field, sent)
    await recorder.call_started(final)
    events = [sink.prepare(account, "call.ended", {"call_id": call.id})]
    await recorder.call_ended(final, events)
    assert recorder.failures == 0
    async with api.state.sessions() as session:
        row = await session.get(CallRow, call.id)
        assert row is not None and getattr(row, field) == stored
    assert await _deliveries(api) == [("call.ended", events[0]["event_id"])]


def test_a_journal_of_an_earlier_version_is_made_to_fit() -> None:
    """A write kept through an outage by a version without the cut is cut when replayed."""
    write = _from_journal(
        {"kind": "call_ended", "values": {"id": "call_1", "from_number": LONG_NUMBER + "\x00"}}
    )
    assert write.values["from_number"] == LONG_NUMBER[: _cut("from_number")]
    assert write.values["id"] == "call_1"


@pytest.mark.parametrize(
    ("kind", "status", "reason", "replayed"),
    [
        ("call_ended", "disconnected", "caller_hangup", "connected"),
        ("call_ended", "disconnected", "shutdown", "connected"),
        ("call_ended", "disconnected", "ai_provider_error", "disconnected"),
        ("call_ended", "disconnected", "unknown", "disconnected"),
        ("call_ended", "failed", "connection_failed", "failed"),
        ("call_ended", "connected", "caller_hangup", "connected"),
        ("call_started", "connected", None, "connected"),
    ],
)
def test_a_journal_of_an_earlier_version_gets_the_final_status(
    kind: str, status: str, reason: str | None, replayed: str
) -> None:
    """A call's end kept through an outage by a version that made every answered call's end
    ``disconnected`` (then stopped, upgraded: the rows already stored were migrated) is
    replayed with the status of its reason: ``connected`` for a normal end."""
    values = {"id": "call_1", "status": status, "disconnect_reason": reason}
    assert _from_journal({"kind": kind, "values": values}).values["status"] == replayed
