"""Handing SIP datagrams between worker processes: the wire format, the front, the inbox."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from telepath.sip.routing import owner_of
from telepath.transport.sip_fanout import Forwarder, Inbox, pack, unpack


def _owned_by(owner: int, workers: int, prefix: str = "c") -> bytes:
    for i in range(10_000):
        call_id = f"{prefix}{i}@10.0.0.1".encode()
        if owner_of(call_id, workers) == owner:
            return call_id
    raise AssertionError("no call id found")


def _invite(call_id: bytes) -> bytes:
    return (
        b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK9\r\n"
        b"Call-ID: " + call_id + b"\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )


@pytest.mark.parametrize("addr", [("203.0.113.7", 5060), ("2001:db8::1", 65535), ("", 0)])
def test_pack_round_trip(addr: tuple[str, int]) -> None:
    data = _invite(b"x@y")
    assert unpack(pack(data, addr, 1234.5)) == (data, addr, 1234.5)


@pytest.mark.parametrize("message", [b"", b"\x00" * 10, pack(b"", ("1.2.3.4", 1), 0.0)[:12]])
def test_unpack_refuses_a_truncated_message(message: bytes) -> None:
    with pytest.raises(ValueError):
        unpack(message)


def test_forwarder_hands_other_workers_calls_over_and_keeps_its_own() -> None:
    front, worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with front, worker:
        forward = Forwarder(2, {1: front})
        mine = _invite(_owned_by(0, 2))
        theirs = _invite(_owned_by(1, 2))
        assert forward(mine, ("10.0.0.1", 5060), 0.0) is False
        assert forward(b"\r\n\r\n", ("10.0.0.1", 5060), 0.0) is False  # keep-alive: no Call-ID
        before = time.time()
        assert forward(theirs, ("10.0.0.1", 5062), 0.25) is True
        data, addr, arrival = unpack(worker.recv(70_000))
        assert (data, addr) == (theirs, ("10.0.0.1", 5062))
        assert before - 0.25 - 0.01 <= arrival <= time.time() - 0.25 + 0.01
        assert (forward.forwarded, forward.dropped) == (1, 0)
        worker.setblocking(False)
        with pytest.raises(BlockingIOError):
            worker.recv(70_000)  # nothing else was forwarded


def test_forwarder_drops_when_the_worker_is_missing_or_behind() -> None:
    theirs = _invite(_owned_by(1, 2))
    assert Forwarder(2, {})(theirs, ("10.0.0.1", 5060), 0.0) is True  # worker restarting
    front, worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with front, worker:
        front.setblocking(False)
        forward = Forwarder(2, {1: front})
        for _ in range(5_000):  # the inbox fills (the worker reads nothing): no exception
            assert forward(theirs, ("10.0.0.1", 5060), 0.0) is True
        assert forward.dropped > 0
        assert forward.forwarded + forward.dropped == 5_000
    drops: list[None] = []
    closed = Forwarder(2, {1: front}, on_drop=lambda: drops.append(None))  # the worker is gone
    assert closed(theirs, ("10.0.0.1", 5060), 0.0) is True
    assert closed.dropped == 1 and len(drops) == 1  # counted in the metrics too


async def test_inbox_feeds_forwarded_datagrams_with_their_peer_and_wait() -> None:
    front, worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    got: list[tuple[bytes, tuple[str, int], float]] = []
    arrived = asyncio.Event()

    def on_datagram(data: bytes, addr: tuple[str, int], waited: float) -> None:
        got.append((data, addr, waited))
        if len(got) == 2:
            arrived.set()

    inbox = Inbox(worker, on_datagram)
    inbox.start()
    try:
        front.send(b"\x01\x02")  # malformed: counted, skipped
        front.send(pack(b"first", ("192.0.2.1", 5060), time.time() - 0.5))
        front.send(pack(b"second", ("192.0.2.2", 5070), time.time()))
        async with asyncio.timeout(5):
            await arrived.wait()
    finally:
        inbox.stop()
        front.close()
        worker.close()
    assert [(d, a) for d, a, _ in got] == [
        (b"first", ("192.0.2.1", 5060)),
        (b"second", ("192.0.2.2", 5070)),
    ]
    assert 0.5 <= got[0][2] < 5
    assert 0 <= got[1][2] < 5
    assert inbox.malformed == 1
