"""Waiting on gateway state that has no event to await: the call table and the call records
(written just after a call leaves the table)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from telepath.cli.gateway import Gateway
from tests.integration.conftest import Api


async def until(predicate: Callable[[], bool], within_s: float = 5) -> None:
    """Poll ``predicate`` every 10 ms until it holds; fail after ``within_s``."""
    for _ in range(int(within_s / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def ended_records(
    api: Api, gateway: Gateway, count: int = 1, within_s: float = 5
) -> list[dict[str, Any]]:
    """The call records once no call is live and ``count`` of them are closed (an end, or a
    reason: a completed call stays ``connected``, its status cannot tell)."""
    await until(lambda: gateway.manager.active_calls == 0, within_s)
    calls: list[dict[str, Any]] = []
    for _ in range(int(within_s / 0.02)):
        calls = (await api.get("/v1/calls")).json()["calls"]
        final = [c for c in calls if c["end_time"] or c["disconnect_reason"]]
        if len(final) >= count:
            return calls
        await asyncio.sleep(0.02)
    raise AssertionError(f"call records not final: {calls}")
