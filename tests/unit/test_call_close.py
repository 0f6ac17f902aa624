"""A call's teardown always lets the agent go (base.py: ``close`` is always called), even when
telling it the result of the transfer that ended the call is held up."""

from __future__ import annotations

import asyncio

import pytest

from telepath.bridges.base import BridgeReason
from telepath.calls import call as call_module
from telepath.calls.call import CallEnd
from telepath.calls.model import DisconnectReason
from tests.unit.call_stubs import stub_call

pytestmark = pytest.mark.unit


class NotReading:
    """An agent that stopped reading: the transfer result's send never completes."""

    def __init__(self) -> None:
        self.results: list[tuple[str, bool, str | None]] = []
        self.closed_with: list[BridgeReason] = []

    async def send_transfer_result(
        self, request_id: str, ok: bool, detail: str | None = None, *, ending: bool = False
    ) -> None:
        self.results.append((request_id, ok, detail))
        await asyncio.Event().wait()

    async def close(self, reason: BridgeReason = BridgeReason.CALLER_HANGUP) -> None:
        self.closed_with.append(reason)


async def test_a_transfer_result_the_agent_does_not_take_still_lets_the_bridge_close(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The result and the close shared one bound: a send held by the agent used all of it, and
    the close never ran (no stop, the socket and the bridge's tasks left to the keepalive)."""
    monkeypatch.setattr(call_module, "AGENT_CLOSE_S", 0.5)
    monkeypatch.setattr(call_module, "TRANSFER_RESULT_S", 0.05, raising=False)
    bridge = NotReading()
    call = stub_call(bridge)
    finished: list[CallEnd] = []

    async def finish(end: CallEnd) -> None:
        finished.append(end)

    monkeypatch.setattr(call, "_finish", finish)
    call._transfer_outcome = ("xfer-1", True, "SIP 200")
    end = CallEnd(DisconnectReason.TRANSFERRED, send_bye=False)
    await call._close(end)
    assert bridge.results == [("xfer-1", True, "SIP 200")]
    assert bridge.closed_with == [BridgeReason.TRANSFERRED]
    assert finished == [end]
