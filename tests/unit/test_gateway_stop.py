"""The order of a gateway's stop: the outbound registrations are removed as the drain begins,
not after it (the registrar would go on sending new calls here, each refused with 503); what
runs beside the drain (the HTTP server finishing its requests) still reaches the gateway."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from telepath.cli import gateway as gateway_module
from telepath.cli.gateway import Gateway
from telepath.db import instance_store
from telepath.db.group_commit import GroupCommit
from telepath.db.write_journal import WriteJournal, read_journal

pytestmark = pytest.mark.unit


class Registrations:
    def __init__(self) -> None:
        self.closes: list[bool] = []  # keep_alive of each close

    async def close(self, timeout_s: float = 2.0, *, keep_alive: bool = False) -> None:
        self.closes.append(keep_alive)


class Manager:
    http = None

    def __init__(self, registrations: Registrations) -> None:
        self.registrations = registrations
        self.closes_during_drain: list[bool] | None = None

    def trunk_removed(self, trunk_id: str) -> int:
        return 0

    async def drain(self, timeout_s: float) -> None:
        for _ in range(10):  # the drain's time: live calls go on
            await asyncio.sleep(0)
        self.closes_during_drain = list(self.registrations.closes)


class Stoppable:
    async def stop(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


async def test_registrations_are_removed_as_the_drain_begins() -> None:
    """During the drain (30 s by default) a registered binding made the registrar send every
    new call here to be refused with 503 — in a multi-instance installation while other
    instances could take them. Removed as the drain begins, with the keep-alives behind a
    NAT kept for the calls still up (``Registrations.close(keep_alive=True)``), then closed."""
    registrations = Registrations()
    manager = Manager(registrations)
    gateway = Gateway(
        server=cast(Any, Stoppable()),
        manager=cast(Any, manager),
        dispatcher=cast(Any, Stoppable()),
        registrations=cast(Any, registrations),
    )
    await gateway.stop(30.0)
    assert manager.closes_during_drain == [True]
    assert registrations.closes == [True, False]


async def test_a_trunk_the_api_removes_during_the_drain_still_ends_its_calls() -> None:
    """The drain begins at the signal, while the HTTP server still finishes its requests
    (``cli/serve.py``): a trunk one of them deletes meanwhile still ends its calls at once."""
    registrations = Registrations()
    manager = Manager(registrations)
    state = SimpleNamespace(trunk_removed=[manager.trunk_removed])
    gateway = Gateway(
        server=cast(Any, Stoppable()),
        manager=cast(Any, manager),
        dispatcher=cast(Any, Stoppable()),
        state=cast(Any, state),
    )
    heard: list[bool] = []

    async def http_server_finishing() -> None:
        for _ in range(10):  # past the drain's start
            await asyncio.sleep(0)
        heard.append(manager.trunk_removed in state.trunk_removed)

    await gateway.stop(0.0, alongside=http_server_finishing())
    assert heard == [True]
    assert state.trunk_removed == []  # then let go


class HangingWriter:
    """A gateway writer whose one write was first refused (the database restarting), then
    retried into a database that stopped answering: still in flight at shutdown."""

    def __init__(self, journal: Path) -> None:
        self.attempts = 0
        self.group: GroupCommit[int] = GroupCommit(
            None,
            self._single,
            name="t",
            retryable=lambda exc: isinstance(exc, ConnectionError),
            first_retry_s=0.01,
            journal=WriteJournal(journal, lambda item: {"item": item}),
        )

    async def _single(self, item: int) -> None:
        self.attempts += 1
        if self.attempts == 1:
            raise ConnectionError("database unreachable")
        await asyncio.Event().wait()

    async def close(self, timeout_s: float) -> int:
        return await self.group.close(timeout_s)


class ClosedWriter:
    async def close(self, timeout_s: float) -> int:
        return 0


async def test_a_write_in_flight_at_shutdown_keeps_the_heartbeat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write the last attempt still holds is not known written: the heartbeat row stays
    (counting only the parked writes said none was left, the row went, and the write with it)."""
    monkeypatch.setattr(gateway_module, "WRITERS_CLOSE_S", 0.1)
    forgotten: list[list[str]] = []

    async def forget(sessions: object, instance_ids: list[str]) -> None:
        forgotten.append(instance_ids)

    monkeypatch.setattr(instance_store, "forget", forget)
    writer = HangingWriter(tmp_path / "gw_a.records.jsonl")
    writer.group.submit(1)
    for _ in range(500):
        if writer.attempts == 2:
            break
        await asyncio.sleep(0.005)
    gateway = Gateway(
        server=cast(Any, Stoppable()),
        manager=cast(Any, Manager(Registrations())),
        dispatcher=cast(Any, Stoppable()),
        state=cast(Any, SimpleNamespace(trunk_removed=[], sessions=None)),
        instance_id="gw_a",
        writers=cast(Any, (writer, ClosedWriter())),
        journals=tmp_path,
    )
    await gateway.stop(0.0)
    assert forgotten == []
    assert read_journal(tmp_path / "gw_a.records.jsonl") == [{"item": 1}]
