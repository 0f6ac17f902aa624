"""A scriptable RTP peer on a real loopback UDP socket, for media-session tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from telepath.rtp.packet import RtpPacket, pack_rtp

Address = tuple[str, int]


class _Recorder(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: list[tuple[bytes, Address]] = []
        self.arrived = asyncio.Event()

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.received.append((data, addr))
        self.arrived.set()


class UdpPeer:
    """A UDP endpoint that records what it receives and sends what it is told."""

    def __init__(self, transport: asyncio.DatagramTransport, recorder: _Recorder) -> None:
        self.transport = transport
        self.recorder = recorder

    @classmethod
    async def bind(cls, host: str = "127.0.0.1", port: int = 0) -> UdpPeer:
        loop = asyncio.get_running_loop()
        transport, recorder = await loop.create_datagram_endpoint(
            _Recorder, local_addr=(host, port)
        )
        return cls(transport, recorder)

    @property
    def address(self) -> Address:
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    def send(self, data: bytes, addr: Address) -> None:
        self.transport.sendto(data, addr)

    def packets(self) -> list[RtpPacket]:
        return [RtpPacket.parse(d) for d, _ in self.recorder.received]

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(10):
            while len(self.recorder.received) < count:
                self.recorder.arrived.clear()
                await self.recorder.arrived.wait()

    def close(self) -> None:
        self.transport.close()


def rtp_stream(
    payloads: Iterable[bytes], *, pt: int = 0, ssrc: int = 0x5EED, seq: int = 1000, ts: int = 0
) -> list[bytes]:
    """Serialize consecutive RTP packets (20 ms of 8 kHz audio each)."""
    out = []
    for i, payload in enumerate(payloads):
        out.append(
            pack_rtp(pt, (seq + i) & 0xFFFF, (ts + 160 * i) & 0xFFFFFFFF, ssrc, payload, i == 0)
        )
    return out


async def until(predicate: Callable[[], bool]) -> None:
    """Wait (10 s at most) until ``predicate`` holds; for state that has no event to await."""
    async with asyncio.timeout(10):
        while not predicate():  # noqa: ASYNC110 - polls a synchronous stats snapshot
            await asyncio.sleep(0.01)
