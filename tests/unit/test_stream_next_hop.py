"""Where a stream message goes when its own connection is gone (``sip_server.next_hop``):
RFC 3261 §18.1.1 with §8.1.2/§12.2.1.1 for our requests, §18.2.2 for responses."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from telepath.clock import FakeClock
from telepath.sip.ua import UaConfig, UserAgentCore
from telepath.transport.sip_server import SipServer, next_hop

pytestmark = pytest.mark.unit


def _request(via: str, uri: str = "sip:bob@192.0.2.10:5070;transport=tcp", *routes: str) -> bytes:
    lines = [
        f"BYE {uri} SIP/2.0",
        f"Via: SIP/2.0/{via} 203.0.113.5:5060;branch=z9hG4bK-1;rport",
        "Max-Forwards: 70",
        "From: <sip:telepath@203.0.113.5>;tag=a",
        "To: <sip:+15551230000@carrier.example>;tag=b",
        "Call-ID: c@x",
        "CSeq: 2 BYE",
        *(f"Route: {route}" for route in routes),
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _response(via: str) -> bytes:
    return (
        f"SIP/2.0 200 OK\r\nVia: SIP/2.0/{via}\r\nFrom: <sip:a@x>;tag=a\r\n"
        "To: <sip:b@y>;tag=b\r\nCall-ID: c@x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    ).encode()


@pytest.mark.parametrize(
    ("data", "hop"),
    [
        # no Route: the Request-URI (the remote target)
        (_request("TCP"), ("TCP", "192.0.2.10", 5070)),
        # a loose router first: it (and its port, or the transport's default)
        (
            _request("TCP", "sip:bob@192.0.2.10", "<sip:198.51.100.1:5080;transport=tcp;lr>"),
            ("TCP", "198.51.100.1", 5080),
        ),
        (
            _request("TLS", "sips:bob@192.0.2.10", "<sips:edge.example;lr>"),
            ("TLS", "edge.example", 5061),
        ),
        # a strict router was made the Request-URI (§12.2.1.1): the first Route is not lr
        (
            _request("TCP", "sip:198.51.100.1:5090", "<sip:bob@192.0.2.10:5070>"),
            ("TCP", "198.51.100.1", 5090),
        ),
        (_request("TCP", "sip:bob@[2001:db8::7]:5070"), ("TCP", "2001:db8::7", 5070)),
        # a response: the Via's received address at its sent-by port (not rport)
        (
            _response("TCP 10.0.0.7:5062;branch=z9hG4bK-2;rport=40123;received=192.0.2.10"),
            ("TCP", "192.0.2.10", 5062),
        ),
        (_response("TLS sbc.example;branch=z9hG4bK-3"), ("TLS", "sbc.example", 5061)),
        # nothing to say: a datagram transport, or what does not parse
        (_request("UDP"), None),
        (b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", None),
        (b"not sip\r\n\r\n", None),
    ],
)
def test_next_hop(data: bytes, hop: tuple[str, str, int] | None) -> None:
    assert next_hop(data) == hop


async def test_a_next_hop_that_cannot_even_be_looked_up_is_tried_again() -> None:
    """A host no resolver takes (a label over 63 characters: ``UnicodeError``, not an OSError)
    fails the attempt like a refused connection: its place under the caps and its held messages
    are let go, and the next message to it tries again — they stayed held for ever, and the
    remote-named hosts piled up outside the caps."""
    server = SipServer(UserAgentCore(UaConfig(), FakeClock(0.0)), lambda event: None)
    tries: list[str] = []

    async def connect(
        transport: str,
        addr: tuple[str, int],
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> int:
        tries.append(addr[0])
        raise UnicodeError("label too long")

    server.connect = connect  # type: ignore[method-assign]
    bye = _request("TCP", "sip:bob@" + "a" * 64 + ".example;transport=tcp")
    for attempt in (1, 2):
        server._elsewhere(bye)
        await asyncio.gather(*server._opening)
        assert len(tries) == attempt and server._held == {}
    assert server._inbound == 0  # every place given back
