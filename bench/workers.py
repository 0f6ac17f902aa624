"""Helper processes for the benchmarks, so their CPU is never counted as the gateway's.

``python -m bench.workers agent``   the echo agent (FakeTelepathAgent(agent="echo")), stamping
                                    when each marked frame arrives and when it is echoed
``python -m bench.workers phones``  many callers' RTP endpoints in one process: 20 ms PCMU frames
                                    on a monotonic deadline, every frame marked (phone, tick)
``python -m bench.workers udpecho`` the baseline: a minimal asyncio UDP echo per stream
``python -m bench.workers relay``   the bridge floor: per stream, RTP in → one TCP write to a
                                    ``tcpecho`` peer → one TCP read → the same RTP packet out,
                                    i.e. the system calls a bridge with an agent connection makes
                                    per frame pair, and nothing else (no jitter buffer, no pacing,
                                    no WebSocket/JSON/base64, no codec)
``python -m bench.workers tcpecho`` the relay's peer: echoes each TCP connection's bytes

Commands arrive as stdin lines, answers leave as stdout lines (JSON where structured). Times are
``time.monotonic()``, which is one clock for every process on the machine, so a frame can be
followed phone → gateway → agent → gateway → phone.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
import random
import struct
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from bench.common import pct

_T = TypeVar("_T")

MAGIC = b"\x1b\x2c"  # μ-law bytes that survive decode/encode unchanged
MAX_GAP = 100  # packets: a larger sequence step is a discontinuity, not loss
RTCP_TYPES = (192, 223)  # second byte of an RTCP packet (RFC 5761 §4), never of RTP audio here
PTIME = 0.020
PHASES = 4  # phones' 20 ms clocks fall on 4 phases 5 ms apart
FILL = b"\x5a" * 154


def marker(phone: int, tick: int) -> bytes:
    """MAGIC + 4 bytes of 6-bit digits (10 bits phone, 14 bits tick), all in 0x20..0x5f."""
    v = (phone & 0x3FF) << 14 | (tick & 0x3FFF)
    return MAGIC + bytes(0x20 + ((v >> s) & 0x3F) for s in (18, 12, 6, 0))


def read_marker(payload: bytes) -> tuple[int, int] | None:
    at = payload.find(MAGIC)
    if at < 0 or at + 6 > len(payload):
        return None
    v = 0
    for b in payload[at + 2 : at + 6]:
        v = v << 6 | (b - 0x20) & 0x3F
    return v >> 14, v & 0x3FFF


def _use_uvloop() -> None:
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass


async def _lines() -> Any:
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        yield line.strip()


def _write_json(path: str, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f)


def _say(obj: Any) -> None:
    print(obj if isinstance(obj, str) else json.dumps(obj), flush=True)


# ------------------------------------------------------------------------------- echo agent


class _Sends(Protocol):
    async def send(self, message: str) -> None: ...


async def echo_frame(
    ws: _Sends,
    payload: str,
    received: float,
    stamps: dict[str, list[float]],
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Echo one caller audio frame (``payload``: base64) and, if it is marked, stamp it
    [received, sent] in ``stamps``. The send is stamped before ``ws.send``, which may wait
    for the socket to drain: the agent → phone figure starts when the agent sends (until
    2026-12-08 it was stamped after, so the drain counted to the agent, not the path)."""
    m = read_marker(base64.b64decode(payload))
    sent = clock()
    # the same frame the parent's echo sends: AgentAudioMessage(payload=...)
    await ws.send('{"type":"audio","payload":"' + payload + '"}')
    if m is not None:
        stamps[f"{m[0]}:{m[1]}"] = [received, sent]


async def agent_main() -> None:
    from websockets.asyncio.server import ServerConnection

    from telepath.bridges.base import BridgeProtocolError
    from telepath.bridges.custom import events as ev
    from telepath.testing.fake_custom import FakeTelepathAgent

    stamps: dict[str, list[float]] = {}  # "phone:tick" -> [received, echoed]

    class BenchEchoAgent(FakeTelepathAgent):
        """FakeTelepathAgent(agent="echo") with a lean audio path and per-frame stamps.

        The parent's handler validates every frame with pydantic and keeps all caller audio;
        at 10,000 frames/s that would make the agent, not the gateway, the bottleneck.
        """

        async def handle(self, ws: ServerConnection) -> None:
            async for raw in ws:
                t = time.monotonic()
                data = json.loads(raw)
                if data.get("type") == "audio":
                    await echo_frame(ws, data["payload"], t, stamps)
                    continue
                try:
                    message = ev.parse_gateway_message(raw)
                except BridgeProtocolError as exc:
                    self.violation(str(exc))
                    continue
                if isinstance(message, ev.Start):
                    self.start_message = message
                    await self._on_start(ws, message)
                elif isinstance(message, ev.Stop):
                    self.stops.append(message.model_dump())

    agent = BenchEchoAgent(agent="echo")
    await agent.start()
    _say({"url": f"ws://127.0.0.1:{agent.port}/agent"})
    async for line in _lines():
        cmd, _, arg = line.partition(" ")
        if cmd == "dump":
            _write_json(arg, stamps)
            stamps.clear()
            _say({"protocol_errors": agent.protocol_errors[:5], "stops": len(agent.stops)})
    await agent.stop()


# ------------------------------------------------------------------------------- phones


def _same(protocol: _T) -> _T:
    """A protocol factory's body for a protocol built beforehand."""
    return protocol


class _Phone(asyncio.DatagramProtocol):
    def __init__(self, index: int, owner: Phones) -> None:
        self.index = index
        self.owner = owner
        self.transport: asyncio.DatagramTransport | None = None
        self.dest: tuple[str, int] | None = None
        self.latched = False  # has a destination: the gateway owes it a stream from now on
        self.seq = random.randrange(1 << 16)
        self.ssrc = random.randrange(1 << 32)
        # (time, rtp seq, ssrc, source port) of each packet received inside the window
        self.arrivals: list[tuple[float, int, int, int]] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        t = time.monotonic()
        if len(data) < 12:
            return
        if RTCP_TYPES[0] <= data[1] <= RTCP_TYPES[1]:
            # RTCP meant for a neighbour: the gateway sends a call's RTCP to the phone's port + 1
            # (RFC 3550 §11), and the OS may have given that port to another phone. It is not
            # this phone's audio: counted, kept out of jitter and loss.
            if self.owner.in_window:
                self.owner.rtcp_received += 1
            return
        if self.dest is None and self.owner.latching:
            self.dest = addr
            self.latched = True
            self.owner.latched += 1
        if self.owner.in_window:
            seq, ssrc = struct.unpack_from("!H4xI", data, 2)
            self.arrivals.append((t, seq, ssrc, addr[1]))
        m = read_marker(data[12:])
        if m is not None:
            key = f"{m[0]}:{m[1]}"
            if key not in self.owner.recv:
                self.owner.recv[key] = t


def stream_loss(arrivals: list[tuple[float, int, int, int]]) -> tuple[int, int, int]:
    """(expected, lost, jumps) of one phone's received RTP, per SSRC and source port.

    Sequence numbers are unwrapped (RFC 3550 §A.1); a step of more than ``MAX_GAP`` either way
    is not loss but a discontinuity (another stream, a restarted sender) — counted as a jump,
    and each side measured on its own, so one odd stream cannot pass for thousands of losses.
    """
    expected = lost = jumps = 0
    segments: dict[tuple[int, int], list[set[int]]] = {}
    last: dict[tuple[int, int], int] = {}
    for _t, seq, ssrc, port in arrivals:
        key = (ssrc, port)
        segs = segments.setdefault(key, [])
        if key not in last:
            segs.append(set())
            ext = seq
        else:
            step = ((seq - last[key] + 0x8000) & 0xFFFF) - 0x8000
            ext = last[key] + step
            if abs(step) > MAX_GAP:
                jumps += 1
                segs.append(set())
        last[key] = ext
        segs[-1].add(ext)
    for segs in segments.values():
        for seg in segs:
            span = max(seg) - min(seg) + 1
            expected += span
            lost += span - len(seg)
    return expected, lost, jumps


class Phones:
    def __init__(self) -> None:
        self.phones: list[_Phone] = []
        self.latching = False
        self.latched = 0
        self.in_window = False
        self.window_started = 0.0
        self.window_s: float | None = None  # how long the window was open, once closed
        self.sent: dict[str, float] = {}  # markers sent inside the window
        self.recv: dict[str, float] = {}  # every marker received back
        self.tick = 0
        self.task: asyncio.Task[None] | None = None
        self.rtcp_received = 0  # RTCP packets that reached a phone's RTP port (not audio)

    async def run(self) -> None:
        """One deadline-paced loop sends every phone's frame each 20 ms tick.

        Phones are spread over ``PHASES`` sub-ticks (5 ms apart), as independent calls from a
        carrier are: their 20 ms clocks are not aligned. ``BENCH_PHONES_ALIGNED=1`` sends all
        frames in one burst per tick instead (the worst case for every process involved).
        """
        loop = asyncio.get_running_loop()
        phases = 1 if os.environ.get("BENCH_PHONES_ALIGNED") == "1" else PHASES
        deadline = loop.time()
        phase = 0
        while True:
            deadline += PTIME / phases
            delay = deadline - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if phase == 0:
                self.tick += 1
            tick = self.tick
            for p in self.phones[phase::phases]:
                if p.dest is None or p.transport is None:
                    continue
                p.seq = (p.seq + 1) & 0xFFFF
                header = struct.pack("!BBHII", 0x80, 0, p.seq, (p.seq * 160) & 0xFFFFFFFF, p.ssrc)
                p.transport.sendto(header + marker(p.index, tick) + FILL, p.dest)
                if self.in_window:
                    self.sent[f"{p.index}:{tick & 0x3FFF}"] = time.monotonic()
            phase = (phase + 1) % phases

    def summary(self) -> dict[str, Any]:
        devs: list[float] = []
        lost = expected = jumps = odd_sources = 0
        # a latched phone is owed a packet per PTIME for the whole window: counting only the
        # gaps between the first and last packet heard would make a silent stream 0 % lost
        owed = int(self.window_s / PTIME) if self.window_s else 0
        for p in self.phones:
            a = p.arrivals
            devs += [abs((b[0] - c[0]) - PTIME) * 1000 for c, b in zip(a, a[1:], strict=False)]
            e, lo, j = stream_loss(a)
            if p.latched and owed > e:
                lo += owed - e
                e = owed
            expected += e
            lost += lo
            jumps += j
            odd_sources += len({x[2:] for x in a}) > 1

        def q(values: list[float], percent: float, scale: float = 1.0) -> float | None:
            v = pct(values, percent)
            return None if v is None else round(v * scale, 3)

        echoed = sum(1 for k in self.sent if k in self.recv)
        # a call is bridged in the window when a frame its phone sent then came back through
        # the gateway and the agent: the calls the gateway really carried
        bridged = len({k.split(":")[0] for k in self.sent if k in self.recv})
        rtt = [self.recv[k] - t for k, t in self.sent.items() if k in self.recv]
        return {
            "phones": len(self.phones),
            "latched": self.latched,
            "rx_packets": sum(len(p.arrivals) for p in self.phones),
            "rx_rtcp_packets": self.rtcp_received,
            "jitter_p50_ms": q(devs, 50),
            "jitter_p99_ms": q(devs, 99),
            "jitter_max_ms": round(max(devs), 3) if devs else None,
            "rx_loss_pct": round(100 * lost / expected, 3) if expected else None,
            "rx_seq_jumps": jumps,
            "rx_phones_with_two_sources": odd_sources,
            "calls_bridged": bridged,
            "echo_sent": len(self.sent),
            "echo_returned": echoed,
            "echo_loss_pct": round(100 * (1 - echoed / len(self.sent)), 3) if self.sent else None,
            "rtt_p50_ms": q(rtt, 50, 1000),
            "rtt_p99_ms": q(rtt, 99, 1000),
        }


async def phones_main() -> None:
    loop = asyncio.get_running_loop()
    ph = Phones()
    async for line in _lines():
        cmd, _, arg = line.partition(" ")
        if cmd == "open":
            for i in range(int(arg)):
                p = _Phone(i, ph)
                await loop.create_datagram_endpoint(
                    functools.partial(_same, p), local_addr=("127.0.0.1", 0)
                )
                ph.phones.append(p)
            ports = [p.transport.get_extra_info("sockname")[1] for p in ph.phones if p.transport]
            ph.task = loop.create_task(ph.run())
            _say(ports)
        elif cmd == "latch":  # send to whoever sends to us first (the gateway's silence)
            ph.latching = True
            deadline = loop.time() + float(arg or 60)
            while ph.latched < len(ph.phones) and loop.time() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            _say({"latched": ph.latched})
        elif cmd == "target":  # baseline: fixed destinations
            for p, port in zip(ph.phones, json.loads(arg), strict=True):
                p.dest = ("127.0.0.1", port)
                p.latched = True
            ph.latched = len(ph.phones)
            _say({"latched": ph.latched})
        elif cmd == "mark":
            ph.in_window = True
            ph.window_started = time.monotonic()
            _say("ok")
        elif cmd == "end":
            ph.in_window = False
            ph.window_s = time.monotonic() - ph.window_started
            ph.latching = False
            for p in ph.phones:
                p.dest = None  # stop sending; in-flight echoes may still arrive
            await asyncio.sleep(0.5)
            _write_json(arg, {"sent": ph.sent, "recv": ph.recv})
            _say(ph.summary())
    if ph.task is not None:
        ph.task.cancel()


# ------------------------------------------------------------------------------- baseline


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)


async def udpecho_main() -> None:
    loop = asyncio.get_running_loop()
    transports = []
    async for line in _lines():
        cmd, _, arg = line.partition(" ")
        if cmd == "open":
            for _ in range(int(arg)):
                t, _p = await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))
                transports.append(t)
            _say([t.get_extra_info("sockname")[1] for t in transports])
    for t in transports:
        t.close()


# ------------------------------------------------------------------------------- bridge floor


class _TcpEcho(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def tcpecho_main() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_TcpEcho, "127.0.0.1", 0)
    _say({"port": server.sockets[0].getsockname()[1]})
    async for _line in _lines():
        pass
    server.close()


class _RelayUdp(asyncio.DatagramProtocol):
    """One stream's RTP side: each packet goes to the TCP peer as ``u16 length + packet``."""

    def __init__(self) -> None:
        self.peer: tuple[str, int] | None = None
        self.tcp: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.peer = addr
        self.tcp.write(len(data).to_bytes(2, "big") + data)


class _RelayTcp(asyncio.Protocol):
    """One stream's agent side: each echoed record goes back out as one RTP packet."""

    def __init__(self, udp: _RelayUdp) -> None:
        self.udp = udp
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        while len(buf) >= 2:
            end = 2 + int.from_bytes(buf[:2], "big")
            if len(buf) < end:
                break
            if self.udp.peer is not None:
                self.udp.transport.sendto(buf[2:end], self.udp.peer)
            buf = buf[end:]
        self.buf = buf


async def relay_main() -> None:
    loop = asyncio.get_running_loop()
    transports: list[Any] = []
    async for line in _lines():
        cmd, _, arg = line.partition(" ")
        if cmd == "open":
            count, port = (int(v) for v in arg.split())
            ports = []
            for _ in range(count):
                udp, proto = await loop.create_datagram_endpoint(
                    _RelayUdp, local_addr=("127.0.0.1", 0)
                )
                tcp, _p = await loop.create_connection(
                    functools.partial(_RelayTcp, proto), "127.0.0.1", port
                )
                proto.tcp = tcp
                transports += [udp, tcp]
                ports.append(udp.get_extra_info("sockname")[1])
            _say(ports)
    for t in transports:
        t.close()


# ---------------------------------------------------------------------- provider fakes


async def provider_main() -> None:
    """``provider KIND CERT KEY``: the OpenAI or ElevenLabs fake (silent agent), over TLS when
    CERT and KEY are given; what it records is dropped every second (long runs)."""
    import ssl

    from telepath.testing.fake_elevenlabs import FakeElevenLabs
    from telepath.testing.fake_openai import FakeOpenAIRealtime
    from telepath.testing.fake_provider_http import FakeProviderHttp

    kind, *tls = sys.argv[2:]
    fake: FakeOpenAIRealtime | FakeElevenLabs = (
        FakeOpenAIRealtime(agent="silent") if kind == "openai" else FakeElevenLabs(agent="silent")
    )
    if tls:
        fake.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        fake.tls.load_cert_chain(tls[0], tls[1])

    async def forget() -> None:
        while True:
            await asyncio.sleep(1.0)
            fake.handshakes.clear()
            fake.received.clear()
            fake.sent.clear()
            fake.caller_audio.clear()

    async with fake:
        # ElevenLabs' REST API keeps connections alive, which the WebSocket fake's own HTTP
        # answers do not: the signed-URL endpoint is served by the threaded REST fake instead
        rest = FakeProviderHttp(elevenlabs_ws_url=fake.url, tls=fake.tls).start()
        http = rest.elevenlabs_api_base if kind == "elevenlabs" else fake.base_http
        _say({"url": fake.url, "http": http})
        forgetting = asyncio.get_running_loop().create_task(forget())
        async for _line in _lines():  # until stdin closes
            pass
        forgetting.cancel()
        rest.stop()


def main() -> None:
    _use_uvloop()
    role = sys.argv[1]
    entry = {
        "agent": agent_main,
        "phones": phones_main,
        "udpecho": udpecho_main,
        "relay": relay_main,
        "tcpecho": tcpecho_main,
        "provider": provider_main,
    }[role]
    asyncio.run(entry())


if __name__ == "__main__":
    main()
