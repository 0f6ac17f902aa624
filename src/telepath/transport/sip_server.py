"""UDP, TCP and TLS listeners around the pure :class:`UserAgentCore` (RFC 3261 §18).

The only SIP code that touches sockets: datagrams and framed stream messages go into the core,
``Send`` outputs go out (responses to the source address/connection, §18.2.2 with RFC 3581
rport), and the core's next timer deadline is kept armed with one ``loop.call_at``. Events are
handed to the application callback synchronously; the application schedules its own tasks.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import math
import os
import socket
import ssl
import time
from collections.abc import Callable
from contextvars import Context
from dataclasses import dataclass
from typing import cast

from telepath.sip.defence import SourceGuard, Verdict
from telepath.sip.errors import SipParseError
from telepath.sip.headers import parse_name_addr
from telepath.sip.message import Response
from telepath.sip.parser import StreamFramer, parse_message
from telepath.sip.transaction import Source
from telepath.sip.ua import Event, Output, Send, UserAgentCore
from telepath.transport.receive_backlog import BacklogMonitor, KernelReceiveTime
from telepath.transport.sip_fanout import (
    Forwarded,
    Inbox,
    OrderedSender,
    UdpSender,
    pack_claim,
    pack_stream_reply,
)

#: Given each UDP datagram read (data, peer, seconds it waited); True when it was taken
#: elsewhere (handed to the worker process that owns its call) and must not be fed here.
Router = Callable[[bytes, tuple[str, int], float], bool]
#: The same for each message framed off a TCP/TLS connection (data, transport, peer, conn id).
StreamRouter = Callable[[bytes, str, tuple[str, int], int], bool]

log = logging.getLogger(__name__)

#: A stream's next hop: transport ("TCP" | "TLS"), host, port.
Hop = tuple[str, str, int]
#: Messages held for a next hop while a connection to it is being opened.
HELD_PER_HOP = 64
#: Who is told of a message that could not be sent (RFC 3261 §17.1.4): None for this process's
#: core; with SIP workers, for a worker's message, that worker (``sip_fanout.pack_unsent``).
TellUnsent = Callable[[bytes], object] | None
#: How long the front waits for SIP workers to claim an idle connection before closing it
#: (at most the idle time itself). A worker answers from its event loop, behind what that loop
#: is doing: milliseconds, a few hundred when saturated. One later than this costs its call the
#: connection, not the call: the next message either way goes on a new one (:func:`next_hop`).
WORKER_ANSWER_S = 2.0
#: How long a connection let go by its opener (:meth:`SipServer.let_go`) and kept for a call
#: may then sit idle when ``TELEPATH_SIP_TCP_IDLE_S`` is 0: idle connections are kept then, but
#: this one is no one's to keep once no call uses it.
LET_GO_IDLE_S = 300.0

# What the guard does not count (defence.py): responses and ACKs. Methods are case-sensitive
# (RFC 3261 §7.1), and a stream's framer starts each message at its start-line.
_NOT_COUNTED = (b"SIP/2.0 ", b"ACK ")


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """Bounds on TCP/TLS connections, so that no peer can exhaust our descriptors or memory
    (RFC 3261 §26.1.5). A descriptor spent on a connection is one an RTP socket cannot have.

    Accepted connections are bounded, and those we open for a message whose own connection
    is gone (:func:`next_hop`); those of outbound registrations are the registrations' to keep.

    Parameters:
        max_connections: connections at most; past it one is closed at accept (not opened).
        max_per_source: connections with one IP at most (allowlisted sources, e.g. a carrier
            opening a connection per call, are held to ``max_connections`` only).
        idle_s: a connection that brought no complete message nor CRLF keep-alive
            (RFC 5626 §3.5.1) for this long is closed — unless a call signals over it
            (:attr:`SipServer.in_use`, or with SIP workers one of theirs:
            :attr:`SipServer.ask_workers`); 0: never (one let go by its opener:
            :data:`LET_GO_IDLE_S`). A partial message is no activity: a header trickled in a
            byte at a time does not hold the connection and its framer buffer.
        tls_handshake_s: a TLS handshake not completed in this long closes the connection
            (which holds its place under the caps from its TCP accept, before the handshake:
            a banned source's is closed there, with no handshake).
        write_buffer: bytes we may hold for a peer that does not read what we write; past
            them the connection is closed (``asyncio``'s ``pause_writing``).
    """

    max_connections: int = 1024
    max_per_source: int = 64
    idle_s: float = 300.0
    tls_handshake_s: float = 10.0
    write_buffer: int = 256 * 1024


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """Where one transport listens."""

    transport: str  # "UDP" | "TCP" | "TLS"
    host: str
    port: int


class LoopClock:
    """The event loop's clock, so core deadlines and ``loop.call_at`` agree exactly."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def now(self) -> float:
        """``loop.time()``."""
        return self._loop.time()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: SipServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None
        self.stamp: KernelReceiveTime | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # CPython's selector datagram transport does not subclass DatagramTransport: cast.
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.stamp = KernelReceiveTime(transport.get_extra_info("socket").fileno())

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        server = self.server
        waited = 0.0 if self.stamp is None else self.stamp.waited_s()
        router = server.router
        if router is not None and router(data, addr, waited):
            # another worker process owns this call (sip_fanout). This loop's own queue is
            # still sampled (it sheds on it); the wait is observed by the worker, from the
            # same arrival stamp to its own read: once per datagram, hand-over included.
            if self.stamp is not None:
                server.backlog.sample(waited, time.monotonic())
            return
        if self.stamp is not None:
            server.received_after(waited)
        server.feed(data, Source("UDP", (addr[0], addr[1])))

    def error_received(self, exc: Exception) -> None:
        self.server.counters_inc("udp_errors")


class _Stream(asyncio.Protocol):
    def __init__(self, server: SipServer, transport_name: str, *, inbound: bool = False) -> None:
        self.server = server
        self.name = transport_name
        # RFC 5626 §4.4.1: a ping split across reads is one, on a connection we never ping
        # (an accepted one); on ours a registrar's pongs may come a read each (sip/parser.py)
        self.framer = StreamFramer(pair_across_reads=inbound)
        self.transport: asyncio.Transport | None = None
        self.conn_id = next(server.conn_ids)
        self.peer: tuple[str, int] = ("", 0)
        self.inbound = inbound  # accepted (bounded by StreamLimits), not opened by us
        self.place: str | None = None  # the address it holds a place under the caps for
        self.loop: asyncio.AbstractEventLoop | None = None
        self.last_active = 0.0  # loop time of the last complete message or keep-alive
        self.asked_at = -math.inf  # when SIP workers were last asked to claim it (idle)
        self.idle_timer: asyncio.TimerHandle | None = None
        self.hop: Hop | None = None  # opened for messages whose own connection was gone
        self.released = False  # let go by its opener (SipServer.let_go): closed once unused

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.admitted(transport):
            self.serve(cast(asyncio.Transport, transport))

    def admitted(self, transport: asyncio.BaseTransport) -> bool:
        """Whether the connection may be served (:meth:`SipServer.admit`: an accepted one
        takes a place under the caps, unless refused — or holds one already, taken at its TCP
        accept before its TLS handshake: :class:`_TlsAccept`); a refused one is aborted."""
        peer = transport.get_extra_info("peername")
        self.peer = (str(peer[0]), int(peer[1])) if peer else ("", 0)
        if self.inbound and self.place is None and not self.server.admit(self):
            cast(asyncio.Transport, transport).abort()  # refused: never served, never counted
            return False
        return True

    def serve(self, stream: asyncio.Transport) -> None:
        """Read and write SIP on ``stream`` (for TLS: once its handshake is done)."""
        self.transport = stream
        self.transport.set_write_buffer_limits(high=self.server.limits.write_buffer)
        self.server.connections[self.conn_id] = self
        if self.inbound:
            self.server.watch_idle(self)

    def pause_writing(self) -> None:
        # RFC 3261 §26.1.5: a peer that does not read what we send must not grow our buffer
        # without end: past the bound, the connection goes (what is buffered with it)
        self.server.counters_inc("stream_write_overflow")
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return  # refused at accept
        pings = self.framer.pings
        keepalives = self.framer.keepalives
        try:
            messages = self.framer.feed(data)
        except SipParseError:
            # §18.3: a stream that cannot be framed cannot be resynchronised: close it.
            self.server.counters_inc("stream_framing_errors")
            if self.transport is not None:
                self.transport.close()
            return
        if self.framer.pings != pings and self.transport is not None:
            # RFC 5626 §3.5.1: each double-CRLF ping gets a single-CRLF pong, so a client
            # keeping its flow alive sees it is (a pong is never answered: no ping-pong)
            self.transport.write(b"\r\n" * (self.framer.pings - pings))
        if (messages or self.framer.keepalives != keepalives) and self.loop is not None:
            self.last_active = self.loop.time()  # activity: what keeps the connection open
        source = Source(self.name, self.peer, self.conn_id)
        router = self.server.stream_router
        guard = self.server.guard
        if router is not None and messages and guard is not None and guard.is_banned(self.peer[0]):
            # With SIP workers this process holds every ban (cli/workers.py): a banned source's
            # connection is closed here, as feed() does in one process, before any of its
            # messages reaches a worker (which would only drop it, the connection left open).
            self.server.counters_inc("banned_stream_closed")
            if self.transport is not None:
                self.transport.close()
            return
        for message in messages:
            if router is not None and router(message, self.name, self.peer, self.conn_id):
                continue  # another worker process owns this call (sip_fanout)
            self.server.feed(message, source)
        if self.framer.error is not None:  # what came before the fault was handled: close
            self.server.counters_inc("stream_framing_errors")
            if self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.pop(self.conn_id, None)
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        if self.place is not None:
            self.server.release(self.place)
            self.place = None
        if self.hop is not None and self.server.hops.get(self.hop) == self.conn_id:
            del self.server.hops[self.hop]


class _TlsAccept(asyncio.Protocol):
    """A TLS listener's connection at its TCP accept: admitted under the caps (and the ban)
    there, before any handshake, then handed with its socket to the handshake
    (:meth:`SipServer.handshake`) for its :class:`_Stream`.

    ``create_server(ssl=...)`` calls the protocol only once the handshake is done (asyncio and
    uvloop alike): a source opening connections and sending no ClientHello would hold a
    descriptor each for ``tls_handshake_s`` past every cap, and a banned one would get a full
    handshake (RFC 3261 §26.1.5). Not ``loop.start_tls`` on this transport: uvloop starts
    reading it as soon as this returns, and the ClientHello would come here, before the TLS
    layer took over (``pause_reading`` has no effect before that).
    """

    def __init__(self, server: SipServer, context: ssl.SSLContext) -> None:
        self.server = server
        self.context = context

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        conn = _Stream(self.server, "TLS", inbound=True)
        if not conn.admitted(transport):
            return  # closed at accept: no handshake
        # The socket goes on (a duplicate descriptor) for the handshake; this transport, which
        # has read nothing yet, lets go of its own descriptor (the connection stays open).
        fd: int | None = None
        try:
            fd = os.dup(transport.get_extra_info("socket").fileno())
            accepted = socket.socket(fileno=fd)
        except Exception as exc:  # EMFILE/ENFILE most likely: just when descriptors run out
            if fd is not None:
                os.close(fd)  # a half-made duplicate: socket() never took it
            # Closed, and its place under the caps freed (§26.1.5): an exception escaping here
            # would leave the connection open and its place taken for good — past
            # TELEPATH_SIP_TCP_MAX_CONNECTIONS such leaks, every TCP/TLS accept refused.
            cast(asyncio.Transport, transport).abort()
            conn.connection_lost(None)
            self.server.counters_inc("stream_accept_errors")
            self.server._warn(
                "tls_accept",
                "SIP: a TLS connection from %s could not be handed to its handshake (%r): closed",
                conn.peer[0],
                exc,
            )
            return
        cast(asyncio.Transport, transport).abort()
        self.server.handshake(accepted, conn, self.context)


class SipServer:
    """Runs the UA core on real sockets."""

    def __init__(
        self,
        core: UserAgentCore,
        on_event: Callable[[Event], None],
        *,
        guard: SourceGuard | None = None,
        backlog: BacklogMonitor | None = None,
        on_receive_wait: Callable[[float], None] | None = None,
        router: Router | None = None,
        limits: StreamLimits | None = None,
    ) -> None:
        self.core = core
        self.limits = limits or StreamLimits()
        #: Whether a call still signals over a stream connection (its id): such a connection is
        #: never closed for being idle. The core's dialogs and server transactions.
        self.in_use: Callable[[int], bool] = core.uses_connection
        #: The front with SIP workers: asks them whether a call of theirs signals over an idle
        #: connection (``sip_fanout``; False when none could be asked). One that does claims
        #: it within :data:`WORKER_ANSWER_S` (an empty :meth:`write_stream`), or it is closed.
        self.ask_workers: Callable[[int], bool] | None = None
        self.router = router
        self.stream_router: StreamRouter | None = None
        self.on_event = on_event
        self.guard = guard
        # how long UDP datagrams waited to be read: call control sheds new calls on it
        self.backlog = backlog or BacklogMonitor(threshold_s=0.025)
        self.on_receive_wait = on_receive_wait
        self.conn_ids = itertools.count(1)
        self.connections: dict[int, _Stream] = {}
        self._inbound = 0  # connections holding a place under the caps
        self._per_source: dict[str, int] = {}
        self._logged: dict[str, float] = {}  # warnings given at most once a minute
        #: Connections we opened to a next hop for messages whose own connection was gone
        #: (RFC 3261 §18.1.1, §18.2.2), and the messages held while one is being opened.
        self.hops: dict[Hop, int] = {}
        self._held: dict[Hop, list[tuple[bytes, TellUnsent]]] = {}
        self._opening: set[asyncio.Task[None]] = set()
        self._handshakes: set[asyncio.Task[None]] = set()  # accepted TLS connections' (_TlsAccept)
        #: The client TLS context for such a connection over TLS (None: not opened).
        self.client_tls: Callable[[], ssl.SSLContext] | None = None
        self._udp: _Udp | None = None
        self._udp_sender: UdpSender | None = None  # a worker: sends on the front's socket
        self._stream_out: OrderedSender | None = None  # a worker: the front writes for it
        self._inbox: Inbox | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.bound: dict[str, tuple[str, int]] = {}

    def counters_inc(self, name: str) -> None:
        """Count a transport-level event in the core's counters."""
        self.core.counters[name] += 1

    async def start(
        self, listen: list[ListenAddress], tls_context: ssl.SSLContext | None = None
    ) -> None:
        """Bind every listener (port 0 picks a free port; see :attr:`bound`)."""
        loop = asyncio.get_running_loop()
        for addr in listen:
            if addr.transport == "UDP":
                transport, protocol = await loop.create_datagram_endpoint(
                    lambda: _Udp(self), local_addr=(addr.host, addr.port)
                )
                self._udp = protocol
                sock = transport.get_extra_info("sockname")
            else:
                name = addr.transport
                if name == "TLS" and tls_context is None:
                    continue
                factory: Callable[[], asyncio.Protocol]
                if name == "TLS" and tls_context is not None:  # admitted before the handshake
                    factory = functools.partial(_TlsAccept, self, tls_context)
                else:
                    factory = functools.partial(_Stream, self, name, inbound=True)
                server = await loop.create_server(factory, addr.host, addr.port, reuse_address=True)
                self._servers.append(server)
                sock = server.sockets[0].getsockname()
            self.bound[addr.transport] = (str(sock[0]), int(sock[1]))

    async def connect(
        self,
        transport: str,
        addr: tuple[str, int],
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> int:
        """Open a ``transport`` ("TCP", or "TLS" with the client context ``tls``, checking the
        certificate against ``server_hostname``) connection to ``addr`` and serve it like an
        accepted one (requests that come back on it are handled, responses matched); its id,
        for a :class:`Source`. Raises OSError (ssl.SSLError included) when it cannot be
        opened. (An outbound registration's: the registrar sends our calls back on it,
        RFC 5923.)"""
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(
            lambda: _Stream(self, transport),
            addr[0],
            addr[1],
            ssl=tls if transport == "TLS" else None,
            server_hostname=server_hostname if transport == "TLS" else None,
        )
        return protocol.conn_id

    # ---------------------------------------------------------------- connection limits

    def admit(self, conn: _Stream) -> bool:
        """Whether an accepted connection may be served (a banned source, or one past the
        caps, is closed at once: defence.py, RFC 3261 §26.1.5); if so it holds a place."""
        if not self.reserve(conn.peer[0]):
            return False
        conn.place = conn.peer[0]
        return True

    def handshake(self, sock: socket.socket, conn: _Stream, context: ssl.SSLContext) -> None:
        """Run the TLS handshake of ``conn`` on ``sock``, accepted and admitted already
        (:class:`_TlsAccept`): served once it completes, closed and its place freed if it
        fails or takes ``tls_handshake_s``."""
        task = asyncio.get_running_loop().create_task(self._handshake(sock, conn, context))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, sock: socket.socket, conn: _Stream, context: ssl.SSLContext) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: conn, sock, ssl=context, ssl_handshake_timeout=self.limits.tls_handshake_s
            )
        except Exception as exc:  # failed, timed out (ConnectionAbortedError), the peer gone
            log.debug("SIP: TLS handshake with %s failed: %r", conn.peer[0], exc)
        finally:
            if conn.transport is None:  # never served (or we stop): its place is free
                sock.close()
                conn.connection_lost(None)

    def reserve(self, ip: str) -> bool:
        """Take a place under the caps for a connection with ``ip`` (one accepted from it, or
        one we open to it for a message whose connection is gone); False if it may not have
        one: banned, or past a cap."""
        guard = self.guard
        if guard is not None and guard.is_banned(ip):
            self.counters_inc("stream_refused_banned")
            return False
        limits = self.limits
        if self._inbound >= limits.max_connections:
            self.counters_inc("stream_refused_total")
            self._warn(
                "total",
                "SIP: %d TCP/TLS connections open, the most TELEPATH_SIP_TCP_MAX_CONNECTIONS "
                "allows: new ones are refused",
                self._inbound,
            )
            return False
        count = self._per_source.get(ip, 0)
        if count >= limits.max_per_source and not (guard is not None and guard.is_allowlisted(ip)):
            self.counters_inc("stream_refused_per_source")
            return False
        self._inbound += 1
        self._per_source[ip] = count + 1
        return True

    def release(self, ip: str) -> None:
        """A connection that held a place for ``ip`` is gone: the place is free."""
        self._inbound -= 1
        left = self._per_source.get(ip, 1) - 1
        if left > 0:
            self._per_source[ip] = left
        else:
            self._per_source.pop(ip, None)

    def _warn(self, key: str, message: str, *args: object) -> None:
        """Log a warning, at most once a minute per ``key`` (an attacker can repeat its
        cause at will; the operator needs to hear of it once)."""
        now = time.monotonic()
        last = self._logged.get(key)
        if last is None or now - last >= 60:
            self._logged[key] = now
            log.warning(message, *args)

    def _idle_s(self, conn: _Stream) -> float:
        """How long ``conn`` may be idle before it is looked at: one let go, never for ever."""
        idle = self.limits.idle_s
        return idle if idle > 0 or not conn.released else LET_GO_IDLE_S

    def watch_idle(self, conn: _Stream) -> None:
        """Close ``conn`` once idle for :attr:`StreamLimits.idle_s` (one timer per connection,
        re-armed lazily when it fires: nothing per message but a timestamp)."""
        idle = self.limits.idle_s
        if idle <= 0:
            return
        loop = asyncio.get_running_loop()
        conn.loop = loop
        conn.last_active = loop.time()
        conn.idle_timer = loop.call_at(
            conn.last_active + idle, self._idle_check, conn, context=Context()
        )

    def _idle_check(self, conn: _Stream) -> None:
        conn.idle_timer = None
        transport, loop = conn.transport, conn.loop
        if transport is None or loop is None or transport.is_closing():
            return
        now = loop.time()
        idle = self._idle_s(conn)
        due = conn.last_active + idle
        if due <= now and self.in_use(conn.conn_id):
            due = now + idle  # a call signals over it: kept, looked at again
        elif due <= now and conn.asked_at < conn.last_active and self.ask_workers is not None:
            # a worker's call may signal over it: kept if one claims it (:meth:`_claimed`
            # makes it active), closed if none has once they had the time to answer
            if self.ask_workers(conn.conn_id):
                conn.asked_at = now
                due = now + min(idle, WORKER_ANSWER_S)
        if due > now:
            conn.idle_timer = loop.call_at(due, self._idle_check, conn, context=Context())
            return
        self.counters_inc("stream_idle_closed")
        transport.close()

    def _claimed(self, conn_id: int) -> None:
        """A SIP worker answered :attr:`ask_workers`: a call of its signals over ``conn_id``.
        Counted as activity: the connection is kept for another idle time, then asked again."""
        conn = self.connections.get(conn_id)
        if conn is not None and conn.loop is not None:
            conn.last_active = conn.loop.time()
            conn.asked_at = -math.inf

    def let_go(self, conn_id: int) -> None:
        """Close connection ``conn_id``, which the one that opened it (:meth:`connect`: an
        outbound registration) no longer needs — unless a call signals over it: the registrar
        sends calls on it (RFC 5923), and with SIP workers the call may be a worker's, of which
        this process holds no dialog. So it is idle from now on and goes as an idle connection
        does (:meth:`_idle_check`, RFC 3261 §26.1.5): kept while our core uses it, else the
        workers are asked and it is closed unless one claims it within
        :data:`WORKER_ANSWER_S`; claimed, it is asked about again once idle. Without workers
        to ask, closed now. Either way it is no longer :meth:`is_open` to its opener, which
        takes it up no more."""
        conn = self.connections.get(conn_id)
        if conn is None or conn.transport is None or conn.transport.is_closing():
            return
        conn.released = True
        if conn.idle_timer is not None:
            conn.idle_timer.cancel()
        loop = asyncio.get_running_loop()
        conn.loop = loop
        conn.last_active = loop.time() - self._idle_s(conn)
        conn.asked_at = -math.inf
        self._idle_check(conn)

    def is_open(self, conn_id: int) -> bool:
        """True while connection ``conn_id`` is up (and not let go: :meth:`let_go`)."""
        conn = self.connections.get(conn_id)
        return (
            conn is not None
            and not conn.released
            and conn.transport is not None
            and not conn.transport.is_closing()
        )

    def udp_fileno(self) -> int | None:
        """The bound UDP socket's descriptor (handed to SIP worker processes), if any."""
        if self._udp is None or self._udp.transport is None:
            return None
        return int(self._udp.transport.get_extra_info("socket").fileno())

    def adopt(
        self,
        udp: socket.socket,
        inbox: socket.socket,
        bound: tuple[str, int],
        to_front: OrderedSender | None = None,
    ) -> None:
        """Serve as a worker: datagrams come from ``inbox``, replies go out on ``udp``.

        ``udp`` is the front's bound SIP socket (inherited; never read here) and ``bound`` its
        address, ``inbox`` this worker's end of the socket pair the front forwards on
        (:mod:`telepath.transport.sip_fanout`); ``to_front`` what sends on it the other way,
        if the process sends the front other things too (one sender: one order, one queue).
        """
        self._udp_sender = UdpSender(udp, lambda: self.counters_inc("udp_errors"))
        self._stream_out = to_front or OrderedSender(inbox)
        self._inbox = Inbox(inbox, self._forwarded)
        self._inbox.start()
        self.bound["UDP"] = bound

    def _forwarded(self, message: Forwarded, waited_s: float) -> None:
        if message.transport == "UDP":
            self.received_after(waited_s)
            self.feed(message.data, Source("UDP", message.addr))
        elif message.is_query:  # the front asks before closing the connection as idle
            if self._stream_out is not None and self.core.uses_connection(message.conn):
                self._stream_out.send(pack_claim(message.conn))
        elif message.is_unsent:  # the front could not send this message of ours (§17.1.4)
            self._report_unsent([message.data])
        else:  # framed off a connection the front holds; replies go back through the front
            self.feed(message.data, Source(message.transport, message.addr, message.conn))

    async def stop(self) -> None:
        """Close every listener and connection."""
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._opening) + list(self._handshakes):
            task.cancel()
        if self._inbox is not None:
            self._inbox.stop()
        if self._stream_out is not None:
            self._stream_out.close()
        if self._udp_sender is not None:
            self._udp_sender.close()
        if self._udp is not None and self._udp.transport is not None:
            self._udp.transport.close()
        for server in self._servers:
            server.close()
        for conn in list(self.connections.values()):
            if conn.transport is not None:
                conn.transport.close()
        for server in self._servers:
            try:
                await asyncio.wait_for(server.wait_closed(), 2)
            except TimeoutError:
                pass

    # ---------------------------------------------------------------- data path

    def received_after(self, waited_s: float) -> None:
        """A UDP datagram this process serves was read ``waited_s`` after it arrived
        (``receive_backlog``); a worker's is the wait from the front's socket to its inbox
        read. Observed here once per datagram: not by the front for one it hands over."""
        self.backlog.sample(waited_s, time.monotonic())
        if self.on_receive_wait is not None:
            self.on_receive_wait(waited_s)

    def feed(self, data: bytes, source: Source) -> None:
        """One message from the network."""
        guard = self.guard
        if guard is not None:
            # defence.py: requests are counted, not responses nor ACKs (they finish what was
            # admitted, are never answered), which only meet the ban
            if data.startswith(_NOT_COUNTED):
                verdict = Verdict.BANNED if guard.is_banned(source.addr[0]) else Verdict.ALLOW
            else:
                verdict = guard.check_request(source.addr[0])
            if verdict is not Verdict.ALLOW and not self._let_in(data, source, verdict):
                return
        self.dispatch(self.core.receive(data, source))

    def _let_in(self, data: bytes, source: Source, verdict: Verdict) -> bool:
        """What defence.py says to do with a message the guard did not allow: True to handle
        it all the same (a BYE over a stream), else it is dropped or answered here."""
        if source.reliable:  # not spoofed, and never sent again (RFC 3261 §17.1.1.2)
            if verdict is Verdict.BANNED:
                conn = self.connections.get(source.conn or -1)
                if conn is not None and conn.transport is not None:
                    conn.transport.close()
            elif data.startswith(b"INVITE "):  # §21.5.4: the trunk fails over at once
                self.counters_inc("rejected_rate_limited")
                assert self.guard is not None
                retry = [("Retry-After", str(self.guard.retry_after_s()))]
                self.dispatch(self.core.reject(data, source, 503, retry))
                return False
            elif data.startswith(b"BYE "):  # dropped, the call would stay up on our side
                self.counters_inc("rate_limited_bye_handled")
                return True
        # floods over UDP are dropped silently: answering amplifies them
        self.counters_inc(f"dropped_{verdict.value}")
        return False

    def dispatch(self, outputs: list[Output]) -> None:
        """Send what the core produced, deliver its events, re-arm the timer."""
        for output in outputs:
            if isinstance(output, Send):
                self._send(output)
        for output in outputs:
            if not isinstance(output, Send):
                try:
                    self.on_event(output)
                except Exception:  # the application must never take the SIP stack down
                    log.exception("SIP event handler failed")
        self._rearm()

    def _send(self, send: Send) -> None:
        dest = send.dest
        if dest.transport == "UDP":
            if self._udp is not None and self._udp.transport is not None:
                self._udp.transport.sendto(send.data, dest.addr)
            elif self._udp_sender is not None:
                self._udp_sender.sendto(send.data, dest.addr)
            return
        if self._stream_out is not None:  # a worker: the connection is the front's
            if not self._stream_out.send(pack_stream_reply(dest.conn or 0, send.data)):
                self.counters_inc("stream_send_no_connection")
                self._unsent([(send.data, None)])
            return
        self.write_stream(dest.conn or -1, send.data)

    def write_stream(self, conn_id: int, data: bytes, tell: TellUnsent = None) -> None:
        """Write one message on stream connection ``conn_id`` (ours, or a worker's reply); a
        worker's empty one claims the connection (``sip_fanout.pack_claim``). ``tell``: whom
        to tell if it cannot be sent (a worker's message: that worker; None: our core)."""
        if not data:
            self._claimed(conn_id)
            return
        conn = self.connections.get(conn_id)
        if conn is None or conn.transport is None or conn.transport.is_closing():
            self._elsewhere(data, tell)  # the connection is gone
            return
        conn.transport.write(data)

    def _elsewhere(self, data: bytes, tell: TellUnsent = None) -> None:
        """Send ``data`` whose connection is gone (a carrier's proxy closed it during a long
        call): on a connection open to its next hop, or a new one (RFC 3261 §18.1.1 for a
        request, §18.2.2 for a response). One that cannot be opened costs the message, and
        its client transaction learns it at once (:meth:`_unsent`)."""
        hop = next_hop(data)
        if hop is None:
            self.counters_inc("stream_send_no_connection")
            self._unsent([(data, tell)])
            return
        conn = self.connections.get(self.hops.get(hop, -1))
        if conn is not None and conn.transport is not None and not conn.transport.is_closing():
            conn.transport.write(data)
            return
        held = self._held.get(hop)
        if held is not None:  # being opened: in order, after what came first
            if len(held) < HELD_PER_HOP:
                held.append((data, tell))
            else:
                self.counters_inc("stream_send_no_connection")
                self._unsent([(data, tell)])
            return
        if not self.reserve(hop[1]):  # bounded as accepted connections are, by its address
            self.counters_inc("stream_send_no_connection")
            self._unsent([(data, tell)])
            return
        self._held[hop] = [(data, tell)]
        task = asyncio.get_running_loop().create_task(self._open(hop), context=Context())
        self._opening.add(task)
        task.add_done_callback(self._opening.discard)

    async def _open(self, hop: Hop) -> None:
        transport, host, port = hop
        try:
            tls = self.client_tls() if transport == "TLS" and self.client_tls is not None else None
            if transport == "TLS" and tls is None:
                raise OSError("no client TLS context")
            conn_id = await asyncio.wait_for(
                self.connect(transport, (host, port), tls, host), self.limits.tls_handshake_s
            )
        except Exception as exc:  # refused, timed out, or a name no resolver takes (UnicodeError)
            self.release(host)
            self.counters_inc("stream_reconnect_failed")
            dropped = self._held.pop(hop, [])
            self._warn(
                "reconnect",
                "SIP: no %s connection to %s:%d (%s): %d message(s) not sent",
                transport,
                host,
                port,
                type(exc).__name__,
                len(dropped),
            )
            self._unsent(dropped)
            return
        except BaseException:
            self.release(host)  # cancelled (stop)
            self._held.pop(hop, None)
            raise
        self.counters_inc("stream_reconnects")
        held = self._held.pop(hop, [])
        conn = self.connections.get(conn_id)
        if conn is None or conn.transport is None:  # closed by its peer at once: not again
            self.release(host)
            self.core.counters["stream_send_no_connection"] += len(held)
            self._unsent(held)
            return
        conn.place, conn.hop = host, hop
        self.hops[hop] = conn_id
        self.watch_idle(conn)  # nothing holds it open for ever
        for data, _ in held:
            conn.transport.write(data)

    def _unsent(self, messages: list[tuple[bytes, TellUnsent]]) -> None:
        """Tell whoever sent ``messages`` that they could not be sent (RFC 3261 §17.1.4: their
        client transactions end now, not at Timer F). Our core's on the next loop turn: this
        can be reached from inside :meth:`dispatch`, whose events must go out in order first.
        A worker's goes back to that worker, whose core holds the transaction."""
        ours = [data for data, tell in messages if tell is None]
        for data, tell in messages:
            if tell is not None:
                tell(data)
        if ours:
            asyncio.get_running_loop().call_soon(self._report_unsent, ours, context=Context())

    def _report_unsent(self, messages: list[bytes]) -> None:
        for data in messages:
            self.dispatch(self.core.transport_failed(data))

    def _rearm(self) -> None:
        deadline = self.core.next_deadline()
        if deadline is None:
            return
        if self._timer is not None and self._timer_at is not None and self._timer_at <= deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer_at = deadline
        # in no call's context: armed from whichever call's task sent last, it fires for any
        self._timer = loop.call_at(deadline, self._on_timer, context=Context())

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.dispatch(self.core.poll())


def next_hop(data: bytes) -> Hop | None:
    """Where a stream message goes when its own connection is gone; None if it cannot say.

    A request (ours: in a dialog) goes to its first Route if that is a loose router, else to its
    Request-URI (RFC 3261 §8.1.2, §12.2.1.1), over the transport of its Via; a response to the
    address in its top Via's ``received`` (else its sent-by host) at the sent-by port
    (§18.2.2). No port: 5060, or 5061 for TLS. Not on the hot path: only messages whose
    connection is gone are parsed again here."""
    try:
        message = parse_message(data)
        via = message.top_via
        transport = via.transport.upper()
        if isinstance(message, Response):
            host, port = via.received or via.host, via.port
        else:
            routes = message.headers.get_all("Route")
            first = parse_name_addr(routes[0]).uri if routes else None
            uri = first if first is not None and first.param("lr") is not None else message.uri
            host, port = uri.host, uri.port
    except SipParseError:
        return None
    if transport not in ("TCP", "TLS") or not host:
        return None
    return transport, host.strip("[]"), port or (5061 if transport == "TLS" else 5060)
