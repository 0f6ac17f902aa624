"""One SIP port served by several worker processes: messages handed over by Call-ID.

A carrier sends every call from one address, so ``SO_REUSEPORT`` (which balances by source
address) would give all of its calls to one process. Instead the process that binds the port
(worker 0, the *front*) reads every datagram, looks up its owner (:mod:`telepath.sip.routing`)
and, when another worker owns it, writes it to that worker's inbox — one end of an ``AF_UNIX``
datagram socket pair — with the peer's address and the kernel's arrival time. Workers answer
from the same UDP socket, inherited from the front, so replies leave from the port the carrier
sent to (RFC 3261 §18.2.2). A worker never reads that socket.

TCP and TLS: a carrier keeps one connection for all its calls, and the connection (and its TLS
session) stays in the front. The front frames each message off the stream and hands it over the
same way, with the connection's id; what the worker sends on that connection comes back the
other way on the pair (``s`` + the id + the message) and the front writes it. A stream is
reliable — a peer does not retransmit over it (§17.1.1.2) — so unlike datagrams these messages
are never dropped when a socket pair is full: they wait, in order (:class:`OrderedSender`).

The front closes a connection idle for ``TELEPATH_SIP_TCP_IDLE_S`` unless a call signals over
it (RFC 3261 §26.1.5: connections are a resource a peer must not hold at will) — and only the
worker that holds a call's dialog knows whether it does. So at that moment the front asks every
worker (:meth:`Forwarder.ask`: a stream message with no SIP message in it, behind what was
forwarded before) and a worker whose core uses the connection — a dialog's, or a request on it
still being answered — claims it (:func:`pack_claim`: a reply with no message to write); the
front keeps what is claimed and closes what is not once the workers had time to answer.
Merely having carried a message of a worker's Call-ID keeps nothing: anyone can send one. A
connection an outbound registration lets go (the registrar may have sent a worker's call on it)
is asked about the same way, at once (``SipServer.let_go``).

A worker's message the front cannot write — its connection gone and none to its next hop
could be opened (``SipServer._elsewhere``) — is reported back to that worker
(:func:`pack_unsent`: the message, on no connection), whose core ends its client transaction
at once (RFC 3261 §17.1.4) as in one process; only the worker holds that transaction.

The arrival time travels as wall-clock seconds (``SIOCGSTAMP`` is ``CLOCK_REALTIME``), so the
worker's :class:`~telepath.transport.receive_backlog.BacklogMonitor` sees the whole wait: in the
front's socket and in its own inbox.

Hand-written: the standard library has the socket pair and ``struct``; there is no library for
handing SIP datagrams between processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

from telepath.sip.routing import call_id_of, owner_of

log = logging.getLogger(__name__)

__all__ = [
    "Forwarded",
    "Forwarder",
    "Inbox",
    "OrderedSender",
    "UdpSender",
    "pack",
    "pack_claim",
    "pack_query",
    "pack_stream_reply",
    "pack_unsent",
    "unpack",
    "unpack_stream_reply",
]

# arrival (wall-clock seconds), peer port, length of the peer host, transport, stream connection
# id (0 for UDP); then the host, then the message
_HEADER = struct.Struct("!dHBBI")
_TRANSPORTS = ("UDP", "TCP", "TLS")
# the other way (worker to front): b"w" wakes the webhook dispatcher; b"s" + connection id +
# message is a message for the front to write on that stream connection
WAKE = b"w"
_STREAM_REPLY = struct.Struct("!cI")
MAX_MESSAGE = 70_000  # a forwarded SIP message with its header fits (the framer's cap is 64 KiB)
HOLD_LIMIT = 1024  # stream messages kept for a worker being started again


class Forwarded(NamedTuple):
    """A message the front handed over: what came, from where, when, on which transport."""

    data: bytes
    addr: tuple[str, int]
    arrival: float
    transport: str = "UDP"
    conn: int = 0

    @property
    def is_query(self) -> bool:
        """The front asks whether a call uses stream connection :attr:`conn`
        (:func:`pack_query`): no SIP message is empty, so no message is taken for one."""
        return not self.data and self.conn != 0

    @property
    def is_unsent(self) -> bool:
        """The front could not send :attr:`data`, a message of this worker's
        (:func:`pack_unsent`): on a stream transport, yet on no connection (their ids start
        at 1)."""
        return self.conn == 0 and self.transport != "UDP"


def pack(
    data: bytes, addr: tuple[str, int], arrival: float, transport: str = "UDP", conn: int = 0
) -> bytes:
    """One forwarded message."""
    host = addr[0].encode("ascii")
    code = _TRANSPORTS.index(transport)
    return _HEADER.pack(arrival, addr[1], len(host), code, conn) + host + data


def unpack(message: bytes) -> Forwarded:
    """A forwarded message.

    Raises:
        ValueError: the message is shorter than its header says, or names no transport.
    """
    if len(message) < _HEADER.size:
        raise ValueError("forwarded message shorter than its header")
    arrival, port, host_len, code, conn = _HEADER.unpack_from(message)
    start = _HEADER.size + host_len
    if len(message) < start or code >= len(_TRANSPORTS):
        raise ValueError("forwarded message shorter than its header or of no transport")
    host = message[_HEADER.size : start].decode("ascii")
    return Forwarded(message[start:], (host, port), arrival, _TRANSPORTS[code], conn)


def pack_stream_reply(conn: int, data: bytes) -> bytes:
    """A worker's message for the front to write on stream connection ``conn``."""
    return _STREAM_REPLY.pack(b"s", conn) + data


def pack_query(conn: int) -> bytes:
    """The front's question to a worker: does a call of yours signal over stream connection
    ``conn`` (:attr:`Forwarded.is_query`)? Answered only when it does (:func:`pack_claim`)."""
    return pack(b"", ("", 0), 0.0, "TCP", conn)


def pack_claim(conn: int) -> bytes:
    """A worker's answer to :func:`pack_query`: a call of mine uses ``conn``, keep it open.
    A stream reply with nothing to write, so the front's reader hands it on as any reply
    (``SipServer.write_stream`` takes an empty message for a claim)."""
    return pack_stream_reply(conn, b"")


def pack_unsent(data: bytes) -> bytes:
    """The front's report to a worker: your message ``data`` for a stream connection could
    not be sent (:attr:`Forwarded.is_unsent`); the worker's transaction ends now, not at
    Timer F (RFC 3261 §17.1.4)."""
    return pack(data, ("", 0), 0.0, "TCP", 0)


def unpack_stream_reply(message: bytes) -> tuple[int, bytes] | None:
    """``(connection id, message)``, or None for anything else (a wake-up)."""
    if len(message) < _STREAM_REPLY.size or message[:1] != b"s":
        return None
    _, conn = _STREAM_REPLY.unpack_from(message)
    return conn, message[_STREAM_REPLY.size :]


class OrderedSender:
    """Sends on a non-blocking datagram socket without losing or reordering anything: what
    the socket will not take now waits (up to ``limit`` messages) and goes when it is writable.
    Past ``limit`` (the other process stopped reading) messages are dropped and counted.

    A *report* (a worker's digest outcome, a count for the front's guard) waits only while
    fewer than ``report_limit`` messages do: reports come as fast as an attacker sends failed
    logins, and must not take the places of stream messages, which nothing sends again.
    """

    def __init__(
        self, sock: socket.socket, limit: int = 4096, report_limit: int | None = None
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.limit = limit
        self.report_limit = limit // 4 if report_limit is None else report_limit
        self.dropped = 0
        self._waiting: deque[bytes] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None

    def send(self, message: bytes, *, report: bool = False) -> bool:
        """Send or queue ``message`` (a report: see the class); False when it had to be
        dropped."""
        if not self._waiting:
            try:
                self.sock.send(message)
                return True
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:  # the other end is gone (a worker restarting): like a lost packet
                self.dropped += 1
                return False
        if len(self._waiting) >= (self.report_limit if report else self.limit):
            self.dropped += 1
            return False
        self._waiting.append(message)
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._loop.add_writer(self.sock.fileno(), self._flush)
        return True

    def _flush(self) -> None:
        while self._waiting:
            try:
                self.sock.send(self._waiting[0])
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.dropped += len(self._waiting)
                self._waiting.clear()
                break
            self._waiting.popleft()
        self.close()

    def close(self) -> None:
        """Stop waiting for the socket (what still waits is dropped); the socket stays open."""
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_writer(self.sock.fileno())
            self._loop = None
        self.dropped += len(self._waiting)
        self._waiting.clear()


class Forwarder:
    """In the front: hands each datagram another worker owns to that worker's inbox.

    Call it with every datagram read; it returns True when the datagram was taken (forwarded,
    or dropped because that worker's inbox is full or gone — the sender retransmits, §17.1.1.2).

    Once :attr:`stopping` is set (the front is shutting down: no worker is started again), a
    message whose worker has exited is not taken: the front's own core answers it, draining —
    ``503`` with ``Retry-After`` to a new INVITE (README "Graceful shutdown"), ``481`` to a
    request in one of that worker's dialogs (they ended with it) — where dropping or holding
    it would leave the sender waiting for a process that never comes back.
    """

    def __init__(
        self,
        workers: int,
        outboxes: dict[int, socket.socket],
        on_drop: Callable[[], None] | None = None,
    ) -> None:
        self.workers = workers
        self.outboxes = outboxes  # worker index -> our end of its inbox pair (not 0: us)
        self.forwarded = 0
        self.dropped = 0
        self._on_drop = on_drop
        self._streams: dict[int, OrderedSender] = {}  # worker index -> its stream messages
        # stream messages for a worker that is not there (being started again): a peer does not
        # retransmit over a stream, so they wait for the next process (bounded)
        self._held: dict[int, deque[bytes]] = {}
        self.stopping = False  # no worker that exits is started again (WorkerPool.stopping)

    def attach(self, index: int, outbox: socket.socket) -> None:
        """Worker ``index`` (started again) reads ``outbox`` now; what waited for it goes."""
        self.outboxes[index] = outbox
        old = self._streams.pop(index, None)
        if old is not None:
            old.close()
        held = self._held.pop(index, None)
        if held:
            sender = self._streams[index] = OrderedSender(outbox)
            for message in held:
                self._count(sender.send(message))

    def detach(self, index: int) -> socket.socket | None:
        """Worker ``index`` exited: its datagrams are dropped and its stream messages held
        until :meth:`attach`. Returns the socket it read (for the caller to close)."""
        sender = self._streams.pop(index, None)
        if sender is not None:
            sender.close()
        return self.outboxes.pop(index, None)

    def _count(self, sent: bool) -> None:
        if sent:
            self.forwarded += 1
        else:
            self._drop()

    def _drop(self) -> None:
        self.dropped += 1
        if self._on_drop is not None:
            self._on_drop()

    def _owner(self, data: bytes) -> int:
        """The worker that owns the message's call; 0 (this process) without a Call-ID."""
        call_id = call_id_of(data)
        return 0 if call_id is None else owner_of(call_id, self.workers)

    def __call__(self, data: bytes, addr: tuple[str, int], waited_s: float) -> bool:
        owner = self._owner(data)
        if owner == 0:
            return False
        outbox = self.outboxes.get(owner)
        if outbox is None:
            if self.stopping:  # gone for good: the front's draining core answers
                return False
            self._drop()
            return True
        try:
            outbox.send(pack(data, addr, time.time() - waited_s))
        except OSError:  # full (the worker is behind) or gone (restarting): like a lost packet
            self._drop()
        else:
            self.forwarded += 1
        return True

    def stream(self, data: bytes, transport: str, addr: tuple[str, int], conn: int) -> bool:
        """A message framed off stream connection ``conn``: True when another worker owns its
        call and it was handed over (or, that worker being started again, held for it)."""
        owner = self._owner(data)
        if owner == 0:
            return False
        outbox = self.outboxes.get(owner)
        if outbox is None and self.stopping:  # gone for good: the front's core answers
            return False
        message = pack(data, addr, time.time(), transport, conn)
        if outbox is None:  # until attach()
            held = self._held.setdefault(owner, deque())
            if len(held) < HOLD_LIMIT:
                held.append(message)
            else:
                self._drop()
            return True
        self._count(self._sender(owner, outbox).send(message))
        return True

    def _sender(self, index: int, outbox: socket.socket) -> OrderedSender:
        """What carries stream messages (and questions about them) to worker ``index``, in
        order: one per worker."""
        sender = self._streams.get(index)
        if sender is None:
            sender = self._streams[index] = OrderedSender(outbox)
        return sender

    def ask(self, conn: int) -> bool:
        """Ask every worker whether a call of its signals over stream connection ``conn``
        (idle: closed unless one does). The question goes behind the stream messages already
        on their way, so a worker answers after taking the last one in. A worker that uses
        the connection claims it (:func:`pack_claim`). False when no worker could be asked
        (every one being started again: their calls are lost, nothing of theirs to keep)."""
        asked = False
        for index, outbox in self.outboxes.items():
            if self._sender(index, outbox).send(pack_query(conn)):
                asked = True
        return asked

    def unsent(self, index: int, data: bytes) -> None:
        """Tell worker ``index`` that its message ``data`` could not be sent
        (:func:`pack_unsent`), behind what went to it before. Not held for a worker being
        started again: the transaction waiting for it died with the process that sent it."""
        outbox = self.outboxes.get(index)
        if outbox is not None:
            self._sender(index, outbox).send(pack_unsent(data))


class Inbox:
    """In a worker: reads forwarded messages and feeds them on, as from their peer."""

    def __init__(self, sock: socket.socket, on_message: Callable[[Forwarded, float], None]) -> None:
        self._sock = sock
        self._on_message = on_message  # the message and how long it waited since it arrived
        self._loop: asyncio.AbstractEventLoop | None = None
        self.malformed = 0

    def start(self) -> None:
        """Start reading on the running loop."""
        self._sock.setblocking(False)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._sock.fileno(), self._read)

    def stop(self) -> None:
        """Stop reading (the socket stays open: the front's end may still write)."""
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._sock.fileno())
            self._loop = None

    def _read(self) -> None:
        for _ in range(64):  # bounded: the loop's other callbacks (media) must not starve
            try:
                message = self._sock.recv(MAX_MESSAGE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.stop()
                return
            try:
                forwarded = unpack(message)
            except ValueError:
                self.malformed += 1
                continue
            self._on_message(forwarded, max(0.0, time.time() - forwarded.arrival))


class UdpSender:
    """In a worker: sends on the front's UDP socket without ever reading from it."""

    def __init__(self, sock: socket.socket, on_error: Callable[[], None]) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._on_error = on_error  # counted as the front's transport counts its send errors

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        """Send one datagram; a full socket buffer drops it, as the network might (§17)."""
        try:
            self._sock.sendto(data, addr)
        except OSError as exc:
            self._on_error()
            log.debug("SIP send to a peer failed: %s", exc)

    def close(self) -> None:
        """Close our copy of the socket (the front's stays open)."""
        self._sock.close()
