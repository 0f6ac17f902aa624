"""Raw TCP/TLS connections to the gateway from any loopback source address, for the tests of
what the transport does with a connection (limits, guard verdicts): opened, asked, and seen
closed by the gateway."""

from __future__ import annotations

import asyncio

from telepath.cli.gateway import Gateway
from tests.interop.sip.uac import Uac, new_call_id

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def connect(
    gateway: Gateway, streams: list[Stream], host: str = "127.0.0.1", transport: str = "TCP"
) -> Stream:
    """A raw connection from ``host`` (any 127.0.0.0/8 address) to the gateway, kept in
    ``streams`` (the ``streams`` fixture closes them)."""
    stream = await asyncio.open_connection(*gateway.server.bound[transport], local_addr=(host, 0))
    streams.append(stream)
    return stream


async def answered(gateway: Gateway, stream: Stream) -> None:
    """An OPTIONS on ``stream`` is answered 200 (the whole answer read)."""
    reader, writer = stream
    uac = Uac("TCP", gateway.server.bound["TCP"], local=writer.get_extra_info("sockname"))
    writer.write(uac.request("OPTIONS", "alice", call_id=new_call_id(), cseq=1))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"SIP/2.0 200 OK\r\n")
    assert b"\r\nContent-Length: 0\r\n" in head


async def closed_by_gateway(stream: Stream, within_s: float = 10) -> bytes:
    """Wait for the gateway to close ``stream``; what it wrote before (pongs...), if anything."""
    reader, _ = stream
    data = bytearray()

    async def eof() -> None:
        while chunk := await reader.read(65536):
            data.extend(chunk)

    try:
        await asyncio.wait_for(eof(), within_s)
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"the gateway kept the connection open for {within_s} s") from None
    return bytes(data)
