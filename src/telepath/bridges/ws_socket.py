"""A lean asyncio WebSocket client over the ``websockets`` Sans-I/O protocol.

Why not ``websockets.asyncio.client.connect``: an agent WebSocket carries a frame every 20 ms
each way for the whole call, and the library's general-purpose asyncio layer (a send lock and
an async context manager per send, a thread-safe message assembler and queue per receive,
flow-control futures) cost about a fifth of the gateway's CPU per call in the calls benchmark.
What a bridge needs is narrower: send a text frame, receive whole messages in order, close.

So this module keeps everything that is protocol from ``websockets`` — the opening handshake
and its checks (RFC 6455 §4.1), framing and client masking (§5.2–5.3), control frames, pong
replies (§5.5.2) and the closing handshake (§7) all come from its documented Sans-I/O
``ClientProtocol`` — and writes by hand only the transport glue: an ``asyncio.Protocol`` that
feeds bytes in and writes bytes out, reassembles fragmented messages (§5.4), validates UTF-8
(§8.1: fail with 1007), applies back-pressure both ways, and sends keepalive pings. For the
per-frame path it also sends without waiting (``send_nowait``) and offers each whole message to
a synchronous taker (``on_message``) before queueing it for ``recv``.

One piece of framing is by hand: ``send_nowait`` (a caller audio frame every 20 ms) writes its
single unfragmented text frame itself (§5.2 header, §5.3 client mask from a pool of
``os.urandom`` bytes, masking by the library's own C ``apply_mask``) instead of going through
``send_text`` — 0.5 µs instead of 2.0 µs, the largest single cost left on that path. It does so
only while the connection is OPEN, no fragmented message is in progress and no extension is
negotiated (none is offered), i.e. exactly when the library would emit the same bytes; a test
has the library's own server read those frames back at every length encoding.

The receiving side has the matching shortcut. While the library is between frames — OPEN, no
extension, no fragmented message in progress, nothing buffered, its parser waiting for the
next frame header — ``data_received`` splits the byte stream into frames itself (§5.2 header
and payload lengths) and takes a final, unmasked text frame with no reserved bit set (§5.2:
what every agent audio message is) and within the size limit directly: the one case in which
the library would do nothing but hand the same payload on. Every other frame (control,
binary, fragmented, masked, oversized, reserved bits) is fed to the library whole, so it is
still the library that answers pings, closes, reassembles and fails the connection, and it is
always left at a frame boundary. Cold, as the event of a gateway with few calls meets it, the
library's generator-based parser costs more than the rest of the message's handling; a
property test holds the two paths to the same messages, close codes and state for frames of
every kind split at every byte.

Not supported here (``ws.py`` falls back to ``websockets.connect`` when a proxy is configured):
HTTP proxies, redirects, compression (off for audio anyway).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import struct
from collections.abc import Callable, Mapping
from typing import Protocol, cast

from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from telepath.bridges.tls import client_context
from telepath.transport import media_pacer

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - the library ships the C extension for CPython
    from websockets.utils import apply_mask

__all__ = ["WIRE_LOGGER", "AgentSocket", "MessageSocket"]

READ_HIGH_WATER = 64  # whole messages buffered before the socket stops reading
READ_LOW_WATER = 16
PING_INTERVAL_S = 20.0  # websockets' default; no pong within one interval fails the socket
CLOSE_TIMEOUT_S = 2.0
BURST = 16  # messages ``recv`` hands out back to back before it lets the event loop run
_MASK_POOL_BYTES = 4096  # os.urandom read per 1,024 frames instead of one syscall per frame
_FIN_TEXT = 0x81  # FIN + opcode 0x1 (RFC 6455 §5.2)


class _NoDebug(logging.LoggerAdapter[logging.Logger]):
    """A logger adapter that is never enabled below INFO, whatever the levels configured."""

    def isEnabledFor(self, level: int) -> bool:
        """Only INFO and above, and only as far as the logger itself allows."""
        return level >= logging.INFO and self.logger.isEnabledFor(level)


#: The logger every agent WebSocket connection hands ``websockets`` (``logger=``). At DEBUG the
#: library logs the request line (a signed URL's token, a custom endpoint's query), every
#: handshake header (OpenAI's ``Authorization: Bearer`` key, a custom agent's headers) and every
#: frame (caller audio, transcripts): with its default ``websockets.client`` logger, all of it
#: under ``TELEPATH_LOG_LEVEL=DEBUG``. This one never goes below INFO, whatever is configured.
WIRE_LOGGER: logging.LoggerAdapter[logging.Logger] = _NoDebug(
    logging.getLogger("telepath.bridges.websocket"), {}
)


class MessageSocket(Protocol):
    """What a bridge uses of a WebSocket client connection (also ``websockets``' own)."""

    async def send(self, message: str) -> None: ...

    async def recv(self) -> str | bytes: ...

    async def close(self, code: int = 1000) -> None: ...


class AgentSocket(asyncio.Protocol):
    """One client WebSocket connection; open it with :meth:`open`.

    ``send``/``recv``/``close`` behave like ``websockets``' ``ClientConnection``: ``recv``
    returns whole text (``str``) or binary (``bytes``) messages in order and raises
    ``ConnectionClosed`` (with the close frame received, if any) once the connection is closed;
    ``send`` raises ``ConnectionClosed`` when the connection is no longer open.
    """

    def __init__(self, protocol: ClientProtocol, *, ping_interval_s: float = PING_INTERVAL_S):
        self._p = protocol
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._messages: collections.deque[str | bytes] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._handshake: asyncio.Future[None] = self._loop.create_future()
        self._lost: asyncio.Future[None] = self._loop.create_future()
        self._writable: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._fragments: list[bytes] = []
        self._fragment_text = False
        self._ping_interval_s = ping_interval_s
        self._ping_timer: asyncio.TimerHandle | None = None
        self._ping_outstanding: bytes | None = None
        self._abort_timer: asyncio.TimerHandle | None = None
        self._pings_sent = 0
        self._streak = 0
        self._masks = b""
        self._mask_at = 0
        self._failed = False  # we failed the connection (§7.1.7: process no more data)
        self._rx_fast = False  # frames split here (module docstring) rather than by the library
        self._rx_buf = bytearray()  # the start of a frame not yet whole, while ``_rx_fast``
        sizes = (protocol.max_message_size, protocol.max_fragment_size)
        self._rx_limit = min((v for v in sizes if v is not None), default=None)
        # A synchronous first taker for incoming messages (see ``_on_frame``).
        self.on_message: Callable[[str | bytes], bool] | None = None

    # --- opening -----------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        url: str,
        headers: Mapping[str, str] | None = None,
        *,
        timeout_s: float,
        max_size: int,
        user_agent: str = "telepath",
        ping_interval_s: float = PING_INTERVAL_S,
    ) -> AgentSocket:
        """Connect (TCP, TLS for ``wss``) and complete the opening handshake within ``timeout_s``.

        Raises what ``websockets.connect`` raises: ``InvalidURI``, ``InvalidStatus`` (non-101
        answer), ``InvalidHandshake``, ``TimeoutError``, ``OSError``.
        """
        uri = parse_uri(url)
        protocol = ClientProtocol(uri, max_size=max_size, logger=WIRE_LOGGER)
        context = client_context() if uri.secure else None
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout_s):
            transport, conn = await loop.create_connection(
                lambda: cls(protocol, ping_interval_s=ping_interval_s),
                uri.host,
                uri.port,
                ssl=context,
                server_hostname=uri.host if context is not None else None,
            )
            try:
                request = protocol.connect()
                for name, value in (headers or {}).items():
                    request.headers[name] = value
                # The tenant's User-Agent, if it set one, is the only one: Headers.__setitem__
                # appends, and one User-Agent line it must be (RFC 9110 §5.3, §10.1.5) — as
                # websockets' connect(user_agent_header=…) has it on the proxy path (ws.py).
                if "User-Agent" not in request.headers:
                    request.headers["User-Agent"] = user_agent
                protocol.send_request(request)
                conn._flush()
                await conn._handshake
            except BaseException:
                transport.abort()
                raise
        conn._schedule_ping()
        return conn

    # --- the application's side --------------------------------------------------------------

    async def send(self, message: str) -> None:
        """Send one text frame; waits while the kernel's send buffer is full."""
        if self._p.state is not State.OPEN:
            raise ConnectionClosed(
                self._p.close_rcvd, self._p.close_sent, self._p.close_rcvd_then_sent
            )
        self._p.send_text(message.encode())
        self._flush()
        if self._writable is not None:
            await asyncio.shield(self._writable)

    @property
    def writing_paused(self) -> bool:
        """True while the transport's write buffer is over its high-water mark."""
        return self._writable is not None and not self._writable.done()

    def send_nowait(self, message: str) -> bool:
        """Send one text frame now, unless writing is paused (the kernel's buffer is full and
        ours over its high-water mark): then return False and send nothing — real-time audio is
        dropped, not queued behind a stalled reader."""
        if self._p.state is not State.OPEN:
            raise ConnectionClosed(
                self._p.close_rcvd, self._p.close_sent, self._p.close_rcvd_then_sent
            )
        if self.writing_paused:
            return False
        transport = self._transport
        if self._p.expect_continuation_frame or self._p.extensions or transport is None:
            self._p.send_text(message.encode())  # the library raises or buffers as it should
            self._flush()
        else:
            transport.write(self._text_frame(message.encode()))
        return True

    def _text_frame(self, data: bytes) -> bytes:
        """One final, masked text frame: the bytes ``send_text`` would produce (§5.2, §5.3)."""
        at = self._mask_at
        if at >= len(self._masks):
            self._masks = os.urandom(_MASK_POOL_BYTES)  # §5.3: unpredictable, strong source
            at = 0
        self._mask_at = at + 4
        mask = self._masks[at : at + 4]
        size = len(data)
        if size < 126:
            header = bytes((_FIN_TEXT, 0x80 | size))
        elif size < 65536:
            header = struct.pack("!BBH", _FIN_TEXT, 0x80 | 126, size)
        else:
            header = struct.pack("!BBQ", _FIN_TEXT, 0x80 | 127, size)
        return header + mask + apply_mask(data, mask)

    async def recv(self) -> str | bytes:
        """The next whole message; ``ConnectionClosed`` once the connection has closed."""
        while True:
            if self._messages:
                self._streak += 1
                if self._streak >= BURST:
                    # An agent may send seconds of audio at once (OpenAI streams faster than
                    # real time): without a pause here the reader would hold the loop for the
                    # whole burst and every other call's pacer would stall.
                    self._streak = 0
                    await asyncio.sleep(0)
                    continue
                message = self._messages.popleft()
                if self._reading_paused and len(self._messages) <= READ_LOW_WATER:
                    self._reading_paused = False
                    if self._transport is not None:
                        self._transport.resume_reading()
                return message
            if self._p.state is State.CLOSED:
                raise self._p.close_exc
            self._streak = 0
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    async def close(self, code: int = 1000) -> None:
        """Start the closing handshake (§7.1.2) and wait for the TCP close, at most 2 s."""
        if self._p.state is State.OPEN:
            self._p.send_close(code)
            self._flush()
            self._expect_close()
        if not self._lost.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._lost), CLOSE_TIMEOUT_S)
            except TimeoutError:
                if self._transport is not None:
                    self._transport.abort()

    # --- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        media_pacer.serve_due()  # an RTP send that is due goes before this frame's work
        if self._rx_fast:
            self._split(data)
        else:
            self._library_receive(data)

    def eof_received(self) -> bool | None:
        self._to_library()
        self._p.receive_eof()
        self._after_receive()
        return None  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        # Nothing more can arrive: drop the taker, a bound method of the bridge that holds this
        # socket (a reference cycle only a full collection would free — test_call_memory.py).
        self.on_message = None
        self._p.receive_eof()  # idempotent; the protocol is now CLOSED
        self._p.data_to_send()
        # At EOF the library's parser generator stays suspended for good, holding the protocol
        # that holds it: a cycle only a full collection frees, one per call. The library steps
        # it only while its reader is not at EOF, so closing it now is safe.
        self._p.parser.close()
        for timer in (self._ping_timer, self._abort_timer):
            if timer is not None:
                timer.cancel()
        if not self._handshake.done():
            failure = self._p.handshake_exc or exc or ConnectionError("connection closed")
            self._handshake.set_exception(failure)
            self._handshake.exception()  # open() may have timed out already
        if not self._lost.done():
            self._lost.set_result(None)
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._wake()

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    # --- internals ---------------------------------------------------------------------------

    def _flush(self) -> None:
        transport = self._transport
        if transport is None:
            return
        for data in self._p.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():  # SEND_EOF: half-close after our close frame
                transport.write_eof()

    def _library_receive(self, data: bytes | bytearray) -> None:
        self._p.receive_data(data)
        self._after_receive()
        self._rx_fast = self._between_frames()

    def _to_library(self) -> None:
        """Hand a partial frame kept here to the library (before EOF)."""
        if self._rx_buf:
            data = bytes(self._rx_buf)
            self._rx_buf.clear()
            self._rx_fast = False
            self._library_receive(data)

    def _between_frames(self) -> bool:
        """Whether the library is OPEN, outside any message, and waits for a frame header."""
        p = self._p
        if p.state is not State.OPEN or p.extensions or p.current_size is not None:
            return False
        if p.reader.buffer:
            return False
        # The innermost generator the parser delegates to is where it waits; any other
        # layout (a future version of the library) simply leaves every frame to the library.
        parser: object = p.parser
        while (inner := getattr(parser, "gi_yieldfrom", None)) is not None:
            parser = inner
        code = getattr(parser, "gi_code", None)
        return getattr(code, "co_name", None) == "at_eof"

    def _split(self, data: bytes) -> None:
        """Split the stream into frames (§5.2); take plain text frames, feed the rest whole."""
        rx = self._rx_buf
        buf: bytes | bytearray
        if rx:
            rx += data
            buf = rx
        else:
            buf = data
        end = len(buf)
        pos = 0
        limit = self._rx_limit
        oversized = False
        while end - pos >= 2:
            head1 = buf[pos]
            head2 = buf[pos + 1]
            length = head2 & 0x7F
            at = pos + 2
            if length == 126:
                if end - at < 2:
                    break
                length = int.from_bytes(buf[at : at + 2], "big")
                at += 2
            elif length == 127:
                if end - at < 8:
                    break
                length = int.from_bytes(buf[at : at + 8], "big")
                at += 8
            if limit is not None and length > limit:
                oversized = True  # the library refuses it from the header alone (1009)
                break
            if head2 & 0x80:
                at += 4  # a masking key: a protocol error from a server, the library's to report
            stop = at + length
            if stop > end:
                break  # wait for the rest of the frame
            if head1 == _FIN_TEXT and not head2 & 0x80:
                self._on_text(buf[at:stop])
            else:
                self._library_receive(buf[pos:stop])
            pos = stop
            if not self._rx_fast or self._p.state is not State.OPEN:
                break  # the library is inside a message or closing: it reads the rest
        if oversized or not self._rx_fast or self._p.state is not State.OPEN:
            rest = bytes(buf[pos:])
            rx.clear()
            self._rx_fast = False
            if rest:
                self._library_receive(rest)
        elif buf is rx:
            del rx[:pos]
        else:
            rx += buf[pos:]

    def _after_receive(self) -> None:
        self._flush()  # pong replies, the echo of a close frame
        for event in self._p.events_received():
            if isinstance(event, Response):
                if self._handshake.done():
                    continue
                if self._p.handshake_exc is not None:
                    self._handshake.set_exception(self._p.handshake_exc)
                else:  # frames after the 101 in the same read may already be closing it
                    self._handshake.set_result(None)
            elif isinstance(event, Frame) and not self._failed:
                self._on_frame(event)
        if self._p.close_expected():
            self._expect_close()
        if self._p.state is not State.OPEN:
            self._wake()

    def _on_frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.PONG:
            if frame.data == self._ping_outstanding:
                self._ping_outstanding = None
            return
        if opcode not in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
            return  # PING is answered and CLOSE handled by the protocol
        if opcode is not Opcode.CONT:
            self._fragment_text = opcode is Opcode.TEXT
        if not frame.fin:
            self._fragments.append(bytes(frame.data))
            return
        data = bytes(frame.data)
        if self._fragments:
            self._fragments.append(data)
            data = b"".join(self._fragments)
            self._fragments = []
        if self._fragment_text:
            self._on_text(data)
        else:
            self._on_message(data)

    def _on_text(self, data: bytes | bytearray) -> None:
        try:
            message = data.decode()
        except UnicodeDecodeError:
            self._failed = True
            self._p.fail(CloseCode.INVALID_DATA, "invalid UTF-8")  # RFC 6455 §8.1
            self._flush()
            self._expect_close()
            return
        self._on_message(message)

    def _on_message(self, message: str | bytes) -> None:
        # The bridge may take a message on the spot (agent audio, once nothing is queued ahead
        # of it, so order holds): no reader-task wake-up per 20 ms frame.
        taker = self.on_message
        if taker is not None and not self._messages and taker(message):
            return
        self._messages.append(message)
        if len(self._messages) >= READ_HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            if self._transport is not None:
                self._transport.pause_reading()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _expect_close(self) -> None:
        """The peer should close TCP now (§7.1.1); abort if it has not within the timeout."""
        if self._abort_timer is None and self._transport is not None:
            self._abort_timer = self._loop.call_later(CLOSE_TIMEOUT_S, self._transport.abort)

    def _schedule_ping(self) -> None:
        if self._ping_interval_s > 0:
            self._ping_timer = self._loop.call_later(self._ping_interval_s, self._keepalive)

    def _keepalive(self) -> None:
        if self._p.state is not State.OPEN:
            return
        if self._ping_outstanding is not None:  # no pong within a whole interval
            self._p.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
            self._flush()
            if self._transport is not None:
                self._transport.abort()
            return
        self._pings_sent += 1
        self._ping_outstanding = self._pings_sent.to_bytes(4, "big")
        self._p.send_ping(self._ping_outstanding)
        self._flush()
        self._schedule_ping()
