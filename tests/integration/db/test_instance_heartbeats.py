"""Gateway heartbeats in the database: a process that stops beating has its calls closed by
another, exactly once, whichever host notices (``db/instance_store.py``, ``cli/instances.py``)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from telepath.cli import instances
from telepath.db import instance_store
from telepath.db.base import utcnow
from telepath.db.call_recorder import DbCallRecorder
from telepath.db.models import GatewayInstance
from tests.integration.calls_api.records import account_of, started
from tests.integration.conftest import Api

pytestmark = pytest.mark.integration


class RecordingSink:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def wants(self, account_id: str, event: str) -> bool:
        return True

    async def emit(self, account_id: str, event: str, payload: dict[str, Any]) -> None:
        self.events.append((account_id, event, payload))

    def prepare(self, account_id: str, event: str, payload: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError("recovery emits its events; it writes no record's end")


async def _rows(api: Api) -> dict[str, GatewayInstance]:
    async with api.state.sessions() as session:
        return {r.id: r for r in (await session.scalars(select(GatewayInstance))).all()}


async def test_beat_unchanged_and_forget(api: Api) -> None:
    sessions = api.state.sessions
    assert await instance_store.beat(sessions, "gw_a") is False  # first beat: inserted
    assert await instance_store.beat(sessions, "gw_a") is True
    (row,) = await instance_store.read_all(sessions)
    assert (row.instance_id, row.beats) == ("gw_a", 2)
    stored = (await _rows(api))["gw_a"]
    assert stored.host and stored.pid > 0 and stored.started_at <= stored.last_seen_at

    await instance_store.beat(sessions, "gw_a")  # it beat after the read: not dead after all
    assert await instance_store.unchanged(sessions, row) is False
    (row,) = await instance_store.read_all(sessions)
    assert await instance_store.unchanged(sessions, row) is True
    assert await instance_store.unchanged(sessions, row) is True  # a check, not a take
    await instance_store.forget(sessions, ["gw_a"])  # its calls closed
    assert await instance_store.unchanged(sessions, row) is False
    assert await _rows(api) == {}
    assert await instance_store.beat(sessions, "gw_a") is False  # taken: it says so

    await instance_store.beat(sessions, "gw_b")
    await instance_store.forget(sessions, ["gw_a", "gw_b"])
    assert await _rows(api) == {}


async def test_a_dead_processs_calls_are_closed_once_by_one_of_two_watchers(api: Api) -> None:
    sessions = api.state.sessions
    account = await account_of(api)
    now = utcnow()
    dead_call = started(account, start=now - timedelta(seconds=30))
    dead_call.answer_time = dead_call.start_time + timedelta(seconds=1)
    live_call = started(account, start=now - timedelta(seconds=30))
    await DbCallRecorder(sessions, instance_id="gw_dead").call_started(dead_call)
    await DbCallRecorder(sessions, instance_id="gw_live").call_started(live_call)
    await instance_store.beat(sessions, "gw_dead")  # then it died
    await instance_store.beat(sessions, "gw_live")  # and beats on (below)
    last_seen = (await _rows(api))["gw_dead"].last_seen_at
    lost_after = 0.6
    interval = instances.heartbeat_s(lost_after)

    sinks = [RecordingSink(), RecordingSink()]
    tasks = [
        asyncio.create_task(instances.beat_forever(sessions, "gw_live", interval)),
        *(
            asyncio.create_task(
                instances.reap_forever(sessions, sink, None, f"gw_watcher{i}", lost_after)
            )
            for i, sink in enumerate(sinks)
        ),
    ]
    try:
        for _ in range(100):
            await asyncio.sleep(0.05)
            if "gw_dead" not in await _rows(api):
                break
        await asyncio.sleep(4 * lost_after)  # long enough to take the live one too, were it
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    events = [e for sink in sinks for e in sink.events]
    assert [(e[0], e[1]) for e in events] == [
        (account, "agent.disconnected"),
        (account, "call.error"),
        (account, "call.ended"),
    ]  # once, by one watcher
    ended = events[-1][2]
    assert ended["call_id"] == dead_call.id and ended["disconnect_reason"] == "lost"
    closed = (await api.get(f"/v1/calls/{dead_call.id}")).json()
    assert closed["status"] == "disconnected" and closed["disconnect_reason"] == "lost"
    # it ended one heartbeat after its process's last, not when it was noticed
    end = datetime.fromisoformat(closed["end_time"])
    assert abs(end - (last_seen + timedelta(seconds=interval))) < timedelta(seconds=1)
    alive = (await api.get(f"/v1/calls/{live_call.id}")).json()
    assert alive["status"] == "connected" and alive["disconnect_reason"] is None
    assert set(await _rows(api)) == {"gw_live"}
