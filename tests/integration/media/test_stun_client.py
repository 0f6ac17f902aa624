"""StunClient over real loopback sockets (transport/stun.py): how often it asks, what a dual-stack
socket does, and a STUN server whose name does not resolve."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from aioice import stun

from telepath.transport.stun import StunClient
from tests.coturn import binding_response

pytestmark = pytest.mark.integration


class Responder(asyncio.DatagramProtocol):
    """A STUN server on 127.0.0.1: answers with where it saw the request from, or never."""

    def __init__(self, silent: bool) -> None:
        self.silent = silent
        self.requests: list[tuple[str, int]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        request = stun.parse_message(data)
        self.requests.append(addr)
        if self.silent or self.transport is None:
            return
        self.transport.sendto(binding_response(addr, request.transaction_id), addr)


@pytest.fixture(params=[False, True], ids=["answering", "silent"])
async def responder(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Responder, int]]:
    transport, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: Responder(silent=request.param), local_addr=("127.0.0.1", 0)
    )
    try:
        yield protocol, transport.get_extra_info("sockname")[1]
    finally:
        transport.close()


def _socket(family: int, host: str) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.setblocking(False)
    return sock


@pytest.mark.parametrize(
    ("family", "host"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::")]
)
async def test_a_mapping_from_an_ipv4_or_a_dual_stack_socket(
    responder: tuple[Responder, int], family: int, host: str
) -> None:
    server, port = responder
    sock = _socket(family, host)
    own = sock.getsockname()[1]
    try:
        async with asyncio.timeout(10):
            found = await StunClient("127.0.0.1", port).mapping(sock)
    finally:
        sock.close()
    if server.silent:
        assert found is None
        # asked at 0, 100 and 300 ms within the 0.5 s — not again at the deadline, whose
        # answer nothing would read (it would reach the call's media instead)
        assert 2 <= len(server.requests) <= 3, server.requests
    else:
        assert found == ("127.0.0.1", own)
        assert len(server.requests) == 1
    assert {addr[1] for addr in server.requests} == {own}


async def test_a_server_name_that_does_not_resolve_in_time_costs_one_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A system resolver that does not answer: the lookup is cut at the client's timeout (the
    # call goes on with the configured address), and the next calls do not ask again at once.
    loop = asyncio.get_running_loop()
    lookups = 0

    async def hanging(*args: Any, **kwargs: Any) -> Any:
        nonlocal lookups
        lookups += 1
        await asyncio.sleep(3600)

    monkeypatch.setattr(loop, "getaddrinfo", hanging)
    client = StunClient("stun.example.test", timeout_s=0.2)
    sock = _socket(socket.AF_INET, "127.0.0.1")
    try:
        async with asyncio.timeout(10):
            assert await client.mapping(sock) is None
            assert await client.mapping(sock) is None
    finally:
        sock.close()
    assert lookups == 1


async def test_the_name_lookup_comes_out_of_the_same_time_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A slow resolver (0.35 s of the 0.5 s): what is left is all the requests get — one or
    # two of them, not the three a fresh 0.5 s would allow. No time is asserted: a loaded
    # machine can only send fewer.
    transport, server = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: Responder(silent=True), local_addr=("127.0.0.1", 0)
    )
    port = transport.get_extra_info("sockname")[1]
    loop = asyncio.get_running_loop()

    async def slow(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.35)
        return [(socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("127.0.0.1", port))]

    monkeypatch.setattr(loop, "getaddrinfo", slow)
    sock = _socket(socket.AF_INET, "127.0.0.1")
    try:
        async with asyncio.timeout(10):
            assert await StunClient("stun.example.test", port).mapping(sock) is None
    finally:
        sock.close()
        transport.close()
    assert 1 <= len(server.requests) <= 2, server.requests
