"""WebSocket plumbing shared by every bridge: connect, read loop, event queue, termination.

Provider bridges subclass ``WebSocketBridge`` and implement ``_handle_text`` (parse one frame
with their ``events.py`` models and emit agent events), ``_audio_message`` (one caller frame as
the provider's wire message) and, when the default is wrong for them, ``_on_remote_close``.
For the per-frame fast path (``base.py``) they may also implement ``_audio_now``: take an
agent audio message synchronously from the socket's receive callback. Everything that can go
wrong on the socket ends up here as exactly one terminal event, so call control never waits on
a dead session.

Behind an HTTP proxy the socket is websockets' own client, which sends only from a coroutine:
every message to the agent then goes through one sender task, in the order they were made
(``_enqueue``), and caller audio that finds :data:`MAX_QUEUED_SENDS` waiting is dropped.

A bridge that sets ``reconnect_s`` (custom agents that opt in) survives a dropped connection:
the read loop dials again for up to that long, ``_resume`` re-opens the session on the new
socket, and what the gateway sent meanwhile — kept in order, the last :data:`MAX_BACKLOG`
messages — goes out before anything new. Only a drop qualifies (no close frame, or 1001, 1011,
1012, 1013, which ask to come back); a normal close, an error message or a malformed frame
still ends the session.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import NoReturn

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.proxy import get_proxy
from websockets.uri import parse_uri

from telepath.bridges.base import (
    AgentAudio,
    AgentBridge,
    AgentDisconnected,
    AgentError,
    AgentEvent,
    AgentReconnected,
    BridgeAuthError,
    BridgeConnectError,
    BridgeError,
    BridgeProtocolError,
    BridgeReason,
    is_terminal,
)
from telepath.bridges.tls import client_context
from telepath.bridges.ws_socket import WIRE_LOGGER, AgentSocket, MessageSocket

__all__ = ["MAX_EVENT_QUEUE", "MAX_FRAME_BYTES", "WebSocketBridge", "connect_error", "stop_task"]

logger = logging.getLogger(__name__)

MAX_FRAME_BYTES = 16 * 1024 * 1024  # OpenAI allows 15 MiB client events; bound what we accept
MAX_EVENT_QUEUE = 1024  # agent events buffered before the reader waits for call control
CLOSE_TIMEOUT_S = 2.0
#: Messages to the agent kept while it reconnects (the oldest go first past it): 10 s of
#: caller audio at 50 frames/s, as Twilio's applicationReconnect keeps 500 events.
MAX_BACKLOG = 500
#: Messages waiting for websockets' own client (the proxy path: ``_enqueue``) before caller
#: audio is dropped, not queued. They wait only while that client's write buffer is full (the
#: agent is not reading) or for a burst of RTP handed over at once: 1 s of caller audio.
MAX_QUEUED_SENDS = 50
#: Close codes after which reconnecting makes sense (RFC 6455 §7.4.1: going away, internal
#: error; IANA: service restart, try again later); None is a drop without a close frame.
RECONNECTABLE: frozenset[int | None] = frozenset({None, 1001, 1006, 1011, 1012, 1013})
#: Close codes with which our side fails a connection over what the peer sent (RFC 6455
#: §7.1.7, §7.4.1): a frame that breaks the protocol, text that is no UTF-8 (§8.1), a message
#: over the size limit. The peer's close frame is not read after that (§7.1.7), so without
#: this the close looked like a drop.
PEER_FAULTS: dict[int, str] = {
    1002: "agent broke the WebSocket protocol",
    1007: "agent sent a text frame that is not UTF-8",
    1009: "agent sent a message over the size limit",
}


def _peer_fault(closed: ConnectionClosed) -> int | None:
    """The close code if our side failed the connection over a frame the peer sent, else None."""
    if closed.rcvd is None and closed.sent is not None and closed.sent.code in PEER_FAULTS:
        return closed.sent.code
    return None


def connect_error(exc: BaseException) -> BridgeConnectError:
    """Map a failed WebSocket (or HTTP) connection attempt onto a ``BridgeConnectError``.

    401/403/404 are permanent (``BridgeAuthError``); 408/429/5xx, timeouts and refused
    connections are retryable; anything else about the handshake is permanent.
    """
    if isinstance(exc, BridgeConnectError):  # classified already (an insecure URL refused)
        return exc
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        if status in (401, 403, 404):
            return BridgeAuthError(
                f"agent rejected the handshake (HTTP {status})", code=str(status)
            )
        retryable = status in (408, 429) or status >= 500
        return BridgeConnectError(
            f"agent refused the handshake (HTTP {status})", retryable=retryable, code=str(status)
        )
    if isinstance(exc, TimeoutError):
        return BridgeConnectError("agent connect timed out", retryable=True, code="timeout")
    if isinstance(exc, InvalidURI):
        return BridgeConnectError("agent URL is invalid", retryable=False, code="invalid_uri")
    if isinstance(exc, InvalidHandshake):
        return BridgeConnectError("agent handshake failed", retryable=False, code="handshake")
    if isinstance(exc, OSError):
        return BridgeConnectError("agent unreachable", retryable=True, code="unreachable")
    return BridgeConnectError("agent connect failed", retryable=False, code=type(exc).__name__)


async def stop_task(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait until it has ended.

    Not ``await task`` inside ``except CancelledError: pass``: there the task's cancellation
    and our own (the caller cancelling whatever awaits this) look alike, and swallowing ours
    let a cancelled teardown carry on. ``asyncio.wait`` raises only ours.
    """
    task.cancel()
    await asyncio.wait({task})
    # Its end taken out of it, as ``await task`` would: a cancelled task keeps its
    # CancelledError, whose traceback holds the task's frames and the bridge in them (a cycle
    # only a full collection frees, test_call_memory.py). Raised here, it can only be its own.
    try:
        task.result()
    except asyncio.CancelledError:
        pass
    except Exception as exc:  # its failure was its own to report
        logger.debug("%s ended with %s", task.get_name(), type(exc).__name__)


@functools.lru_cache(maxsize=256)
def _proxy_for(url: str) -> str | None:
    """The proxy the environment configures for ``url`` (``*_proxy``/``no_proxy``), or None.

    websockets reads the whole environment on every connect; the answer depends on the URL
    and the process environment only, so it is worked out once per endpoint.
    """
    try:
        return get_proxy(parse_uri(url))
    except InvalidURI:
        return None  # connect reports the bad URL itself


class WebSocketBridge(AgentBridge):
    """Base for bridges whose provider session is one WebSocket.

    Args:
        connect_timeout_s: bound on TCP + TLS + HTTP upgrade (and on REST pre-steps).
    """

    def __init__(self, *, connect_timeout_s: float = 10.0) -> None:
        self.connect_timeout_s = connect_timeout_s
        self._ws: MessageSocket | None = None
        self._reader: asyncio.Task[None] | None = None
        self._events: collections.deque[AgentEvent] = collections.deque()
        self._wakeup = asyncio.Event()
        self._space = asyncio.Event()
        self._terminal: AgentEvent | None = None
        self._closing = False
        self._audio_sink: Callable[[AgentAudio], None] | None = None
        self._handling = False  # the read loop is inside a handler (it may await)
        # Behind a proxy (websockets' own client, which sends only from a coroutine): every
        # message to the agent, in order, and the one task sending them (``_enqueue``).
        self._outbox: collections.deque[tuple[str, asyncio.Future[None] | None]] = (
            collections.deque()
        )
        self._sender: asyncio.Task[None] | None = None
        # Reconnecting (see the module docstring): the budget (0: never), whether the session
        # is far enough along to resume, and what waits for the new socket meanwhile.
        self.reconnect_s = 0.0
        self._url: str = ""
        self._headers: Mapping[str, str] | None = None
        self._established = False
        self._backlog: collections.deque[str] | None = None
        self.reconnects = 0  # successful ones
        self.backlog_dropped = 0  # messages the backlog could not keep
        self._in_flight: str | None = None  # the backlog's head while _flush sends it

    # --- connection ------------------------------------------------------------------------

    async def _connect(
        self, url: str, headers: Mapping[str, str] | None, timeout_s: float
    ) -> MessageSocket:
        """A new connection to ``url`` (raises what the connection attempt raised)."""
        proxy = _proxy_for(url)
        if proxy is None:  # the usual case: the lean socket (see ws_socket.py)
            socket = await AgentSocket.open(
                url, headers, timeout_s=timeout_s, max_size=MAX_FRAME_BYTES
            )
            socket.on_message = self._take_now
            return socket
        return await connect(
            url,
            additional_headers=dict(headers or {}),
            open_timeout=timeout_s,
            close_timeout=CLOSE_TIMEOUT_S,
            max_size=MAX_FRAME_BYTES,
            compression=None,
            user_agent_header="telepath",
            proxy=proxy,
            ssl=client_context() if parse_uri(url).secure else None,
            logger=WIRE_LOGGER,  # never the headers, at any level (ws_socket.py)
        )

    async def _open(self, url: str, headers: Mapping[str, str] | None = None) -> None:
        """Connect and start the read loop; raises ``BridgeConnectError`` (and finishes)."""
        self._url, self._headers = url, headers
        try:
            self._ws = await self._connect(url, headers, self.connect_timeout_s)
        except Exception as exc:  # every connect failure becomes a classified BridgeError
            err = connect_error(exc)
            # The socket keeps the original error (its handshake result) and the error's
            # traceback holds the socket's frames: a cycle, unless the traceback goes.
            exc.__traceback__ = None
            logger.warning("%s bridge: connect failed (%s)", self.provider, err.code)
            self._finish(err.to_event())
            try:
                raise err from None
            finally:
                del err  # this frame is in err's traceback: no local may hold err (a cycle)
        self._reader = asyncio.create_task(self._read_loop(), name=f"{self.provider}-bridge")

    async def _fail_start(self, err: BridgeError) -> NoReturn:
        """Abort ``start`` after the socket opened: close it, finish, raise."""
        self._finish(err.to_event())
        await self._shutdown_socket()
        try:
            raise err
        finally:
            del err  # as in _open: no cycle through this frame's locals

    # --- caller audio ----------------------------------------------------------------------

    def _audio_message(self, payload: bytes) -> str | None:
        """One caller frame as the provider's message; None when there is nothing to send."""
        raise NotImplementedError

    async def send_audio(self, payload: bytes) -> None:
        """Forward caller audio, waiting while the socket's send buffer is full."""
        if self._ws is None or self._terminal is not None:
            return
        text = self._audio_message(payload)
        if text is not None:
            await self._send(text)

    def _keep(self, text: str) -> None:
        """Keep ``text`` for the agent's next connection (the backlog is open)."""
        backlog = self._backlog
        assert backlog is not None
        if len(backlog) == backlog.maxlen and backlog[0] is not self._in_flight:
            self.backlog_dropped += 1  # (the head being sent by _flush is not lost)
        backlog.append(text)

    def send_audio_nowait(self, payload: bytes) -> bool:
        """Forward caller audio now; False (frame dropped) while the send buffer is full."""
        ws = self._ws
        if ws is None or self._terminal is not None:
            return True
        # Built even when it is then dropped: the frame's sequence number and media time are
        # used up, so the agent sees the gap.
        text = self._audio_message(payload)
        if text is None:
            return True
        if not isinstance(ws, AgentSocket):
            # websockets' own client (proxy configured) sends only from a coroutine: the frame
            # joins the sender's queue, behind everything handed over before it — unless the
            # queue is full (the agent is not reading): then it is dropped, as below.
            if len(self._outbox) >= MAX_QUEUED_SENDS:
                return False
            self._enqueue(text, None)
            return True
        if self._backlog is not None:
            self._keep(text)
            return True
        try:
            return ws.send_nowait(text)
        except ConnectionClosed as exc:
            self._hold(text, exc)  # the read loop reports the close
            return True

    # --- agent audio fast path -------------------------------------------------------------

    def set_audio_sink(self, sink: Callable[[AgentAudio], None] | None) -> None:
        """Deliver agent audio to ``sink`` directly when nothing is queued ahead of it."""
        self._audio_sink = sink

    def _take_now(self, message: str | bytes) -> bool:
        """The socket's first taker: handle an audio message on the spot, if order allows."""
        if (
            self._audio_sink is None
            or self._terminal is not None
            or self._events  # call control has not caught up: queue behind those events
            or self._handling  # the read loop is mid-message: it goes first
            or not isinstance(message, str)
        ):
            return False
        try:
            payload = self._audio_now(message)
        except Exception:  # anything odd goes the slow way, which reports it properly
            return False
        if payload is None:
            return False
        if payload:
            self._audio_sink(AgentAudio(payload))  # its own errors are not the agent's
        return True

    def _audio_now(self, text: str) -> bytes | None:
        """The audio in ``text`` (call's codec; may be empty) if it is a well-formed audio
        message the bridge can take now; None to leave the message to ``_handle_text``."""
        return None

    async def _send(self, text: str) -> None:
        """Send one text frame; a closed socket is reported by the read loop, not here."""
        ws = self._ws
        if ws is None or self._terminal is not None:
            return
        if not isinstance(ws, AgentSocket):
            sent = asyncio.get_running_loop().create_future()
            self._enqueue(text, sent)
            await sent
            return
        await self._deliver(text)

    def _enqueue(self, text: str, sent: asyncio.Future[None] | None) -> None:
        """Queue ``text`` for the sender task (started if idle); ``sent`` resolves once it is
        sent, kept or dropped. One task sending in order keeps the wire in the order messages
        were made: Twilio's sequenceNumber counts them."""
        self._outbox.append((text, sent))
        sender = self._sender
        if sender is None or sender.done():
            name = f"{self.provider}-bridge-send"
            self._sender = asyncio.get_running_loop().create_task(self._send_queued(), name=name)

    async def _send_queued(self) -> None:
        outbox = self._outbox
        while outbox:
            text, sent = outbox.popleft()
            try:
                await self._deliver(text)
            except Exception as exc:  # not the session's end (the read loop reports that)
                logger.warning("%s bridge: send failed (%s)", self.provider, type(exc).__name__)
            finally:
                if sent is not None and not sent.done():
                    sent.set_result(None)

    def _stop_sender(self) -> None:
        """End the sender (the session is closing); nobody is left waiting on a send."""
        sender, self._sender = self._sender, None
        if sender is not None:
            # and let it go: cancelled, it keeps its CancelledError, whose traceback holds its
            # frames and this bridge in them — held here too, that was a cycle
            sender.cancel()
        while self._outbox:
            _, sent = self._outbox.popleft()
            if sent is not None and not sent.done():
                sent.set_result(None)

    async def _deliver(self, text: str) -> None:
        """Send ``text`` on the current socket now, or keep it while the agent reconnects."""
        ws = self._ws
        if ws is None or self._terminal is not None:
            return
        if self._backlog is not None:
            self._keep(text)
            return
        try:
            await ws.send(text)
        except ConnectionClosed as exc:
            self._hold(text, exc)

    def _hold(self, text: str, closed: ConnectionClosed) -> None:
        """A send that found the connection closed before the read loop did: kept for the
        next connection when the close is one that will be reconnected (``_reconnect`` opens
        the backlog only once the read loop sees it, and a frame sent meanwhile was lost);
        otherwise dropped, the session being over."""
        code = closed.rcvd.code if closed.rcvd is not None else None
        if (
            self.reconnect_s <= 0
            or _peer_fault(closed) is not None
            or not self._established
            or code not in RECONNECTABLE
            or self._closing
            or self._terminal is not None
        ):
            return
        if self._backlog is None:
            self._backlog = collections.deque(maxlen=MAX_BACKLOG)
        self._keep(text)

    # --- the read loop ---------------------------------------------------------------------

    async def _read_loop(self) -> None:
        try:
            while await self._read_socket():
                pass
        except BridgeError as err:
            # its text, not the error: a log record that keeps the error (a capturing handler
            # does) would keep its traceback's frames, and with them this bridge and its call
            logger.warning("%s bridge: %s", self.provider, str(err))
            self._finish(err.to_event())
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("%s bridge: unexpected failure in the read loop", self.provider)
            self._finish(AgentError(BridgeReason.AI_PROVIDER_ERROR, "internal bridge error", False))
        if not self._closing:
            await self._shutdown_socket()

    async def _read_socket(self) -> bool:
        """Read the current socket until the session ends (False) or, after a drop, another
        socket has taken over (True)."""
        ws = self._ws
        assert ws is not None
        try:
            while True:
                message = await ws.recv()
                self._handling = True
                try:
                    if isinstance(message, bytes):
                        await self._handle_binary(message)
                    else:
                        await self._handle_text(message)
                finally:
                    self._handling = False
                if self._terminal is not None:
                    return False
        except ConnectionClosed as exc:
            if self._closing or self._terminal is not None:
                return False
            fault = _peer_fault(exc)
            if fault is not None:  # a malformed frame, not a drop: never reconnected
                logger.warning("%s bridge: %s", self.provider, PEER_FAULTS[fault])
                self._finish(
                    AgentError(
                        BridgeReason.AI_PROVIDER_ERROR, PEER_FAULTS[fault], False, str(fault)
                    )
                )
                return False
            code = exc.rcvd.code if exc.rcvd is not None else None
            reason = exc.rcvd.reason if exc.rcvd is not None else ""
            if self.reconnect_s > 0 and self._established and code in RECONNECTABLE:
                if await self._reconnect(code):
                    return True
                if self._closing or self._terminal is not None:
                    return False
                self._finish(
                    AgentError(
                        BridgeReason.AI_PROVIDER_ERROR,
                        f"agent connection dropped; no reconnect within {self.reconnect_s:g} s",
                        True,
                        "1006" if code is None else str(code),
                    )
                )
                return False
            self._finish(self._on_remote_close(code, reason))
            return False

    async def _reconnect(self, code: int | None) -> bool:
        """Dial the agent again until ``reconnect_s`` has passed; on a new socket, resume the
        session (``_resume``) and send the backlog. True once the new socket has taken over."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reconnect_s
        if self._backlog is None:  # (a send may have found the close first: _hold)
            self._backlog = collections.deque(maxlen=MAX_BACKLOG)
        logger.info("%s bridge: connection dropped (%s), reconnecting", self.provider, code)
        pause, attempts = 0.1, 0
        while not self._closing and self._terminal is None:
            left = deadline - loop.time()
            if left <= 0:
                break
            attempts += 1
            try:
                socket = await self._connect(
                    self._url, self._headers, min(left, self.connect_timeout_s)
                )
            except Exception as exc:  # every failed attempt is retried while time is left
                exc.__traceback__ = None  # as in _open: no cycle through the socket
                await asyncio.sleep(min(pause, max(0.0, deadline - loop.time())))
                pause = min(pause * 2, 1.0)
                continue
            if self._closing or self._terminal is not None:
                # the call ended while we dialled: no session to resume on it
                with contextlib.suppress(ConnectionClosed, OSError, TimeoutError):
                    async with asyncio.timeout(CLOSE_TIMEOUT_S):
                        await socket.close(1000)
                break
            self._ws = socket
            try:
                async with asyncio.timeout(max(0.05, deadline - loop.time())):
                    await self._resume(self.reconnects + 1)
                    await self._flush(socket)
            except (BridgeError, ConnectionClosed, OSError, TimeoutError) as exc:
                logger.warning(
                    "%s bridge: resuming on a new connection failed (%s)",
                    self.provider,
                    type(exc).__name__,
                )
                with contextlib.suppress(ConnectionClosed, OSError, TimeoutError):
                    async with asyncio.timeout(CLOSE_TIMEOUT_S):
                        await socket.close(1000)
                continue
            self.reconnects += 1
            logger.info(
                "%s bridge: reconnected after %d attempt(s); %d message(s) could not be kept",
                self.provider,
                attempts,
                self.backlog_dropped,
            )
            await self._emit(AgentReconnected(self.provider, self.reconnects, self.backlog_dropped))
            return True
        self._backlog = None
        return False

    async def _flush(self, socket: MessageSocket) -> None:
        """Send the backlog in order; what arrives meanwhile joins its end. Then close it.

        A message leaves the backlog only once ``send`` has taken it: if the new connection
        fails meanwhile, the next one starts with the message that failed. (A full backlog
        may have evicted the message while it was being sent: then its successor stays.)"""
        backlog = self._backlog
        assert backlog is not None
        while backlog:
            head = self._in_flight = backlog[0]
            try:
                await socket.send(head)
            finally:
                self._in_flight = None
            if backlog and backlog[0] is head:
                backlog.popleft()
        self._backlog = None

    async def _resume(self, attempt: int) -> None:
        """Re-open the session on the new socket ``self._ws`` (the ``attempt``-th reconnect);
        raise ``BridgeError`` if the agent does not take it up."""
        raise BridgeProtocolError("this bridge cannot resume a session")

    async def _handle_text(self, text: str) -> None:
        """Parse one text frame and emit events; raise ``BridgeError`` to end the session."""
        raise NotImplementedError

    async def _handle_binary(self, data: bytes) -> None:
        """Binary frames are not part of any JSON protocol we speak."""
        raise BridgeProtocolError("unexpected binary frame")

    def _on_remote_close(self, code: int | None, reason: str) -> AgentEvent:
        """The terminal event for a close we did not ask for (default: provider error)."""
        if code is None:
            return AgentError(
                BridgeReason.AI_PROVIDER_ERROR, "agent connection dropped", True, "1006"
            )
        if code == 1000:
            return AgentDisconnected(BridgeReason.AI_PROVIDER_ERROR, code)
        retryable = code in (1001, 1011, 1012, 1013)
        return AgentError(
            BridgeReason.AI_PROVIDER_ERROR, "agent closed the connection", retryable, str(code)
        )

    # --- events ----------------------------------------------------------------------------

    async def _emit(self, event: AgentEvent) -> None:
        """Queue a non-terminal event, waiting while call control is behind."""
        while len(self._events) >= MAX_EVENT_QUEUE and self._terminal is None:
            self._space.clear()
            await self._space.wait()
        if self._terminal is None:
            self._events.append(event)
            self._wakeup.set()

    def _finish(self, event: AgentEvent) -> None:
        """Record the terminal event (first one wins)."""
        if self._terminal is None:
            assert is_terminal(event)
            self._terminal = event
            self._wakeup.set()
            self._space.set()

    @property
    def finished(self) -> bool:
        """True once the terminal event is known."""
        return self._terminal is not None

    async def events(self) -> AsyncIterator[AgentEvent]:
        """Agent events in order, then the terminal event; see ``AgentBridge.events``."""
        while True:
            if self._events:
                event = self._events.popleft()
                self._space.set()
                yield event
                continue
            if self._terminal is not None:
                yield self._terminal
                return
            self._wakeup.clear()
            await self._wakeup.wait()

    # --- shutdown --------------------------------------------------------------------------

    async def _goodbye(self, reason: BridgeReason) -> None:
        """Protocol-specific last words before a close we initiate (e.g. ``stop``)."""
        return None

    async def _shutdown_socket(self) -> None:
        ws = self._ws
        if ws is not None:
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT_S * 2):  # no task, unlike wait_for
                    await ws.close(1000)
            except (TimeoutError, ConnectionClosed, OSError):
                pass

    async def close(self, reason: BridgeReason = BridgeReason.CALLER_HANGUP) -> None:
        """End the session (idempotent); the stream ends with ``AgentDisconnected(reason)``."""
        if self._closing:
            return
        try:
            if self._terminal is None and self._ws is not None:
                # bounded: an agent that stopped reading holds a send (its buffer full)
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await self._goodbye(reason)
        except (ConnectionClosed, OSError, TimeoutError):
            pass
        finally:
            # Set even if this close is cancelled while saying goodbye (the call gives it a
            # few seconds): a drop seen after it must not reconnect the ended call.
            self._closing = True
            self._stop_sender()  # what the goodbye left queued is not sent any more
        await self._shutdown_socket()
        reader = self._reader
        try:
            if reader is not None and reader is not asyncio.current_task():
                await stop_task(reader)
        finally:
            # also when this close is cancelled meanwhile: events() must still end
            self._finish(AgentDisconnected(reason, 1000))
