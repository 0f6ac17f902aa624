"""``AgentSocket`` against a real ``websockets`` server and a raw TCP peer on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI
from websockets.http11 import Request, Response
from websockets.utils import accept_key

from telepath.bridges.ws_socket import AgentSocket
from telepath.transport import media_pacer
from tests.certs import self_signed
from tests.interop.calls.cycles import collector_off

pytestmark = pytest.mark.integration

Handler = Callable[[ServerConnection], Awaitable[None]]


@contextlib.asynccontextmanager
async def server(handler: Handler, **kwargs: object) -> AsyncIterator[str]:
    async with serve(handler, "127.0.0.1", 0, **kwargs) as srv:  # type: ignore[arg-type]
        port = next(iter(srv.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/agent"


async def open_socket(url: str, ping_interval_s: float = 20) -> AgentSocket:
    return await AgentSocket.open(
        url, {"X-Tenant": "acme"}, timeout_s=2, max_size=1 << 20, ping_interval_s=ping_interval_s
    )


async def test_messages_both_ways_headers_and_a_clean_close() -> None:
    seen: list[str] = []
    headers: dict[str, str] = {}

    async def echo(ws: ServerConnection) -> None:
        assert ws.request is not None
        for name in ("X-Tenant", "User-Agent"):
            headers[name] = ws.request.headers[name]
        async for message in ws:
            assert isinstance(message, str)
            seen.append(message)
            await ws.send(f"echo {message}")
            await ws.send(b"\x00\x01")
        seen.append(f"closed {ws.close_code}")

    async with server(echo) as url:
        sock = await open_socket(url)
        await sock.send("héllo")
        assert await sock.recv() == "echo héllo"
        assert await sock.recv() == b"\x00\x01"
        await sock.close()
        with pytest.raises(ConnectionClosed) as closed:
            await sock.recv()
        await asyncio.sleep(0.05)
    assert closed.value.sent is not None and closed.value.sent.code == 1000
    assert seen == ["héllo", "closed 1000"]
    assert headers["X-Tenant"] == "acme" and headers["User-Agent"] == "telepath"


async def test_a_tenant_user_agent_wins_and_is_sent_once() -> None:
    """A custom header User-Agent is the one User-Agent line (RFC 9110 §10.1.5: one product
    list; §5.3: a field not defined as a list must not repeat), as websockets' connect
    (user_agent_header, the proxy path in ws.py) has it: Headers.__setitem__ appends."""
    seen: list[list[str]] = []

    async def record(ws: ServerConnection) -> None:
        assert ws.request is not None
        seen.append(ws.request.headers.get_all("User-Agent"))
        await ws.send("seen")

    async with server(record) as url:
        for headers in ({"user-agent": "acme-bot/1"}, {"X-Tenant": "acme"}):
            sock = await AgentSocket.open(url, headers, timeout_s=2, max_size=1 << 10)
            assert await sock.recv() == "seen"
            await sock.close()
    assert seen == [["acme-bot/1"], ["telepath"]]


async def test_fragmented_messages_are_reassembled() -> None:
    async def fragments(ws: ServerConnection) -> None:
        await ws.send(["par", "ti", "al"])
        await ws.send([b"\x01", b"\x02\x03"])
        await ws.wait_closed()

    async with server(fragments) as url:
        sock = await open_socket(url)
        assert await sock.recv() == "partial"
        assert await sock.recv() == b"\x01\x02\x03"
        await sock.close()


async def test_server_close_code_reaches_recv_and_send_then_refuses() -> None:
    async def goodbye(ws: ServerConnection) -> None:
        await ws.close(1011, "boom")

    async with server(goodbye) as url:
        sock = await open_socket(url)
        with pytest.raises(ConnectionClosed) as closed:
            await sock.recv()
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1011, "boom")
        with pytest.raises(ConnectionClosed):
            await sock.send("too late")


async def test_handshake_refusal_and_unreachable_and_bad_url() -> None:
    async def never(ws: ServerConnection) -> None:
        raise AssertionError("not reached")

    def reject(conn: ServerConnection, request: Request) -> Response:
        return conn.respond(403, "no\n")

    async with server(never, process_request=reject) as url:
        with pytest.raises(InvalidStatus) as refused:
            await open_socket(url)
    assert refused.value.response.status_code == 403
    with pytest.raises(OSError):
        await open_socket(url)  # the server is gone: connection refused
    with pytest.raises(InvalidURI):
        await open_socket("http://127.0.0.1:1/not-a-websocket")


async def test_an_idn_host_is_connected_to_in_its_idna_form(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A custom_endpoint may have a non-ASCII host (docs/webhooks.md, api/url_hosts.py): the name
    looked up and the Host header (RFC 9110 §7.2) are its IDNA form (RFC 5891 §4), converted
    with Python's ``idna`` codec as the validation does (``websockets``' ``parse_uri``)."""
    hosts: list[str] = []
    asked: list[object] = []
    loop = asyncio.get_running_loop()
    real_getaddrinfo = loop.getaddrinfo

    async def loopback(host: object, port: str | int | None, **kwargs: Any) -> Any:
        asked.append(host)  # resolved as a DNS server would the agent's name
        return await real_getaddrinfo("127.0.0.1", port, **kwargs)

    async def record(ws: ServerConnection) -> None:
        assert ws.request is not None
        hosts.append(ws.request.headers["Host"])
        await ws.send("hi")
        await ws.wait_closed()

    async with server(record) as url:
        port = url.rsplit(":", 1)[1].split("/")[0]
        monkeypatch.setattr(loop, "getaddrinfo", loopback)
        sock = await open_socket(f"ws://B\u00fccher.example:{port}/agent")
        assert await sock.recv() == "hi"
        await sock.close()
    assert asked == ["xn--bcher-kva.example"]
    assert hosts == [f"xn--bcher-kva.example:{port}"]


def _client_protocols() -> int:
    return sum(type(o) is ClientProtocol for o in gc.get_objects())


async def test_a_finished_connection_is_freed_without_the_cyclic_collector() -> None:
    """After EOF the library's parser waits, suspended, in a generator that holds its protocol:
    a cycle only a full collection frees. One per call, and as a full collection waits for 100
    generation-1 collections while calls are up (``gc_schedule``), they piled up: ~1,700 after
    10,000 calls. (A failed opening still leaves one: the library keeps the exception, whose
    traceback holds the protocol.)"""

    async def echo_then_close(ws: ServerConnection) -> None:
        await ws.send(await ws.recv())
        await ws.close(1011, "bye")

    with collector_off():
        before = _client_protocols()
        async with server(echo_then_close) as url:
            ours = await open_socket(url)  # we close
            await ours.send("x")
            assert await ours.recv() == "x"
            await ours.close()
            theirs = await open_socket(url)  # the agent closes
            await theirs.send("y")
            assert await theirs.recv() == "y"
            with pytest.raises(ConnectionClosed):
                await theirs.recv()
            await asyncio.sleep(0.05)
            assert _client_protocols() == before + 2
            del ours, theirs
            assert _client_protocols() == before


# --- a raw peer, for what a well-behaved server never sends ------------------------------


@contextlib.asynccontextmanager
async def raw_peer(after_handshake: bytes, keep_open_s: float = 5) -> AsyncIterator[str]:
    """Completes the upgrade, writes ``after_handshake`` verbatim, then reads and ignores."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip().decode()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
            + accept_key(key).encode()
            + b"\r\n\r\n"
            + after_handshake
        )
        with contextlib.suppress(Exception):
            await asyncio.wait_for(reader.read(1 << 16), keep_open_s)
            while await asyncio.wait_for(reader.read(1 << 16), keep_open_s):
                pass
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with srv:
        yield f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}/"


def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    assert len(payload) < 126
    return struct.pack("!BB", (0x80 if fin else 0) | opcode, len(payload)) + payload


async def test_invalid_utf8_fails_the_connection_with_1007() -> None:
    async with raw_peer(frame(0x1, b"ok") + frame(0x1, b"\xff\xfe")) as url:
        sock = await open_socket(url)
        assert await sock.recv() == "ok"
        with pytest.raises(ConnectionClosed) as closed:
            await sock.recv()
    assert closed.value.sent is not None and closed.value.sent.code == 1007


async def test_a_peer_that_never_answers_pings_is_dropped() -> None:
    async with raw_peer(b"") as url:
        sock = await open_socket(url, ping_interval_s=0.05)
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(sock.recv(), 3)
    assert closed.value.rcvd is None  # no close frame: the bridge reports a dropped agent


async def test_pings_from_the_peer_are_answered_and_reading_pauses_when_full() -> None:
    pongs: list[bytes] = []

    async def flood(ws: ServerConnection) -> None:
        pong = await ws.ping(b"are-you-there")
        await pong
        pongs.append(b"are-you-there")
        for i in range(500):
            await ws.send(f"m{i}")
        await ws.wait_closed()

    async with server(flood) as url:
        sock = await open_socket(url)
        await asyncio.sleep(0.3)  # the peer floods while nobody reads
        assert sock._reading_paused  # back-pressure instead of an unbounded buffer
        received = [await sock.recv() for _ in range(500)]
        assert received == [f"m{i}" for i in range(500)]
        assert pongs == [b"are-you-there"]
        await sock.close()


def test_under_uvloop_as_in_production() -> None:
    """uvloop's transports are not ``asyncio.Transport`` subclasses: run the basics on it."""
    uvloop = pytest.importorskip("uvloop")
    uvloop.run(test_messages_both_ways_headers_and_a_clean_close())
    uvloop.run(test_fragmented_messages_are_reassembled())


async def test_a_burst_of_messages_lets_other_tasks_run() -> None:
    async def burst(ws: ServerConnection) -> None:
        for i in range(200):
            await ws.send(f"m{i}")
        await ws.wait_closed()

    async with server(burst) as url:
        sock = await open_socket(url)
        await asyncio.sleep(0.3)  # all 200 are buffered before anyone reads
        ticks: list[int] = []
        received: list[str | bytes] = []

        def tick() -> None:  # stands in for the media pacer of the other calls
            ticks.append(len(received))
            if len(received) < 200:
                asyncio.get_running_loop().call_soon(tick)

        asyncio.get_running_loop().call_soon(tick)
        for _ in range(200):
            received.append(await sock.recv())
        await sock.close()
    assert received == [f"m{i}" for i in range(200)]
    # the reader paused at least every 16 messages: the "pacer" ran throughout the burst
    assert len([t for t in ticks if t < 200]) >= 200 // 16


async def test_wss_verifies_the_agent_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            assert isinstance(message, str)
            await ws.send(f"echo {message}")

    async with server(echo, ssl=context) as url:
        secure = url.replace("ws://", "wss://")
        with pytest.raises(ssl.SSLCertVerificationError):  # not trusted: no connection
            await open_socket(secure)
        # trusted through the system's CA bundle setting, as a private CA would be
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        sock = await open_socket(secure)
        await sock.send("over TLS")
        assert await sock.recv() == "echo over TLS"
        # One client context for every connection: building one parses the CA bundle (~33 ms
        # of CPU on the event loop, measured), which every call to a wss:// agent paid.
        again = await open_socket(secure)
        first, second = (s._transport for s in (sock, again))
        assert first is not None and second is not None
        assert first.get_extra_info("sslcontext") is second.get_extra_info("sslcontext")
        await sock.close()
        await again.close()


async def test_the_first_taker_gets_a_message_only_when_nothing_is_queued_ahead() -> None:
    release = asyncio.Event()

    async def talk(ws: ServerConnection) -> None:
        await ws.recv()  # the client's taker is in place
        await ws.send("take-1")
        await release.wait()
        await ws.send("keep-2")  # the taker declines it: it queues
        await asyncio.sleep(0.05)
        await ws.send("take-3")  # would be taken, but keep-2 is still queued ahead of it
        await ws.wait_closed()

    async with server(talk) as url:
        sock = await open_socket(url)
        taken: list[str | bytes] = []

        def taker(message: str | bytes) -> bool:
            if isinstance(message, str) and message.startswith("take"):
                taken.append(message)
                return True
            return False

        sock.on_message = taker
        await sock.send("go")
        await asyncio.sleep(0.05)
        release.set()
        await asyncio.sleep(0.2)
        assert taken == ["take-1"]
        assert [await sock.recv(), await sock.recv()] == ["keep-2", "take-3"]
        await sock.close()


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
async def test_frames_sent_without_waiting_arrive_intact_at_every_length_encoding(
    size: int,
) -> None:
    # send_nowait frames by hand (7-bit, 16-bit and 64-bit lengths, §5.2; masked, §5.3): the
    # library's server, which refuses unmasked or malformed client frames, must read them back.
    got: list[str] = []

    async def collect(ws: ServerConnection) -> None:
        async for message in ws:
            assert isinstance(message, str)
            got.append(message)
            if len(got) == 3:
                await ws.send("done")

    text = "é" + "a" * (size - 2) if size >= 2 else "a" * size  # exactly ``size`` bytes
    assert len(text.encode()) == size
    async with server(collect) as url:
        sock = await open_socket(url)
        for message in (text, "next", text):
            assert sock.send_nowait(message)
        async with asyncio.timeout(5):  # a malformed frame closes the connection, or stalls it
            assert await sock.recv() == "done"
        await sock.close()
    assert got == [text, "next", text]


async def test_each_hand_built_frame_has_its_own_mask() -> None:
    async def idle(ws: ServerConnection) -> None:
        await ws.wait_closed()

    async with server(idle) as url:
        sock = await open_socket(url)
        frames = [sock._text_frame(b"same payload") for _ in range(2000)]  # crosses a pool refill
        await sock.close()
    masks = {frame[2:6] for frame in frames}
    assert len(masks) > 1990  # 32 random bits each: a collision or two at most
    assert all(frame[:2] == bytes((0x81, 0x80 | 12)) for frame in frames)


async def test_each_received_chunk_first_serves_a_due_media_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[None] = []
    monkeypatch.setattr(media_pacer, "serve_due", lambda: calls.append(None))

    async def talk(ws: ServerConnection) -> None:
        for i in range(5):
            await ws.send(f"m{i}")
            await asyncio.sleep(0.01)  # separate TCP reads
        await ws.wait_closed()

    async with server(talk) as url:
        sock = await open_socket(url)
        got = [await sock.recv() for _ in range(5)]
        await sock.close()
    assert got == [f"m{i}" for i in range(5)]
    assert len(calls) >= 5
