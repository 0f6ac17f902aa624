"""Handing SIP messages between worker processes: the wire format, the front, the inbox."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from telepath.sip.routing import owner_of
from telepath.transport.sip_fanout import (
    Forwarded,
    Forwarder,
    Inbox,
    OrderedSender,
    pack,
    pack_stream_reply,
    unpack,
    unpack_stream_reply,
)


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
    assert unpack(pack(data, addr, 1234.5)) == Forwarded(data, addr, 1234.5, "UDP", 0)
    for transport in ("TCP", "TLS"):
        message = unpack(pack(data, addr, 1.0, transport, 4_000_000_000))
        assert message == Forwarded(data, addr, 1.0, transport, 4_000_000_000)


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"\x00" * 10,
        pack(b"", ("1.2.3.4", 1), 0.0)[:18],  # the host cut off
        pack(b"x", ("", 1), 0.0)[:11] + b"\x07" + pack(b"x", ("", 1), 0.0)[12:],  # transport 7
    ],
)
def test_unpack_refuses_a_truncated_or_unknown_message(message: bytes) -> None:
    with pytest.raises(ValueError):
        unpack(message)


def test_stream_reply_round_trip() -> None:
    data = b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"
    assert unpack_stream_reply(pack_stream_reply(7, data)) == (7, data)
    assert unpack_stream_reply(b"w") is None  # a wake-up
    assert unpack_stream_reply(b"s\x00") is None  # too short to be a reply


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
        data, addr, arrival, transport, _ = unpack(worker.recv(70_000))
        assert (data, addr, transport) == (theirs, ("10.0.0.1", 5062), "UDP")
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
    got: list[tuple[Forwarded, float]] = []
    arrived = asyncio.Event()

    def on_message(message: Forwarded, waited: float) -> None:
        got.append((message, waited))
        if len(got) == 3:
            arrived.set()

    inbox = Inbox(worker, on_message)
    inbox.start()
    try:
        front.send(b"\x01\x02")  # malformed: counted, skipped
        front.send(pack(b"first", ("192.0.2.1", 5060), time.time() - 0.5))
        front.send(pack(b"second", ("192.0.2.2", 5070), time.time()))
        front.send(pack(b"third", ("192.0.2.3", 5061), time.time(), "TLS", 12))
        async with asyncio.timeout(5):
            await arrived.wait()
    finally:
        inbox.stop()
        front.close()
        worker.close()
    assert [(m.data, m.addr, m.transport, m.conn) for m, _ in got] == [
        (b"first", ("192.0.2.1", 5060), "UDP", 0),
        (b"second", ("192.0.2.2", 5070), "UDP", 0),
        (b"third", ("192.0.2.3", 5061), "TLS", 12),
    ]
    assert 0.5 <= got[0][1] < 5
    assert 0 <= got[1][1] < 5
    assert inbox.malformed == 1


def _drain(sock: socket.socket) -> list[bytes]:
    sock.setblocking(False)
    out: list[bytes] = []
    while True:
        try:
            out.append(sock.recv(70_000))
        except BlockingIOError:
            return out


async def test_ordered_sender_waits_when_full_and_keeps_the_order() -> None:
    near, far = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with near, far:
        sender = OrderedSender(near, limit=100_000)
        sent = [f"message {i}".encode() * 50 for i in range(3_000)]  # more than the pair holds
        assert all(sender.send(m) for m in sent)
        received = _drain(far)
        assert 0 < len(received) < len(sent)  # the rest waits in order
        for _ in range(200):
            await asyncio.sleep(0.01)  # the loop writes as the reader makes room
            received += _drain(far)
            if len(received) == len(sent):
                break
        assert received == sent and sender.dropped == 0
        full = OrderedSender(near, limit=1)
        while full.send(b"x" * 1000) and not full._waiting:
            pass  # until the pair is full and one message waits
        assert full.send(b"y") is False and full.dropped == 1  # past the limit: dropped
        full.close()


async def test_forwarder_hands_stream_messages_over_and_holds_them_for_a_restarting_worker() -> (
    None
):
    front, worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with front, worker:
        forward = Forwarder(2, {})
        forward.attach(1, front)
        peer = ("198.51.100.9", 40000)
        mine, theirs = _invite(_owned_by(0, 2)), _invite(_owned_by(1, 2))
        assert forward.stream(mine, "TCP", peer, 3) is False
        assert forward.stream(b"\r\n\r\n", "TCP", peer, 3) is False  # no Call-ID
        assert not forward.carried(3)  # nothing of a worker's on it yet
        assert forward.stream(theirs, "TLS", peer, 3) is True
        # a worker's call signals over connection 3: the front, which holds no dialog of it,
        # must not close it (a registration letting it go asks this)
        assert forward.carried(3) and not forward.carried(4)
        (message,) = [unpack(m) for m in _drain(worker)]
        assert (message.data, message.transport, message.addr, message.conn) == (
            theirs,
            "TLS",
            peer,
            3,
        )
        # the worker exits: datagrams are lost (the peer retransmits), stream messages wait
        assert forward.detach(1) is front
        assert forward(theirs, peer, 0.0) is True and forward.dropped == 1
        later = [_invite(_owned_by(1, 2, prefix=f"held{i}-")) for i in range(3)]
        assert all(forward.stream(m, "TCP", peer, 4) for m in later)
        new_front, new_worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        with new_front, new_worker:
            forward.attach(1, new_front)
            assert [unpack(m).data for m in _drain(new_worker)] == later
        assert forward.forwarded == 4 and forward.dropped == 1
