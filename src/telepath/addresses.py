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


def is_private(host: str) -> bool:
    """True for an address behind a NAT (``host`` may be a bracketed IPv6 address)."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return any(address in network for network in _PRIVATE)


def is_public(host: str) -> bool:
    """True for an address on the internet."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_global
    except ValueError:
        return False
