"""RTP/RTCP port pairs from the configured range (``TELEPATH_RTP_PORT_MIN``..``_MAX``).

RTP takes an even port and RTCP the next odd one (RFC 3550 §11). The allocator binds both UDP
sockets itself, so a port that another process holds is skipped rather than handed out, and
returns them in a :class:`PortLease`; closing the lease (or the media session that owns it)
closes the sockets and returns the pair to the pool. Allocation is synchronous and O(range) in
the worst case; a round-robin cursor avoids reusing a just-released pair immediately (late
packets from the previous call would otherwise reach the next one).

When every pair is taken, :class:`RtpPortsExhausted` is raised: call control answers the new
INVITE with 503 (``status_hint``) and existing calls are untouched.

Which peers a pair reaches follows from its sockets: an IPv4 host binds AF_INET sockets (IPv4
peers only); ``::`` binds AF_INET6 sockets that Linux makes dual-stack (``IPV6_V6ONLY`` off, the
default ``net.ipv6.bindv6only=0``), which reach IPv4 peers as IPv4-mapped addresses
(``::ffff:a.b.c.d``, RFC 4291 §2.5.5.2) and report them that way; any other IPv6 host reaches
IPv6 peers only. :meth:`PortLease.peer_host` writes an address as the sockets take and report
it, or says they cannot reach it.
"""

from __future__ import annotations

import ipaddress
import logging
import socket

from telepath.config import Settings
from telepath.errors import TelepathError

logger = logging.getLogger(__name__)


class RtpPortsExhausted(TelepathError):
    """No free RTP/RTCP port pair in the configured range.

    Attributes:
        status_hint: the SIP status to refuse the call with (503 Service Unavailable).
    """

    status_hint = 503


class PortLease:
    """An allocated, bound RTP/RTCP socket pair. Close it exactly once (idempotent).

    Attributes:
        port: the RTP port (even); RTCP is ``port + 1``.
        rtp_socket: the bound, non-blocking RTP socket.
        rtcp_socket: the bound, non-blocking RTCP socket.
    """

    def __init__(
        self,
        allocator: RtpPortAllocator,
        port: int,
        rtp_socket: socket.socket,
        rtcp_socket: socket.socket,
    ) -> None:
        self.port = port
        self.rtp_socket = rtp_socket
        self.rtcp_socket = rtcp_socket
        # Where a NAT in front of us maps the RTP and RTCP sockets (transport/stun.py), if asked.
        self.public: tuple[str, int] | None = None
        self.public_rtcp: tuple[str, int] | None = None
        self._allocator = allocator
        self._released = False
        self.family = rtp_socket.family
        self.dual_stack = self.family == socket.AF_INET6 and _dual_stack(rtp_socket)

    def peer_host(self, host: str) -> str | None:
        """``host``, an IP address, in the form these sockets send to and report peers in;
        None for one they cannot reach, and for a name (never resolved here).

        An AF_INET6 socket reports an IPv4 peer as ``::ffff:a.b.c.d`` (dual-stack) and uvloop
        sends to nothing else there; an IPv4-mapped address is an IPv4 one on an AF_INET
        socket. The unspecified address (a hold, RFC 3264 §8.4) stays unspecified, of the
        sockets' family: nothing is sent there.
        """
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if self.family != socket.AF_INET6:
            if ip.version == 4:
                return str(ip)
            return "0.0.0.0" if ip.is_unspecified else None
        if ip.version == 6:
            return socket.inet_ntop(socket.AF_INET6, ip.packed)  # as the kernel writes it
        if ip.is_unspecified:
            return "::"
        return f"::ffff:{ip}" if self.dual_stack else None

    @property
    def sdp_port(self) -> int:
        """The RTP port our SDP gives: the NAT's outside port when STUN found one."""
        return self.port if self.public is None else self.public[1]

    @property
    def sdp_rtcp_port(self) -> int | None:
        """The RTCP port our SDP gives (``a=rtcp``, RFC 3605) when STUN found both mappings;
        None: the RTP port + 1, as RFC 3550 §11 has it."""
        if self.public is None or self.public_rtcp is None:
            return None
        return self.public_rtcp[1]

    @property
    def rtcp_port(self) -> int:
        """The RTCP port (``port + 1``)."""
        return self.port + 1

    @property
    def released(self) -> bool:
        """True once :meth:`release` ran."""
        return self._released

    def release(self) -> None:
        """Close both sockets (unless a transport took them over) and free the pair."""
        if self._released:
            return
        self._released = True
        for sock in (self.rtp_socket, self.rtcp_socket):
            if sock.fileno() != -1:
                sock.close()
        self._allocator._free(self.port)

    def __enter__(self) -> PortLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _dual_stack(sock: socket.socket) -> bool:
    """Whether an AF_INET6 socket reaches IPv4 peers too: bound to ``::`` with
    ``IPV6_V6ONLY`` off (a socket bound to one IPv6 address has no IPv4 route)."""
    try:
        v6only = sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
        host = sock.getsockname()[0]
    except OSError:
        return False
    return not v6only and host == "::"


class RtpPortAllocator:
    """Hands out even RTP ports with RTCP on +1 from ``[port_min, port_max]``.

    Args:
        port_min: lowest port of the range (rounded up to even).
        port_max: highest port of the range (the last pair must fit below or at it).
        host: the address to bind ("0.0.0.0" for all interfaces).

    Raises:
        ValueError: the range holds no pair.
    """

    def __init__(self, port_min: int, port_max: int, host: str = "0.0.0.0") -> None:
        first = port_min + (port_min % 2)
        self._ports = list(range(first, port_max, 2))  # port + 1 <= port_max
        if not self._ports:
            raise ValueError("the RTP port range holds no even/odd pair")
        self.host = host
        self._in_use: set[int] = set()
        self._cursor = 0

    @classmethod
    def from_settings(cls, settings: Settings, host: str = "0.0.0.0") -> RtpPortAllocator:
        """Build from ``TELEPATH_RTP_PORT_MIN`` / ``TELEPATH_RTP_PORT_MAX``."""
        return cls(settings.rtp_port_min, settings.rtp_port_max, host)

    @property
    def capacity(self) -> int:
        """Number of pairs in the range."""
        return len(self._ports)

    @property
    def in_use(self) -> int:
        """Number of pairs currently leased."""
        return len(self._in_use)

    def allocate(self) -> PortLease:
        """Bind and return the next free pair.

        Raises:
            RtpPortsExhausted: every pair is leased or held by another process, or the process
                may open no more sockets (out of descriptors): either way call control answers
                ``503`` with ``Retry-After``.
        """
        count = len(self._ports)
        for _ in range(count):
            port = self._ports[self._cursor]
            self._cursor = (self._cursor + 1) % count
            if port in self._in_use:
                continue
            try:
                pair = self._bind_pair(port)
            except OSError as exc:  # no socket at all (EMFILE, ENFILE, ENOBUFS): no port helps
                logger.warning("no socket for RTP: %s", exc)
                raise RtpPortsExhausted(f"no socket for RTP: {exc}") from exc
            if pair is None:
                continue
            self._in_use.add(port)
            return PortLease(self, port, *pair)
        logger.warning("RTP port range exhausted")
        raise RtpPortsExhausted("no free RTP port pair in the configured range")

    def _bind_pair(self, port: int) -> tuple[socket.socket, socket.socket] | None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        rtp = socket.socket(family, socket.SOCK_DGRAM)
        try:
            rtcp = socket.socket(family, socket.SOCK_DGRAM)
        except OSError:
            rtp.close()  # at once, not when the garbage collector comes to it
            raise
        try:
            rtp.bind((self.host, port))
            rtcp.bind((self.host, port + 1))
        except OSError:
            rtp.close()
            rtcp.close()
            return None
        rtp.setblocking(False)
        rtcp.setblocking(False)
        return rtp, rtcp

    def _free(self, port: int) -> None:
        self._in_use.discard(port)
