"""Inbound TCP/TLS connections are bounded (RFC 3261 §26.1.5): per source IP and in total,
banned sources refused at accept, silent connections closed, and a peer that never reads our
messages cut off before our write buffer grows without end — on raw sockets from several
loopback source addresses against the running gateway."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from telepath.cli.gateway import Gateway
from telepath.testing.fake_custom import FakeTelepathAgent
from tests.certs import tls_listener
from tests.integration.conftest import Api
from tests.interop.calls.conftest import create_trunk
from tests.interop.sip.raw_streams import Stream, answered, closed_by_gateway, connect
from tests.interop.sip.test_tls_sha256 import client_context
from tests.interop.sip.uac import CallLeg, Uac
from tests.interop.sip.waits import until

pytestmark = pytest.mark.interop

PASSWORD = "stream-limits-1"
MEDIA_PORT = 40004
CAPS = {
    "sip_tcp_max_connections": 4,
    "sip_tcp_max_connections_per_source": 2,
    "sip_allowlist": "127.0.0.4",
}
IDLE = {"sip_tcp_idle_s": 1.0}


@pytest.fixture
def settings_overrides(
    settings_overrides: dict[str, Any], request: pytest.FixtureRequest, tmp_path: Path
) -> dict[str, Any]:
    wanted: dict[str, Any] = dict(getattr(request, "param", {}))
    if wanted.pop("tls", False):
        wanted.update(tls_listener(tmp_path))
    return {**settings_overrides, **wanted}


def counter(gateway: Gateway, name: str) -> int:
    return gateway.server.core.counters[name]


@pytest.mark.parametrize("settings_overrides", [CAPS], indirect=True)
async def test_connections_past_the_per_source_cap_are_refused_at_accept(
    gateway: Gateway, streams: list[Stream]
) -> None:
    first = await connect(gateway, streams)
    second = await connect(gateway, streams)
    await answered(gateway, first)
    await answered(gateway, second)
    third = await connect(gateway, streams)
    await closed_by_gateway(third)
    assert counter(gateway, "stream_refused_per_source") == 1
    await answered(gateway, await connect(gateway, streams, "127.0.0.2"))  # another source
    first[1].close()
    await until(lambda: len(gateway.server.connections) == 2)
    await answered(gateway, await connect(gateway, streams))  # room again for 127.0.0.1
    await answered(gateway, second)  # the connections kept were never touched


@pytest.mark.parametrize("settings_overrides", [CAPS], indirect=True)
async def test_the_total_cap_holds_for_allowlisted_sources_too(
    gateway: Gateway, streams: list[Stream]
) -> None:
    """An allowlisted source (a carrier opening a connection per call) is not held to the
    per-source cap; the total bounds everyone's descriptors."""
    carrier = [await connect(gateway, streams, "127.0.0.4") for _ in range(3)]
    for stream in carrier:
        await answered(gateway, stream)
    await answered(gateway, await connect(gateway, streams, "127.0.0.2"))
    await closed_by_gateway(await connect(gateway, streams, "127.0.0.3"))
    await closed_by_gateway(await connect(gateway, streams, "127.0.0.4"))
    assert counter(gateway, "stream_refused_total") == 2
    assert len(gateway.server.connections) == 4


async def test_a_banned_source_is_refused_at_accept(
    gateway: Gateway, streams: list[Stream]
) -> None:
    """defence.py: a banned source is dropped before parsing — on a stream, its connection
    closed; here at once, before it sends anything."""
    guard = gateway.manager.guard
    assert guard is not None
    while not guard.record_auth_failure("127.0.0.3"):
        pass
    banned = await connect(gateway, streams, "127.0.0.3")
    await closed_by_gateway(banned)
    assert counter(gateway, "stream_refused_banned") == 1
    await answered(gateway, await connect(gateway, streams, "127.0.0.2"))


@pytest.mark.parametrize("settings_overrides", [IDLE], indirect=True)
async def test_a_silent_connection_is_closed(gateway: Gateway, streams: list[Stream]) -> None:
    await closed_by_gateway(await connect(gateway, streams))
    assert counter(gateway, "stream_idle_closed") == 1
    assert not gateway.server.connections


@pytest.mark.parametrize("settings_overrides", [IDLE], indirect=True)
async def test_a_partial_message_trickled_in_does_not_hold_the_connection(
    gateway: Gateway, streams: list[Stream]
) -> None:
    """Only a complete message (or a keep-alive) is activity: a header trickled in a byte at a
    time (slowloris) would otherwise hold a connection and its framer buffer for ever."""
    stream = await connect(gateway, streams)
    reader, writer = stream
    writer.write(b"OPTIONS sip:alice@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1\r\n")

    async def trickle() -> None:
        while not reader.at_eof():
            writer.write(b"X-Slow: a\r\n")
            await asyncio.sleep(0.1)

    dripping = asyncio.create_task(trickle())
    try:
        await closed_by_gateway(stream)
    finally:
        dripping.cancel()
    assert counter(gateway, "stream_idle_closed") == 1


@pytest.mark.parametrize("settings_overrides", [IDLE], indirect=True)
async def test_crlf_pings_keep_a_connection_open(gateway: Gateway, streams: list[Stream]) -> None:
    """RFC 5626 §3.5.1: a carrier keeps its idle connection alive with double-CRLF pings."""
    stream = await connect(gateway, streams)
    reader, writer = stream
    for _ in range(30):  # 3 s: three times the idle time
        writer.write(b"\r\n\r\n")
        assert await asyncio.wait_for(reader.readexactly(2), 5) == b"\r\n"  # the pong
        await asyncio.sleep(0.1)
    await answered(gateway, stream)
    assert counter(gateway, "stream_idle_closed") == 0


@pytest.fixture
async def agent(api: Api) -> AsyncIterator[FakeTelepathAgent]:
    async with FakeTelepathAgent(agent="silent") as fake:
        await create_trunk(api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=fake.url)
        yield fake


@pytest.mark.parametrize("settings_overrides", [IDLE], indirect=True)
async def test_a_connection_a_call_signals_over_is_not_closed_when_idle(
    gateway: Gateway, agent: FakeTelepathAgent
) -> None:
    """A carrier that sends no keep-alives during a long call keeps its connection: the BYE
    still arrives (and is answered) on it."""
    uac = await Uac.open("TCP", gateway.server.bound["TCP"])
    try:
        leg = CallLeg(uac, "alice")
        await leg.challenge(MEDIA_PORT)
        await leg.answered(leg.authenticated_invite(PASSWORD, MEDIA_PORT))
        uac.send(leg.ack())
        await until(lambda: gateway.manager.active_calls == 1)
        await asyncio.sleep(3)  # three times the idle time without a message
        assert counter(gateway, "stream_idle_closed") == 0
        await leg.bye()
    finally:
        await uac.close()


async def test_a_peer_that_does_not_read_is_disconnected(
    gateway: Gateway, streams: list[Stream]
) -> None:
    """Our messages to a peer that never reads stay in our write buffer: past the bound the
    connection is closed instead of growing it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, gateway.server.bound["TCP"])
    stream = await asyncio.open_connection(sock=sock)
    streams.append(stream)
    await answered(gateway, stream)
    (conn,) = gateway.server.connections
    chunk = b"x" * 65536
    for _ in range(512):  # 32 MiB at most: kernel buffers take a few MiB
        if not gateway.server.is_open(conn):
            break
        gateway.server.write_stream(conn, chunk)
        await asyncio.sleep(0)
    assert not gateway.server.is_open(conn)
    assert counter(gateway, "stream_write_overflow") == 1


@pytest.mark.parametrize("settings_overrides", [{**IDLE, "tls": True}], indirect=True)
async def test_a_tls_handshake_never_started_does_not_hold_the_connection(
    gateway: Gateway, streams: list[Stream]
) -> None:
    await closed_by_gateway(await connect(gateway, streams, transport="TLS"))


@pytest.mark.parametrize("settings_overrides", [{**CAPS, "tls": True}], indirect=True)
async def test_tls_connections_are_bounded_at_accept_before_their_handshake(
    gateway: Gateway, streams: list[Stream]
) -> None:
    """RFC 3261 §26.1.5: a connection to the TLS port holds a descriptor from its accept, not
    from its handshake's end — one source opening many and sending no ClientHello must meet
    the per-source cap at once (not after ``tls_handshake_s`` each)."""
    held = [await connect(gateway, streams, transport="TLS") for _ in range(2)]
    refused = [await connect(gateway, streams, transport="TLS") for _ in range(3)]
    for stream in refused:
        await closed_by_gateway(stream)
    assert counter(gateway, "stream_refused_per_source") == 3
    assert not any(reader.at_eof() for reader, _ in held)  # their handshakes may still come


@pytest.mark.parametrize("settings_overrides", [{"tls": True}], indirect=True)
async def test_a_banned_source_is_refused_at_the_tls_accept_without_a_handshake(
    gateway: Gateway, streams: list[Stream]
) -> None:
    guard = gateway.manager.guard
    assert guard is not None
    while not guard.record_auth_failure("127.0.0.3"):
        pass
    await closed_by_gateway(await connect(gateway, streams, "127.0.0.3", transport="TLS"))
    assert counter(gateway, "stream_refused_banned") == 1


@pytest.mark.parametrize(
    "settings_overrides", [{"sip_tcp_max_connections": 1, "tls": True}], indirect=True
)
async def test_a_tls_accept_that_cannot_duplicate_its_socket_frees_its_place(
    gateway: Gateway, streams: list[Stream], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The socket of a connection admitted at the TLS accept is duplicated for its handshake:
    when that fails (EMFILE — exactly when descriptors run out) the connection is closed and
    its place under the caps freed, not leaked until every TCP/TLS accept is refused
    (RFC 3261 §26.1.5: the caps bound descriptors, they must not eat the listener)."""
    real_dup = os.dup
    failures = [OSError(errno.EMFILE, os.strerror(errno.EMFILE))]

    def dup_failing_once(fd: int) -> int:
        if failures:
            raise failures.pop()
        return real_dup(fd)

    monkeypatch.setattr(os, "dup", dup_failing_once)  # what sip_server calls
    await closed_by_gateway(await connect(gateway, streams, transport="TLS"))
    assert not failures  # the failure was met
    assert gateway.server._inbound == 0 and not gateway.server._per_source
    # the one place (TELEPATH_SIP_TCP_MAX_CONNECTIONS=1) is free: a real TLS client is served
    uac = await Uac.open("TLS", gateway.server.bound["TLS"], client_context(tmp_path / "sip.crt"))
    try:
        await uac.answered_options()
    finally:
        await uac.close()
