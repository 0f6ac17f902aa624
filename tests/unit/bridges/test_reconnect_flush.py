"""The reconnect backlog's flush: a new connection that fails while the backlog is being sent
must leave every message it did not take for the next connection, in order."""

from __future__ import annotations

import collections

import pytest
from websockets.exceptions import ConnectionClosed

from telepath.bridges.base import CustomConfig
from telepath.bridges.registry import create_bridge
from telepath.bridges.ws import WebSocketBridge

pytestmark = pytest.mark.unit


def reconnecting_bridge() -> WebSocketBridge:
    """A custom-agent bridge that reconnects (never started: only its backlog is used)."""
    config = CustomConfig(endpoint="ws://127.0.0.1:9/agent", reconnect_s=5.0)
    bridge = create_bridge("custom", config, connect_timeout_s=1.0)
    assert isinstance(bridge, WebSocketBridge)
    return bridge


class Socket:
    """A connection that takes ``accepts`` messages, then is closed."""

    def __init__(self, accepts: int) -> None:
        self.accepts = accepts
        self.sent: list[str] = []

    async def send(self, message: str) -> None:
        if len(self.sent) == self.accepts:
            raise ConnectionClosed(None, None)
        self.sent.append(message)

    async def recv(self) -> str | bytes:
        raise ConnectionClosed(None, None)

    async def close(self, code: int = 1000) -> None:
        return None


async def test_a_failed_flush_keeps_what_was_not_sent_for_the_next_connection() -> None:
    bridge = reconnecting_bridge()
    messages = [f"m{i}" for i in range(6)]
    bridge._backlog = collections.deque(messages, maxlen=10)
    first = Socket(accepts=2)
    with pytest.raises(ConnectionClosed):
        await bridge._flush(first)
    assert first.sent == messages[:2]
    assert bridge._backlog is not None and list(bridge._backlog) == messages[2:]
    second = Socket(accepts=100)
    await bridge._flush(second)
    assert first.sent + second.sent == messages  # none lost, none twice, in order
    assert bridge._backlog is None


async def test_a_message_evicted_while_it_was_being_sent_does_not_cost_the_next_one() -> None:
    bridge = reconnecting_bridge()
    bridge._backlog = collections.deque(["m0", "m1", "m2"], maxlen=3)

    class Busy(Socket):
        async def send(self, message: str) -> None:
            await super().send(message)
            if message == "m0":  # a caller frame arrives meanwhile: the full backlog evicts m0
                bridge._keep("m3")

    socket = Busy(accepts=100)
    await bridge._flush(socket)
    assert socket.sent == ["m0", "m1", "m2", "m3"]
    assert bridge.backlog_dropped == 0  # m0 was being sent: delivered, not dropped
    # whereas a message evicted from a full backlog that nothing is sending is dropped
    bridge._backlog = collections.deque(["m4"], maxlen=1)
    bridge._keep("m5")
    assert bridge.backlog_dropped == 1
