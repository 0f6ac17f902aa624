"""A scripted SIP peer on a raw UDP socket, for what the dialler sends that the gateway takes
either way: which header carries the credentials, what the ACK holds, a CANCEL.

The test's ``script`` says what to answer to each request; BYE gets 200 and ACK nothing unless
the script says otherwise. Every request is kept, in arrival order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import cast

from telepath.clock import MonotonicClock
from telepath.secrets.digest import compute_ha1
from telepath.sip.auth import AuthResult, DigestAuthenticator, parse_authorization
from telepath.sip.errors import SipParseError
from telepath.sip.message import Request, Response, make_response
from telepath.sip.parser import parse_message

#: What the peer answers to a request: responses, sent in order (none: stay silent).
Script = Callable[[Request], list[Response]]

TAG = "peer-tag"
REALM = "peer.test"


class SipPeer(asyncio.DatagramProtocol):
    """Answers as ``script`` says; ``requests`` has everything that came."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[Request] = []
        self.port = 0
        self._transport: asyncio.DatagramTransport | None = None
        self._arrived = asyncio.Event()
        self.auth = DigestAuthenticator(REALM, b"peer-nonce-secret-0123", MonotonicClock())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)
        self.port = int(self._transport.get_extra_info("sockname")[1])

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not data[:1].isalpha():
            return  # RTP: the SDP answer points the dialler's media here
        with contextlib.suppress(SipParseError):
            message = parse_message(data)
            if isinstance(message, Request):
                self.requests.append(message)
                self._arrived.set()
                for response in self._answers(message):
                    self.send(response, addr)

    def _answers(self, request: Request) -> list[Response]:
        answers = self.script(request)
        if answers or request.method != "BYE":
            return answers
        return [make_response(request, 200, to_tag=TAG)]

    def send(self, message: Request | Response, addr: tuple[str, int]) -> None:
        assert self._transport is not None
        self._transport.sendto(message.to_bytes(), addr)

    def uri(self, user: str, host: str = "127.0.0.1") -> str:
        return f"sip:{user}@{host}:{self.port}"

    def of(self, method: str) -> list[Request]:
        return [r for r in self.requests if r.method == method]

    async def received(self, method: str, count: int = 1) -> list[Request]:
        """The first ``count`` requests with ``method``, once they have come (a datagram the
        dialler sent just before it returned may still be in the socket)."""
        async with asyncio.timeout(10):  # a hang guard, not a measurement
            while len(self.of(method)) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return self.of(method)[:count]

    def challenge(self, request: Request, status: int) -> Response:
        """A 401 (``WWW-Authenticate``) or 407 (``Proxy-Authenticate``) for ``request``."""
        name = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
        values = self.auth.challenge_headers()
        return make_response(request, status, to_tag=TAG, headers=[(name, v) for v in values])

    def answered(self, request: Request, password: str, header: str) -> bool:
        """Whether ``request`` carries in ``header`` a right answer to this peer's challenge."""
        value = request.headers.get(header)
        if value is None:
            return False
        return (
            self.auth.verify(
                parse_authorization(value),
                method=request.method,
                ha1_lookup=lambda user, algorithm: compute_ha1(algorithm, user, REALM, password),
            ).result
            is AuthResult.OK
        )


def answer_sdp(port: int) -> bytes:
    """An SDP answer taking PCMU, media to ``port`` on loopback."""
    return (
        "v=0\r\no=peer 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    ).encode()


def ok_with_sdp(peer: SipPeer, invite: Request) -> Response:
    """The 200 OK answering ``invite``, media to the peer's own port (RTP is dropped there)."""
    return make_response(
        invite,
        200,
        to_tag=TAG,
        headers=[
            ("Contact", f"<sip:peer@127.0.0.1:{peer.port}>"),
            ("Content-Type", "application/sdp"),
        ],
        body=answer_sdp(peer.port),
    )


@contextlib.asynccontextmanager
async def sip_peer(script: Script | None = None, host: str = "127.0.0.1") -> AsyncIterator[SipPeer]:
    """A :class:`SipPeer` listening on a free port of ``host`` (loopback by default), answering
    nothing but BYE until a ``script`` is given or set."""
    loop = asyncio.get_running_loop()
    transport, peer = await loop.create_datagram_endpoint(
        lambda: SipPeer(script or (lambda _request: [])), local_addr=(host, 0)
    )
    try:
        yield peer
    finally:
        transport.close()
