"""Call-ID routing of datagrams to SIP worker processes."""

from __future__ import annotations

import collections
import uuid

import pytest

from telepath.sip.routing import call_id_of, owner_of

INVITE = (
    b"INVITE sip:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1\r\n"
    b"From: <sip:alice@example.com>;tag=1\r\n"
    b"To: <sip:bob@example.com>\r\n"
    b"%s\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Content-Length: %d\r\n\r\n%s"
)


def _message(call_id_line: bytes, body: bytes = b"") -> bytes:
    return INVITE % (call_id_line, len(body), body)


@pytest.mark.parametrize(
    "line",
    [
        b"Call-ID: a84b4c76e66710@pc33.example.com",
        b"call-id:a84b4c76e66710@pc33.example.com",
        b"CALL-ID  :  a84b4c76e66710@pc33.example.com",
        b"i: a84b4c76e66710@pc33.example.com",  # RFC 3261 §7.3.3 compact form
        b"I:\ta84b4c76e66710@pc33.example.com",
    ],
)
def test_call_id_found_in_every_spelling(line: bytes) -> None:
    assert call_id_of(_message(line)) == b"a84b4c76e66710@pc33.example.com"


def test_body_is_not_searched() -> None:
    body = b"v=0\r\ni=session info\r\nCall-ID: in-the-body\r\n"
    assert call_id_of(_message(b"Subject: none", body)) is None
    assert call_id_of(_message(b"Call-ID: real", body)) == b"real"


def test_header_names_that_only_start_like_call_id_do_not_match() -> None:
    assert call_id_of(_message(b"Identity: abc")) is None  # "I" + more letters, not compact "i"
    assert call_id_of(_message(b"Call-Info: <http://x>")) is None


@pytest.mark.parametrize("data", [b"", b"\r\n\r\n", b"\r\n", b"garbage \x00\xff", b"i:\r\n"])
def test_no_call_id(data: bytes) -> None:
    assert call_id_of(data) is None


def test_a_response_routes_like_its_request() -> None:
    response = (
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK2\r\n"
        b"Call-ID: abc@host\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    )
    request = _message(b"Call-ID: abc@host")
    assert owner_of(call_id_of(response) or b"", 4) == owner_of(call_id_of(request) or b"", 4)


def test_owner_is_stable_in_range_and_spread() -> None:
    ids = [str(uuid.uuid4()).encode() for _ in range(4000)]
    owners = collections.Counter(owner_of(i, 4) for i in ids)
    assert set(owners) == {0, 1, 2, 3}
    assert min(owners.values()) > 850  # 1,000 each when even; CRC-32 spreads random ids
    assert [owner_of(i, 4) for i in ids[:50]] == [owner_of(i, 4) for i in ids[:50]]
    assert all(owner_of(i, 1) == 0 for i in ids[:50])
