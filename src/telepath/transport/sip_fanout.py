"""One SIP UDP port served by several worker processes: datagrams handed over by Call-ID.

A carrier sends every call from one address, so ``SO_REUSEPORT`` (which balances by source
address) would give all of its calls to one process. Instead the process that binds the port
(worker 0, the *front*) reads every datagram, looks up its owner (:mod:`telepath.sip.routing`)
and, when another worker owns it, writes it to that worker's inbox — one end of an ``AF_UNIX``
datagram socket pair — with the peer's address and the kernel's arrival time. Workers answer
from the same UDP socket, inherited from the front, so replies leave from the port the carrier
sent to (RFC 3261 §18.2.2). A worker never reads that socket.

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
from collections.abc import Callable

from telepath.sip.routing import call_id_of, owner_of

log = logging.getLogger(__name__)

__all__ = ["Forwarder", "Inbox", "UdpSender", "pack", "unpack"]

# arrival (wall-clock seconds), peer port, length of the peer host; then the host, then the data
_HEADER = struct.Struct("!dHB")


def pack(data: bytes, addr: tuple[str, int], arrival: float) -> bytes:
    """One forwarded datagram."""
    host = addr[0].encode("ascii")
    return _HEADER.pack(arrival, addr[1], len(host)) + host + data


def unpack(message: bytes) -> tuple[bytes, tuple[str, int], float]:
    """``(data, peer address, arrival)`` of a forwarded datagram.

    Raises:
        ValueError: the message is shorter than its header says.
    """
    if len(message) < _HEADER.size:
        raise ValueError("forwarded datagram shorter than its header")
    arrival, port, host_len = _HEADER.unpack_from(message)
    start = _HEADER.size + host_len
    if len(message) < start:
        raise ValueError("forwarded datagram shorter than its header")
    host = message[_HEADER.size : start].decode("ascii")
    return message[start:], (host, port), arrival


class Forwarder:
    """In the front: hands each datagram another worker owns to that worker's inbox.

    Call it with every datagram read; it returns True when the datagram was taken (forwarded,
    or dropped because that worker's inbox is full or gone — the sender retransmits, §17.1.1.2).
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

    def _drop(self) -> None:
        self.dropped += 1
        if self._on_drop is not None:
            self._on_drop()

    def __call__(self, data: bytes, addr: tuple[str, int], waited_s: float) -> bool:
        call_id = call_id_of(data)
        if call_id is None:
            return False
        owner = owner_of(call_id, self.workers)
        if owner == 0:
            return False
        outbox = self.outboxes.get(owner)
        if outbox is None:
            self._drop()
            return True
        try:
            outbox.send(pack(data, addr, time.time() - waited_s))
        except OSError:  # full (the worker is behind) or gone (restarting): like a lost packet
            self._drop()
        else:
            self.forwarded += 1
        return True


class Inbox:
    """In a worker: reads forwarded datagrams and feeds them, as UDP from their peer, on."""

    def __init__(
        self,
        sock: socket.socket,
        on_datagram: Callable[[bytes, tuple[str, int], float], None],
    ) -> None:
        self._sock = sock
        self._on_datagram = on_datagram
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
                message = self._sock.recv(70_000)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.stop()
                return
            try:
                data, addr, arrival = unpack(message)
            except ValueError:
                self.malformed += 1
                continue
            self._on_datagram(data, addr, max(0.0, time.time() - arrival))


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
