"""The public address and port of a call's RTP socket, asked of a STUN server (RFC 8489 §5:
a Binding request from the socket itself; the response's XOR-MAPPED-ADDRESS is where the NAT
in front of us maps it).

For a gateway behind a NAT that does not keep the port (a carrier-grade NAT maps each inside
port to a random outside one, endpoint-independently, RFC 6888 REQ-1): the port in our SDP must
be the outside one, or a carrier that sends to the SDP's port — instead of latching onto where
our RTP comes from — reaches nothing. With ``TELEPATH_STUN_SERVER`` set, call control asks once
per call, before it answers, and puts the mapping in the SDP; no answer within the timeout and
the call goes on with the configured address.

Messages are encoded and parsed by aioice's STUN module (the aiortc project's, maintained);
what is here is the exchange on a socket that media will own a moment later: no transport is
attached to it yet, so the request is sent with ``sendto`` and the answer read by a reader
callback (``add_reader`` works on uvloop, ``sock_recvfrom`` does not everywhere).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time

from aioice import stun

from telepath.rtp.demux import is_stun

__all__ = ["DEFAULT_PORT", "StunClient"]

log = logging.getLogger(__name__)

DEFAULT_PORT = 3478
_RESOLVE_EVERY_S = 300.0
_RETRY_RESOLVE_S = 30.0


class StunClient:
    """Asks ``host:port`` for sockets' public mappings.

    Args:
        host: the STUN server (a name is resolved at most every 5 minutes).
        port: its UDP port.
        timeout_s: the longest one mapping may take (retransmitted after 100, 200, … ms).
    """

    def __init__(self, host: str, port: int = DEFAULT_PORT, timeout_s: float = 0.5) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self._server: tuple[str, int] | None = None
        self._resolve_after = -1e9  # monotonic time of the next lookup
        self._warned = False

    async def _address(self) -> tuple[str, int] | None:
        """The server's address, resolved at most every ``_RESOLVE_EVERY_S``. The lookup is on
        a call's set-up path: it may take ``timeout_s`` at most (a system resolver that does not
        answer would hold the call for its own timeouts, seconds), and a failed one is not
        tried again before ``_RETRY_RESOLVE_S`` — meanwhile the last address known is used, or
        none (each call then goes on with the configured address at once)."""
        now = time.monotonic()
        if now < self._resolve_after:
            return self._server
        try:
            async with asyncio.timeout(self.timeout_s):
                infos = await asyncio.get_running_loop().getaddrinfo(
                    self.host, self.port, family=socket.AF_INET, type=socket.SOCK_DGRAM
                )
        except (OSError, TimeoutError):
            self._resolve_after = now + _RETRY_RESOLVE_S
            return self._server  # the last one known, if any
        self._server = (str(infos[0][4][0]), int(infos[0][4][1]))
        self._resolve_after = now + _RESOLVE_EVERY_S
        return self._server

    async def mapping(self, sock: socket.socket) -> tuple[str, int] | None:
        """``sock``'s public (address, port), or None if the server did not say in time. The
        socket must be bound, non-blocking and not yet read by anything else."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s  # the name's lookup included
        server = await self._address()
        if server is None:
            self._warn("cannot resolve the STUN server")
            return None
        if sock.family == socket.AF_INET6:
            # A dual-stack socket (TELEPATH_SIP_HOST=::) reaches an IPv4 server, and sees its
            # answers come, at the server's IPv4-mapped address (RFC 4291 §2.5.5.2).
            server = (f"::ffff:{server[0]}", server[1])
        request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
        answered: asyncio.Future[tuple[str, int] | None] = loop.create_future()

        def readable() -> None:
            while not answered.done():
                try:
                    packet, source = sock.recvfrom(2048)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:  # an ICMP error queued on the socket: the server is not there
                    answered.set_result(None)
                    return
                if source[:2] != server or not is_stun(packet):
                    continue  # not the server's (nothing else should arrive yet): dropped
                try:
                    message = stun.parse_message(packet)
                except ValueError:
                    continue
                if message.transaction_id != request.transaction_id:
                    continue
                if message.message_class != stun.Class.RESPONSE:
                    answered.set_result(None)  # an error response
                    return
                mapped = message.attributes.get("XOR-MAPPED-ADDRESS") or message.attributes.get(
                    "MAPPED-ADDRESS"
                )
                answered.set_result(None if mapped is None else (str(mapped[0]), int(mapped[1])))

        fd = sock.fileno()
        loop.add_reader(fd, readable)
        try:
            wait = 0.1
            while (left := deadline - loop.time()) > 0:
                # no request sent at the deadline: its answer would not be read here, and
                # would reach the media session instead
                try:
                    sock.sendto(bytes(request), server)
                except OSError:
                    break
                try:
                    async with asyncio.timeout(min(wait, left)):
                        found = await asyncio.shield(answered)
                except TimeoutError:
                    wait *= 2  # RFC 8489 §6.2.1: the retransmission interval doubles
                    continue
                if found is None:
                    self._warn("the STUN server answered with an error")
                return found
        finally:
            loop.remove_reader(fd)
        self._warn(f"no answer from the STUN server within {self.timeout_s:g} s")
        return None

    def _warn(self, why: str) -> None:
        """Once per process: a STUN server that fails fails every call the same way."""
        if not self._warned:
            self._warned = True
            log.warning("%s; calls give the configured media address meanwhile", why)
