"""AgentSocket's receive shortcut (frames split by hand while the library is between frames)
against the library alone: same messages, same close, same state, wherever the reads split."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.client import ClientProtocol
from websockets.frames import Close
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from telepath.bridges.ws_socket import AgentSocket

pytestmark = pytest.mark.unit

LIMIT = 300  # the sockets' max_size: small, so oversized frames are cheap to build


class LibraryOnly(AgentSocket):
    """The reference: every byte goes through the library's parser."""

    def _between_frames(self) -> bool:
        return False


@dataclass
class Recorder:
    """A transport that keeps what is written and the reading state."""

    written: list[bytes] = field(default_factory=list)
    paused: bool = False
    aborted: bool = False

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.written.append(b"<eof>")

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        pass


def _frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = False,
    length: int | None = None,
) -> bytes:
    """A server frame by hand (RFC 6455 §5.2), including ones a server must not send."""
    size = len(payload) if length is None else length
    head1 = (0x80 if fin else 0) | rsv << 4 | opcode
    mask_bit = 0x80 if mask else 0
    if size < 126:
        header = bytes((head1, mask_bit | size))
    elif size < 65536:
        header = struct.pack("!BBH", head1, mask_bit | 126, size)
    else:
        header = struct.pack("!BBQ", head1, mask_bit | 127, size)
    if mask:
        header += b"\x00\x00\x00\x00"  # a zero key leaves the payload as it is
    return header + payload


TEXT = st.text(max_size=40).map(lambda t: t.encode())
FRAMES = st.one_of(
    TEXT.map(lambda p: _frame(0x1, p)),  # the shortcut's case
    st.sampled_from([125, 126, 127, 200, 300]).map(lambda n: _frame(0x1, b"x" * n)),  # lengths
    st.just(_frame(0x1, b"\xff\xfe")),  # invalid UTF-8
    st.binary(max_size=20).map(lambda p: _frame(0x2, p)),  # binary
    TEXT.map(lambda p: _frame(0x1, p, fin=False) + _frame(0x0, b"-") + _frame(0x0, p)),
    st.binary(max_size=10).map(lambda p: _frame(0x9, p)),  # ping
    st.binary(max_size=10).map(lambda p: _frame(0xA, p)),  # unsolicited pong
    st.just(_frame(0x8, struct.pack("!H", 1000) + b"bye")),  # close
    TEXT.map(lambda p: _frame(0x1, p, mask=True)),  # masked: protocol error
    TEXT.map(lambda p: _frame(0x1, p, rsv=4)),  # reserved bit: protocol error
    st.just(_frame(0x3, b"?")),  # reserved opcode
    st.just(_frame(0x1, b"", length=LIMIT + 1)[:4]),  # too big, announced by its header
    st.just(_frame(0x0, b"orphan")),  # continuation outside a message
    st.just(_frame(0x1, b"a", fin=False) + _frame(0x1, b"b")),  # text inside a message
)


def _handshake() -> tuple[ClientProtocol, bytes]:
    client = ClientProtocol(parse_uri("ws://127.0.0.1:1/agent"), max_size=LIMIT)
    server = ServerProtocol()
    client.send_request(client.connect())
    for data in client.data_to_send():
        server.receive_data(data)
    server.send_response(server.accept(server.events_received()[0]))  # type: ignore[arg-type]
    return client, b"".join(server.data_to_send())


def _taker(into: list[str | bytes]) -> Callable[[str | bytes], bool]:
    """An ``on_message`` that takes every message into a list."""

    def take(message: str | bytes) -> bool:
        into.append(message)
        return True

    return take


@dataclass
class Outcome:
    messages: list[str | bytes]
    state: State
    close_sent: Close | None
    close_rcvd: Close | None
    handshake_done: bool
    eof_written: bool


async def _run(cls: type[AgentSocket], chunks: list[bytes], eof: bool) -> Outcome:
    client, response = _handshake()
    sock = cls(client, ping_interval_s=0)
    messages: list[str | bytes] = []
    sock.on_message = _taker(messages)
    transport = Recorder()
    sock.connection_made(transport)  # type: ignore[arg-type]
    for chunk in [response[:7], response[7:], *chunks]:
        if client.state is State.CLOSED:
            break
        sock.data_received(chunk)
    if eof and client.state is not State.CLOSED:
        sock.eof_received()
    for timer in (sock._abort_timer, sock._ping_timer):
        if timer is not None:
            timer.cancel()
    return Outcome(
        messages,
        client.state,
        client.close_sent,
        client.close_rcvd,
        sock._handshake.done() and sock._handshake.exception() is None,
        b"<eof>" in transport.written,
    )


def _both(stream: bytes, cuts: list[int], eof: bool) -> tuple[Outcome, Outcome]:
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    chunks = [stream[a:b] for a, b in zip(points, points[1:], strict=False) if b > a]

    async def go() -> tuple[Outcome, Outcome]:
        return await _run(AgentSocket, chunks, eof), await _run(LibraryOnly, chunks, eof)

    return asyncio.run(go())


@settings(max_examples=400, deadline=None)
@given(
    frames=st.lists(FRAMES, max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=6),
    eof=st.booleans(),
)
def test_split_path_matches_the_library_alone(
    frames: list[bytes], cuts: list[int], eof: bool
) -> None:
    fast, reference = _both(b"".join(frames), cuts, eof)
    if fast.close_sent != reference.close_sent and fast.close_sent is not None:
        # One allowed difference: the library parses a whole read before our code sees its
        # text frames, so when invalid UTF-8 is followed in the same read by a frame the
        # library acts on (one it refuses, or the peer's close), the library-only path answers
        # that later frame. The split path fails in stream order, at the first fault (1007,
        # RFC 6455 §8.1), and reads nothing after it (§7.1.7). Messages before it must match.
        assert fast.close_sent.code == 1007
        assert reference.close_sent is not None and reference.close_sent.code != 1007
        assert fast.messages == reference.messages
        assert fast.state is not State.OPEN and reference.state is not State.OPEN
        return
    assert fast == reference


def test_a_close_code_and_messages_before_it_survive_a_one_byte_at_a_time_stream() -> None:
    stream = (
        _frame(0x1, "héllo".encode())
        + _frame(0x1, b"x" * 200)
        + _frame(0x8, struct.pack("!H", 4000) + b"done")
    )
    fast, reference = _both(stream, list(range(len(stream))), eof=True)
    assert fast == reference
    assert fast.messages == ["héllo", "x" * 200]
    assert fast.close_rcvd is not None and fast.close_rcvd.code == 4000


async def test_plain_text_frames_bypass_the_library_once_open() -> None:
    client, response = _handshake()
    sock = AgentSocket(client, ping_interval_s=0)
    messages: list[str | bytes] = []
    sock.on_message = _taker(messages)
    sock.connection_made(Recorder())  # type: ignore[arg-type]
    sock.data_received(response)
    fed: list[bytes] = []
    real = client.receive_data

    def counting(data: bytes | bytearray) -> None:
        fed.append(bytes(data))
        real(data)

    client.receive_data = counting  # type: ignore[method-assign]
    two = _frame(0x1, b"two")
    sock.data_received(_frame(0x1, b"one") + two[:-1])
    sock.data_received(two[-1:])
    assert messages == ["one", "two"]
    assert fed == []  # a websockets upgrade that moves the parser's wait point fails here
    ping = _frame(0x9, b"p")
    sock.data_received(ping + _frame(0x1, b"three"))
    assert fed == [ping]  # the ping, whole, to the library (which answers it)
    assert messages == ["one", "two", "three"]


def test_after_invalid_utf8_no_later_frame_is_delivered() -> None:
    stream = _frame(0x1, b"ok") + _frame(0x1, b"\xff") + _frame(0x1, b"late")
    for cuts in ([], [len(stream) - 3]):
        fast, reference = _both(stream, cuts, eof=False)
        assert fast == reference
        assert fast.messages == ["ok"]
        assert fast.close_sent is not None and fast.close_sent.code == 1007
