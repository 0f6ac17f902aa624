"""The gateway's per-frame Python, in one process, with the sockets taken out.

The calls benchmark measures a whole gateway on a shared 2-core VM, where runs of the same code
differ by a third; this one isolates the part our code controls: what the interpreter does for
one 20 ms frame in each direction once the kernel has handed over the bytes, with real objects
(``MediaSession``, ``TelepathAgentBridge`` over ``AgentSocket`` and the ``websockets`` protocol)
and transports that only swallow what is written to them:

  caller frame   RTP datagram → parse, stats, jitter buffer, decode → agent ``audio`` message
                 (JSON + base64) → WebSocket frame written
  agent message  WebSocket bytes → frame parse → ``audio`` message → playout queue
  tick           pacer tick → next playout frame → RTP packet written

The SRTP columns are the same steps for an SRTP call (the caller's packets authenticated and
decrypted, ours protected, libsrtp through ``pylibsrtp``): their difference from the plain
columns is what SRTP costs per frame.

Baseline in the same run (``floor``): the same bytes each way with nothing but the primitives
any Python bridge of this design must call — ``struct`` for the RTP header, ``json`` and
``base64`` both ways, the WebSocket header by hand (RFC 6455 §5.2) and the library's C
``apply_mask`` — so the ratio says how much of the per-frame cost is ours. (Until the receive
shortcut the floor framed through the ``websockets`` protocol objects; ours now bypasses those
on both sides, so they are no longer the least one can do.) Figures are CPU time
(``time.process_time``), the minimum over rounds (the least disturbed), in µs. Not measured
here: the kernel's side of the four sends and receives and uvloop's callbacks (``bench.calls``
has those).

Cold columns: the same calls, each timed alone (``time.thread_time_ns``, the probe's own cost
subtracted) right after 8 MiB of memory has been written, so it starts with caches another
process has just used — what each event meets in a gateway with few calls, where every datagram
wakes the loop on its own. In ``bench.calls`` at N=10 the gateway's callbacks cost about what
these columns say, several times the hot figures: at small N the per-call cost is cache misses,
so it falls with less code and fewer objects touched per frame, not only with fewer
instructions.

The harness reaches into a few private attributes to wire the pieces without sockets; a rename
there breaks this benchmark loudly (AttributeError), not silently.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import struct
import time
from collections.abc import Callable
from typing import Any

from websockets.client import ClientProtocol
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - the library ships the C extension for CPython
    from websockets.utils import apply_mask

from bench.common import print_table
from telepath.bridges.audio import AudioConverter, WireFormat
from telepath.bridges.base import CustomConfig
from telepath.bridges.custom.bridge import TelepathAgentBridge
from telepath.bridges.ws_socket import AgentSocket
from telepath.rtp.codecs import CodecSpec
from telepath.rtp.packet import pack_rtp
from telepath.rtp.srtp import SrtpContext
from telepath.rtp.srtp_keys import SUITES, SrtpKeys
from telepath.transport.media_session import AudioReceived, MediaSession
from telepath.transport.ports import RtpPortAllocator

FRAMES = 20_000
COLD_FRAMES = 2_000
_EVICT = bytearray(8 << 20)
_LINES = b"\x01" * (len(_EVICT) // 64)
BLOCK = 500  # frames per direction before switching (keeps the playout queue short)
PAYLOAD = bytes(range(160))  # one 20 ms PCMU frame
ADDR = ("127.0.0.1", 9)


class _Sink:
    """A transport that accepts writes and drops them."""

    def write(self, data: bytes) -> None:
        pass

    def sendto(self, data: bytes, addr: object = None) -> None:
        pass

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        pass


Step = tuple[str, Callable[[int], object]]


def _evict() -> None:
    """Write one byte per 64-byte cache line over 8 MiB."""
    _EVICT[::64] = _LINES


def _cold(steps: list[Step], rounds: int) -> dict[str, float]:
    """µs of CPU per call of each step when every call starts after an eviction (min over
    rounds of the mean), less what the probe costs around an empty call."""

    def once(fn: Callable[[int], object], i: int) -> int:
        _evict()
        t = time.thread_time_ns()
        fn(i)
        return time.thread_time_ns() - t

    best = {name: float("inf") for name, _ in steps}
    probe = float("inf")
    i = 0
    for _ in range(rounds):
        spent = dict.fromkeys(best, 0)
        empty = 0
        for _ in range(COLD_FRAMES):
            for name, fn in steps:
                spent[name] += once(fn, i)
            empty += once(lambda _i: None, i)
            i += 1
        probe = min(probe, empty / COLD_FRAMES)
        for name, value in spent.items():
            best[name] = min(best[name], value / COLD_FRAMES)
    return {name: max(0.0, (value - probe) / 1000) for name, value in best.items()}


def _open_protocols() -> tuple[ClientProtocol, ServerProtocol]:
    """A client and a server protocol past the opening handshake, in memory."""
    client = ClientProtocol(parse_uri("ws://127.0.0.1:1/agent"), max_size=1 << 20)
    server = ServerProtocol()
    client.send_request(client.connect())
    for data in client.data_to_send():
        server.receive_data(data)
    server.send_response(server.accept(server.events_received()[0]))  # type: ignore[arg-type]
    for data in server.data_to_send():
        client.receive_data(data)
    client.events_received()
    return client, server


def _agent_frame(server: ServerProtocol) -> bytes:
    text = json.dumps(
        {"type": "audio", "payload": base64.b64encode(PAYLOAD).decode()}, separators=(",", ":")
    )
    server.send_text(text.encode())
    return b"".join(server.data_to_send())


async def _telepath(rounds: int, srtp: bool = False) -> tuple[dict[str, float], dict[str, float]]:
    allocator = RtpPortAllocator(46000, 46100, host="127.0.0.1")
    keys = SrtpKeys(SUITES["AES_CM_128_HMAC_SHA1_80"], 1, os.urandom(30), os.urandom(30))
    caller = SrtpContext(SrtpKeys(keys.suite, 1, keys.remote_key, keys.local_key))
    session = await MediaSession.open(
        allocator.allocate(),
        remote=ADDR,
        codec=CodecSpec.static("PCMU"),
        inactivity_timeout_s=0,
        srtp=keys if srtp else None,
    )

    def wire(packet: bytes) -> bytes:  # what the caller sends: SRTP when the call is
        return caller.protect(packet) if srtp else packet

    session._rtp = _Sink()  # type: ignore[assignment]
    session._latched = True
    client, server = _open_protocols()
    sock = AgentSocket(client, ping_interval_s=0)
    sock._transport = _Sink()  # type: ignore[assignment]
    bridge = TelepathAgentBridge(CustomConfig(endpoint="ws://127.0.0.1:1/agent"))
    bridge._converter = AudioConverter("pcmu", WireFormat("ulaw", 8000))
    bridge._ws = sock
    sock.on_message = bridge._take_now
    bridge.set_audio_sink(lambda event: session.play(event.payload))

    def to_agent(event: AudioReceived) -> None:
        bridge.send_audio_nowait(event.payload)

    session.set_audio_sink(to_agent)
    frame = _agent_frame(server)
    start = asyncio.get_running_loop().time()
    best = {"caller frame": float("inf"), "agent message": float("inf"), "tick": float("inf")}
    seq = 0
    try:
        for _ in range(rounds):
            spent = dict.fromkeys(best, 0.0)
            for _ in range(FRAMES // BLOCK):
                packets = [
                    wire(pack_rtp(0, (seq + i) & 0xFFFF, (seq + i) * 160, 1234, PAYLOAD, False))
                    for i in range(BLOCK)
                ]
                t0 = time.process_time()
                for packet in packets:
                    session._on_rtp(packet, ADDR)
                t1 = time.process_time()
                for _ in range(BLOCK):
                    sock.data_received(frame)
                t2 = time.process_time()
                for i in range(BLOCK):
                    session._on_tick(start + (seq + i) * 0.02, 1)
                t3 = time.process_time()
                seq += BLOCK
                spent["caller frame"] += t1 - t0
                spent["agent message"] += t2 - t1
                spent["tick"] += t3 - t2
            for key, value in spent.items():
                best[key] = min(best[key], value * 1e6 / FRAMES)
        packets = [
            wire(pack_rtp(0, (seq + i) & 0xFFFF, (seq + i) * 160, 1234, PAYLOAD, False))
            for i in range(rounds * COLD_FRAMES)
        ]
        cold = _cold(
            [
                ("caller frame", lambda i: session._on_rtp(packets[i], ADDR)),
                ("agent message", lambda i: sock.data_received(frame)),
                ("tick", lambda i: session._on_tick(start + (seq + i) * 0.02, 1)),
            ],
            rounds,
        )
    finally:
        await session.close()
    return best, cold


def _floor(rounds: int) -> tuple[dict[str, float], dict[str, float]]:
    _client, server = _open_protocols()
    frame = _agent_frame(server)
    header = struct.Struct("!BBHII")
    rtp = pack_rtp(0, 1, 160, 1234, PAYLOAD, False)
    mask = bytes((0x5A, 0x12, 0x9C, 0x33))

    def caller_frame(_i: int) -> None:
        header.unpack_from(rtp)
        text = json.dumps({"type": "audio", "payload": base64.b64encode(rtp[12:]).decode()})
        data = text.encode()
        size = len(data)
        head = bytes((0x81, 0x80 | size)) if size < 126 else struct.pack("!BBH", 0x81, 254, size)
        head + mask + apply_mask(data, mask)

    def agent_message(_i: int) -> None:
        size = frame[1] & 0x7F
        at = 2
        if size == 126:
            size = int.from_bytes(frame[2:4], "big")
            at = 4
        message = json.loads(frame[at : at + size].decode())
        base64.b64decode(message["payload"])

    def tick(i: int) -> None:
        header.pack(0x80, 0, i & 0xFFFF, i * 160, 1234) + PAYLOAD

    steps: list[Step] = [
        ("caller frame", caller_frame),
        ("agent message", agent_message),
        ("tick", tick),
    ]
    best = {name: float("inf") for name, _ in steps}
    for _ in range(rounds):
        for name, fn in steps:
            t0 = time.process_time()
            for i in range(FRAMES):
                fn(i)
            best[name] = min(best[name], (time.process_time() - t0) * 1e6 / FRAMES)
    return best, _cold(steps, rounds)


def run(quick: bool = False) -> dict[str, Any]:
    rounds = 3 if quick else 7
    # the pacer's own timer sees the loop blocked by the measurement and says so: not news here
    logging.getLogger("telepath").setLevel(logging.ERROR)
    ours, ours_cold = asyncio.run(_telepath(rounds))
    srtp, srtp_cold = asyncio.run(_telepath(rounds, srtp=True))
    floor, floor_cold = _floor(rounds)
    for figures in (ours, ours_cold, srtp, srtp_cold, floor, floor_cold):
        figures["frame pair"] = sum(figures.values())
    rows = [
        {
            "step": key,
            "telepath_us": round(ours[key], 2),
            "floor_us": round(floor[key], 2),
            "ratio": round(ours[key] / floor[key], 2),
            "telepath_cold_us": round(ours_cold[key], 1),
            "floor_cold_us": round(floor_cold[key], 1),
            "cold_ratio": round(ours_cold[key] / floor_cold[key], 2),
            "srtp_us": round(srtp[key], 2),
            "srtp_cold_us": round(srtp_cold[key], 1),
        }
        for key in ours
    ]
    print_table(
        f"Per-frame Python, no sockets (µs of CPU; hot: best of {rounds} x {FRAMES} frames; "
        f"cold: each call after an 8 MiB eviction, best of {rounds} x {COLD_FRAMES})",
        [
            "step",
            "telepath µs",
            "floor µs",
            "ratio",
            "cold µs",
            "floor cold µs",
            "cold ratio",
            "SRTP µs",
            "SRTP cold µs",
        ],
        [
            [
                r["step"],
                r["telepath_us"],
                r["floor_us"],
                r["ratio"],
                r["telepath_cold_us"],
                r["floor_cold_us"],
                r["cold_ratio"],
                r["srtp_us"],
                r["srtp_cold_us"],
            ]
            for r in rows
        ],
    )
    return {
        "rows": rows,
        "summary": {
            "frame_pair_us": rows[-1]["telepath_us"],
            "frame_pair_cold_us": rows[-1]["telepath_cold_us"],
            "frame_pair_srtp_us": rows[-1]["srtp_us"],
            "frame_pair_srtp_cold_us": rows[-1]["srtp_cold_us"],
            "goals": {},
        },
    }


if __name__ == "__main__":
    run()
