"""Which side of a NAT an address is on (telepath/addresses.py)."""

from __future__ import annotations

import pytest

from telepath.addresses import is_private, is_public

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("host", "private", "public"),
    [
        ("10.1.2.3", True, False),
        ("172.16.0.1", True, False),
        ("172.31.255.254", True, False),
        ("172.32.0.1", False, True),  # just outside RFC 1918's 172.16/12
        ("192.168.1.20", True, False),
        ("100.64.0.7", True, False),  # RFC 6598: carrier-grade NAT
        ("100.128.0.1", False, True),
        ("fd00::5", True, False),
        ("[fd12:3456::1]", True, False),
        ("93.184.216.34", False, True),
        ("2a00:1450::1", False, True),
        ("127.0.0.1", False, False),  # loopback: neither
        ("169.254.1.1", False, False),  # link-local
        ("203.0.113.9", False, False),  # documentation (TEST-NET-3)
        ("sip.carrier.example", False, False),  # a name
        # IPv4-mapped (RFC 4291 §2.5.5.2): how a dual-stack socket (TELEPATH_SIP_HOST=::)
        # reports an IPv4 peer
        ("::ffff:192.168.1.20", True, False),
        ("::ffff:93.184.216.34", False, True),
    ],
)
def test_sides_of_a_nat(host: str, private: bool, public: bool) -> None:
    assert (is_private(host), is_public(host)) == (private, public)
