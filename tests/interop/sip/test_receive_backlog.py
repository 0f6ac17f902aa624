"""Overload seen from the SIP socket: INVITEs that keep waiting to be read are refused with 503
at once (``transport/receive_backlog.py``), and the next attempt after the queue drained is
served again."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time

import pytest

from telepath.cli.gateway import Gateway
from telepath.testing.fake_custom import FakeTelepathAgent
from telepath.transport.receive_backlog import BacklogMonitor
from tests.integration.conftest import Api
from tests.interop.calls.conftest import create_trunk
from tests.interop.sip.uac import CallLeg, Uac, new_branch

pytestmark = pytest.mark.interop

PASSWORD = "queue-and-wait"


def _send_while_blocked(target: tuple[str, int], datagrams: list[bytes]) -> list[bytes]:
    """From a thread: send every datagram at once, then collect what comes back for 3 s."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        for data in datagrams:
            sock.sendto(data, target)
        sock.settimeout(3.0)
        answers: list[bytes] = []
        with contextlib.suppress(TimeoutError):
            while True:
                answers.append(sock.recv(65535))
        return answers


def _statuses(answers: list[bytes]) -> dict[int, int]:
    """How many calls got each status (a final response's retransmissions count once)."""
    seen: set[tuple[bytes, int]] = set()
    for answer in answers:
        call_id = re.search(rb"\r\nCall-ID: *([^\r]+)", answer)
        assert call_id is not None
        seen.add((call_id.group(1), int(answer.split(b" ", 2)[1])))
    counts: dict[int, int] = {}
    for _, status in seen:
        counts[status] = counts.get(status, 0) + 1
    return counts


async def test_invites_that_wait_to_be_read_are_shed_with_503_until_the_queue_drains(
    api: Api, gateway: Gateway
) -> None:
    # A saturated gateway reads its SIP datagrams late; its event loop can still look lively
    # (measured at 2x capacity: every datagram 80-200 ms old, loop lag under its threshold).
    # New attempts are then refused with 503 at once instead of being answered ever later.
    gateway.server.backlog = BacklogMonitor(threshold_s=0.025, hold_s=0.01)
    uac = await Uac.open("UDP", gateway.server.bound["UDP"])
    try:
        async with FakeTelepathAgent() as agent:
            await create_trunk(
                api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=agent.url
            )
            invites = [
                CallLeg(uac, "alice").build("INVITE", branch=new_branch(), body=b"")
                for _ in range(150)
            ]
            loop = asyncio.get_running_loop()
            sender = loop.run_in_executor(
                None, _send_while_blocked, gateway.server.bound["UDP"], invites
            )
            time.sleep(0.3)  # noqa: ASYNC251  (the gateway's loop is saturated: nothing is read)
            answers = await sender
            statuses = _statuses(answers)
            assert statuses.get(503, 0) > 0, statuses  # then refused, not challenged
            assert statuses.get(401, 0) + statuses.get(503, 0) == 150, statuses
            shed = [a for a in answers if a.startswith(b"SIP/2.0 503")]
            assert shed and all(b"\r\nRetry-After: 1\r\n" in a for a in shed)
            rejected = api.state.metrics.registry.get_sample_value(
                "telepath_calls_rejected_total", {"reason": "backlog"}
            )
            assert rejected == statuses[503]
            waited = api.state.metrics.registry.get_sample_value(
                "telepath_sip_receive_wait_seconds_bucket", {"le": "0.1"}
            )
            total = api.state.metrics.registry.get_sample_value(
                "telepath_sip_receive_wait_seconds_count"
            )
            assert total is not None and waited is not None and total - waited >= 100

            # The queue drained: the next attempt is challenged again.
            leg = CallLeg(uac, "alice")
            uac.send(leg.build("INVITE", branch=new_branch(), body=b""))
            await uac.response(401, leg.call_id)
            assert not gateway.server.backlog.overloaded
    finally:
        await uac.close()
