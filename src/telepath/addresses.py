"""Which side of a NAT an IP address is on: private (only a NAT's inside reaches it) or public.

Private: RFC 1918, the shared address space of carrier-grade NATs (RFC 6598), IPv6 unique local
addresses (RFC 4193). Public: what Python's ``ipaddress`` calls global. Loopback, link-local and
documentation addresses are neither. Names (not addresses) are neither.
"""

from __future__ import annotations

import ipaddress

__all__ = ["is_private", "is_public"]

_PRIVATE = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``host`` as an address (an IPv4-mapped IPv6 address as its IPv4 one: what a dual-stack
    socket reports for an IPv4 peer), or None for a name."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_private(host: str) -> bool:
    """True for an address behind a NAT (``host`` may be a bracketed IPv6 address)."""
    address = _address(host)
    return address is not None and any(address in network for network in _PRIVATE)


def is_public(host: str) -> bool:
    """True for an address on the internet."""
    address = _address(host)
    return address is not None and address.is_global
