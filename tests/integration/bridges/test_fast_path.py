"""The per-frame fast path over real sockets: order, back-pressure and the proxied client."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.server import ServerConnection

from telepath.bridges import ws as ws_module
from telepath.bridges.base import (
    AgentAudio,
    AgentBridge,
    AgentConnected,
    AgentEvent,
    AgentMark,
    is_terminal,
)
from telepath.bridges.custom import events as ev
from telepath.bridges.ws_socket import AgentSocket
from telepath.testing.fake_custom import FakeTelepathAgent
from telepath.testing.tones import sine_g711

from .helpers import META, TIMEOUT_S, collect_until, log_everything, wait_for
from .test_custom_bridge import HEADERS, bridge_for

pytestmark = pytest.mark.integration


class PacedAgent(FakeTelepathAgent):
    """After ``ready``: a1, m1, a2, m2, each in its own read (50 ms apart), then ``done``."""

    def __init__(self) -> None:
        super().__init__()
        self.done = asyncio.Event()

    async def _greet(self, ws: ServerConnection) -> bool:
        for item in ("a1", "m1", "a2", "m2"):
            await asyncio.sleep(0.05)
            if item.startswith("a"):
                await self.send_audio(ws, item.encode() * 80)
            else:
                await self.send_mark(ws, item)
        await asyncio.sleep(0.05)
        self.done.set()
        return False


async def test_audio_taken_on_the_spot_never_overtakes_a_queued_mark() -> None:
    async with PacedAgent() as fake:
        bridge = bridge_for(fake)
        seen: list[str] = []
        sink_calls: list[str] = []

        def sink(audio: AgentAudio) -> None:
            sink_calls.append(audio.payload[:2].decode())
            seen.append(sink_calls[-1])

        bridge.set_audio_sink(sink)
        await bridge.start(META)
        assert [type(e) for e in await collect_until(bridge, AgentConnected)] == [AgentConnected]
        # Call control is busy until the agent has said everything: m1 waits in events(),
        # so a2, although it would be taken on the spot otherwise, must queue behind it.
        await asyncio.wait_for(fake.done.wait(), TIMEOUT_S)

        async def pump() -> None:
            async for event in bridge.events():
                if isinstance(event, AgentAudio):
                    seen.append(event.payload[:2].decode())
                elif isinstance(event, AgentMark):
                    seen.append(event.name)
                    if event.name == "m2":
                        return

        await asyncio.wait_for(pump(), TIMEOUT_S)
        assert seen == ["a1", "m1", "a2", "m2"]
        assert sink_calls == ["a1"]  # the first one did take the fast path
        await bridge.close()


async def test_caller_audio_is_dropped_not_queued_while_the_agent_is_not_reading() -> None:
    async with FakeTelepathAgent(agent="silent") as fake:
        bridge = bridge_for(fake)
        await bridge.start(META)
        sock = bridge._ws  # type: ignore[attr-defined]
        assert isinstance(sock, AgentSocket)
        frames = [sine_g711(1000, 20, phase=n * 160) for n in range(3)]
        assert bridge.send_audio_nowait(frames[0])
        sock.pause_writing()  # what the transport calls over its high-water mark
        assert not bridge.send_audio_nowait(frames[1])
        sock.resume_writing()
        assert bridge.send_audio_nowait(frames[2])
        await wait_for(lambda: len(fake.caller_audio) == 320)
        assert bytes(fake.caller_audio) == frames[0] + frames[2]
        audio = [m for m in fake.received if m["type"] == "audio"]
        # the dropped frame leaves a gap the agent can see, in seq and in media time
        assert [(m["seq"], m["timestamp_ms"]) for m in audio] == [(1, 0), (3, 40)]
        await bridge.close()


@contextlib.asynccontextmanager
async def connect_proxy() -> AsyncIterator[tuple[int, list[str]]]:
    """A minimal HTTP CONNECT proxy (RFC 9110 §9.3.6) on loopback; yields (port, targets)."""
    targets: list[str] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ")
        assert method == "CONNECT"
        targets.append(target)
        host, port = target.rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], targets
    finally:
        server.close()
        await server.wait_closed()


async def _events_until_terminal(bridge: AgentBridge) -> list[AgentEvent]:
    events: list[AgentEvent] = []
    async for event in bridge.events():
        events.append(event)
        if is_terminal(event):
            break
    return events


async def test_through_an_http_proxy_frames_still_leave_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    async with connect_proxy() as (port, targets), FakeTelepathAgent(agent="echo") as fake:
        monkeypatch.setenv("ws_proxy", f"http://127.0.0.1:{port}")
        ws_module._proxy_for.cache_clear()
        try:
            bridge = bridge_for(fake)
            await bridge.start(META)
            assert not isinstance(bridge._ws, AgentSocket)  # type: ignore[attr-defined]
            frames = [sine_g711(700, 20, phase=n * 160) for n in range(20)]
            for frame in frames:
                assert bridge.send_audio_nowait(frame)
            await wait_for(lambda: len(fake.caller_audio) == 20 * 160)
            assert bytes(fake.caller_audio) == b"".join(frames)
            seqs = [m["seq"] for m in fake.received if m["type"] == "audio"]
            assert seqs == list(range(1, 21))
            assert targets == [f"127.0.0.1:{fake.port}"]
            await bridge.close()
            await asyncio.wait_for(_events_until_terminal(bridge), TIMEOUT_S)
        finally:
            ws_module._proxy_for.cache_clear()


async def test_through_an_http_proxy_no_header_is_logged_at_debug(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # the proxied client is websockets' own connect, whose logger prints every header at DEBUG
    log_everything(caplog)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    async with connect_proxy() as (port, targets), FakeTelepathAgent() as fake:
        monkeypatch.setenv("ws_proxy", f"http://127.0.0.1:{port}")
        ws_module._proxy_for.cache_clear()
        try:
            bridge = bridge_for(fake)
            await bridge.start(META)
            assert not isinstance(bridge._ws, AgentSocket)  # type: ignore[attr-defined]
            await collect_until(bridge, AgentMark)
            assert targets == [f"127.0.0.1:{fake.port}"]
            await bridge.close()
            await asyncio.wait_for(_events_until_terminal(bridge), TIMEOUT_S)
        finally:
            ws_module._proxy_for.cache_clear()
    assert fake.handshakes[0].headers["authorization"] == HEADERS["Authorization"]
    assert HEADERS["Authorization"] not in caplog.text


def test_audio_messages_from_the_fake_are_what_the_shortcut_takes() -> None:
    # The fake agents build their audio with the model; the shortcut must accept that form.
    text = ev.AgentAudioMessage(payload=base64.b64encode(b"\x00\x01").decode()).to_json()
    assert ev.agent_audio_payload(text) == base64.b64encode(b"\x00\x01").decode()
