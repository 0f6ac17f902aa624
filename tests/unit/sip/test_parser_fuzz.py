"""Property-based fuzzing of the SIP parser and stream framer.

Whatever the input, :func:`parse_message` returns a :class:`Request` / :class:`Response` or
raises :class:`SipParseError`; nothing else ever escapes (no IndexError, ValueError,
UnicodeError, RecursionError…). Inputs are arbitrary bytes and mutations of the RFC 4475
corpus. :class:`StreamFramer` reassembles exactly the messages of a stream however it is cut.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telepath.sip.errors import SipParseError
from telepath.sip.message import Request, Response
from telepath.sip.parser import MAX_MESSAGE_SIZE, StreamFramer, parse_message

pytestmark = pytest.mark.unit

CORPUS_DIR = Path(__file__).resolve().parents[2] / "data" / "rfc4475"
CORPUS: list[bytes] = [p.read_bytes() for p in sorted(CORPUS_DIR.glob("*/*.dat"))]
# Messages a stream can carry as they are: a header block, a Content-Length and a body of
# exactly that length (§18.3), with nothing after it.
FRAMEABLE: list[bytes] = []
for _data in CORPUS:
    try:
        if StreamFramer().feed(_data) == [_data]:
            FRAMEABLE.append(_data)
    except SipParseError:
        pass

FUZZ = settings(
    max_examples=400,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Octets that sit at syntactic boundaries of SIP, to make mutations land somewhere interesting.
INTERESTING = [
    b"\r\n",
    b"\r\n\r\n",
    b"\r\n ",
    b"\n",
    b"\r",
    b" ",
    b"\t",
    b":",
    b";",
    b",",
    b"=",
    b"<",
    b">",
    b'"',
    b"\\",
    b"%",
    b"%00",
    b"@",
    b"/",
    b"?",
    b"[",
    b"]",
    b"\x00",
    b"\xff",
    b"\xc3",
    b"SIP/2.0",
    b"sip:",
    b"tel:",
    b";branch=",
    b";tag=",
    b"Content-Length: 99999999999999999999\r\n",
    b"Content-Length: -1\r\n",
    b"l: 5\r\n",
    b"Via: SIP/2.0/UDP [::1]:99999\r\n",
    b"CSeq: 4294967296 INVITE\r\n",
    b"Max-Forwards: 256\r\n",
    b"Contact: *\r\n",
    b"9" * 40,
]


def check_parse(data: bytes) -> None:
    """The one property: a message or a SipParseError with a 4xx/5xx hint, nothing else."""
    try:
        msg = parse_message(data)
    except SipParseError as exc:
        assert 400 <= exc.status_hint < 600, exc.status_hint
        return
    assert isinstance(msg, Request | Response)
    assert isinstance(msg.body, bytes)
    if isinstance(msg, Response):
        assert 100 <= msg.status <= 699


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A corpus message with one to six random edits."""
    data = bytearray(draw(st.sampled_from(CORPUS)))
    for _ in range(draw(st.integers(1, 6))):
        size = len(data)
        pos = draw(st.integers(0, size))
        op = draw(
            st.sampled_from(["flip", "set", "truncate", "insert", "token", "delete", "duplicate"])
        )
        if op == "flip" and size:
            i = min(pos, size - 1)
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and size:
            data[min(pos, size - 1)] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "token":
            data[pos:pos] = draw(st.sampled_from(INTERESTING))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 32))]
        elif op == "duplicate":
            chunk = data[pos : pos + draw(st.integers(1, 200))]
            at = draw(st.integers(0, len(data)))
            data[at:at] = chunk * draw(st.integers(1, 3))
    return bytes(data)


@st.composite
def header_soup(draw: st.DrawFn) -> bytes:
    """A start line and header lines recombined from corpus lines and interesting tokens."""
    lines = [line for data in CORPUS for line in data.split(b"\r\n")[:40]]
    parts = draw(
        st.lists(st.sampled_from(lines) | st.sampled_from(INTERESTING), min_size=1, max_size=30)
    )
    return b"\r\n".join(parts) + draw(st.sampled_from([b"", b"\r\n", b"\r\n\r\n"]))


@FUZZ
@given(st.binary(max_size=2048))
def test_arbitrary_bytes(data: bytes) -> None:
    check_parse(data)


@FUZZ
@given(
    st.sampled_from([b"INVITE sip:a@b SIP/2.0\r\n", b"SIP/2.0 200 OK\r\n", b""]),
    st.binary(max_size=1024),
)
def test_arbitrary_bytes_after_a_start_line(start: bytes, rest: bytes) -> None:
    check_parse(start + rest)


@FUZZ
@given(mutated())
def test_mutated_corpus(data: bytes) -> None:
    check_parse(data)


@FUZZ
@given(header_soup())
def test_recombined_header_lines(data: bytes) -> None:
    check_parse(data)


@pytest.mark.parametrize("index", range(len(CORPUS)))
def test_every_truncation_of_every_message(index: int) -> None:
    data = CORPUS[index]
    for end in range(len(data) + 1):
        check_parse(data[:end])


def test_oversized_message() -> None:
    with pytest.raises(SipParseError):
        parse_message(CORPUS[0] + b"x" * (MAX_MESSAGE_SIZE + 1))


@st.composite
def chunked_stream(draw: st.DrawFn) -> tuple[list[bytes], list[bytes]]:
    """Valid messages joined (CRLF keep-alives between some), cut at random points."""
    messages = draw(st.lists(st.sampled_from(FRAMEABLE), min_size=1, max_size=8))
    stream = bytearray()
    for message in messages:
        stream += draw(st.sampled_from([b"", b"", b"\r\n", b"\r\n\r\n"]))
        stream += message
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=40)))
    chunks = [bytes(stream[a:b]) for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    return messages, chunks


@FUZZ
@given(chunked_stream())
def test_stream_framer_reassembles_any_chunking(case: tuple[list[bytes], list[bytes]]) -> None:
    messages, chunks = case
    framer = StreamFramer()
    out: list[bytes] = []
    for chunk in chunks:
        out.extend(framer.feed(chunk))
    assert out == messages
    assert framer.pending == 0
    for message in out:
        check_parse(message)


@settings(FUZZ, max_examples=40)
@given(chunked_stream())
def test_stream_framer_byte_at_a_time(case: tuple[list[bytes], list[bytes]]) -> None:
    messages, chunks = case
    stream = b"".join(chunks)
    framer = StreamFramer()
    out: list[bytes] = []
    for i in range(len(stream)):
        out.extend(framer.feed(stream[i : i + 1]))
    assert out == messages


@FUZZ
@given(st.lists(st.binary(max_size=256) | mutated(), max_size=6))
def test_stream_framer_garbage(chunks: list[bytes]) -> None:
    framer = StreamFramer(max_size=4096)
    try:
        for chunk in chunks:
            for message in framer.feed(chunk):
                assert isinstance(message, bytes)
                assert len(message) <= 4096
                check_parse(message)
    except SipParseError as exc:
        assert 400 <= exc.status_hint < 600


def test_frameable_corpus_is_not_empty() -> None:
    assert len(FRAMEABLE) >= 30


def test_the_framer_counts_double_crlf_pings_apart_from_single_crlf_pongs() -> None:
    """RFC 5626 §3.5.1: a double CRLF is a ping (to be answered), a single CRLF a pong (never
    answered: two peers must not ping-pong forever)."""
    framer = StreamFramer()
    assert framer.feed(b"\r\n\r\n") == []
    assert framer.pings == 1
    assert framer.feed(b"\r\n") == []
    assert framer.pings == 1  # a pong
    message = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 0\r\n\r\n"
    assert framer.feed(b"\r\n\r\n" + message + b"\r\n\r\n") == [message]
    assert framer.pings == 3


@pytest.mark.parametrize(
    ("reads", "pings"),
    [
        ([b"\r\n\r\n\r\n\r\n"], 2),  # two pings in one read: two pongs
        ([b"\r\n\r\n\r\n"], 1),
        ([b"\r\n", b"\r\n"], 0),  # two pongs (to our pings) in two reads: never answered
        ([b"\r\n\r", b"\n"], 0),  # nor a double CRLF TCP split: no carry across reads
        ([b"\r", b"\n\r\n\r\n"], 1),
        ([b"\r\n\r\n\r\n", b"\r\n"], 1),
        ([b"\r\n", b"\r\n\r\n\r\n\r\n"], 2),
        ([b"\r\n", b"\n"], 0),  # no double CRLF
        ([b"\n\n\n\n"], 0),
    ],
)
def test_each_double_crlf_of_the_stream_is_one_ping_however_it_is_read(
    reads: list[bytes], pings: int
) -> None:
    """RFC 5626 §4.4.1: each double CRLF of one read between messages gets one single-CRLF
    pong, however many the read holds; CRLFs are not paired across reads, where two pongs
    (single CRLFs, which are never answered) would read as one ping."""
    framer = StreamFramer()
    for data in reads:
        assert framer.feed(data) == []
    assert framer.pings == pings


@pytest.mark.parametrize(
    ("reads", "pings"),
    [
        ([b"\r\n", b"\r\n"], 1),  # a ping TCP split between two reads: answered
        ([b"\r\n\r", b"\n"], 1),
        ([b"\r", b"\n", b"\r", b"\n"], 1),  # an octet a read
        ([b"\r\n\r\n\r\n", b"\r\n"], 2),
        ([b"\r\n\r\n", b"\r\n"], 1),  # a ping, then a lone CRLF: no second one
        ([b"\r\n", b"\r\n", b"\r\n"], 1),
        ([b"\r\n", b"\r\n", b"\r\n", b"\r\n"], 2),
        ([b"\r\n", b"\n"], 0),  # no double CRLF
    ],
)
def test_crlfs_pair_across_reads_on_a_connection_we_never_ping(
    reads: list[bytes], pings: int
) -> None:
    """On a connection accepted from a client (``pair_across_reads``) we send no pings, so no
    single-CRLF pong can come: a double-CRLF ping split across TCP reads is one ping, owed one
    pong (RFC 5626 §4.4.1). It went unanswered, so a client keeping its flow alive thought it
    dead."""
    framer = StreamFramer(pair_across_reads=True)
    for data in reads:
        assert framer.feed(data) == []
    assert framer.pings == pings


def test_a_crlf_pairs_across_reads_only_up_to_a_message() -> None:
    framer = StreamFramer(pair_across_reads=True)
    message = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 0\r\n\r\n"
    assert framer.feed(b"\r\n") == []
    assert framer.feed(message) == [message]
    assert framer.feed(b"\r\n") == []
    assert framer.pings == 0
    assert framer.feed(message + b"\r\n") == [message]
    assert framer.feed(b"\r\n") == []
    assert framer.pings == 1


def test_a_crlf_before_a_message_pairs_with_none_after_it() -> None:
    """The CRLFs §7.5 allows before a message, then one after it: no double CRLF between
    messages, so no ping."""
    framer = StreamFramer()
    message = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 0\r\n\r\n"
    assert framer.feed(b"\r\n") == []
    assert framer.feed(message[:5]) == []
    assert framer.feed(message[5:]) == [message]
    assert framer.feed(b"\r\n") == []
    assert framer.pings == 0
    assert framer.feed(message + b"\r\n\r\n") == [message]
    assert framer.pings == 1
