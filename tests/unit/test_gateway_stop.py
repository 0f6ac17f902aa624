"""The order of a gateway's stop: the outbound registrations are removed as the drain begins,
not after it (the registrar would go on sending new calls here, each refused with 503); what
runs beside the drain (the HTTP server finishing its requests) still reaches the gateway."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import pytest

from telepath.cli.gateway import Gateway

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
