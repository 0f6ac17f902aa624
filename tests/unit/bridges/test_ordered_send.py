"""Sending on websockets' own client (an HTTP proxy is configured): one ordered sender.

That client can only send from a coroutine, so ``send_audio_nowait`` cannot write a frame
itself. It used to start a task per frame and always say True: an agent that stopped reading
collected a task and a frame every 20 ms, no frame ever counted as dropped, and a message
awaited directly (DTMF, a mark echo, Twilio's stop) went out ahead of audio handed over before
it. Now every message joins one queue, in order; caller audio finding it full is dropped.
"""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from telepath.bridges import ws as ws_module
from telepath.bridges.base import CallMetadata, PlayoutProgress
from telepath.bridges.ws import WebSocketBridge

pytestmark = pytest.mark.unit


class Bridge(WebSocketBridge):
    """The shared plumbing with a payload as its own message (never connected)."""

    provider = "stub"

    async def start(self, meta: CallMetadata, playout: PlayoutProgress | None = None) -> None:
        raise NotImplementedError

    def _audio_message(self, payload: bytes) -> str:
        return payload.decode()

    async def send_dtmf(self, digit: str) -> None:
        await self._send(f"dtmf {digit}")


class Gated:
    """websockets' client, as the bridge uses it: ``send`` waits until ``gate`` is open (an
    agent that stopped reading: never), yielding to the loop on the way as the library does."""

    def __init__(self, *, open_: bool) -> None:
        self.gate = asyncio.Event()
        if open_:
            self.gate.set()
        self.sent: list[str] = []

    async def send(self, message: str) -> None:
        await asyncio.sleep(0)
        await self.gate.wait()
        self.sent.append(message)

    async def recv(self) -> str | bytes:
        raise NotImplementedError

    async def close(self, code: int = 1000) -> None:
        return None


def bridge_on(socket: Gated) -> Bridge:
    bridge = Bridge()
    bridge._ws = socket
    return bridge


async def settle() -> None:
    """Let the sender run as far as it can (a few loop turns per message)."""
    for _ in range(200):
        await asyncio.sleep(0)


async def test_an_agent_that_stops_reading_gets_frames_dropped_not_tasks_piled_up() -> None:
    socket = Gated(open_=False)
    bridge = bridge_on(socket)
    tasks_before = len(asyncio.all_tasks())
    taken = []
    for n in range(200):  # 4 s of caller audio
        taken.append(bridge.send_audio_nowait(f"a{n}".encode()))
        await asyncio.sleep(0)
    assert not all(taken)  # frames were dropped (and reported so: call control counts them)
    assert taken == sorted(taken, reverse=True)  # accepted while there was room, then dropped
    accepted = taken.count(True)
    assert 0 < accepted <= ws_module.MAX_QUEUED_SENDS + 1
    assert len(asyncio.all_tasks()) <= tasks_before + 1  # one sender, not one task per frame
    # the agent reads again: what was accepted goes out in order, and new frames are taken
    socket.gate.set()
    await settle()
    assert socket.sent == [f"a{n}" for n in range(accepted)]
    assert bridge.send_audio_nowait(b"late")
    await settle()
    assert socket.sent[-1] == "late"
    await bridge.close()


async def test_a_message_awaited_goes_out_after_the_audio_handed_over_before_it() -> None:
    """Twilio numbers every message it sends (sequenceNumber): the wire must keep that order."""
    socket = Gated(open_=True)
    bridge = bridge_on(socket)
    for n in range(3):
        assert bridge.send_audio_nowait(f"a{n}".encode())
    await bridge.send_dtmf("5")
    assert bridge.send_audio_nowait(b"a3")
    await bridge.send_dtmf("6")
    assert socket.sent == ["a0", "a1", "a2", "dtmf 5", "a3", "dtmf 6"]
    await bridge.close()


async def test_close_ends_a_sender_held_by_an_agent_that_stopped_reading() -> None:
    socket = Gated(open_=False)
    bridge = bridge_on(socket)
    bridge.send_audio_nowait(b"a0")
    dtmf = asyncio.create_task(bridge.send_dtmf("1"))
    await settle()
    tasks_before = asyncio.all_tasks()
    await bridge.close()
    await settle()
    assert dtmf.done() and socket.sent == []  # its caller is not left waiting
    assert len(asyncio.all_tasks()) == len(tasks_before) - 2  # neither the sender nor dtmf


async def test_a_bridge_whose_sender_close_ended_is_freed_without_a_collection() -> None:
    """A cancelled task keeps its CancelledError, whose traceback holds the task's frames and
    the bridge in them: the bridge must not hold the task too (a cycle per call behind a
    proxy, freed only by a full collection; test_call_memory.py has the same rule)."""
    socket = Gated(open_=False)
    bridge = bridge_on(socket)
    bridge.send_audio_nowait(b"a0")
    await settle()  # the sender is waiting on the socket
    await bridge.close()
    await settle()
    freed = weakref.ref(bridge)
    gc.disable()
    try:
        del bridge
        assert freed() is None
    finally:
        gc.enable()
