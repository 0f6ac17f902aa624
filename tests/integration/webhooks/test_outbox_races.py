"""The outbox when things change under it: endpoints deleted mid-round or behind a sink's cache,
endpoints that hold requests, leases that run out, rows that pile up, keys that cannot decrypt."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from telepath.config import Settings
from telepath.db.base import utcnow
from telepath.db.call_recorder import retention_loop
from telepath.db.models import WebhookEndpoint
from telepath.db.webhook_store import WebhookRepository
from telepath.metrics import Metrics
from telepath.secrets.keyring import Keyring, new_key
from telepath.webhooks import dispatcher as dispatcher_module
from telepath.webhooks.dispatcher import WebhookDispatcher
from telepath.webhooks.sink import DbEventSink
from tests.integration.calls_api.records import account_of
from tests.integration.conftest import Api
from tests.integration.webhooks.receiver import Receiver, running
from tests.integration.webhooks.test_dispatcher import PAYLOAD, Clock, rows, subscribe

pytestmark = pytest.mark.integration


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"allow_insecure_webhook_urls": True}


async def arrived(receiver: Receiver, count: int) -> None:
    """Until ``count`` requests reached the receiver (10 s at most: then the test fails)."""
    for _ in range(1000):
        if len(receiver.requests) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{len(receiver.requests)} request(s) arrived, not {count}")


def paths(receiver: Receiver) -> list[str]:
    return sorted(r.path for r in receiver.requests)


@pytest.mark.parametrize("others", [0, 1])
async def test_an_endpoint_deleted_mid_round_costs_the_round_nothing(
    api: Api, make_dispatcher: Callable[..., WebhookDispatcher], others: int
) -> None:
    """DELETE /v1/webhooks/{id} while a delivery to it is in flight removes its claimed row; the
    round's other outcomes (another account's, answered 2xx) are stored all the same. Before,
    the whole round's UPDATE failed (StaleDataError: 0 rows matched), so every row of it stayed
    leased and was sent again later with its attempt uncounted."""
    other_key = await api.new_account_key("other")
    gate = threading.Event()
    with running(Receiver(gate=gate)) as receiver:
        gone = await subscribe(api, receiver.url + "/gone", ["*"])
        await subscribe(api, receiver.url + "/kept", ["*"], key=other_key)
        sink = DbEventSink(api.state.sessions)
        await sink.emit(await account_of(api), "call.ended", PAYLOAD)
        for _ in range(others):
            await sink.emit(await account_of(api, other_key), "call.ended", PAYLOAD)
        dispatcher = make_dispatcher()
        round_ = asyncio.create_task(dispatcher.run_once())
        await arrived(receiver, 1 + others)  # every request held, unanswered
        assert (await api.delete(f"/v1/webhooks/{gone['id']}")).status_code == 204
        gate.set()
        assert await round_ == 1 + others
        assert await dispatcher.run_once() == 0  # nothing left leased to come back
    outcomes = [(r.status, r.attempts, r.last_status_code) for r in await rows(api)]
    assert outcomes == [("delivered", 1, 200)] * others


async def test_an_endpoint_deleted_after_the_claim_is_not_sent_to(
    api: Api, make_dispatcher: Callable[..., WebhookDispatcher]
) -> None:
    """The README says a deleted endpoint's undelivered events are dropped: one still waiting
    for a free slot when its endpoint is deleted is not sent (a delivery is claimed only when
    it can be sent at once, so the delete removes it first)."""
    gate = threading.Event()
    with running(Receiver(gate=gate)) as receiver:
        hooks = {
            f"/hook/{name}": await subscribe(api, f"{receiver.url}/{name}", ["*"])
            for name in ("one", "two")
        }
        await DbEventSink(api.state.sessions).emit(await account_of(api), "call.ended", PAYLOAD)
        dispatcher = make_dispatcher(concurrency=1)
        round_ = asyncio.create_task(dispatcher.run_once())
        await arrived(receiver, 1)
        [(sent, _)] = [(p, h) for p, h in hooks.items() if p in paths(receiver)]
        [doomed] = [h for p, h in hooks.items() if p != sent]
        assert (await api.delete(f"/v1/webhooks/{doomed['id']}")).status_code == 204
        gate.set()
        await round_
        await dispatcher.run_once()
    assert paths(receiver) == [sent]
    assert [r.status for r in await rows(api)] == ["delivered"]


async def test_an_endpoint_deleted_behind_the_sinks_cache_costs_only_its_own_row(
    api: Api,
) -> None:
    """A sink serves an account's endpoints from a cache (up to 5 s; another process may have
    deleted one meanwhile). Before, the deleted endpoint's row failed the whole event on its
    foreign key, so the account's live endpoints lost it too."""
    account = await account_of(api)
    kept = await subscribe(api, "http://127.0.0.1:9/kept", ["*"])
    gone = await subscribe(api, "http://127.0.0.1:9/gone", ["*"])
    sink = DbEventSink(api.state.sessions)
    await sink.emit(account, "call.started", PAYLOAD)  # caches both endpoints
    async with api.state.sessions() as session:  # another process deletes one
        assert await WebhookRepository(session).delete_endpoint(account, gone["id"])
        await session.commit()
    await sink.emit(account, "call.ended", PAYLOAD)
    assert [(r.endpoint_id, r.event) for r in await rows(api)] == [
        (kept["id"], "call.started"),
        (kept["id"], "call.ended"),
    ]
    assert sink.failures == 0


async def test_an_endpoint_that_never_answers_holds_up_nobody_else(
    api: Api, make_dispatcher: Callable[..., WebhookDispatcher]
) -> None:
    """An endpoint that accepts connections and answers nothing (until its timeout) takes at most
    ``endpoint_concurrency`` slots, and the other slots go on claiming and sending as they free
    up. Before, a round of 50 claimed deliveries went out only under the global limit and the
    next round waited for the slowest: every account's events waited behind a dead endpoint's."""
    other_key = await api.new_account_key("other")
    gate = threading.Event()
    with running(Receiver(gate=gate)) as stuck, running(Receiver()) as fine:
        await subscribe(api, stuck.url, ["*"])
        await subscribe(api, fine.url, ["*"], key=other_key)
        sink = DbEventSink(api.state.sessions)
        for _ in range(10):  # first in the outbox: claimed first
            await sink.emit(await account_of(api), "call.ended", PAYLOAD)
        for _ in range(3):  # more than the endpoint's share: claimed as earlier ones finish
            await sink.emit(await account_of(api, other_key), "call.ended", PAYLOAD)
        dispatcher = make_dispatcher(concurrency=4, endpoint_concurrency=2, timeout_s=60.0)
        round_ = asyncio.create_task(dispatcher.run_once())
        try:
            await arrived(fine, 3)  # while the stuck endpoint still holds its two
            assert len(stuck.requests) == 2
        finally:
            gate.set()
        assert await round_ == 13
    assert len(stuck.requests) == 10
    assert {(r.status, r.attempts) for r in await rows(api)} == {("delivered", 1)}


async def test_an_account_whose_endpoints_never_answer_leaves_slots_to_other_accounts(
    api: Api, make_dispatcher: Callable[..., WebhookDispatcher]
) -> None:
    """docs/webhooks.md: a slow endpoint delays its own deliveries, not other accounts'. The
    per-endpoint cap alone did not keep that: an account with several endpoints on one host
    that holds every request (until the timeout) took every slot, each endpoint its share,
    and every other account's events waited behind those timeouts. An account now gets at
    most half the slots while another account's deliveries are due or in flight (B's is held
    too, so that the count is not made as it ends: then A may fill the free slots)."""
    other_key = await api.new_account_key("other")
    gate = threading.Event()
    with running(Receiver(gate=gate)) as stuck, running(Receiver(gate=gate)) as fine:
        for name in ("one", "two"):
            await subscribe(api, f"{stuck.url}/{name}", ["*"])
        await subscribe(api, fine.url, ["*"], key=other_key)
        sink = DbEventSink(api.state.sessions)
        for _ in range(3):  # first in the outbox: six deliveries, claimed first
            await sink.emit(await account_of(api), "call.ended", PAYLOAD)
        await sink.emit(await account_of(api, other_key), "call.ended", PAYLOAD)
        dispatcher = make_dispatcher(concurrency=4, endpoint_concurrency=2, timeout_s=60.0)
        round_ = asyncio.create_task(dispatcher.run_once())
        try:
            await arrived(fine, 1)  # while the stuck account still holds its share
            await arrived(stuck, 2)
            assert len(stuck.requests) == 2
        finally:
            gate.set()
        assert await round_ == 7
    assert len(stuck.requests) == 6
    assert {(r.status, r.attempts) for r in await rows(api)} == {("delivered", 1)}


async def test_the_backlog_gauge_shows_the_pending_deliveries_while_some_are_in_flight(
    api: Api, make_dispatcher: Callable[..., WebhookDispatcher], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``telepath_webhook_backlog`` (docs/webhooks.md: pending deliveries, those in flight
    included) is read while deliveries go on, not only once the dispatcher is idle: behind an
    endpoint that holds its requests (or under a steady flow) it kept its last idle value,
    often 0, while thousands waited — and after a restart with a backlog it read 0 until
    that backlog was drained."""
    metrics = Metrics()
    gate = threading.Event()
    with running(Receiver(gate=gate)) as stuck:
        await subscribe(api, stuck.url, ["*"])
        sink = DbEventSink(api.state.sessions)
        for _ in range(10):
            await sink.emit(await account_of(api), "call.ended", PAYLOAD)
        dispatcher = make_dispatcher(  # the endpoint's share is 2: two slots stay free
            metrics=metrics, concurrency=4, endpoint_concurrency=2, timeout_s=60.0
        )
        round_ = asyncio.create_task(dispatcher.run_once())
        try:
            await arrived(stuck, 2)
            assert backlog(metrics) == 10  # read at the first claim
            monkeypatch.setattr(dispatcher_module, "BACKLOG_EVERY_S", 0.0)  # at every exchange
            for _ in range(5):
                await sink.emit(await account_of(api), "call.ended", PAYLOAD)
            dispatcher.wake()  # an exchange; nothing claimed, the endpoint's share is taken
            for _ in range(1000):
                if backlog(metrics) == 15:
                    break
                await asyncio.sleep(0.01)
            assert backlog(metrics) == 15
        finally:
            gate.set()
        assert await round_ == 15
    assert backlog(metrics) == 0


def backlog(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("telepath_webhook_backlog")


async def test_an_account_alone_may_take_more_than_its_share_of_the_slots(
    api: Api, make_dispatcher: Callable[..., WebhookDispatcher]
) -> None:
    """The account cap holds slots back only for other accounts: with no other account's
    deliveries due or in flight (a one-account install), an account whose endpoints all hold
    their requests fills every endpoint's share, though that is more than half the slots.
    Before, it got half (four of eight here) and the rest stayed idle."""
    gate = threading.Event()
    with running(Receiver(gate=gate)) as stuck:
        for name in ("one", "two", "three"):
            await subscribe(api, f"{stuck.url}/{name}", ["*"])
        sink = DbEventSink(api.state.sessions)
        for _ in range(3):  # nine deliveries: three per endpoint, one more than its share
            await sink.emit(await account_of(api), "call.ended", PAYLOAD)
        dispatcher = make_dispatcher(concurrency=8, endpoint_concurrency=2, timeout_s=60.0)
        round_ = asyncio.create_task(dispatcher.run_once())
        try:
            await arrived(stuck, 6)  # each endpoint its share of two, all at once
            assert paths(stuck) == [f"/hook/{n}" for n in ("one", "three", "two") for _ in "ab"]
        finally:
            gate.set()
        assert await round_ == 9
    assert len(stuck.requests) == 9
    assert {(r.status, r.attempts) for r in await rows(api)} == {("delivered", 1)}


async def test_events_that_come_while_an_endpoint_holds_its_requests_go_out_at_once(
    api: Api, make_dispatcher: Callable[..., WebhookDispatcher]
) -> None:
    """A wake (a new event written) or the poll interval is acted on while deliveries are in
    flight, not only when one of them ends: behind a request that an endpoint holds until its
    timeout, another account's new event waited for that timeout."""
    other_key = await api.new_account_key("other")
    gate = threading.Event()
    with running(Receiver(gate=gate)) as stuck, running(Receiver()) as fine:
        await subscribe(api, stuck.url, ["*"])
        await subscribe(api, fine.url, ["*"], key=other_key)
        sink = DbEventSink(api.state.sessions)
        await sink.emit(await account_of(api), "call.ended", PAYLOAD)
        dispatcher = make_dispatcher(timeout_s=60.0, poll_interval_s=60.0)
        round_ = asyncio.create_task(dispatcher.run_once())
        try:
            await arrived(stuck, 1)
            await sink.emit(await account_of(api, other_key), "call.ended", PAYLOAD)
            dispatcher.wake()
            await arrived(fine, 1)  # while the first is still held
            assert not round_.done()
        finally:
            gate.set()
        assert await round_ == 2
    assert {(r.status, r.attempts) for r in await rows(api)} == {("delivered", 1)}


async def test_an_outcome_is_not_stored_over_another_dispatchers_claim(
    api: Api, make_dispatcher: Callable[..., WebhookDispatcher]
) -> None:
    """A delivery whose lease ran out while it was being sent is claimed again by another
    dispatcher; the first one's late outcome must not overwrite the second's claim (and later
    its outcome): it is stored only while the claim is still the one it made."""
    clock = Clock()
    gate = threading.Event()
    with running(Receiver(gate=gate)) as receiver:
        await subscribe(api, receiver.url, ["*"])
        await DbEventSink(api.state.sessions).emit(await account_of(api), "call.ended", PAYLOAD)
        first = make_dispatcher(now=clock, timeout_s=30.0)
        round_ = asyncio.create_task(first.run_once())
        await arrived(receiver, 1)
        clock.advance(3600)  # the first claim's lease is over
        async with api.state.sessions() as session:  # another instance takes the row
            [theirs] = await WebhookRepository(session).claim_due(
                clock(), limit=10, lease=timedelta(seconds=90)
            )
            await session.commit()
        gate.set()
        assert await round_ == 1
    [row] = await rows(api)
    assert (row.status, row.attempts, row.next_attempt_at) == ("pending", 0, theirs.leased_until)


async def test_settled_deliveries_are_pruned_after_the_call_retention_period(
    api: Api, settings: Settings
) -> None:
    """Delivered and failed outbox rows (their payloads hold phone numbers) are deleted by the
    retention sweep once settled longer than TELEPATH_CALL_RETENTION_HOURS ago; pending ones,
    however old, are kept. Before, the outbox grew forever."""
    await subscribe(api, "http://127.0.0.1:9/hook", ["*"])
    sink = DbEventSink(api.state.sessions)
    for _ in range(5):
        await sink.emit(await account_of(api), "call.ended", PAYLOAD)
    old = utcnow() - timedelta(hours=settings.call_retention_hours + 1)
    recent = utcnow() - timedelta(hours=settings.call_retention_hours - 1)
    fates = [("delivered", old), ("failed", old), ("pending", old), ("delivered", recent)]
    async with api.state.sessions() as session:  # the fifth never attempted
        for row, (status, at) in zip(await rows(api), fates, strict=False):
            row.status, row.last_attempt_at = status, at
            session.add(row)
        await session.commit()
    stop = asyncio.Event()
    sweep = asyncio.create_task(retention_loop(api.state.sessions, settings, stop, interval_s=0.05))
    try:
        for _ in range(500):
            if len(await rows(api)) < 5:
                break
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.wait_for(sweep, 5)
    left = sorted((r.status, r.last_attempt_at is not None) for r in await rows(api))
    assert left == [("delivered", True), ("pending", False), ("pending", True)]


async def test_a_secret_the_key_cannot_decrypt_holds_deliveries_back_uncounted(
    api: Api, make_dispatcher: Callable[..., WebhookDispatcher], caplog: pytest.LogCaptureFixture
) -> None:
    """After ``telepath secrets rotate`` under a running gateway not restarted with the new
    ``TELEPATH_SECRET_KEY`` (a key file it follows by itself), its keyring cannot decrypt the
    re-encrypted signing secrets. Before, each such delivery counted as an attempt and ended
    ``failed`` without ever being sent; now it is held back (no attempt counted, tried again
    later) and the condition is logged once, not once per delivery."""
    clock = Clock()
    with running(Receiver()) as receiver:
        hook = await subscribe(api, receiver.url, ["*"])
        sink = DbEventSink(api.state.sessions)
        for _ in range(3):
            await sink.emit(await account_of(api), "call.ended", PAYLOAD)
        readable = await secret_of(api, hook["id"])
        await set_secret(api, hook["id"], Keyring((new_key(),)).encrypt("whsec_x", "elsewhere"))
        dispatcher = make_dispatcher(now=clock, max_attempts=1)
        with caplog.at_level(logging.WARNING, logger="telepath.webhooks.dispatcher"):
            for _ in range(3):
                await dispatcher.run_once()
                clock.advance(3600)
        assert receiver.requests == []
        assert {(r.status, r.attempts) for r in await rows(api)} == {("pending", 0)}
        assert len([r for r in caplog.records if "decrypt" in r.getMessage()]) == 1
        await set_secret(api, hook["id"], readable)  # the gateway restarted with the new key
        assert await dispatcher.run_once() == 3
    assert len(receiver.requests) == 3
    assert {(r.status, r.attempts) for r in await rows(api)} == {("delivered", 1)}


async def secret_of(api: Api, endpoint_id: str) -> str:
    async with api.state.sessions() as session:
        endpoint = await session.get(WebhookEndpoint, endpoint_id)
        assert endpoint is not None
        return endpoint.secret_enc


async def set_secret(api: Api, endpoint_id: str, secret_enc: str) -> None:
    async with api.state.sessions() as session:
        endpoint = await session.get(WebhookEndpoint, endpoint_id)
        assert endpoint is not None
        endpoint.secret_enc = secret_enc
        await session.commit()


async def test_outcomes_a_database_error_kept_from_storing_are_stored_later(
    api: Api, make_dispatcher: Callable[..., WebhookDispatcher]
) -> None:
    """A transient database error while storing outcomes (a failover, a lock timeout): the
    requests in flight finish rather than being cut, and every outcome is stored at the next
    exchange — before, they were dropped and the rows, still leased, were sent again once the
    lease ran out (a duplicate for each)."""
    clock = Clock()
    gate = threading.Event()
    with running(Receiver(gate=gate)) as receiver:
        await subscribe(api, receiver.url, ["*"])
        sink = DbEventSink(api.state.sessions)
        for _ in range(2):
            await sink.emit(await account_of(api), "call.ended", PAYLOAD)
        dispatcher = make_dispatcher(now=clock)
        sessions = dispatcher._sessions
        broken = False

        def flaky() -> Any:
            if broken:
                raise ConnectionRefusedError("the database is away")
            return sessions()

        dispatcher._sessions = flaky  # type: ignore[assignment]
        round_ = asyncio.create_task(dispatcher.run_once())
        await arrived(receiver, 2)
        broken = True
        gate.set()
        with pytest.raises(ConnectionRefusedError):
            await round_
        broken = False
        clock.advance(3600)  # past the lease: the rows are due again unless their outcomes land
        assert await dispatcher.run_once() == 0
    assert len(receiver.requests) == 2  # each sent once
    assert {(r.status, r.attempts) for r in await rows(api)} == {("delivered", 1)}
