"""The DNS side of locating SIP servers (RFC 3263): asks NAPTR, SRV and A/AAAA questions with
dnspython's asyncio resolver and feeds the answers to the pure rules of ``sip/locate.py``.

Which servers answer: ``TELEPATH_DNS_SERVERS`` (``host[:port]``, comma-separated) when set —
then every name, A/AAAA included, is asked of them —, otherwise the system's: NAPTR and SRV of
the servers in ``/etc/resolv.conf``, addresses of the system resolver (``getaddrinfo``, which
also reads ``/etc/hosts``). Any failed question (no such name, no records, a timeout, a
refusal) counts as no records, and RFC 3263 moves to its next step; only an empty result means
"cannot resolve". Each question may take ``timeout_s`` (2 s) at most.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Sequence

import dns.asyncresolver
import dns.exception
import dns.rdata
from dns.rdtypes.IN.A import A
from dns.rdtypes.IN.AAAA import AAAA
from dns.rdtypes.IN.NAPTR import NAPTR
from dns.rdtypes.IN.SRV import SRV

from telepath.sip.locate import (
    Naptr,
    Srv,
    Target,
    naptr_services,
    order_srv,
    plan,
    srv_fallback,
)
from telepath.sip.uri import SipUri

__all__ = ["MAX_TARGETS", "SipLocator"]

log = logging.getLogger(__name__)

MAX_TARGETS = 16  # entries of one located list (a carrier's cluster fits; a hostile zone not)


def _is_literal(host: str) -> bool:
    """Whether ``host`` is an IPv4 or IPv6 address (not a name)."""
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True


class SipLocator:
    """Turns SIP URIs into ordered ``Target`` lists with resolved addresses.

    Args:
        servers: the DNS servers to ask (host, port); None: the system's.
        timeout_s: the longest one question may take.
    """

    def __init__(self, servers: Sequence[tuple[str, int]] | None = None, timeout_s: float = 2.0):
        self.servers = list(servers) if servers else None
        self.timeout_s = timeout_s
        self._resolvers: list[dns.asyncresolver.Resolver] | None = None

    def _dns(self) -> list[dns.asyncresolver.Resolver]:
        """One resolver per server port (dnspython has one port per resolver)."""
        if self._resolvers is None:
            if self.servers is None:
                try:
                    resolvers = [dns.asyncresolver.Resolver()]
                except dns.exception.DNSException:  # no /etc/resolv.conf: nothing to ask
                    resolvers = []
            else:
                by_port: dict[int, list[str]] = {}
                for host, port in self.servers:
                    by_port.setdefault(port, []).append(host)
                resolvers = []
                for port, hosts in by_port.items():
                    resolver = dns.asyncresolver.Resolver(configure=False)
                    resolver.nameservers = hosts
                    resolver.port = port
                    resolvers.append(resolver)
            for resolver in resolvers:
                resolver.lifetime = self.timeout_s
                resolver.timeout = self.timeout_s
            self._resolvers = resolvers
        return self._resolvers

    async def _ask(self, name: str, rdtype: str) -> list[dns.rdata.Rdata]:
        """The records of ``name`` (none if the question failed in any way)."""
        for resolver in self._dns():
            try:
                answer = await resolver.resolve(name, rdtype, search=False)
            except (dns.exception.DNSException, OSError):
                continue
            return list(answer)
        return []

    async def naptr(self, domain: str) -> list[Naptr]:
        """``domain``'s NAPTR records."""
        return [
            Naptr(
                r.order,
                r.preference,
                r.flags.decode("ascii", "replace"),
                r.service.decode("ascii", "replace"),
                r.replacement.to_text(omit_final_dot=True),
            )
            for r in await self._ask(domain, "NAPTR")
            if isinstance(r, NAPTR)
        ]

    async def srv(self, name: str) -> list[Srv]:
        """``name``'s SRV records."""
        return [
            Srv(r.priority, r.weight, r.port, r.target.to_text(omit_final_dot=True))
            for r in await self._ask(name, "SRV")
            if isinstance(r, SRV)
        ]

    async def addresses(self, host: str, family: int = socket.AF_INET) -> list[str]:
        """``host``'s addresses (IPv4, or IPv6 with ``family=AF_INET6``), in the answer's order;
        an address literal is itself."""
        bare = host.strip("[]")
        if _is_literal(bare):
            return [bare]
        if self.servers is not None:
            rdtype = "AAAA" if family == socket.AF_INET6 else "A"
            return [r.address for r in await self._ask(bare, rdtype) if isinstance(r, A | AAAA)]
        try:
            async with asyncio.timeout(self.timeout_s):
                infos = await asyncio.get_running_loop().getaddrinfo(
                    bare, None, family=family, type=socket.SOCK_DGRAM
                )
        except (OSError, TimeoutError):
            return []
        found: list[str] = []
        for info in infos:
            address = str(info[4][0])
            if address not in found:
                found.append(address)
        return found

    async def locate(self, uri: SipUri) -> list[Target]:
        """Where to send a request for ``uri``, best first, each with an address (RFC 3263 §4);
        empty if nothing resolves. Raises ``ValueError`` for a transport we do not speak."""
        steps = plan(uri)
        # IPv4 unless the URI is an IPv6 literal: the SIP socket is bound IPv4 by default, and
        # a name with both kinds of records would otherwise be reached by the resolver's pick.
        family = socket.AF_INET6 if uri.host.startswith("[") else socket.AF_INET
        if steps.direct is not None:
            direct = steps.direct
            return [
                Target(direct.transport, address, direct.port)
                for address in (await self.addresses(direct.host, family))[:MAX_TARGETS]
            ]
        services = naptr_services(await self.naptr(steps.domain), steps)
        if not services:
            services = srv_fallback(steps)
        located: list[Target] = []
        found_srv = False
        for transport, name in services:
            records = await self.srv(name)
            found_srv = found_srv or bool(records)
            for record in order_srv(records):
                for address in await self.addresses(record.target, family):
                    located.append(Target(transport, address, record.port))
                    if len(located) >= MAX_TARGETS:
                        return located
        if located or found_srv:
            # SRV records, even only "." ones (the service is not offered: RFC 2782), or
            # targets that do not resolve, leave no place to the host's own address
            return located
        # No SRV record anywhere: the host's own addresses and the default port (§4.2).
        transport = steps.transport or ("TLS" if steps.secure else "UDP")
        port = 5061 if transport == "TLS" else 5060
        return [
            Target(transport, address, port, fallback=True)
            for address in (await self.addresses(steps.domain, family))[:MAX_TARGETS]
        ]

    async def every_address(self, host: str) -> frozenset[str]:
        """Every address a request from ``host``'s SIP servers may come from: its own, and
        those of the targets of its NAPTR and SRV records (``_sip._udp``, ``_sip._tcp``,
        ``_sips._tcp``), IPv4 and IPv6."""
        bare = host.strip("[]").rstrip(".").lower()
        if _is_literal(bare):
            return frozenset({bare})
        # Concurrently: this runs on the path of a call from a registrar (cached a minute by
        # call control), so a silent DNS server costs two timeouts, not one per question.
        srv_names = {f"{s}.{bare}" for s in ("_sip._udp", "_sip._tcp", "_sips._tcp")}
        naptr, srvs = await asyncio.gather(
            self.naptr(bare), asyncio.gather(*(self.srv(name) for name in sorted(srv_names)))
        )
        pointed = sorted({r.replacement for r in naptr if r.replacement} - srv_names)
        srvs += await asyncio.gather(*(self.srv(name) for name in pointed))
        # The domain's own name first, then the targets by priority: past the cap, what is
        # left out is the least likely to send calls, never the registrar itself.
        targets = sorted((r for records in srvs for r in records), key=lambda r: r.priority)
        names = list(dict.fromkeys([bare, *(r.target for r in targets if r.target.rstrip("."))]))
        found: set[str] = set()
        for addresses in await asyncio.gather(
            *(
                self.addresses(name, family)
                for name in names[:MAX_TARGETS]
                for family in (socket.AF_INET, socket.AF_INET6)
            )
        ):
            found.update(addresses)
        return frozenset(found)
