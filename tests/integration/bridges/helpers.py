"""Shared helpers for bridge integration tests."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import pytest
from pydantic import BaseModel

from telepath.bridges.base import AgentAudio, AgentBridge, AgentEvent, CallMetadata, is_terminal

TIMEOUT_S = 10.0  # a bound so a broken bridge fails the test instead of hanging it

META = CallMetadata(
    call_id="call_test1",
    trunk_id="trunk_test1",
    caller="+14155550123",
    called="+18005551212",
    codec="pcmu",
    system_prompt="You are a test agent.",
    sip_call_id="abc@127.0.0.1",
)


async def collect_until(
    bridge: AgentBridge,
    stop: type[Any] | None = None,
    *,
    audio_ms: float | None = None,
    bytes_per_ms: int = 8,
) -> list[AgentEvent]:
    """Read events until one of type ``stop``, ``audio_ms`` of audio, or a terminal event.

    ``bytes_per_ms``: 8 for G.711 agent audio, 32 for a wideband call's 16 kHz PCM16.
    """
    events: list[AgentEvent] = []
    received = 0.0

    async def run() -> None:
        nonlocal received
        async for event in bridge.events():
            events.append(event)
            if isinstance(event, AgentAudio):
                received += len(event.payload) / bytes_per_ms
            if stop is not None and isinstance(event, stop):
                return
            if audio_ms is not None and received >= audio_ms:
                return
            if is_terminal(event):
                return

    await asyncio.wait_for(run(), TIMEOUT_S)
    return events


async def wait_for(predicate: Any) -> None:
    """Poll ``predicate()`` on the loop until true (bounded by ``TIMEOUT_S``)."""
    async with asyncio.timeout(TIMEOUT_S):
        while not predicate():  # noqa: ASYNC110 - the fakes expose plain lists, not events
            await asyncio.sleep(0.01)


def audio_of(events: list[AgentEvent]) -> bytes:
    """All agent audio in ``events``, concatenated."""
    return b"".join(e.payload for e in events if isinstance(e, AgentAudio))


def assert_no_extra(
    model: BaseModel, path: str = "", allow: Mapping[str, frozenset[str]] | None = None
) -> None:
    """Fail if an SDK model (extra="allow") carries fields its type does not declare.

    ``allow``: by path (``".session"``), the fields the real service sends there that the
    SDK's model lacks.
    """
    extra = set(model.model_extra or {}) - (allow or {}).get(path, frozenset())
    assert not extra, f"unknown fields at {path or '<root>'}: {sorted(extra)}"
    for name in type(model).model_fields:
        value = getattr(model, name)
        values = value if isinstance(value, list) else [value]
        for item in values:
            if isinstance(item, BaseModel):
                assert_no_extra(item, f"{path}.{name}", allow)


def log_everything(caplog: pytest.LogCaptureFixture) -> None:
    """Capture every logger at DEBUG (``TELEPATH_LOG_LEVEL=DEBUG``) but the fake's own: the
    fake server's websockets logger prints the request it received, and it is not the gateway."""
    caplog.set_level(logging.INFO, logger="websockets.server")
    caplog.set_level(logging.DEBUG)  # last: set_level also sets the capturing handler's level
    assert caplog.handler.level == logging.DEBUG


async def a_second_of_a_call(bridge: AgentBridge, meta: CallMetadata) -> None:
    """Start ``bridge``, take a second of the agent's audio, close it and drain its events:
    what a call does with everything the bridge may log."""
    await bridge.start(meta)
    await collect_until(bridge, audio_ms=1000)
    await bridge.close()
    await collect_until(bridge)
