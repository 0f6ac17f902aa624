"""A small test UAC on real sockets (UDP, TCP or TLS): builds requests, answers digest
challenges (MD5 or SHA-256, RFC 7616) and waits for the gateway's messages.

It speaks exactly what the test writes: nothing is retransmitted or acknowledged behind the
test's back, so retransmissions and late ACKs can be staged message by message. Messages are
parsed with the gateway's own parser only after the bytes are kept, so tests can compare raw
retransmissions byte for byte.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from telepath.sip.errors import SipParseError
from telepath.sip.message import Request, Response
from telepath.sip.parser import StreamFramer, parse_message

Message = Request | Response

SDP_OFFER = (
    "v=0\r\no=caller 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio {port} RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\n{direction}"
)

_PARAM = re.compile(r'([A-Za-z-]+)=("([^"]*)"|[^,\s]+)')


def sdp_offer(port: int, direction: str = "") -> bytes:
    """A PCMU/PCMA/telephone-event offer for an RTP port on 127.0.0.1."""
    line = f"a={direction}\r\n" if direction else ""
    return SDP_OFFER.format(port=port, direction=line).encode()


def _offer_or_nothing(port: int | None) -> bytes:
    return b"" if port is None else sdp_offer(port)


@dataclass
class Received:
    """One message from the gateway, with its exact bytes."""

    raw: bytes
    message: Message


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, uac: Uac) -> None:
        self.uac = uac

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.uac.deliver(data)


class _Stream(asyncio.Protocol):
    def __init__(self, uac: Uac) -> None:
        self.uac = uac
        self.framer = StreamFramer()
        self.closed = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        for message in self.framer.feed(data):
            self.uac.deliver(message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()


class _Incoming(_Stream):
    """A connection the gateway opened to a :class:`Listener`: a :class:`Uac` of its own."""

    def __init__(self, accepted: list[Uac], arrived: asyncio.Event) -> None:
        super().__init__(Uac("TCP", ("127.0.0.1", 0)))
        self.accepted, self.arrived = accepted, arrived

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer, local = transport.get_extra_info("peername"), transport.get_extra_info("sockname")
        self.uac.target = (str(peer[0]), int(peer[1]))
        self.uac.local = (str(local[0]), int(local[1]))
        self.uac._transport, self.uac._stream = transport, self
        self.accepted.append(self.uac)
        self.arrived.set()


@dataclass
class Listener:
    """A TCP port on the test's side that the gateway connects to — a carrier's listening
    address (its Via sent-by, Contact or Record-Route); each connection the gateway opens to it
    is a :class:`Uac` in :attr:`accepted`."""

    server: asyncio.Server
    accepted: list[Uac] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    async def open(cls) -> Listener:
        """Listen on a free TCP port of 127.0.0.1."""
        accepted: list[Uac] = []
        arrived = asyncio.Event()
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Incoming(accepted, arrived), "127.0.0.1", 0)
        return cls(server, accepted, arrived)

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens."""
        sock = self.server.sockets[0].getsockname()
        return str(sock[0]), int(sock[1])

    async def connection(self, within_s: float = 10) -> Uac:
        """The first connection the gateway opened (waits for it)."""
        try:
            await asyncio.wait_for(self.arrived.wait(), within_s)
        except TimeoutError:
            raise AssertionError(f"the gateway opened no connection within {within_s} s") from None
        return self.accepted[0]

    async def close(self) -> None:
        """Stop listening and close what was accepted."""
        self.server.close()
        for uac in self.accepted:
            await uac.close()
        await self.server.wait_closed()


@dataclass
class Uac:
    """One client socket towards the gateway."""

    transport_name: str  # "UDP" | "TCP" | "TLS"
    target: tuple[str, int]
    local: tuple[str, int] = ("127.0.0.1", 0)
    received: list[Received] = field(default_factory=list)
    unparsed: list[bytes] = field(default_factory=list)
    _transport: asyncio.BaseTransport | None = None
    _stream: _Stream | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    async def open(
        cls,
        transport: str,
        target: tuple[str, int],
        tls: ssl.SSLContext | None = None,
        *,
        host: str = "127.0.0.1",
    ) -> Uac:
        """Connect (stream) or bind (UDP, on ``host``) a client towards ``target``."""
        uac = cls(transport, target)
        loop = asyncio.get_running_loop()
        if transport == "UDP":
            dgram, _ = await loop.create_datagram_endpoint(lambda: _Udp(uac), local_addr=(host, 0))
            uac._transport = dgram
        else:
            stream, proto = await loop.create_connection(
                lambda: _Stream(uac),
                target[0],
                target[1],
                ssl=tls if transport == "TLS" else None,
                server_hostname=target[0] if transport == "TLS" else None,
            )
            uac._transport = stream
            uac._stream = proto
        sock = uac._transport.get_extra_info("sockname")
        uac.local = (str(sock[0]), int(sock[1]))
        return uac

    async def close(self) -> None:
        """Close the socket (and wait for a stream to finish closing)."""
        if self._transport is None:
            return
        self._transport.close()
        if self._stream is not None:
            await asyncio.wait_for(self._stream.closed.wait(), 5)

    def deliver(self, data: bytes) -> None:
        """Keep one message from the gateway (what our parser rejects lands in ``unparsed``)."""
        try:
            message = parse_message(data)
        except SipParseError:
            self.unparsed.append(data)
            return
        self.received.append(Received(data, message))
        self._arrived.set()

    def send(self, data: bytes) -> None:
        """Send raw bytes (one datagram, or a write on the stream)."""
        assert self._transport is not None
        if self.transport_name == "UDP":
            cast(asyncio.DatagramTransport, self._transport).sendto(data, self.target)
        else:
            cast(asyncio.Transport, self._transport).write(data)

    async def wait_for(
        self, predicate: Callable[[Message], bool], *, after: int = 0, within_s: float = 10
    ) -> Received:
        """The first message (index >= ``after``) matching ``predicate``; waits if needed."""

        async def scan() -> Received:
            while True:
                for item in self.received[after:]:
                    if predicate(item.message):
                        return item
                self._arrived.clear()
                await self._arrived.wait()

        try:
            return await asyncio.wait_for(scan(), within_s)
        except TimeoutError:
            seen = [_summary(r.message) for r in self.received[after:]]
            raise AssertionError(f"nothing matched within {within_s} s; received: {seen}") from None

    async def response(
        self, status: int, call_id: str, *, method: str | None = None, after: int = 0
    ) -> Response:
        """Wait for a response with ``status`` in ``call_id`` (optionally for ``method``)."""
        item = await self.wait_for(
            lambda m: (
                isinstance(m, Response)
                and m.status == status
                and m.call_id == call_id
                and (method is None or m.cseq.method == method)
            ),
            after=after,
        )
        return cast(Response, item.message)

    async def answered_options(self, user: str = "alice") -> Response:
        """Send an out-of-dialog OPTIONS (RFC 3261 §11) and wait for its 200: the gateway serves
        this client."""
        call_id = new_call_id()
        self.send(self.request("OPTIONS", user, call_id=call_id, cseq=1))
        return await self.response(200, call_id)

    def responses(self, call_id: str, method: str | None = None) -> list[Received]:
        """Every response received in ``call_id`` (for ``method``), in order."""
        return [
            r
            for r in self.received
            if isinstance(r.message, Response)
            and r.message.call_id == call_id
            and (method is None or r.message.cseq.method == method)
        ]

    # ---------------------------------------------------------------- request building

    def request(
        self,
        method: str,
        user: str,
        *,
        call_id: str,
        cseq: int,
        from_tag: str = "uac-tag",
        to_tag: str | None = None,
        branch: str | None = None,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        uri: str | None = None,
        to_uri: str | None = None,
        max_forwards: int = 70,
        cseq_method: str | None = None,
        from_user: str = "+15551230000",
    ) -> bytes:
        """A request from this client, sent-by its real address (so responses come back), from
        ``from_user`` (the From URI's user part)."""
        host, port = self.target
        scheme = "sips" if self.transport_name == "TLS" else "sip"
        tp = "" if self.transport_name == "UDP" else f";transport={self.transport_name.lower()}"
        ruri = uri or f"{scheme}:{user}@{host}:{port}{tp}"
        lhost, lport = self.local
        to = f"<{to_uri or f'{scheme}:{user}@{host}:{port}'}>" + (
            f";tag={to_tag}" if to_tag else ""
        )
        lines = [
            f"{method} {ruri} SIP/2.0",
            f"Via: SIP/2.0/{self.transport_name} {lhost}:{lport};branch={branch or new_branch()}"
            ";rport",
            f"Max-Forwards: {max_forwards}",
            f'From: "Caller" <{scheme}:{from_user}@{lhost}:{lport}>;tag={from_tag}',
            f"To: {to}",
            f"Call-ID: {call_id}",
            f"CSeq: {cseq} {cseq_method or method}",
            f"Contact: <{scheme}:caller@{lhost}:{lport}{tp}>",
        ]
        lines += [f"{k}: {v}" for k, v in headers or []]
        if body and not any(k.lower() == "content-type" for k, _ in headers or []):
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body)}")
        # surrogateescape: a header may carry bytes that are not UTF-8, as the gateway's own
        # parser keeps them (e.g. Call-ID "a\udcffb" is the byte 0xFF between a and b)
        head = "\r\n".join(lines) + "\r\n\r\n"
        return head.encode("utf-8", "surrogateescape") + body


def _summary(message: Message) -> str:
    if isinstance(message, Response):
        return f"{message.status} {message.cseq.method}"
    return f"{message.method} (CSeq {message.cseq.seq})"


def new_branch() -> str:
    """A fresh RFC 3261 branch."""
    return "z9hG4bK" + secrets.token_hex(8)


def new_call_id() -> str:
    """A fresh Call-ID."""
    return secrets.token_hex(12) + "@127.0.0.1"


def challenge_params(value: str) -> dict[str, str]:
    """Parameters of one ``WWW-Authenticate: Digest ...`` value (quotes removed)."""
    assert value.lower().startswith("digest "), value
    return {m.group(1).lower(): m.group(3) or m.group(2) for m in _PARAM.finditer(value[7:])}


def digest_authorization(
    challenge: dict[str, str],
    *,
    username: str,
    password: str,
    method: str,
    uri: str,
    nc: int = 1,
    qop: bool = True,
) -> str:
    """An ``Authorization`` value answering ``challenge`` (RFC 7616 §3.4.1, qop=auth; without
    ``qop``, the RFC 2069 form some phones still send: no nc, no cnonce)."""
    algorithm = challenge.get("algorithm", "MD5")
    hash_name = {"MD5": "md5", "SHA-256": "sha256"}[algorithm.upper()]

    def h(text: str) -> str:
        return hashlib.new(hash_name, text.encode()).hexdigest()

    realm, nonce = challenge["realm"], challenge["nonce"]
    cnonce = secrets.token_hex(8)
    nc_text = f"{nc:08x}"
    ha1 = h(f"{username}:{realm}:{password}")
    ha2 = h(f"{method}:{uri}")
    if not qop:
        return (
            f'Digest username="{username}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
            f'response="{h(f"{ha1}:{nonce}:{ha2}")}", algorithm={algorithm}'
        )
    response = h(f"{ha1}:{nonce}:{nc_text}:{cnonce}:auth:{ha2}")
    return (
        f'Digest username="{username}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
        f'response="{response}", algorithm={algorithm}, qop=auth, nc={nc_text}, '
        f'cnonce="{cnonce}"'
    )


def request_uri(raw: bytes) -> str:
    """The Request-URI of a request we built (the digest ``uri`` parameter)."""
    return raw.split(b" ", 2)[1].decode()


@dataclass
class CallLeg:
    """One authenticated call placed by a :class:`Uac` (INVITE → 401 → INVITE → 200 → ACK)."""

    uac: Uac
    user: str
    call_id: str = field(default_factory=new_call_id)
    from_tag: str = field(default_factory=lambda: secrets.token_hex(6))
    to_tag: str | None = None
    cseq: int = 1
    ok: Response | None = None
    challenges: list[str] = field(default_factory=list)
    uri: str | None = None  # the Request-URI of its INVITEs (default: sip:<user>@<target>)
    to_uri: str | None = None  # the To URI of its requests (default: sip:<user>@<target>)
    from_user: str | None = None  # the From URI's user part (default: +15551230000)

    def build(self, method: str, **kw: object) -> bytes:
        """A request in this call (the To tag once we have one)."""
        kw.setdefault("to_tag", self.to_tag)
        if method == "INVITE" and self.uri is not None:
            kw.setdefault("uri", self.uri)
        if self.to_uri is not None:
            kw.setdefault("to_uri", self.to_uri)
        if self.from_user is not None:
            kw.setdefault("from_user", self.from_user)
        return self.uac.request(
            method,
            self.user,
            call_id=self.call_id,
            cseq=self.cseq,
            from_tag=self.from_tag,
            **kw,  # type: ignore[arg-type]
        )

    async def challenge(
        self,
        media_port: int | None,
        headers: list[tuple[str, str]] | None = None,
        body: bytes | None = None,
    ) -> Response:
        """Send the first INVITE (``media_port`` None: without SDP, a delayed offer; ``headers``
        extra; ``body`` another SDP); return the 401 after ACKing it (§17.1.1.3)."""
        branch = new_branch()
        body = _offer_or_nothing(media_port) if body is None else body
        self.uac.send(self.build("INVITE", branch=branch, headers=headers or [], body=body))
        r401 = await self.uac.response(401, self.call_id)
        self.challenges = r401.headers.get_all("WWW-Authenticate")
        self.uac.send(self.build("ACK", branch=branch, to_tag=r401.to.tag, cseq_method="ACK"))
        return r401

    def authenticated_invite(
        self,
        password: str,
        media_port: int | None,
        *,
        algorithm: str = "MD5",
        headers: list[tuple[str, str]] | None = None,
        body: bytes | None = None,
    ) -> bytes:
        """The INVITE answering the challenge with ``algorithm`` (CSeq + 1, new branch), with
        ``body`` instead of the usual offer when given."""
        self.cseq += 1
        chosen = next(
            challenge_params(c)
            for c in self.challenges
            if challenge_params(c).get("algorithm", "MD5").upper() == algorithm
        )
        probe = self.build("INVITE", body=b"")
        auth = digest_authorization(
            chosen,
            username=self.user,
            password=password,
            method="INVITE",
            uri=request_uri(probe),
        )
        return self.build(
            "INVITE",
            headers=[*(headers or []), ("Authorization", auth)],
            body=_offer_or_nothing(media_port) if body is None else body,
        )

    async def answered(self, raw_invite: bytes) -> Response:
        """Send ``raw_invite``, wait for its 200 OK and keep the dialog's To tag."""
        start = len(self.uac.received)
        self.uac.send(raw_invite)
        ok = await self.uac.response(200, self.call_id, method="INVITE", after=start)
        self.ok = ok
        self.to_tag = ok.to.tag
        return ok

    def ack(self) -> bytes:
        """The ACK for the 2xx (a new transaction, §13.2.2.4)."""
        return self.build("ACK", cseq_method="ACK")

    async def bye(self) -> Response:
        """Send BYE in the dialog and wait for its 200."""
        self.cseq += 1
        start = len(self.uac.received)
        self.uac.send(self.build("BYE"))
        return await self.uac.response(200, self.call_id, method="BYE", after=start)
