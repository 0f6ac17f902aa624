"""The dialler's SIP transport: a UDP socket, or one TCP/TLS connection, to the gateway.

Messages that cannot be parsed are dropped (UDP) or close the stream (§18.3); everything that
parses is queued for the dialler, requests and responses alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from pathlib import Path
from typing import cast

from telepath.sip.errors import SipParseError
from telepath.sip.locate import Target
from telepath.sip.message import Request, Response
from telepath.sip.parser import StreamFramer, parse_message
from telepath.sip.uri import SipUri


class Link:
    """Where the call's SIP messages go to and come from: a UDP socket or one connection."""

    def __init__(self, name: str) -> None:
        self.name = name  # "UDP" | "TCP" | "TLS"
        self.reliable = name != "UDP"
        self.queue: asyncio.Queue[Request | Response] = asyncio.Queue()
        self.transport: asyncio.BaseTransport | None = None
        self.dest: tuple[str, int] = ("", 0)

    def received(self, data: bytes) -> None:
        with contextlib.suppress(SipParseError):
            self.queue.put_nowait(parse_message(data))

    def send(self, data: bytes) -> None:
        # by name: uvloop's transports do not subclass asyncio's transport classes
        if self.transport is None or self.transport.is_closing():
            return
        if self.name == "UDP":
            cast(asyncio.DatagramTransport, self.transport).sendto(data, self.dest)
        else:
            cast(asyncio.Transport, self.transport).write(data)

    @property
    def local_port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, link: Link) -> None:
        self.link = link

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.link.received(data)


class _Stream(asyncio.Protocol):
    def __init__(self, link: Link) -> None:
        self.link = link
        self.framer = StreamFramer()

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.framer.feed(data)
        except SipParseError:  # §18.3: a stream that cannot be framed is closed
            self.link.close()
            return
        for message in messages:
            self.link.received(message)
        if self.framer.error is not None:
            self.link.close()


def source_address(host: str) -> str:
    """The local address the system would send to ``host`` (an address literal) from: what a
    UDP socket connected to it is bound to — ``connect`` on a datagram socket only looks the
    route up, nothing is sent. Raises OSError when there is no route."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((host, 9))
        return str(probe.getsockname()[0])


def transport_of(uri: SipUri) -> str:
    """The transport a target URI asks for (§19.1.1, §26.2: ``sips`` means TLS)."""
    requested = (uri.param("transport") or "").upper()
    if uri.scheme == "sips" or requested == "TLS":
        return "TLS"
    return "TCP" if requested == "TCP" else "UDP"


async def open_link(target: Target, server_name: str, local_ip: str, ca_file: Path | None) -> Link:
    """A socket for ``target`` (UDP), or a connection to it (TCP, TLS: the certificate checked
    against ``server_name``, the URI's host — not an SRV target's, RFC 5922 §4.1)."""
    link = Link(target.transport)
    host = server_name.strip("[]")
    link.dest = (target.host, target.port)
    loop = asyncio.get_running_loop()
    if link.name == "UDP":
        link.transport, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(link), local_addr=(local_ip, 0)
        )
        return link
    tls: ssl.SSLContext | None = None
    if link.name == "TLS":
        tls = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        tls.minimum_version = ssl.TLSVersion.TLSv1_2
    link.transport, _ = await loop.create_connection(
        lambda: _Stream(link),
        *link.dest,
        ssl=tls,
        server_hostname=host if tls is not None else None,
        local_addr=(local_ip, 0),
    )
    return link
