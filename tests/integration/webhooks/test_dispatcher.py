"""Outbox delivery against a real HTTP receiver: signatures, retries, backoff, restarts."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import ssl
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from sqlalchemy import event as sa_event
from sqlalchemy import select

from telepath.cli import gateway as gateway_module
from telepath.cli.gateway import start_gateway
from telepath.config import Settings
from telepath.db.base import utcnow
from telepath.db.engine import make_engine, sessionmaker_for
from telepath.db.models import WebhookDelivery
from telepath.db.webhook_store import WebhookRepository
from telepath.metrics import Metrics
from telepath.webhooks.dispatcher import WebhookDispatcher
from telepath.webhooks.signing import verify_signature
from telepath.webhooks.sink import DbEventSink
from tests.certs import self_signed
from tests.integration.calls_api.records import account_of
from tests.integration.conftest import Api
from tests.integration.webhooks.receiver import Receiver, running

pytestmark = pytest.mark.integration

PAYLOAD = {"call_id": "call_1", "connection_id": "conn_1", "from": "+14155550100"}


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"allow_insecure_webhook_urls": True}


class Clock:
    """Real UTC time plus an offset the test moves forward (no sleeping for backoff)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return utcnow() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


async def subscribe(
    api: Api, url: str, events: list[str], key: str | None = None
) -> dict[str, Any]:
    resp = await api.post("/v1/webhooks", {"url": url, "events": events}, key=key)
    assert resp.status_code == 201, resp.text
    created: dict[str, Any] = resp.json()
    return created


async def rows(api: Api) -> list[WebhookDelivery]:
    async with api.state.sessions() as session:
        return list(
            (await session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id))).all()
        )


async def test_delivers_a_signed_event(
    api: Api, make_dispatcher: Callable[..., WebhookDispatcher]
) -> None:
    metrics = Metrics()
    with running(Receiver()) as receiver:
        hook = await subscribe(api, receiver.url, ["call.started"])
        await DbEventSink(api.state.sessions).emit(await account_of(api), "call.started", PAYLOAD)
        dispatcher = make_dispatcher(metrics=metrics)
        assert await dispatcher.run_once() == 1
        assert await dispatcher.run_once() == 0  # delivered once only

    [req] = receiver.requests
    assert req.path == "/hook"
    assert req.headers["content-type"] == "application/json"
    assert verify_signature(hook["secret"], req.headers["telepath-signature"], req.body)
    assert not verify_signature("whsec_wrong", req.headers["telepath-signature"], req.body)
    body = json.loads(req.body)
    assert set(body) == {"id", "type", "created_at", "data"}
    assert re.fullmatch(r"evt_[0-9a-z]{26}", body["id"])
    assert body["type"] == "call.started"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body["created_at"])
    assert body["data"] == PAYLOAD
    assert req.headers["telepath-event-id"] == req.headers["idempotency-key"] == body["id"]
    assert req.headers["telepath-event-type"] == "call.started"

    [row] = await rows(api)
    assert (row.status, row.attempts, row.last_status_code, row.last_error) == (
        "delivered",
        1,
        200,
        None,
    )
    text = metrics.render().decode()
    assert 'telepath_webhook_deliveries_total{result="delivered"} 1.0' in text
    assert "telepath_webhook_backlog 0.0" in text


async def test_retry_after_500_then_success(
    api: Api, make_dispatcher: Callable[..., WebhookDispatcher], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    metrics = Metrics()
    with running(Receiver(script=[(500, 0.0)])) as receiver:
        hook = await subscribe(api, receiver.url, ["*"])
        await DbEventSink(api.state.sessions).emit(await account_of(api), "call.ended", PAYLOAD)
        dispatcher = make_dispatcher(now=clock, metrics=metrics, backoff_base_s=10.0)
        assert await dispatcher.run_once() == 1
        [row] = await rows(api)
        assert (row.status, row.attempts, row.last_status_code, row.last_error) == (
            "pending",
            1,
            500,
            "HTTP 500",
        )
        assert "telepath_webhook_backlog 1.0" in metrics.render().decode()
        clock.advance(9)
        assert await dispatcher.run_once() == 0  # backing off
        clock.advance(2)
        assert await dispatcher.run_once() == 1

    first, second = receiver.requests
    assert first.body == second.body  # same bytes, same event id: receivers can de-duplicate
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"]
    for req in (first, second):
        assert verify_signature(hook["secret"], req.headers["telepath-signature"], req.body)
    [row] = await rows(api)
    assert (row.status, row.attempts, row.last_status_code) == ("delivered", 2, 200)
    text = metrics.render().decode()
    assert 'telepath_webhook_deliveries_total{result="retry"} 1.0' in text
    assert 'telepath_webhook_deliveries_total{result="delivered"} 1.0' in text


async def test_timeout_is_retried(
    api: Api, make_dispatcher: Callable[..., WebhookDispatcher], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    with running(Receiver(script=[(200, 1.0)])) as receiver:
        await subscribe(api, receiver.url, ["*"])
        await DbEventSink(api.state.sessions).emit(await account_of(api), "call.error", PAYLOAD)
        dispatcher = make_dispatcher(now=clock, timeout_s=0.2)
        await dispatcher.run_once()
        [row] = await rows(api)
        assert (row.status, row.last_error, row.last_status_code) == ("pending", "timeout", None)
        clock.advance(11)
        await dispatcher.run_once()
    [row] = await rows(api)
    assert row.status == "delivered" and len(receiver.requests) == 2


async def test_gives_up_after_max_attempts(
    api: Api, make_dispatcher: Callable[..., WebhookDispatcher], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    metrics = Metrics()
    with running(Receiver(default=503)) as receiver:
        await subscribe(api, receiver.url, ["*"])
        await DbEventSink(api.state.sessions).emit(await account_of(api), "call.ended", PAYLOAD)
        dispatcher = make_dispatcher(now=clock, metrics=metrics, max_attempts=3)
        for _ in range(5):
            await dispatcher.run_once()
            clock.advance(3600)
    assert len(receiver.requests) == 3
    [row] = await rows(api)
    assert (row.status, row.attempts, row.last_error) == ("failed", 3, "HTTP 503")
    text = metrics.render().decode()
    assert 'telepath_webhook_deliveries_total{result="retry"} 2.0' in text
    assert 'telepath_webhook_deliveries_total{result="failed"} 1.0' in text
    assert "telepath_webhook_backlog 0.0" in text


async def test_unreachable_endpoint_is_retried(
    api: Api, make_dispatcher: Callable[..., WebhookDispatcher]
) -> None:
    with running(Receiver()) as receiver:
        url = receiver.url  # nothing listens there once the block ends
    await subscribe(api, url, ["*"])
    await DbEventSink(api.state.sessions).emit(await account_of(api), "call.ended", PAYLOAD)
    await make_dispatcher().run_once()
    [row] = await rows(api)
    assert (row.status, row.attempts, row.last_error) == ("pending", 1, "connection_failed")


async def test_an_http_endpoint_gets_nothing_once_insecure_webhook_urls_are_off(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    """TELEPATH_ALLOW_INSECURE_WEBHOOK_URLS was checked only when an endpoint was saved: one
    made while it was on was sent signed call data in cleartext after it was turned off. It now
    holds at delivery: no request, a failed attempt ``insecure_url`` (retried, then ``failed``,
    as for any endpoint that cannot be reached), one warning naming the endpoint, not its URL."""
    with running(Receiver()) as receiver:
        hook = await subscribe(api, f"{receiver.url}?token=url-s3cret", ["*"])
        sink = DbEventSink(api.state.sessions)
        for _ in range(2):
            await sink.emit(await account_of(api), "call.ended", PAYLOAD)
        off = api.state.settings.model_copy(update={"allow_insecure_webhook_urls": False})
        dispatcher = WebhookDispatcher.from_settings(api.state.sessions, api.state.keyring, off)
        try:
            await dispatcher.run_once()
        finally:
            await dispatcher.aclose()
    assert receiver.requests == []
    assert [(r.status, r.attempts, r.last_error) for r in await rows(api)] == [
        ("pending", 1, "insecure_url")
    ] * 2
    said = [r for r in caplog.records if "TELEPATH_ALLOW_INSECURE_WEBHOOK_URLS" in r.getMessage()]
    assert [r.levelname for r in said] == ["WARNING"]  # once for the endpoint
    assert hook["id"] in said[0].getMessage() and "s3cret" not in caplog.text


async def test_pending_rows_survive_a_restart(
    api: Api, make_dispatcher: Callable[..., WebhookDispatcher], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    account = await account_of(api)
    sink = DbEventSink(api.state.sessions)
    with running(Receiver(script=[(500, 0.0)])) as receiver:
        await subscribe(api, receiver.url, ["*"])
        await sink.emit(account, "call.started", PAYLOAD)
        first = make_dispatcher(now=clock)
        await first.run_once()
        await first.aclose()  # the gateway stops with one retry pending...
        await sink.emit(account, "call.ended", PAYLOAD)  # ...and one event never attempted
        clock.advance(60)
        second = make_dispatcher(now=clock)  # a new process
        assert await second.run_once() == 2
    assert sorted(json.loads(r.body)["type"] for r in receiver.requests) == [
        "call.ended",
        "call.started",
        "call.started",
    ]
    assert {r.status for r in await rows(api)} == {"delivered"}


async def test_a_crashed_claim_is_retried_after_its_lease(
    api: Api, make_dispatcher: Callable[..., WebhookDispatcher], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    with running(Receiver()) as receiver:
        await subscribe(api, receiver.url, ["*"])
        await DbEventSink(api.state.sessions).emit(await account_of(api), "call.ended", PAYLOAD)
        async with api.state.sessions() as session:  # a dispatcher claims, then dies
            claimed = await WebhookRepository(session).claim_due(
                clock(), limit=10, lease=timedelta(seconds=70)
            )
            await session.commit()
        assert len(claimed) == 1
        dispatcher = make_dispatcher(now=clock)
        assert await dispatcher.run_once() == 0  # leased
        clock.advance(71)
        assert await dispatcher.run_once() == 1
    assert len(receiver.requests) == 1


async def _first_request(receiver: Receiver) -> None:
    for _ in range(500):
        if receiver.requests:
            return
        await asyncio.sleep(0.01)
    pytest.fail("no request")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_delivery_in_flight_at_a_gateway_stop_finishes_and_its_outcome_is_stored(
    api: Api, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop let the dispatcher finish for 5 s, as any background task, then cancelled it:
    a delivery to an endpoint taking longer was cut off, its row stayed leased (2 × timeout +
    30 s), and it was sent again after a restart though the receiver had processed it. It
    may take up to the webhook timeout."""
    monkeypatch.setattr(gateway_module, "TASK_STOP_S", 0.1)  # every other task's bound
    gate = threading.Event()
    with running(Receiver(gate=gate)) as receiver:
        await subscribe(api, receiver.url, ["*"])
        await DbEventSink(api.state.sessions).emit(await account_of(api), "call.ended", PAYLOAD)
        gateway = await start_gateway(
            settings.model_copy(update={"sip_host": "127.0.0.1", "sip_port": 0}), api.state
        )
        await _first_request(receiver)

        async def answer_late() -> None:
            await gateway.stop_event.wait()
            await asyncio.sleep(0.3)  # past TASK_STOP_S, well within the webhook timeout
            gate.set()

        answering = asyncio.create_task(answer_late())
        await gateway.stop(0)
        await answering
    [row] = await rows(api)
    assert (row.status, row.attempts, row.last_status_code) == ("delivered", 1, 200)
    assert len(receiver.requests) == 1


async def test_a_delivery_cut_off_at_a_stop_is_due_again_at_once(
    api: Api, make_dispatcher: Callable[..., WebhookDispatcher]
) -> None:
    """One still in flight when the stop's grace runs out is cancelled and its lease released:
    the next start sends it at once rather than after the lease (at least once)."""
    gate = threading.Event()  # the endpoint does not answer until the end
    with running(Receiver(gate=gate)) as receiver:
        await subscribe(api, receiver.url, ["*"])
        await DbEventSink(api.state.sessions).emit(await account_of(api), "call.ended", PAYLOAD)
        dispatcher = make_dispatcher(stop_grace_s=0.1)
        stop = asyncio.Event()
        task = asyncio.create_task(dispatcher.run(stop))
        await _first_request(receiver)
        stop.set()
        await asyncio.wait_for(task, 5)
        [row] = await rows(api)
        assert (row.status, row.attempts) == ("pending", 0)  # not counted: its outcome unknown
        assert row.next_attempt_at <= utcnow()
        gate.set()
        assert await make_dispatcher().run_once() == 1  # a new process: no lease to wait out
    [row] = await rows(api)
    assert (row.status, row.attempts, row.last_status_code) == ("delivered", 1, 200)
    assert len(receiver.requests) == 2


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)  # several instances
async def test_two_instances_claiming_at_once_take_disjoint_deliveries(api: Api) -> None:
    """Several instances on one PostgreSQL database: a dispatcher's claim skips the rows another
    holds in an open transaction (``SKIP LOCKED``) instead of sending them a second time."""
    await subscribe(api, "http://127.0.0.1:9/hook", ["*"])
    sink = DbEventSink(api.state.sessions)
    account = await account_of(api)
    for _ in range(6):
        await sink.emit(account, "call.ended", PAYLOAD)
    now = utcnow()
    async with api.state.sessions() as first, api.state.sessions() as second:
        mine = await WebhookRepository(first).claim_due(now, limit=4, lease=timedelta(seconds=70))
        async with asyncio.timeout(5):  # while the first transaction is still open
            theirs = await WebhookRepository(second).claim_due(
                now, limit=10, lease=timedelta(seconds=70)
            )  # (without SKIP LOCKED it would wait for the first's row locks: a timeout)
        await first.commit()
        await second.commit()
    assert len(mine) == 4 and len(theirs) == 2
    assert not {c.delivery_id for c in mine} & {c.delivery_id for c in theirs}


async def test_a_claim_racing_another_never_takes_its_deliveries(api: Api) -> None:
    """Two claims at once, the second begun before the first commits: it takes none of the
    first's deliveries. On SQLite its read of the due rows ran outside its transaction, before
    the first's lease was committed, and its lease then re-leased the same rows: sent twice
    (two processes on one SQLite file, e.g. an old run still draining beside a new one)."""
    await subscribe(api, "http://127.0.0.1:9/hook", ["*"])
    sink = DbEventSink(api.state.sessions)
    account = await account_of(api)
    for _ in range(3):
        await sink.emit(account, "call.ended", PAYLOAD)
    now = utcnow()
    leasing = asyncio.Event()

    def on_statement(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("UPDATE webhook_deliveries"):
            leasing.set()  # the second has read the due rows and waits to lease them

    engine = api.state.engine.sync_engine
    async with api.state.sessions() as first, api.state.sessions() as second:
        mine = await WebhookRepository(first).claim_due(now, limit=10, lease=timedelta(seconds=70))
        sa_event.listen(engine, "before_cursor_execute", on_statement)
        try:
            theirs_task = asyncio.create_task(
                WebhookRepository(second).claim_due(now, limit=10, lease=timedelta(seconds=70))
            )
            # SQLite: its lease waits for the first's write lock; PostgreSQL: SKIP LOCKED
            waiting = asyncio.ensure_future(leasing.wait())
            async with asyncio.timeout(10):
                await asyncio.wait({theirs_task, waiting}, return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
            await first.commit()
            async with asyncio.timeout(10):
                theirs = await theirs_task
            await second.commit()
        finally:
            sa_event.remove(engine, "before_cursor_execute", on_statement)
    assert len(mine) == 3
    assert theirs == []


async def test_only_subscribed_endpoints_of_the_account_get_events(
    api: Api, make_dispatcher: Callable[..., WebhookDispatcher]
) -> None:
    other_key = await api.new_account_key("other")
    with running(Receiver()) as receiver:
        ended_only = await subscribe(api, receiver.url + "/ended", ["call.ended"])
        everything = await subscribe(api, receiver.url + "/all", ["*"])
        await subscribe(api, receiver.url + "/other", ["*"], key=other_key)
        sink = DbEventSink(api.state.sessions)
        account = await account_of(api)
        await sink.emit(account, "call.started", PAYLOAD)
        await sink.emit(account, "call.ended", PAYLOAD)
        await sink.emit(account, "agent.connected", {"agent_type": "openai"})
        assert await make_dispatcher().run_once() == 4
    got = sorted((r.path, json.loads(r.body)["type"]) for r in receiver.requests)
    assert got == [
        ("/hook/all", "agent.connected"),
        ("/hook/all", "call.ended"),
        ("/hook/all", "call.started"),
        ("/hook/ended", "call.ended"),
    ]
    by_endpoint = {r.endpoint_id for r in await rows(api)}
    assert by_endpoint == {ended_only["id"], everything["id"]}
    # One event fanned out to two endpoints keeps one id.
    ended_ids = {json.loads(r.body)["id"] for r in receiver.requests if b"call.ended" in r.body}
    assert len(ended_ids) == 1


async def test_deleting_an_endpoint_drops_its_pending_events(
    api: Api, make_dispatcher: Callable[..., WebhookDispatcher]
) -> None:
    with running(Receiver()) as receiver:
        hook = await subscribe(api, receiver.url, ["*"])
        await DbEventSink(api.state.sessions).emit(await account_of(api), "call.ended", PAYLOAD)
        assert (await api.delete(f"/v1/webhooks/{hook['id']}")).status_code == 204
        assert await make_dispatcher().run_once() == 0
    assert receiver.requests == [] and await rows(api) == []


async def test_run_loop_is_woken_by_the_sink(
    api: Api, make_dispatcher: Callable[..., WebhookDispatcher]
) -> None:
    with running(Receiver()) as receiver:
        await subscribe(api, receiver.url, ["*"])
        dispatcher = make_dispatcher(poll_interval_s=30.0)
        sink = DbEventSink(api.state.sessions, on_enqueued=dispatcher.wake)
        stop = asyncio.Event()
        task = asyncio.create_task(dispatcher.run(stop))
        await asyncio.sleep(0.05)  # the first round found nothing; now it waits 30 s
        await sink.emit(await account_of(api), "call.started", PAYLOAD)
        for _ in range(200):
            if receiver.requests:
                break
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 2)
    assert len(receiver.requests) == 1


async def test_run_loop_wakes_for_a_retry_when_it_falls_due_not_at_the_next_poll(
    api: Api, make_dispatcher: Callable[..., WebhookDispatcher]
) -> None:
    with running(Receiver(script=[(500, 0.0)])) as receiver:
        await subscribe(api, receiver.url, ["*"])
        dispatcher = make_dispatcher(poll_interval_s=30.0, backoff_base_s=0.3)
        await DbEventSink(api.state.sessions).emit(await account_of(api), "call.ended", PAYLOAD)
        stop = asyncio.Event()
        task = asyncio.create_task(dispatcher.run(stop))
        for _ in range(300):  # the first attempt fails (500); the retry is due 0.3 s later
            if len(receiver.requests) >= 2:
                break
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 2)
    assert len(receiver.requests) == 2
    [row] = await rows(api)
    assert (row.status, row.attempts) == ("delivered", 2)
    assert dispatcher.idle_wait_s() == 30.0  # nothing pending: back to the poll


async def test_idle_wait_follows_the_earliest_pending_delivery(
    api: Api, make_dispatcher: Callable[..., WebhookDispatcher], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    with running(Receiver(default=503)) as receiver:
        await subscribe(api, receiver.url, ["*"])
        dispatcher = make_dispatcher(poll_interval_s=60.0, backoff_base_s=20.0, now=clock)
        assert dispatcher.idle_wait_s() == 60.0  # before any round
        await DbEventSink(api.state.sessions).emit(await account_of(api), "call.ended", PAYLOAD)
        assert await dispatcher.run_once() == 1  # 503: the retry is due in 20 s
        assert 19.0 < dispatcher.idle_wait_s() <= 20.0
        clock.advance(15)
        assert 4.0 < dispatcher.idle_wait_s() <= 5.0
        short = make_dispatcher(poll_interval_s=2.0, now=clock)
        await short.run_once()
        assert short.idle_wait_s() == 2.0  # never longer than the poll
        async with api.state.sessions() as session:  # another process holds a due row
            [row] = (await session.scalars(select(WebhookDelivery))).all()
            row.next_attempt_at = clock() - timedelta(seconds=1)
            row.status = "pending"
            await session.commit()
        monkeypatch.setattr(WebhookRepository, "claim_due", _claims_nothing)
        assert await dispatcher.run_once() == 0
        assert dispatcher.idle_wait_s() == 60.0  # due but not ours to take: poll, no busy loop


async def _claims_nothing(self: WebhookRepository, *args: Any, **kwargs: Any) -> list[Any]:
    return []  # as PostgreSQL's SKIP LOCKED answers while another dispatcher holds the rows


async def test_sink_failures_never_reach_call_control(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")  # no schema
    try:
        metrics = Metrics()
        sink = DbEventSink(sessionmaker_for(engine), metrics=metrics)
        await sink.emit("acct_x", "call.started", PAYLOAD)
        assert sink.failures == 1
        assert "telepath_webhook_enqueue_failures_total 1.0" in metrics.render().decode()
    finally:
        await engine.dispose()


async def test_no_subscribers_writes_nothing(api: Api) -> None:
    woken: list[bool] = []
    sink = DbEventSink(api.state.sessions, on_enqueued=lambda: woken.append(True))
    await sink.emit(await account_of(api), "call.started", PAYLOAD)
    assert await rows(api) == [] and woken == [] and sink.failures == 0


async def test_an_event_nobody_subscribes_to_is_dropped_without_suspending(api: Api) -> None:
    # The call path emits four events per call; with the account's endpoints cached and none
    # subscribed, emit must finish in its first step (no task, no timer, no database).
    with running(Receiver()) as receiver:
        await subscribe(api, receiver.url, ["call.ended"])
        sink = DbEventSink(api.state.sessions)
        account = await account_of(api)
        await sink.emit(account, "call.started", PAYLOAD)  # loads the endpoint cache
        step = sink.emit(account, "agent.connected", {"agent_type": "openai"})
        with pytest.raises(StopIteration):
            step.send(None)
        await sink.emit(account, "call.ended", PAYLOAD)  # a subscribed one is still queued
    assert [r.event for r in await rows(api)] == ["call.ended"]
    assert sink.failures == 0


async def test_outcomes_finished_together_are_recorded_together(
    api: Api, make_dispatcher: Callable[..., WebhookDispatcher]
) -> None:
    """Outcomes are stored with the next claim, all those finished meanwhile in one transaction
    whatever each outcome was (before rounds: a session and a commit per delivery)."""
    opened: list[int] = []

    def counting_sessions() -> Any:
        opened.append(1)
        return api.state.sessions()

    gate = threading.Event()  # all twelve answered at once
    with running(Receiver(script=[(404, 0.0)] * 6, gate=gate)) as receiver:  # 6 retried later
        await subscribe(api, receiver.url, ["*"])
        sink = DbEventSink(api.state.sessions)
        account = await account_of(api)
        for _ in range(12):
            await sink.emit(account, "call.started", PAYLOAD)
        dispatcher = make_dispatcher(  # no poll; the one account may take twelve slots
            endpoint_concurrency=12, account_concurrency=12, poll_interval_s=60.0
        )
        dispatcher._sessions = counting_sessions  # type: ignore[assignment]
        round_ = asyncio.create_task(dispatcher.run_once())
        for _ in range(1000):
            if len(receiver.requests) == 12:
                break
            await asyncio.sleep(0.01)
        assert len(opened) == 1  # the twelve claimed in one
        gate.set()
        assert await round_ == 12
    assert len(receiver.requests) == 12
    assert len(opened) <= 1 + 6  # the claim, then far fewer than one a delivery (2-3 here)
    outcome = sorted((r.status, r.attempts, r.last_status_code) for r in await rows(api))
    assert outcome == [("delivered", 1, 200)] * 6 + [("pending", 1, 404)] * 6


async def test_deliveries_reuse_the_connection(
    api: Api, make_dispatcher: Callable[..., WebhookDispatcher]
) -> None:
    """A response closed unread closes its connection: every delivery paid a new TCP (and, to
    an https endpoint, TLS) handshake. A short answer is read to its end, so the next delivery
    to the endpoint goes over the same connection."""
    with running(Receiver()) as receiver:
        await subscribe(api, receiver.url, ["*"])
        sink = DbEventSink(api.state.sessions)
        account = await account_of(api)
        dispatcher = make_dispatcher(concurrency=1)
        for _ in range(3):
            await sink.emit(account, "call.started", PAYLOAD)
            await sink.emit(account, "call.ended", PAYLOAD)
            assert await dispatcher.run_once() == 2
    assert len(receiver.requests) == 6
    assert len({r.peer for r in receiver.requests}) == 1


@pytest.mark.parametrize("answer", ["huge", "endless", "cut"])
async def test_a_long_or_endless_answer_does_not_hold_the_dispatcher(
    api: Api, make_dispatcher: Callable[..., WebhookDispatcher], answer: str
) -> None:
    """The status line decides; of the body at most 64 KiB or 1 s is read (to keep the
    connection), so a receiver streaming forever, or cutting the answer short, neither holds
    nor fails the delivery."""

    hung_up = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n")
        if answer == "cut":  # a reset in the middle of the body
            writer.write(b"partial")
            await writer.drain()
            writer.transport.abort()
            hung_up.set()
            return
        try:
            while True:  # until the dispatcher hangs up
                writer.write(b"x" * (65536 if answer == "huge" else 1))
                await writer.drain()
                await asyncio.sleep(0 if answer == "huge" else 0.05)
        except ConnectionError:
            hung_up.set()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await subscribe(api, f"http://127.0.0.1:{port}/hook", ["*"])
        await DbEventSink(api.state.sessions).emit(await account_of(api), "call.ended", PAYLOAD)
        dispatcher = make_dispatcher(timeout_s=30.0)
        # well before the 30 s deadline: the read limits end it, not the deadline
        assert await asyncio.wait_for(dispatcher.run_once(), 10) == 1
        await asyncio.wait_for(hung_up.wait(), 10)  # the connection was dropped, not kept
    finally:
        server.close()
    [row] = await rows(api)
    assert (row.status, row.last_status_code) == ("delivered", 200)


@pytest.mark.parametrize("trusted", [True, False])
async def test_https_endpoints_are_verified_against_the_trusted_cas(
    api: Api,
    make_dispatcher: Callable[..., WebhookDispatcher],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    trusted: bool,
) -> None:
    """An https:// receiver whose certificate the gateway trusts (here through SSL_CERT_FILE, as
    a private CA would be) gets the event, over one kept connection; one it does not trust gets
    nothing, and the delivery says why."""
    cert, key = self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    if trusted:
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    with running(Receiver(tls=context)) as receiver:
        assert receiver.url.startswith("https://")
        await subscribe(api, receiver.url, ["*"])
        sink = DbEventSink(api.state.sessions)
        for _ in range(2):
            await sink.emit(await account_of(api), "call.ended", PAYLOAD)
        await make_dispatcher(concurrency=1).run_once()
    outcomes = {(r.status, r.last_status_code, r.last_error) for r in await rows(api)}
    if trusted:
        assert outcomes == {("delivered", 200, None)}
        assert len(receiver.requests) == 2
        assert len({r.peer for r in receiver.requests}) == 1
    else:
        assert outcomes == {("pending", None, "tls_error")}
        assert receiver.requests == []


async def test_concurrent_events_share_transactions_and_a_bad_one_costs_no_other(
    api: Api,
) -> None:
    """Events emitted while an outbox write is in flight go into the next transaction together;
    an event whose endpoint vanished (deleted by another process, still in this sink's cache)
    costs no other event in its transaction. (Before, its row failed on the foreign key and the
    event was counted as a failure, alone thanks to the item-by-item retry; now a deleted
    endpoint's row is simply not written, as its undelivered events are dropped.)"""
    good_key = await api.new_account_key("good")
    await subscribe(api, "http://127.0.0.1:9/good", ["*"], key=good_key)
    doomed = await subscribe(api, "http://127.0.0.1:9/doomed", ["*"])
    good, bad = await account_of(api, good_key), await account_of(api)
    sink = DbEventSink(api.state.sessions)
    await asyncio.gather(sink.emit(good, "call.started", PAYLOAD), sink.emit(bad, "x", PAYLOAD))
    async with api.state.sessions() as session:  # behind the sink's back: its cache keeps it
        assert await WebhookRepository(session).delete_endpoint(bad, doomed["id"])
        await session.commit()
    before = sink.transactions

    async def call(account: str) -> None:
        for event in ("call.started", "agent.connected", "agent.disconnected", "call.ended"):
            await sink.emit(account, event, PAYLOAD)

    await asyncio.gather(*(call(good) for _ in range(30)))
    assert sink.transactions - before < 30 * 4 / 4  # shared: far fewer than one per event
    assert len([r for r in await rows(api) if r.account_id == good]) == 1 + 30 * 4
    await asyncio.gather(*(call(good) for _ in range(30)), call(bad))
    assert len([r for r in await rows(api) if r.account_id == good]) == 1 + 60 * 4  # all landed
    assert [r for r in await rows(api) if r.account_id == bad] == []  # nobody to send to
    assert sink.failures == 0


class LoopbackResolver(AbstractResolver):
    """Resolves every name to 127.0.0.1 (as a DNS server would the receiver's name), recording
    the names asked for."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        return [
            {
                "hostname": host,
                "host": "127.0.0.1",
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("host", "ascii_host"),
    [("bücher.example", "xn--bcher-kva.example"), ("\uff41.com", "a.com")],  # full-width a
)
async def test_an_idn_host_is_connected_to_in_its_idna_form(
    api: Api, make_dispatcher: Callable[..., WebhookDispatcher], host: str, ascii_host: str
) -> None:
    """Found by review: a URL with a non-ASCII host was taken (docs/webhooks.md: "connected to
    in its IDNA form") but never delivered to, the URL handed to aiohttp as encoded: its host
    was never converted (RFC 5891 §4), and every attempt failed as invalid_url. The name looked
    up and the Host header (RFC 9110 §7.2) are the IDNA form; the API still shows the URL as
    entered."""
    resolver = LoopbackResolver()
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=resolver))
    try:
        with running(Receiver()) as receiver:
            url = f"http://{host}:{receiver.port}/hook?q=%41"
            assert (await subscribe(api, url, ["*"]))["url"] == url
            await DbEventSink(api.state.sessions).emit(await account_of(api), "call.ended", PAYLOAD)
            assert await make_dispatcher(session=session).run_once() == 1
    finally:
        await session.close()
    [row] = await rows(api)
    assert (row.status, row.last_status_code, row.last_error) == ("delivered", 200, None)
    assert resolver.asked == [ascii_host]
    [req] = receiver.requests
    assert req.headers["host"] == f"{ascii_host}:{receiver.port}"
    assert req.path == "/hook?q=%41"  # the rest as registered: not re-quoted


async def test_an_idn_host_is_named_in_idna_form_to_tls(
    api: Api, make_dispatcher: Callable[..., WebhookDispatcher], tmp_path: Path
) -> None:
    """The TLS server name (RFC 6066 §3: "the A-label") is the IDNA form too (the ssl module
    converted it even before the URL's host was)."""
    names: list[str | None] = []
    cert, key = self_signed(tmp_path)  # for 127.0.0.1 only: the handshake then fails
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda _sock, name, _ctx: names.append(name)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=LoopbackResolver()))
    try:
        with running(Receiver(tls=context)) as receiver:
            await subscribe(api, f"https://bücher.example:{receiver.port}/hook", ["*"])
            await DbEventSink(api.state.sessions).emit(await account_of(api), "call.ended", PAYLOAD)
            await make_dispatcher(session=session).run_once()
    finally:
        await session.close()
    assert names == ["xn--bcher-kva.example"]
    [row] = await rows(api)
    assert row.last_error == "tls_error"
