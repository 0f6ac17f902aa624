"""A bridge's close that is itself cancelled (the call's bound on it ran out, a drain gave up)
raises the cancellation: it waits for a task of its own (the reader, ElevenLabs' keep-active,
OpenAI's session timer) to end, and swallowed every CancelledError there — that task's and its
caller's alike — so a cancelled teardown went on as if nothing had happened."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from telepath.bridges.base import (
    AgentBridge,
    AgentDisconnected,
    BridgeReason,
    CustomConfig,
    ElevenLabsConfig,
    OpenAIConfig,
)
from telepath.bridges.elevenlabs.bridge import ElevenLabsBridge
from telepath.bridges.openai.bridge import OpenAIRealtimeBridge
from telepath.bridges.registry import create_bridge
from telepath.bridges.ws import WebSocketBridge

pytestmark = pytest.mark.unit


class SlowToStop:
    """A task that takes its time to end once cancelled (a send to flush, a socket to shut)."""

    def __init__(self) -> None:
        self.stopping = asyncio.Event()
        self.may_end = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.stopping.set()
            await self.may_end.wait()
            raise


def custom() -> WebSocketBridge:
    bridge = create_bridge("custom", CustomConfig(endpoint="ws://127.0.0.1:9/agent"))
    assert isinstance(bridge, WebSocketBridge)
    return bridge


def elevenlabs() -> ElevenLabsBridge:
    return ElevenLabsBridge(ElevenLabsConfig(api_key=None, agent_id="agent_1"))


def openai() -> OpenAIRealtimeBridge:
    return OpenAIRealtimeBridge(OpenAIConfig(api_key="sk-test"))


def reader_of(bridge: AgentBridge, task: asyncio.Task[None]) -> None:
    assert isinstance(bridge, WebSocketBridge)
    bridge._reader = task


def activity_of(bridge: AgentBridge, task: asyncio.Task[None]) -> None:
    assert isinstance(bridge, ElevenLabsBridge)
    bridge._activity = task


def timer_of(bridge: AgentBridge, task: asyncio.Task[None]) -> None:
    assert isinstance(bridge, OpenAIRealtimeBridge)
    bridge._timer = task


@pytest.mark.parametrize(
    ("make", "give"),
    [(custom, reader_of), (elevenlabs, activity_of), (openai, timer_of)],
    ids=["reader", "elevenlabs-keep-active", "openai-session-timer"],
)
async def test_a_close_cancelled_while_it_waits_for_its_task_raises_the_cancellation(
    make: Callable[[], AgentBridge], give: Callable[[AgentBridge, asyncio.Task[None]], None]
) -> None:
    bridge = make()
    inner = SlowToStop()
    give(bridge, inner.task)
    closing = asyncio.create_task(bridge.close())
    await inner.stopping.wait()  # close() cancelled it and waits for it to end
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert closing.cancelled()
    inner.may_end.set()
    await asyncio.wait({inner.task})
    assert inner.task.cancelled()


async def test_the_stream_still_ends_when_the_close_is_cancelled_at_the_reader() -> None:
    """``events()`` never hangs (base.py): the terminal event is recorded all the same."""
    bridge = custom()
    inner = SlowToStop()
    bridge._reader = inner.task
    closing = asyncio.create_task(bridge.close())
    await inner.stopping.wait()
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert bridge.finished  # (else the events() below would wait for ever)
    assert [e async for e in bridge.events()] == [
        AgentDisconnected(BridgeReason.CALLER_HANGUP, 1000)
    ]
    inner.may_end.set()
    await asyncio.wait({inner.task})
