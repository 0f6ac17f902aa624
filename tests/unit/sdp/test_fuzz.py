"""Hostile input: parse() raises SdpError and nothing else; what parses round-trips."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telepath.sdp import MediaSecurity, SdpError, negotiate_answer, parse
from telepath.sdp.crypto import parse_crypto

from .samples import SAMPLE_NAMES, load_sample

pytestmark = pytest.mark.unit

SEED = 20240611
MUTATIONS = 3000

# Fragments that hit the parser's edges: type letters, separators, numbers of every size,
# Unicode digits and line/space separators that str.split()/splitlines() would honour.
TOKENS = [
    b"v=0",
    b"o=",
    b"s=",
    b"c=IN IP4 ",
    b"c=IN IP6 ::",
    b"t=",
    b"r=",
    b"m=audio ",
    b"m=video 0 RTP/SAVP ",
    b"a=rtpmap:",
    b"a=rtcp:",
    b"a=fmtp:",
    b"a=ptime:",
    b"a=sendonly",
    b"a=inactive",
    b"a=",
    b" ",
    b"\t",
    b"/",
    b":",
    b"\r",
    b"\n",
    b"\r\n",
    b"\x00",
    b"0",
    b"127",
    b"128",
    b"65536",
    b"9" * 50,
    b"9" * 5000,
    "\u0661\u0662".encode(),
    "\u2028".encode(),
    "\x85".encode(),
    b"\x1c",
    b"\xff\xfe",
    b"telephone-event/8000",
    b"PCMU/8000/",
    b"0.0.0.0",
]


SECURITIES = [
    MediaSecurity(),
    MediaSecurity(key=bytes(30)),
    MediaSecurity(key=bytes(30), required=True),
]
INLINE = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz"


def check(data: bytes | str) -> None:
    """The fuzz property shared by every generator."""
    try:
        sd = parse(data)
    except SdpError as exc:
        assert exc.status_hint == 400
        return
    text = str(sd)
    again = parse(text)
    assert again == sd
    assert str(again) == text
    assert text.endswith("\r\n")
    for security in SECURITIES:  # plain only, SRTP allowed, SRTP required
        try:
            negotiate_answer(
                sd,
                local_address="192.0.2.1",
                local_port=4000,
                session_id=1,
                session_version=1,
                security=security,
            )
        except SdpError:
            pass


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        pos = rng.randint(0, len(buf))
        if op == 0 and buf:  # delete a span
            del buf[pos : pos + rng.randint(1, 16)]
        elif op == 1:  # insert a token
            buf[pos:pos] = rng.choice(TOKENS)
        elif op == 2 and buf:  # flip a byte
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif op == 3:  # truncate
            del buf[pos:]
        elif op == 4:  # duplicate or drop a whole line
            lines = bytes(buf).split(b"\r\n")
            i = rng.randrange(len(lines))
            if rng.random() < 0.5:
                lines.insert(rng.randrange(len(lines) + 1), lines[i])
            else:
                del lines[i]
            buf = bytearray(b"\r\n".join(lines))
        elif op == 5:  # swap two lines
            lines = bytes(buf).split(b"\r\n")
            i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
            buf = bytearray(b"\r\n".join(lines))
        else:  # replace a digit run
            buf[pos:pos] = str(rng.choice([0, 1, 255, 65535, 65536, 10**25])).encode()
    return bytes(buf)


def test_seeded_mutation_fuzz() -> None:
    rng = random.Random(SEED)
    seeds = [load_sample(name) for name in SAMPLE_NAMES]
    parsed = 0
    for _ in range(MUTATIONS):
        data = mutate(rng, rng.choice(seeds))
        check(data)
        check(data.decode("latin-1"))
        try:
            parse(data)
            parsed += 1
        except SdpError:
            pass
    # The mutations must exercise both outcomes, or the fuzz is not testing much.
    assert 0.05 * MUTATIONS < parsed < 0.95 * MUTATIONS


def test_seeded_random_bytes_fuzz() -> None:
    rng = random.Random(SEED + 1)
    for _ in range(1000):
        data = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\n" + bytes(
            rng.randrange(256) for _ in range(rng.randint(0, 200))
        )
        check(data)
        check(bytes(rng.randrange(256) for _ in range(rng.randint(0, 64))))


LINE_TYPES = st.sampled_from(list("vosiuepcbtrzkam") + ["x", "A", " ", ""])
LINE_VALUES = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "0",
            "- 1 1 IN IP4 192.0.2.1",
            "IN IP4 192.0.2.1",
            "IN IP4 224.2.1.1/127/3",
            "0 0",
            "audio 4000 RTP/AVP 0 8 101",
            "audio 4000/2 RTP/AVP 9",
            "video 0 RTP/SAVP 96",
            "audio 4000 RTP/SAVP 0 101",
            f"crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}",
            f"crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{INLINE}|2^20|1:4",
            f"crypto:3 AES_CM_128_HMAC_SHA1_80 inline:{INLINE} KDR=1",
            "rtpmap:101 telephone-event/8000",
            "rtpmap:9 G722/8000/1",
            "rtcp:4001 IN IP4 192.0.2.1",
            "fmtp:101 0-16",
            "ptime:20.5",
            "sendonly",
            "AS:64",
        ]
    ),
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(LINE_TYPES, LINE_VALUES), max_size=20), st.sampled_from(["\r\n", "\n"]))
def test_structured_lines_fuzz(lines: list[tuple[str, str]], eol: str) -> None:
    head = "v=0" + eol + "o=- 1 1 IN IP4 192.0.2.1" + eol + "s=-" + eol
    check(head + "".join(f"{kind}={value}{eol}" for kind, value in lines))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_fuzz(data: bytes) -> None:
    check(data)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_fuzz(data: str) -> None:
    check(data)


CRYPTO_PARTS = st.sampled_from(
    [" ", "\t", "1", "2^20", "2^", "|", ":", ";", "inline:", INLINE, "AES_CM_128_HMAC_SHA1_80"]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(CRYPTO_PARTS, st.text(max_size=8)), max_size=12))
def test_crypto_attribute_fuzz(parts: list[str]) -> None:
    """An a=crypto value is either honoured with a key of the suite's length, or skipped."""
    found = parse_crypto("".join(parts))
    assert found is None or len(found.key) == found.suite.key_length
