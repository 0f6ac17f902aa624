"""A dead gateway process's open call records, closed as ``lost`` (``close_calls_of``,
``close_instance_calls``): each by one process only — two may recover the same dead process at
once (the restarted host and another host's watcher; a front and a watcher), and a process taken
for dead may end a call meanwhile — and each closed record's events in its close's transaction,
so no crash between two commits can leave a call closed whose ``call.ended`` was never queued."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Select, event, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from telepath.calls.model import CallRecord
from telepath.cli.instances import close_calls_of, heartbeat_s, reap_forever
from telepath.db import instance_store
from telepath.db.base import utcnow
from telepath.db.call_recorder import DbCallRecorder
from telepath.db.models import WebhookDelivery
from telepath.db.webhook_store import WebhookRepository
from telepath.metrics import Metrics
from telepath.webhooks.sink import DbEventSink
from tests.integration.calls_api.records import account_of, ended, started
from tests.integration.conftest import Api
from tests.integration.db.test_instance_heartbeats import RecordingSink
from tests.integration.transactions import Transactions

pytestmark = pytest.mark.integration

LOST_EVENTS = ("agent.disconnected", "call.error", "call.ended")
Sink = DbEventSink | RecordingSink


def _reads_calls(statement: Any) -> bool:
    return isinstance(statement, Select) and any(
        getattr(table, "name", None) == "calls" for table in statement.get_final_froms()
    )


def _paused(
    api: Api, after_select: Callable[[], Awaitable[None]]
) -> async_sessionmaker[AsyncSession]:
    """The state's sessions, except that the first SELECT of call records (the open records
    of the dead process) awaits ``after_select`` before its rows are used: what other
    processes do between a closer's read and its writes."""
    fired = False

    class Paused(AsyncSession):
        async def execute(self, statement: Any, *args: Any, **kw: Any) -> Any:
            nonlocal fired
            result = await super().execute(statement, *args, **kw)
            if not fired and _reads_calls(statement):
                fired = True
                await after_select()
            return result

    return async_sessionmaker(api.state.engine, class_=Paused, expire_on_commit=False)


async def _subscribe(api: Api) -> None:
    resp = await api.post("/v1/webhooks", {"url": "https://hooks.example.com/t", "events": ["*"]})
    assert resp.status_code == 201, resp.text


async def _sinks(api: Api, kind: str, n: int) -> list[Sink]:
    """``n`` sinks, one per recovering process: the database's outbox (one endpoint subscribed
    to everything) or a recording one (events sent through ``emit`` only)."""
    if kind == "emit":
        return [RecordingSink() for _ in range(n)]
    await _subscribe(api)
    return [DbEventSink(api.state.sessions) for _ in range(n)]


async def _events(api: Api, sinks: list[Sink]) -> list[tuple[str, str]]:
    """(event, call id) of every event queued, in the outbox or through the sinks."""
    sent = [
        (e, data["call_id"])
        for s in sinks
        if isinstance(s, RecordingSink)
        for _, e, data in s.events
    ]
    async with api.state.sessions() as session:
        rows = await session.execute(select(WebhookDelivery.event, WebhookDelivery.payload))
        queued = [(e, payload["call_id"]) for e, payload in rows.all()]
    return sorted(sent + queued)


async def _open_calls(api: Api, instance_id: str, n: int) -> list[CallRecord]:
    """``n`` answered calls that process ``instance_id`` started and never ended."""
    account = await account_of(api)
    recorder = DbCallRecorder(api.state.sessions, instance_id=instance_id)
    calls = []
    for _ in range(n):
        call = started(account, start=utcnow() - timedelta(seconds=30))
        call.answer_time = call.start_time + timedelta(seconds=1)
        await recorder.call_started(call)
        calls.append(call)
    return calls


async def _detail(api: Api, call: CallRecord) -> dict[str, Any]:
    detail: dict[str, Any] = (await api.get(f"/v1/calls/{call.id}")).json()
    return detail


def _lost(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("telepath_calls_total", {"outcome": "lost"}) or 0.0


@pytest.mark.parametrize("kind", ["outbox", "emit"])
async def test_two_processes_recovering_one_dead_process_close_each_call_once(
    api: Api, kind: str
) -> None:
    calls = await _open_calls(api, "gw_dead", 3)
    sinks = await _sinks(api, kind, 2)
    metrics = [Metrics(), Metrics()]
    both_read = asyncio.Barrier(2)  # each has read the open records before either writes

    async def read() -> None:
        await asyncio.wait_for(both_read.wait(), 10)  # a closer that never reads: no hang

    closed = await asyncio.gather(
        *(
            close_calls_of(["gw_dead"], _paused(api, read), sink, m, ended=utcnow())
            for sink, m in zip(sinks, metrics, strict=True)
        )
    )

    assert sum(closed) == 3
    assert sum(_lost(m) for m in metrics) == 3
    assert await _events(api, sinks) == sorted((e, c.id) for c in calls for e in LOST_EVENTS)
    for call in calls:
        assert (await _detail(api, call))["disconnect_reason"] == "lost"


@pytest.mark.parametrize("kind", ["outbox", "emit"])
async def test_a_call_that_ends_while_its_process_is_recovered_keeps_its_end(
    api: Api, kind: str
) -> None:
    # a process taken for dead that was not (a worker whose exit was misread, a heartbeat row
    # that stood still while its database was out of reach) ends a call between the closer's
    # read and its write
    ending, left = await _open_calls(api, "gw_dead", 2)
    (sink,) = await _sinks(api, kind, 1)
    metrics = Metrics()

    async def end_it() -> None:
        await DbCallRecorder(api.state.sessions, instance_id="gw_dead").call_ended(ended(ending))

    assert await close_calls_of(["gw_dead"], _paused(api, end_it), sink, metrics) == 1

    kept = await _detail(api, ending)
    assert kept["disconnect_reason"] == "caller_hangup" and kept["duration_seconds"] == 342
    assert (await _detail(api, left))["disconnect_reason"] == "lost"
    assert await _events(api, [sink]) == sorted((e, left.id) for e in LOST_EVENTS)
    assert _lost(metrics) == 1


async def test_a_lost_call_s_close_and_its_events_are_one_transaction(api: Api) -> None:
    # a crash between two commits would leave a call closed whose call.ended was never queued,
    # and never would be: recovery closes only records still open
    calls = await _open_calls(api, "gw_dead", 2)
    await _subscribe(api)
    woken: list[bool] = []
    sink = DbEventSink(api.state.sessions, on_enqueued=lambda: woken.append(True))
    with Transactions(api.state.engine) as log:
        assert await close_calls_of(["gw_dead"], api.state.sessions, sink) == 2
    for call in calls:
        (together,) = [
            t for t in log.committed if any("'call.ended'" in s and call.id in s for s in t)
        ]
        assert any(s.startswith("UPDATE calls") and call.id in s for s in together)
        assert any("'agent.disconnected'" in s and call.id in s for s in together)
    assert await _events(api, [sink]) == sorted((e, c.id) for c in calls for e in LOST_EVENTS)
    assert woken  # the dispatcher is told after the commit


async def test_events_that_cannot_be_made_with_the_close_are_sent_after_it(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the account's endpoints cannot be read (nor served from the cache): the record is closed
    # alone, and its events go through emit, which keeps them until they can be written
    (call,) = await _open_calls(api, "gw_dead", 1)
    (sink,) = await _sinks(api, "outbox", 1)
    assert isinstance(sink, DbEventSink)

    async def unreadable(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        raise ConnectionRefusedError

    monkeypatch.setattr(sink, "outbox_rows", unreadable)
    assert await close_calls_of(["gw_dead"], api.state.sessions, sink) == 1
    assert (await _detail(api, call))["disconnect_reason"] == "lost"
    assert await _events(api, [sink]) == sorted((e, call.id) for e in LOST_EVENTS)


async def test_events_refused_for_good_do_not_cost_the_record_its_close(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    (call,) = await _open_calls(api, "gw_dead", 1)
    (sink,) = await _sinks(api, "outbox", 1)
    assert isinstance(sink, DbEventSink)

    async def refused(self: WebhookRepository, rows: Any) -> None:
        raise RuntimeError("refused")

    monkeypatch.setattr(WebhookRepository, "enqueue", refused)
    assert await close_calls_of(["gw_dead"], api.state.sessions, sink) == 1
    assert (await _detail(api, call))["disconnect_reason"] == "lost"
    assert sink.failures == len(LOST_EVENTS)  # then tried through emit: refused too, counted


def _second_update_fails() -> Callable[..., None]:
    """A ``before_cursor_execute`` listener: the database is lost at the second ``UPDATE
    calls`` of a recovery (it raises there), the first has gone through."""
    seen = 0

    def fail(_conn: Any, _c: Any, statement: str, *_: Any) -> None:
        nonlocal seen
        if statement.startswith("UPDATE calls"):
            seen += 1
            if seen == 2:
                raise ConnectionResetError  # the database lost mid-recovery

    return fail


async def test_a_recovery_cut_short_keeps_what_it_closed_and_its_process_s_row(api: Api) -> None:
    # a record closed before the failure still gets its events (here through emit: the
    # endpoints were unreadable); the dead process's heartbeat row stays, so that a watcher
    # takes it for dead again later and closes what was left
    calls = await _open_calls(api, "gw_dead", 2)
    await instance_store.beat(api.state.sessions, "gw_dead")
    sink = RecordingSink()
    metrics = Metrics()
    engine = api.state.engine.sync_engine
    fail = _second_update_fails()

    event.listen(engine, "before_cursor_execute", fail)
    try:
        count = await close_calls_of(["gw_dead"], api.state.sessions, sink, metrics)
        left = [r.instance_id for r in await instance_store.read_all(api.state.sessions)]
    finally:
        event.remove(engine, "before_cursor_execute", fail)
        await instance_store.forget(api.state.sessions, ["gw_dead"])  # the database is shared
    assert count == 1
    assert "gw_dead" in left
    reasons = [(await _detail(api, c))["disconnect_reason"] for c in calls]
    assert sorted(reasons, key=str) == sorted(["lost", None], key=str)
    (closed,) = [c for c, reason in zip(calls, reasons, strict=True) if reason == "lost"]
    assert await _events(api, [sink]) == sorted((e, closed.id) for e in LOST_EVENTS)
    assert _lost(metrics) == 1


async def _reasons(api: Api, calls: list[CallRecord]) -> list[str | None]:
    return [(await _detail(api, c))["disconnect_reason"] for c in calls]


async def _until(check: Callable[[], Awaitable[bool]], interval: float) -> bool:
    """Whether ``check`` comes true within 100 ``interval``s (a bound, not a measure)."""
    for _ in range(100):
        if await check():
            return True
        await asyncio.sleep(interval)
    return False


async def test_a_watcher_s_recovery_cut_short_is_taken_up_again(api: Api) -> None:
    # the heartbeat row of a dead process goes only once all its calls are closed: a close
    # that failed midway (the database lost) is retried at a later check, not left to the
    # retention sweep (never, with TELEPATH_CALL_MAX_DURATION_S=0)
    calls = await _open_calls(api, "gw_dead", 2)
    await instance_store.beat(api.state.sessions, "gw_dead")  # then it died
    sink = RecordingSink()
    metrics = Metrics()
    lost_after = 0.3
    interval = heartbeat_s(lost_after)
    engine = api.state.engine.sync_engine
    fail = _second_update_fails()

    async def one_lost() -> bool:
        return "lost" in await _reasons(api, calls)

    async def both_lost() -> bool:
        return await _reasons(api, calls) == ["lost", "lost"]

    event.listen(engine, "before_cursor_execute", fail)
    watcher = asyncio.create_task(
        reap_forever(api.state.sessions, sink, metrics, "gw_watcher", lost_after)
    )
    try:
        assert await _until(one_lost, interval)
        event.remove(engine, "before_cursor_execute", fail)
        assert await _until(both_lost, interval)
        left = [r.instance_id for r in await instance_store.read_all(api.state.sessions)]
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        if event.contains(engine, "before_cursor_execute", fail):
            event.remove(engine, "before_cursor_execute", fail)
        await instance_store.forget(api.state.sessions, ["gw_dead"])  # the database is shared
    assert "gw_dead" not in left  # all closed: its row is gone
    assert await _events(api, [sink]) == sorted((e, c.id) for c in calls for e in LOST_EVENTS)
    assert _lost(metrics) == 2


async def test_a_watcher_stopped_while_it_recovers_leaves_the_process_s_row(api: Api) -> None:
    # the watcher's task is cancelled at a stop: its close goes with it (none left running once
    # the database engine is disposed), and the row stays for the next check of another watcher
    calls = await _open_calls(api, "gw_dead", 2)
    await instance_store.beat(api.state.sessions, "gw_dead")  # then it died
    reading, release = asyncio.Event(), asyncio.Event()

    async def read() -> None:
        reading.set()
        await release.wait()  # the stop comes meanwhile

    sessions = _paused(api, read)
    watcher = asyncio.create_task(reap_forever(sessions, RecordingSink(), None, "gw_w", 0.3))
    try:
        await asyncio.wait_for(reading.wait(), 10)
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        left = [r.instance_id for r in await instance_store.read_all(api.state.sessions)]
    finally:
        watcher.cancel()
        release.set()  # a close left running (shielded) would go on now
        await instance_store.forget(api.state.sessions, ["gw_dead"])  # the database is shared
    assert "gw_dead" in left
    assert await _reasons(api, calls) == [None, None]
