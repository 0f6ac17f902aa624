"""RFC 3263 lookups (transport/dns.py) against a real DNS server (dnsmasq) on loopback."""

from __future__ import annotations

import socket

import pytest

from telepath.config import parse_servers
from telepath.sip.locate import Target
from telepath.sip.uri import parse_uri
from telepath.transport.dns import MAX_TARGETS, SipLocator
from tests.dnsmasq import Naptr, Srv, dnsmasq

pytestmark = pytest.mark.integration

HOSTS = {
    "sip1.carrier.test": "127.0.0.2",
    "sip2.carrier.test": "127.0.0.3",
    "tls.carrier.test": "127.0.0.4",
    "carrier.test": "127.0.0.9",
    "plain.test": "127.0.0.10",
    "tcp.naptr.test": "127.0.0.5",
    "closed.test": "127.0.0.11",
}
SRV = [
    Srv("_sip._udp.carrier.test", "sip2.carrier.test", 5071, priority=20),
    Srv("_sip._udp.carrier.test", "sip1.carrier.test", 5070, priority=10),
    Srv("_sip._tcp.carrier.test", "sip1.carrier.test", 5080, priority=10),
    Srv("_sips._tcp.carrier.test", "tls.carrier.test", 5081, priority=10),
    Srv("_sip._tcp.naptr.test", "tcp.naptr.test", 5090),
    Srv("_sip._udp.closed.test", "", 0),  # target ".": "decidedly not available" (RFC 2782)
]
NAPTR = [Naptr("naptr.test", 10, 50, "SIP+D2T", "_sip._tcp.naptr.test")]


async def test_srv_records_are_followed_in_priority_order_udp_before_tcp() -> None:
    async with dnsmasq(hosts=HOSTS, srv=SRV, naptr=NAPTR) as port:
        locator = SipLocator([("127.0.0.1", port)])
        located = await locator.locate(parse_uri("sip:carrier.test"))
    assert located == [
        Target("UDP", "127.0.0.2", 5070),  # priority 10
        Target("UDP", "127.0.0.3", 5071),  # priority 20
        Target("TCP", "127.0.0.2", 5080),  # the other transport's records, after
    ]
    assert not any(t.fallback for t in located)


async def test_the_uris_transport_and_scheme_choose_the_srv_name() -> None:
    async with dnsmasq(hosts=HOSTS, srv=SRV, naptr=NAPTR) as port:
        locator = SipLocator([("127.0.0.1", port)])
        tcp = await locator.locate(parse_uri("sip:carrier.test;transport=tcp"))
        tls = await locator.locate(parse_uri("sips:carrier.test"))
    assert tcp == [Target("TCP", "127.0.0.2", 5080)]
    assert tls == [Target("TLS", "127.0.0.4", 5081)]


async def test_naptr_comes_first_and_picks_the_transport() -> None:
    async with dnsmasq(hosts=HOSTS, srv=SRV, naptr=NAPTR) as port:
        locator = SipLocator([("127.0.0.1", port)])
        located = await locator.locate(parse_uri("sip:naptr.test"))
    assert located == [Target("TCP", "127.0.0.5", 5090)]


async def test_without_srv_the_hosts_own_address_and_default_port() -> None:
    async with dnsmasq(hosts=HOSTS, srv=SRV, naptr=NAPTR) as port:
        locator = SipLocator([("127.0.0.1", port)])
        plain = await locator.locate(parse_uri("sip:plain.test"))
        secure = await locator.locate(parse_uri("sips:plain.test"))
        explicit = await locator.locate(parse_uri("sip:carrier.test:5099"))  # port: no SRV
        nothing = await locator.locate(parse_uri("sip:missing.test"))
    assert plain == [Target("UDP", "127.0.0.10", 5060)]
    assert plain[0].fallback and not explicit[0].fallback  # the domain's own, for want of SRV
    assert secure == [Target("TLS", "127.0.0.10", 5061)]
    assert explicit == [Target("UDP", "127.0.0.9", 5099)]
    assert nothing == []


async def test_a_service_declared_unavailable_is_not_looked_for_at_the_host() -> None:
    # RFC 3263 §4.2: the host's own address only when no SRV record was found; a record
    # whose target is "." says there is no such service there (RFC 2782), not "no record".
    async with dnsmasq(hosts=HOSTS, srv=SRV, naptr=NAPTR) as port:
        locator = SipLocator([("127.0.0.1", port)])
        assert [r.target for r in await locator.srv("_sip._udp.closed.test")] == ["."]
        assert await locator.locate(parse_uri("sip:closed.test")) == []


async def test_a_domain_with_more_servers_than_the_cap_keeps_its_own_address() -> None:
    # Past MAX_TARGETS names, the ones left out are the last by priority — never the domain
    # itself (here its name sorts after every target's).
    many = [
        Srv("_sip._udp.zz.test", f"s{k:02d}.zz.test", 5060, priority=k)
        for k in range(MAX_TARGETS + 2)
    ]
    hosts = {f"s{k:02d}.zz.test": f"127.0.1.{k + 1}" for k in range(MAX_TARGETS + 2)}
    async with dnsmasq(hosts={**hosts, "zz.test": "127.0.0.12"}, srv=many) as port:
        found = await SipLocator([("127.0.0.1", port)]).every_address("zz.test")
    assert "127.0.0.12" in found
    assert {"127.0.1.1", "127.0.1.2"} <= found  # the first by priority
    assert len(found) == MAX_TARGETS


async def test_every_address_a_carriers_requests_may_come_from() -> None:
    async with dnsmasq(hosts=HOSTS, srv=SRV, naptr=NAPTR) as port:
        locator = SipLocator([("127.0.0.1", port)])
        carrier = await locator.every_address("carrier.test")
        naptr = await locator.every_address("naptr.test")
        literal = await locator.every_address("192.0.2.1")
    assert carrier == {"127.0.0.9", "127.0.0.2", "127.0.0.3", "127.0.0.4"}
    assert naptr == {"127.0.0.5"}
    assert literal == {"192.0.2.1"}


async def test_a_silent_dns_server_is_no_records_within_the_timeout() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # bound, never answers
        silent.bind(("127.0.0.1", 0))
        locator = SipLocator([("127.0.0.1", silent.getsockname()[1])], timeout_s=0.2)
        assert await locator.locate(parse_uri("sip:carrier.test")) == []
        assert await locator.locate(parse_uri("sip:127.0.0.1:5070")) == [
            Target("UDP", "127.0.0.1", 5070)
        ]


def test_dns_servers_setting() -> None:
    assert parse_servers("10.0.0.2, 127.0.0.1:5353,[::1]:54, [2001:db8::1]") == [
        ("10.0.0.2", 53),
        ("127.0.0.1", 5353),
        ("::1", 54),
        ("2001:db8::1", 53),
    ]
    assert parse_servers("") == []
    for bad in ("10.0.0.2:0", "10.0.0.2:x", "[::1]x", ":53", "dns.example", "1.2.3.4:70000"):
        with pytest.raises(ValueError, match="is not a DNS server: an IP address"):
            parse_servers(bad)
