"""A saturated event-loop thread admits new attempts at the rate it can serve
(``calls/admission.py``): the rest get 503 + Retry-After at once, and with room again every
attempt is challenged as before."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from functools import partial
from typing import Any, cast

import pytest

from telepath.cli.gateway import Gateway
from telepath.sip.message import Response
from telepath.testing.fake_custom import FakeTelepathAgent
from telepath.transport.receive_backlog import BacklogMonitor
from tests.integration.conftest import Api
from tests.interop.calls.conftest import create_trunk
from tests.interop.sip.uac import CallLeg, Message, Uac, new_branch

pytestmark = pytest.mark.interop

PASSWORD = "busy-busy-busy"


@pytest.fixture
def settings_overrides(settings_overrides: dict[str, Any]) -> dict[str, Any]:
    # Half the loop thread's time counts as saturated, so spinning in the test saturates it.
    return {**settings_overrides, "sip_max_loop_load": 0.5}


async def _spin(stop: asyncio.Event) -> None:
    """Keep the loop thread on the CPU (5 ms at a time) while letting it read datagrams."""
    while not stop.is_set():
        end = time.thread_time() + 0.005
        while time.thread_time() < end:
            pass
        await asyncio.sleep(0)


def _final(call_id: str, message: Message) -> bool:
    return isinstance(message, Response) and message.call_id == call_id and message.status >= 200


async def _until(condition: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_a_saturated_loop_sheds_new_attempts_and_serves_them_again_with_room(
    api: Api, gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="telepath.calls.manager")
    load = gateway.manager.load
    assert load is not None
    # only this guard: datagrams waiting behind the spinning are the other one's business
    gateway.server.backlog = BacklogMonitor(threshold_s=10.0)
    registry = api.state.metrics.registry
    uac = await Uac.open("UDP", gateway.server.bound["UDP"])
    stop = asyncio.Event()
    spinner = asyncio.create_task(_spin(stop))
    try:
        async with FakeTelepathAgent() as agent:
            await create_trunk(
                api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=agent.url
            )
            await _until(lambda: load.limit_cps is not None, 5.0)
            # no attempt while it saturated: new ones are admitted at the floor (1/s)
            assert load.limit_cps == load.floor_cps
            assert registry.get_sample_value("telepath_event_loop_busy_ratio") >= 0.5  # type: ignore[operator]
            assert registry.get_sample_value("telepath_sip_admission_limit_cps") == 1.0

            # ten attempts at once: the bucket holds one (0.1 s of the limit, at least one)
            legs = [CallLeg(uac, "alice") for _ in range(10)]
            for leg in legs:
                uac.send(leg.build("INVITE", branch=new_branch(), body=b""))
            statuses = []
            for leg in legs:
                # The admitted attempt is served by a loop the test keeps saturated, behind
                # whatever else the machine runs: a generous harness bound, no timing asserted.
                item = await uac.wait_for(partial(_final, leg.call_id), within_s=30)
                answer = cast(Response, item.message)
                statuses.append(answer.status)
                if answer.status == 503:
                    assert answer.headers.get("Retry-After") == "1"
            assert statuses.count(503) >= 8, statuses
            assert set(statuses) <= {401, 503}, statuses
            refused = registry.get_sample_value("telepath_calls_rejected_total", {"reason": "load"})
            assert refused == statuses.count(503)
            # one line for the operator (at most one a second), with the loop's state
            messages = [r.getMessage() for r in caplog.records]
            lines = [m for m in messages if "refused with 503" in m]
            assert 1 <= len(lines) < statuses.count(503), lines
            line = lines[0]
            assert line.startswith("INVITE refused with 503: load (1 since the last line;")
            assert re.search(r"loop busy \d+ %, admitting \d+/s\)$", line), line

            # Room again: the limit is lifted within a period or two, attempts are challenged.
            stop.set()
            await spinner
            await _until(lambda: load.limit_cps is None, 3.0)
            leg = CallLeg(uac, "alice")
            uac.send(leg.build("INVITE", branch=new_branch(), body=b""))
            await uac.response(401, leg.call_id)
            await _until(
                lambda: registry.get_sample_value("telepath_sip_admission_limit_cps") == 0.0, 3.0
            )
    finally:
        stop.set()
        await spinner
        await uac.close()
