"""Locating a SIP server (RFC 3263 §4): which DNS questions a URI needs, and how their answers
become an ordered list of (transport, host, port) to try.

Pure: the answers come in as plain records, the DNS client is ``transport/dns.py``. Written by
hand because the decisions are SIP's (RFC 3263's transport and port rules and the RFC 2782
ordering); dnspython asks the questions.

The steps, for a URI whose host is a name:

1. Transport (§4.1): the URI's ``transport`` parameter (``sips:`` means TLS) if it has one; if
   it names a port, UDP for ``sip:`` and TLS for ``sips:``; otherwise NAPTR records of the
   domain (``naptr_services``) — and without any, SRV queries for the transports we speak
   (``srv_fallback``), and without those either, UDP (TLS for ``sips:``).
2. Port and address (§4.2): with an explicit port, or when no SRV record exists, the host's
   A/AAAA records and that port (5060; 5061 for TLS); otherwise the SRV records' targets in
   RFC 2782 order (``order_srv``), each target's addresses in turn.
3. Failover (§4.3): the list is tried in order; a timeout, a transport failure or a 503 moves
   to the next entry.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass, field

from telepath.sip.uri import SipUri

__all__ = [
    "DEFAULT_PORTS",
    "Naptr",
    "Plan",
    "Srv",
    "Target",
    "naptr_services",
    "order_srv",
    "plan",
    "srv_fallback",
]

DEFAULT_PORTS = {"UDP": 5060, "TCP": 5060, "TLS": 5061}

# NAPTR service fields (RFC 3263 §4.1, IANA "SIP NAPTR Resource Record Services Field"): the
# ones naming a transport we speak.
_SERVICES = {"SIP+D2U": "UDP", "SIP+D2T": "TCP", "SIPS+D2T": "TLS"}


@dataclass(frozen=True, slots=True)
class Target:
    """One place to try: ``host`` is an address literal or a name still to resolve (A/AAAA).
    ``fallback``: found as the domain's own address because no SRV record was (§4.2) — which
    is also what a lost NAPTR/SRV answer looks like (not compared)."""

    transport: str
    host: str
    port: int
    fallback: bool = field(default=False, compare=False)


@dataclass(frozen=True, slots=True)
class Plan:
    """What to ask of DNS for a URI.

    ``direct`` is set when no NAPTR/SRV lookup applies (an address literal, or an explicit
    port): resolve its host's A/AAAA records (or use the literal). Otherwise ``domain`` is the
    name whose NAPTR records come first, ``transport`` the URI's own transport parameter if it
    named one (then only that transport's SRV records are asked for) and ``secure`` says the
    URI was ``sips:``.
    """

    direct: Target | None
    domain: str
    transport: str | None
    secure: bool


@dataclass(frozen=True, slots=True)
class Naptr:
    """A NAPTR record (RFC 3403): only the fields RFC 3263 uses."""

    order: int
    preference: int
    flags: str
    service: str
    replacement: str


@dataclass(frozen=True, slots=True)
class Srv:
    """An SRV record (RFC 2782)."""

    priority: int
    weight: int
    port: int
    target: str


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def plan(uri: SipUri) -> Plan:
    """The DNS questions ``uri`` needs (RFC 3263 §4.1-4.2); raises ``ValueError`` for a
    transport we do not speak."""
    secure = uri.scheme == "sips"
    named = uri.param("transport")
    transport: str | None = None
    if secure:
        transport = "TLS"  # sips: over TCP means TLS (RFC 3261 §26.2.2)
    elif named is not None:
        transport = named.upper()
        if transport not in DEFAULT_PORTS:
            raise ValueError(f"no SIP over {transport}")
    host = uri.host
    if _is_address(host) or uri.port:
        chosen = transport or "UDP"
        return Plan(Target(chosen, host, uri.port or DEFAULT_PORTS[chosen]), host, chosen, secure)
    return Plan(None, host.rstrip(".").lower(), transport, secure)


def naptr_services(records: list[Naptr], plan: Plan) -> list[tuple[str, str]]:
    """(transport, SRV name) from ``records`` in the order to try them (RFC 3263 §4.1): by
    ``order``, then ``preference``; only "S" records of a service we speak — for a ``sips:``
    URI only ``SIPS+D2T`` — and, when the URI named a transport, only that one's."""
    chosen: list[tuple[int, int, str, str]] = []
    for record in records:
        transport = _SERVICES.get(record.service.upper())
        if transport is None or record.flags.upper() != "S" or not record.replacement:
            continue
        if plan.secure and transport != "TLS":
            continue
        if plan.transport is not None and transport != plan.transport:
            continue
        chosen.append((record.order, record.preference, transport, record.replacement))
    chosen.sort(key=lambda item: (item[0], item[1]))
    return [(transport, name.rstrip(".")) for _, _, transport, name in chosen]


def srv_fallback(plan: Plan) -> list[tuple[str, str]]:
    """(transport, SRV name) to ask when the domain has no usable NAPTR record (RFC 3263
    §4.1): ``_sips._tcp`` for ``sips:``, the URI's own transport if it named one, else UDP
    then TCP (our preference: UDP is the default of every carrier we know)."""
    domain = plan.domain
    if plan.secure:
        return [("TLS", f"_sips._tcp.{domain}")]
    names = {"UDP": f"_sip._udp.{domain}", "TCP": f"_sip._tcp.{domain}"}
    if plan.transport == "TLS":
        return [("TLS", f"_sips._tcp.{domain}")]
    if plan.transport is not None:
        return [(plan.transport, names[plan.transport])]
    return [("UDP", names["UDP"]), ("TCP", names["TCP"])]


def order_srv(records: list[Srv], rng: random.Random | None = None) -> list[Srv]:
    """``records`` in the order to try them (RFC 2782, "Usage rules"): lowest priority first;
    within a priority, a weighted random pick, again and again (weight-0 records placed first,
    so that they get a small chance when weights are given). A single record whose target is
    "." means the service is not offered there: none."""
    if len(records) == 1 and records[0].target.rstrip(".") == "":
        return []
    pick = rng or random.SystemRandom()
    ordered: list[Srv] = []
    for priority in sorted({r.priority for r in records}):
        group = sorted(
            (r for r in records if r.priority == priority and r.target.rstrip(".")),
            key=lambda r: r.weight,
        )
        while group:
            total = sum(r.weight for r in group)
            chosen = 0
            if total > 0:
                point = pick.randint(0, total)
                running = 0
                for index, record in enumerate(group):
                    running += record.weight
                    if running >= point:
                        chosen = index
                        break
            ordered.append(group.pop(chosen))
    return ordered
