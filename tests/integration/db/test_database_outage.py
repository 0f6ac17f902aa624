"""A database outage while calls run: call records and webhook events written meanwhile are
kept and land once the database is back (real PostgreSQL behind a proxy the test cuts)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from telepath.db.call_recorder import DbCallRecorder
from telepath.db.engine import make_engine, sessionmaker_for, transient_error
from telepath.db.models import CallRow, WebhookDelivery
from telepath.metrics import Metrics
from telepath.webhooks import sink as sink_module
from telepath.webhooks.sink import DbEventSink
from tests.integration.calls_api.records import account_of, ended, started
from tests.integration.conftest import Api
from tests.integration.db.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration

PAYLOAD = {"call_id": "call_1"}


@pytest.fixture
def database_url(postgres_url: str) -> str:
    return postgres_url  # an outage of a database server (SQLite has none)


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"allow_insecure_webhook_urls": True, "database_timeout_s": 1.0}


@contextlib.asynccontextmanager
async def _through_proxy(
    api: Api, timeout_s: float = 0.0
) -> AsyncIterator[tuple[TcpProxy, async_sessionmaker[AsyncSession]]]:
    """A proxy in front of the test's database, and sessions through it."""
    url = api.state.settings.database_url
    async with TcpProxy.in_front_of(url) as proxy:
        engine = make_engine(proxy.through(url), timeout_s=timeout_s)
        try:
            yield proxy, sessionmaker_for(engine)
        finally:
            await engine.dispose()


async def _count(api: Api, entity: Any) -> int:
    async with api.state.sessions() as session:  # straight to the server, not through the proxy
        return int(await session.scalar(select(func.count()).select_from(entity)) or 0)


async def _until(condition: Any, what: str, within_s: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_records_and_events_written_during_an_outage_land_when_it_ends(api: Api) -> None:
    account = await account_of(api)
    resp = await api.post(
        "/v1/webhooks", {"url": "http://127.0.0.1:9/hook", "events": ["call.started", "call.ended"]}
    )
    assert resp.status_code == 201, resp.text
    async with _through_proxy(api) as (proxy, sessions):
        metrics = Metrics()
        recorder = DbCallRecorder(sessions, metrics, timeout_s=0.5)
        sink = DbEventSink(sessions, metrics=metrics, timeout_s=0.5)
        try:
            await sink.emit(account, "call.started", PAYLOAD)  # before: endpoints known
            assert await _count(api, WebhookDelivery) == 1
            call = started(account)

            proxy.cut()  # the server restarts, fails over, or the network drops
            await recorder.call_started(call)  # each gives up waiting after 0.5 s
            await sink.emit(account, "call.ended", PAYLOAD)
            await recorder.call_ended(ended(call))
            assert (recorder.parked, sink.parked) == (2, 1)
            assert recorder.failures == sink.failures == 0  # kept, not lost
            text = metrics.render().decode()
            assert 'telepath_db_writes_parked{writer="call_records"} 2.0' in text
            assert 'telepath_db_writes_parked{writer="webhook_events"} 1.0' in text
            assert await _count(api, CallRow) == 0

            # new writes meanwhile wait behind the kept ones (no attempt each)
            await recorder.call_started(started(account))
            await sink.emit(account, "call.started", PAYLOAD)
            assert (recorder.parked, sink.parked) == (3, 2)

            proxy.restore()  # the next round (1-5 s later) writes them all, in order
            await _until(lambda: recorder.parked == sink.parked == 0, "the kept writes")
        finally:
            await recorder.close()
            await sink.close()
    assert recorder.failures == sink.failures == 0
    detail = (await api.get(f"/v1/calls/{call.id}")).json()
    assert detail["status"] == "connected" and detail["end_time"] is not None
    assert detail["duration_seconds"] == 342
    assert await _count(api, CallRow) == 2
    assert await _count(api, WebhookDelivery) == 3


async def test_what_the_database_never_takes_is_reported_lost_at_close(api: Api) -> None:
    account = await account_of(api)
    async with _through_proxy(api) as (proxy, sessions):
        metrics = Metrics()
        recorder = DbCallRecorder(sessions, metrics, timeout_s=0.2)
        proxy.cut()
        await recorder.call_ended(ended(started(account)))
        assert recorder.parked == 1 and recorder.failures == 0
        assert await recorder.close(timeout_s=0.5) == 1
    assert recorder.failures == 1  # given up: counted and logged as a failed write
    assert 'telepath_call_record_failures_total{operation="call_ended"} 1.0' in (
        metrics.render().decode()
    )


def test_which_errors_are_worth_retrying() -> None:
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    assert transient_error(ConnectionRefusedError())
    assert transient_error(TimeoutError())
    assert transient_error(OperationalError("INSERT", {}, Exception("database is locked")))
    assert transient_error(PoolTimeout("QueuePool limit of size 5 overflow 10 reached"))
    assert not transient_error(OperationalError("INSERT", {}, Exception("no such table: calls")))
    assert not transient_error(IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not transient_error(ProgrammingError("INSERT", {}, Exception("syntax error")))
    assert not transient_error(ValueError("bug"))


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        ("ConnectionDoesNotExistError", True),  # a connection closed in mid-statement (08003)
        ("CannotConnectNowError", True),  # the server starting up (57P03)
        ("AdminShutdownError", True),  # the server shutting down (57P01)
        ("TooManyConnectionsError", True),  # 53300
        ("DeadlockDetectedError", True),  # 40P01: the same write goes through next time
        ("UniqueViolationError", False),  # 23505: the data, not the database
        ("UndefinedTableError", False),  # 42P01
    ],
)
def test_which_postgresql_errors_are_worth_retrying(error: str, transient: bool) -> None:
    """As SQLAlchemy's asyncpg dialect hands them over: a ``DBAPIError`` around the dialect's
    own error, caused by asyncpg's (measured: a PostgreSQL proxy cut in mid-statement gave a
    plain ``DBAPIError`` that was not taken for an outage, and the event was lost)."""
    import asyncpg.exceptions
    from sqlalchemy.exc import DBAPIError

    cause = getattr(asyncpg.exceptions, error)("the server said so")
    adapted = Exception(str(cause))
    adapted.__cause__ = cause
    wrapped = DBAPIError("INSERT", {}, adapted)
    wrapped.__cause__ = adapted
    assert transient_error(wrapped) is transient


async def test_statements_time_out_but_maintenance_does_not(api: Api) -> None:
    """``TELEPATH_DATABASE_TIMEOUT_S`` bounds the call path's and the API's statements (a
    silent server counts as unavailable); migrations and the retention sweep run without it."""
    async with api.state.sessions() as session:
        with pytest.raises(TimeoutError) as raised:
            await session.execute(text("SELECT pg_sleep(1.5)"))
    assert transient_error(raised.value)
    assert api.state.maintenance_sessions is not None
    async with api.state.maintenance_sessions() as session:
        assert (await session.execute(text("SELECT 1 FROM pg_sleep(1.5)"))).scalar() == 1


async def test_an_event_whose_endpoints_take_longer_than_the_wait_is_not_lost(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A silent database: the endpoint lookup outlasts ``emit``'s wait (the pool's check of
    the dead connection, then a new one, each up to the 1 s timeout); the event is still
    queued once the stale endpoints are served, and lands when the database is back."""
    account = await account_of(api)
    resp = await api.post(
        "/v1/webhooks", {"url": "http://127.0.0.1:9/hook", "events": ["call.ended"]}
    )
    assert resp.status_code == 201, resp.text
    monkeypatch.setattr(sink_module, "ENDPOINT_CACHE_TTL_S", 0.1)
    async with _through_proxy(api, timeout_s=1.0) as (proxy, sessions):
        sink = DbEventSink(sessions, timeout_s=0.3)
        try:
            await sink.emit(account, "call.ended", PAYLOAD)  # the endpoints, read and cached
            await asyncio.sleep(0.2)  # and expired
            proxy.freeze()
            await sink.emit(account, "call.ended", PAYLOAD)  # gives up waiting after 0.3 s
            await _until(lambda: sink.parked == 1, "the event kept for retry")
            proxy.restore()
            await _until(lambda: sink.parked == 0, "the kept event")
        finally:
            await sink.close()
    assert sink.failures == 0
    assert await _count(api, WebhookDelivery) == 2


async def test_writes_kept_when_the_process_stops_are_replayed_from_its_journal(
    api: Api, tmp_path: Path
) -> None:
    """A process that stops (or dies) before the database is back leaves what it kept in its
    journal; the next start writes it — the call's real end, the event — once, however often
    the journal is replayed."""
    account = await account_of(api)
    resp = await api.post("/v1/webhooks", {"url": "http://127.0.0.1:9/hook", "events": ["*"]})
    assert resp.status_code == 201, resp.text
    records, events = tmp_path / "i1.call_records.jsonl", tmp_path / "i1.webhook_events.jsonl"
    async with _through_proxy(api, timeout_s=1.0) as (proxy, sessions):
        recorder = DbCallRecorder(sessions, timeout_s=0.3, journal=records)
        sink = DbEventSink(sessions, timeout_s=0.3, journal=events)
        await sink.emit(account, "call.started", PAYLOAD)  # the endpoints, read and cached
        call = started(account)
        proxy.cut()
        await recorder.call_started(call)
        await recorder.call_ended(ended(call))
        await sink.emit(account, "call.ended", PAYLOAD)
        # Kept as soon as each write fails; a write stuck on the cut connection fails at the
        # statement timeout (1 s), after the callers' 0.3 s wait (seen under load in CI).
        await _until(lambda: (recorder.parked, sink.parked) == (2, 1), "the writes kept")
        # on disk as they are kept: a process killed now leaves them behind
        assert len(records.read_text().splitlines()) == 2
        assert len(events.read_text().splitlines()) == 1
        assert await recorder.close(timeout_s=0.3) == 2  # shutdown: given up here…
        assert await sink.close(timeout_s=0.3) == 1
    assert records.is_file() and events.is_file()  # …but left for the next start
    copies = [path.read_bytes() for path in (records, events)]

    after = DbCallRecorder(api.state.sessions)  # the next start, the database back
    sink_after = DbEventSink(api.state.sessions)
    for _ in range(2):  # replayed twice (a second crash mid-replay): nothing doubles
        assert await after.replay(records) == 2
        assert await sink_after.replay(events) == 1
        assert not records.exists() and not events.exists()
        records.write_bytes(copies[0])
        events.write_bytes(copies[1])
    assert after.failures == sink_after.failures == 0
    detail = (await api.get(f"/v1/calls/{call.id}")).json()
    assert (detail["status"], detail["disconnect_reason"]) == ("connected", "caller_hangup")
    assert detail["duration_seconds"] == 342  # its real end, not "lost"
    assert await _count(api, CallRow) == 1
    assert await _count(api, WebhookDelivery) == 2


async def test_a_call_s_end_kept_with_its_events_is_replayed_with_them(
    api: Api, tmp_path: Path
) -> None:
    """The events written in the record's transaction are journaled with it: a process that
    dies before the database is back loses neither (replayed twice: nothing doubles)."""
    account = await account_of(api)
    resp = await api.post("/v1/webhooks", {"url": "http://127.0.0.1:9/hook", "events": ["*"]})
    assert resp.status_code == 201, resp.text
    records = tmp_path / "i1.call_records.jsonl"
    async with _through_proxy(api, timeout_s=1.0) as (proxy, sessions):
        sink = DbEventSink(sessions, timeout_s=0.3)
        recorder = DbCallRecorder(sessions, timeout_s=0.3, journal=records, outbox=sink)
        await sink.emit(account, "call.started", PAYLOAD)  # the endpoints, read and cached
        call = started(account)
        await recorder.call_started(call)
        proxy.cut()
        events = [sink.prepare(account, e, PAYLOAD) for e in ("agent.disconnected", "call.ended")]
        await recorder.call_ended(ended(call), events)
        await _until(lambda: recorder.parked == 1, "the write kept")
        assert await recorder.close(timeout_s=0.3) == 1
        await sink.close(timeout_s=0.3)
    copy = records.read_bytes()
    after = DbCallRecorder(api.state.sessions, outbox=DbEventSink(api.state.sessions))
    for _ in range(2):
        assert await after.replay(records) == 1
        records.write_bytes(copy)
    assert after.failures == 0
    assert (await api.get(f"/v1/calls/{call.id}")).json()["duration_seconds"] == 342
    async with api.state.sessions() as session:
        kinds = (await session.scalars(select(WebhookDelivery.event))).all()
    assert sorted(kinds) == ["agent.disconnected", "call.ended", "call.started"]


async def test_a_connection_lost_after_the_answer_is_sent_is_not_an_error(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A request's session is closed once its answer is on its way; a connection that dies
    just then (measured: a failover right after a ``GET /v1/calls``) made the error handler try
    a second answer — "response already started", an unhandled error logged with a trace."""
    from sqlalchemy.ext.asyncio import AsyncSession

    real_close = AsyncSession.close

    async def close_on_a_dead_connection(self: AsyncSession) -> None:
        await real_close(self)
        raise ConnectionResetError("connection was closed in the middle of operation")

    monkeypatch.setattr(AsyncSession, "close", close_on_a_dead_connection)
    resp = await api.get("/v1/trunks")
    assert resp.status_code == 200, resp.text
    assert "unhandled" not in caplog.text


async def test_an_event_whose_endpoints_were_never_read_is_kept_not_lost(api: Api) -> None:
    """The outage starts before this process read the account's endpoints (a quiet account):
    the event is kept whole and its endpoints read once the database is back."""
    account = await account_of(api)
    resp = await api.post("/v1/webhooks", {"url": "http://127.0.0.1:9/hook", "events": ["*"]})
    assert resp.status_code == 201, resp.text
    async with _through_proxy(api, timeout_s=1.0) as (proxy, sessions):
        sink = DbEventSink(sessions, timeout_s=5)
        try:
            proxy.cut()
            await asyncio.wait_for(sink.emit(account, "call.ended", PAYLOAD), 4)  # not 5 s
            assert sink.parked == 1 and sink.failures == 0
            proxy.restore()
            await _until(lambda: sink.parked == 0, "the kept event")
        finally:
            await sink.close()
    assert sink.failures == 0
    assert await _count(api, WebhookDelivery) == 1
