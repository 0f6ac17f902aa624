"""Handing SIP messages between worker processes: the wire format, the front, the inbox."""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections.abc import Callable

import pytest

from telepath.clock import FakeClock
from telepath.sip.defence import DefencePolicy, SourceGuard
from telepath.sip.routing import owner_of
from telepath.sip.ua import CallEnded, Event, InviteReceived, UaConfig, UserAgentCore
from telepath.transport import sip_server
from telepath.transport.receive_backlog import BacklogMonitor
from telepath.transport.sip_fanout import (
    Forwarded,
    Forwarder,
    Inbox,
    OrderedSender,
    pack,
    pack_claim,
    pack_query,
    pack_stream_reply,
    pack_unsent,
    unpack,
    unpack_stream_reply,
)
from telepath.transport.sip_server import ListenAddress, LoopClock, SipServer, StreamLimits


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
        assert forward.stream(theirs, "TLS", peer, 3) is True
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


def test_once_stopping_a_gone_workers_messages_are_left_to_the_front() -> None:
    """In the shutdown no worker comes back: what one that exited owned is not dropped nor held
    (nobody would answer it) but left to the front's draining core (503 / 481)."""
    front, worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with front, worker:
        forward = Forwarder(2, {1: front})
        forward.stopping = True
        theirs, peer = _invite(_owned_by(1, 2)), ("198.51.100.9", 40000)
        assert forward(theirs, peer, 0.0) is True  # still serving its calls: forwarded
        assert forward.stream(theirs, "TCP", peer, 3) is True
        assert len(_drain(worker)) == 2
        forward.detach(1)
        assert forward(theirs, peer, 0.0) is False
        assert forward.stream(theirs, "TLS", peer, 3) is False
        assert (forward.forwarded, forward.dropped) == (2, 0)
        forward.attach(1, front)
        assert _drain(worker) == []  # nothing was held for it


def test_a_question_about_a_connection_and_its_claim_are_no_sip_message() -> None:
    query = unpack(pack_query(9))
    assert query.is_query and query.conn == 9 and query.transport in ("TCP", "TLS")
    assert not unpack(pack(_invite(b"x@y"), ("10.0.0.1", 5060), 0.0, "TCP", 9)).is_query
    assert not unpack(pack(b"", ("10.0.0.1", 5060), 0.0)).is_query  # an empty UDP datagram
    assert unpack_stream_reply(pack_claim(9)) == (9, b"")  # handed on as any reply


async def test_the_front_asks_every_worker_after_what_it_forwarded_on_the_connection() -> None:
    front1, worker1 = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    front2, worker2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with front1, worker1, front2, worker2:
        forward = Forwarder(3, {})
        assert forward.ask(5) is False  # no worker serves: nobody to keep it for
        forward.attach(1, front1)
        forward.attach(2, front2)
        theirs = _invite(_owned_by(1, 3))
        assert forward.stream(theirs, "TCP", ("198.51.100.9", 40000), 5) is True
        assert forward.ask(5) is True
        first = [unpack(m) for m in _drain(worker1)]
        assert [(m.data, m.is_query, m.conn) for m in first] == [(theirs, False, 5), (b"", True, 5)]
        assert [(m.is_query, m.conn) for m in map(unpack, _drain(worker2))] == [(True, 5)]
        assert forward.forwarded == 1  # a question is not a forwarded message


def _full_invite(call_id: str) -> bytes:
    return (
        "INVITE sip:bob@127.0.0.1 SIP/2.0\r\n"
        "Via: SIP/2.0/TCP 198.51.100.9:40000;branch=z9hG4bK-q1\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:alice@198.51.100.9>;tag=a1\r\n"
        f"To: <sip:bob@127.0.0.1>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
        "Contact: <sip:alice@198.51.100.9:40000;transport=tcp>\r\nContent-Length: 0\r\n\r\n"
    ).encode()


async def test_a_worker_claims_only_the_connections_its_calls_use() -> None:
    """The worker answers the front's question from its core: a connection a request of its
    calls came on (still being answered) is claimed; any other gets no answer."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    front, inbox = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    server = SipServer(UserAgentCore(UaConfig(), FakeClock(0.0)), lambda event: None)
    server.adopt(udp, inbox, ("127.0.0.1", 5060))
    try:
        front.send(pack(_full_invite("q1@x"), ("198.51.100.9", 40000), time.time(), "TCP", 7))
        front.send(pack_query(7))
        front.send(pack_query(8))
        claims: list[int] = []
        for _ in range(100):
            await asyncio.sleep(0.01)
            for message in _drain(front):
                reply = unpack_stream_reply(message)
                if reply is not None and reply[1] == b"":
                    claims.append(reply[0])
            if claims:
                break
        await asyncio.sleep(0.05)  # an answer about connection 8 would have come by now
        claims += [r[0] for r in map(unpack_stream_reply, _drain(front)) if r and not r[1]]
        assert claims == [7]
    finally:
        await server.stop()
        front.close()
        inbox.close()


@pytest.mark.parametrize("claim", [False, True])
async def test_the_front_closes_an_idle_connection_unless_a_worker_claims_it(
    claim: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Idle for ``idle_s``: the workers are asked; unclaimed, the connection is closed once they
    had the time to answer; claimed, it is kept (and asked about again an idle time later)."""
    monkeypatch.setattr(sip_server, "WORKER_ANSWER_S", 0.05)
    server = SipServer(
        UserAgentCore(UaConfig(), FakeClock(0.0)),
        lambda event: None,
        limits=StreamLimits(idle_s=0.2),
    )
    asked: list[float] = []
    open_after_asking: list[bool] = []
    loop = asyncio.get_running_loop()

    def ask(conn: int) -> bool:
        asked.append(loop.time())
        loop.call_soon(lambda: open_after_asking.append(server.is_open(conn)))
        if claim and len(asked) <= 3:
            loop.call_later(0.02, server.write_stream, conn, b"")  # the worker's answer
        return True

    server.ask_workers = ask
    await server.start([ListenAddress("TCP", "127.0.0.1", 0)])
    try:
        reader, writer = await asyncio.open_connection(*server.bound["TCP"])
        opened = loop.time()
        await asyncio.wait_for(reader.read(), 10)  # until the server closes it
        closed = loop.time()
        writer.close()
        assert server.core.counters["stream_idle_closed"] == 1
        assert open_after_asking == [True] * len(asked)  # each time, waiting for the answers
        assert asked[0] - opened >= 0.19  # first asked once idle
        assert closed - asked[-1] >= 0.045  # closed once the workers had the time to answer
        # claimed three times, asked a fourth time, closed; a claim is activity: the next
        # question comes an idle time later, not as soon as the answer time is over
        assert len(asked) == (4 if claim else 1)
        assert all(b - a >= 0.19 for a, b in itertools.pairwise(asked))
    finally:
        await server.stop()


async def test_without_a_worker_to_ask_an_idle_connection_is_closed_at_once() -> None:
    server = SipServer(
        UserAgentCore(UaConfig(), FakeClock(0.0)),
        lambda event: None,
        limits=StreamLimits(idle_s=0.2),
    )
    loop = asyncio.get_running_loop()
    open_after_asking: list[bool] = []

    def ask(conn: int) -> bool:  # every worker is being started again
        loop.call_soon(lambda: open_after_asking.append(server.is_open(conn)))
        return False

    server.ask_workers = ask
    await server.start([ListenAddress("TCP", "127.0.0.1", 0)])
    try:
        reader, writer = await asyncio.open_connection(*server.bound["TCP"])
        await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert open_after_asking == [False]  # closed in the same turn
    finally:
        await server.stop()


@pytest.mark.parametrize("idle_s", [0.3, 0.0])  # 0: idle connections are otherwise kept
@pytest.mark.parametrize("claim", [False, True])
async def test_a_connection_its_opener_lets_go_is_closed_unless_a_worker_claims_it(
    claim: bool, idle_s: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outbound registration lets its connection go (``SipServer.let_go``): the workers are
    asked at once, as for an idle connection, and it is closed unless one claims it (a call of
    theirs the registrar sent on it) — then it is asked about again once idle. To the
    registration it is gone at once either way: it does not take it up again."""
    monkeypatch.setattr(sip_server, "WORKER_ANSWER_S", 0.05)
    monkeypatch.setattr(sip_server, "LET_GO_IDLE_S", 0.3)
    server = SipServer(
        UserAgentCore(UaConfig(), FakeClock(0.0)),
        lambda event: None,
        limits=StreamLimits(idle_s=idle_s),
    )
    loop = asyncio.get_running_loop()
    asked: list[int] = []

    def ask(conn: int) -> bool:
        asked.append(conn)
        if claim and len(asked) == 1:
            loop.call_later(0.02, server.write_stream, conn, b"")  # the worker's answer
        return True

    server.ask_workers = ask
    closed = asyncio.Event()

    async def registrar(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the gateway closes its connection
        closed.set()
        writer.close()

    listening = await asyncio.start_server(registrar, "127.0.0.1", 0)
    try:
        conn = await server.connect("TCP", listening.sockets[0].getsockname()[:2])
        server.let_go(conn)
        assert asked == [conn] and not server.is_open(conn)
        await asyncio.sleep(0.15)  # past the time the workers have to answer
        assert closed.is_set() is not claim
        await asyncio.wait_for(closed.wait(), 5)
        assert asked == [conn] * (2 if claim else 1)  # claimed: asked again once idle
    finally:
        await server.stop()
        listening.close()


async def test_a_connection_let_go_without_workers_is_closed_at_once() -> None:
    """One process: nobody to ask (the registration asked the core before letting go)."""
    server = SipServer(UserAgentCore(UaConfig(), FakeClock(0.0)), lambda event: None)
    closed = asyncio.Event()

    async def registrar(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        closed.set()
        writer.close()

    listening = await asyncio.start_server(registrar, "127.0.0.1", 0)
    try:
        conn = await server.connect("TCP", listening.sockets[0].getsockname()[:2])
        transport = server.connections[conn].transport
        server.let_go(conn)
        assert transport is not None and transport.is_closing()
        await asyncio.wait_for(closed.wait(), 5)
    finally:
        await server.stop()
        listening.close()


class _CountingBacklog(BacklogMonitor):
    __slots__ = ("samples",)

    def __init__(self) -> None:
        super().__init__(threshold_s=0.025)
        self.samples: list[float] = []

    def sample(self, waited_s: float, now: float) -> None:
        self.samples.append(waited_s)
        super().sample(waited_s, now)


async def test_a_datagram_handed_to_a_worker_is_one_receive_wait_there_not_two() -> None:
    """The front's backlog monitor samples every datagram it reads (its own loop's queue);
    the wait histogram is observed once per datagram, by the process that serves it: the
    front for its own, the worker — with the hand-over in the wait — for the others."""
    mine, theirs = _owned_by(0, 2), _owned_by(1, 2)
    front_waits: list[float] = []
    front_backlog = _CountingBacklog()
    front = SipServer(
        UserAgentCore(UaConfig(), FakeClock(0.0)),
        lambda event: None,
        backlog=front_backlog,
        on_receive_wait=front_waits.append,
    )
    near, far = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    front.router = Forwarder(2, {1: near})
    worker_waits: list[float] = []
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    worker = SipServer(
        UserAgentCore(UaConfig(), FakeClock(0.0)),
        lambda event: None,
        on_receive_wait=worker_waits.append,
    )
    await front.start([ListenAddress("UDP", "127.0.0.1", 0)])
    worker.adopt(udp, far, front.bound["UDP"])
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            for call_id in (theirs, theirs, theirs, mine):
                peer.sendto(_invite(call_id), front.bound["UDP"])
            for _ in range(200):
                await asyncio.sleep(0.01)
                if len(front_backlog.samples) == 4 and len(worker_waits) == 3:
                    break
        await asyncio.sleep(0.05)  # a second observation of any would have come by now
        assert len(front_backlog.samples) == 4  # the front's own queue: every datagram
        assert (len(front_waits), len(worker_waits)) == (1, 3)
    finally:
        await worker.stop()
        await front.stop()
        near.close()
        far.close()


@pytest.mark.parametrize(
    "spelling",
    [
        lambda call_id: b"\r\n\r\n" + _invite(call_id),  # RFC 3261 §7.5: leading CRLFs
        lambda call_id: _invite(call_id).replace(b"Call-ID: ", b"Call-ID:\r\n "),  # §7.3.1
    ],
)
def test_a_message_of_a_workers_call_reaches_it_however_it_is_spelled(
    spelling: Callable[[bytes], bytes],
) -> None:
    """The front handled these itself (no Call-ID found): a BYE of the worker's call got 481
    there and the call stayed up."""
    front, worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with front, worker:
        forward = Forwarder(2, {1: front})
        data = spelling(_owned_by(1, 2))
        assert forward(data, ("10.0.0.1", 5060), 0.0) is True
        assert [unpack(m).data for m in _drain(worker)] == [data]


async def test_a_banned_source_s_connection_carrying_a_worker_s_calls_is_closed() -> None:
    """The front holds every worker's bans (cli/workers.py): a banned source's message on a
    connection is closed there, as in one process — it was forwarded to the worker, which
    dropped it, and the connection stayed open for as long as the peer liked."""
    guard = SourceGuard(DefencePolicy(), FakeClock(0.0))
    server = SipServer(UserAgentCore(UaConfig(), FakeClock(0.0)), lambda event: None, guard=guard)
    forwarded: list[bytes] = []

    def stream_router(message: bytes, transport: str, peer: object, conn: int) -> bool:
        forwarded.append(message)
        return True  # a worker's call

    server.stream_router = stream_router
    await server.start([ListenAddress("TCP", "127.0.0.1", 0)])
    try:
        reader, writer = await asyncio.open_connection(*server.bound["TCP"])
        options = b"OPTIONS sip:x SIP/2.0\r\nCall-ID: w1\r\nContent-Length: 0\r\n\r\n"
        writer.write(options)
        await _until_true(lambda: len(forwarded) == 1)
        guard.impose_ban("127.0.0.1", 60.0)
        writer.write(options)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the front
        writer.close()
        assert len(forwarded) == 1  # the banned source's message went to no worker
    finally:
        await server.stop()


async def _until_true(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not condition():  # noqa: ASYNC110 - a state, not an event
            await asyncio.sleep(0.01)


def _ack(call_id: str, to_tag: str) -> bytes:
    return (
        "ACK sip:bob@127.0.0.1 SIP/2.0\r\n"
        "Via: SIP/2.0/TCP 198.51.100.9:40000;branch=z9hG4bK-ack1\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:alice@198.51.100.9>;tag=a1\r\n"
        f"To: <sip:bob@127.0.0.1>;tag={to_tag}\r\nCall-ID: {call_id}\r\nCSeq: 1 ACK\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


async def test_a_worker_told_its_message_was_not_sent_ends_its_transaction_at_once() -> None:
    """RFC 3261 §17.1.4 in a worker: the front could not send the worker's BYE (the call's
    connection gone, its next hop refusing a new one) and says so: the dialog ends now, as in
    one process, not when Timer F (32 s) fires."""
    loop = asyncio.get_running_loop()
    events: list[Event] = []
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    front, inbox = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    server = SipServer(UserAgentCore(UaConfig(), LoopClock(loop)), events.append)
    server.adopt(udp, inbox, ("127.0.0.1", 5060))
    peer = ("198.51.100.9", 40000)
    try:
        front.send(pack(_full_invite("u1@x"), peer, time.time(), "TCP", 7))
        await _until_true(lambda: bool(events))
        (invite,) = events
        assert isinstance(invite, InviteReceived)
        dialog, outputs = server.core.accept(invite.tx, b"v=0\r\n")
        server.dispatch(outputs)
        front.send(pack(_ack("u1@x", dialog.local_tag), peer, time.time(), "TCP", 7))
        await _until_true(lambda: dialog.acked)
        _drain(front)  # the 200 OK
        server.dispatch(server.core.hangup(dialog))
        (reply,) = [unpack_stream_reply(m) for m in _drain(front)]
        assert reply is not None and reply[0] == 7 and reply[1].startswith(b"BYE ")
        front.send(pack_unsent(reply[1]))
        await _until_true(lambda: isinstance(events[-1], CallEnded))
        assert events[-1] == CallEnded(dialog, "bye_failed")
        assert server.core.counters["client_tx_transport_errors"] == 1
    finally:
        await server.stop()
        front.close()
        inbox.close()


def test_a_report_of_a_message_not_sent_is_no_message_from_a_peer() -> None:
    report = unpack(pack_unsent(_invite(b"x@y")))
    assert report.is_unsent and not report.is_query and report.data == _invite(b"x@y")
    assert not unpack(pack(_invite(b"x@y"), ("10.0.0.1", 5060), 0.0, "TCP", 9)).is_unsent
    assert not unpack(pack(_invite(b"x@y"), ("10.0.0.1", 5060), 0.0)).is_unsent  # UDP
    assert not unpack(pack_query(9)).is_unsent
