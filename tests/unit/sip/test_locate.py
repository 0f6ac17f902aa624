"""RFC 3263's rules for a SIP URI (sip/locate.py): which questions, which order, which ports."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from telepath.sip.locate import (
    Naptr,
    Plan,
    Srv,
    Target,
    naptr_services,
    order_srv,
    plan,
    srv_fallback,
)
from telepath.sip.uri import parse_uri

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("uri", "direct"),
    [
        # §4.1/4.2: an address literal or an explicit port — no NAPTR, no SRV
        ("sip:192.0.2.10", Target("UDP", "192.0.2.10", 5060)),
        ("sips:192.0.2.10", Target("TLS", "192.0.2.10", 5061)),
        ("sip:192.0.2.10;transport=tcp", Target("TCP", "192.0.2.10", 5060)),
        ("sip:192.0.2.10;transport=tls", Target("TLS", "192.0.2.10", 5061)),
        ("sip:[2001:db8::1]:5070", Target("UDP", "[2001:db8::1]", 5070)),
        ("sip:sip.carrier.example:5062", Target("UDP", "sip.carrier.example", 5062)),
        ("sips:sip.carrier.example:5063", Target("TLS", "sip.carrier.example", 5063)),
    ],
)
def test_literals_and_explicit_ports_need_no_naptr_or_srv(uri: str, direct: Target) -> None:
    assert plan(parse_uri(uri)).direct == direct


def test_a_name_without_a_port_starts_with_naptr() -> None:
    steps = plan(parse_uri("sip:Sip.Carrier.Example."))
    assert steps == Plan(None, "sip.carrier.example", None, False)
    assert plan(parse_uri("sip:carrier.example;transport=TCP")).transport == "TCP"
    assert plan(parse_uri("sips:carrier.example")) == Plan(None, "carrier.example", "TLS", True)
    with pytest.raises(ValueError, match="SCTP"):
        plan(parse_uri("sip:carrier.example;transport=sctp"))


NAPTR = [
    Naptr(50, 50, "s", "SIPS+D2T", "_sips._tcp.carrier.example."),
    Naptr(90, 50, "s", "SIP+D2T", "_sip._tcp.carrier.example."),
    Naptr(90, 40, "s", "SIP+D2U", "_sip._udp.carrier.example."),
    Naptr(10, 10, "s", "SIP+D2S", "_sip._sctp.carrier.example."),  # a transport we lack
    Naptr(20, 10, "u", "SIP+D2U", "_sip._udp.other.example."),  # not an SRV pointer
    Naptr(30, 10, "s", "E2U+sip", "_sip._udp.enum.example."),  # not a SIP service
]


def test_naptr_records_in_order_then_preference_only_ours() -> None:
    steps = plan(parse_uri("sip:carrier.example"))
    assert naptr_services(NAPTR, steps) == [
        ("TLS", "_sips._tcp.carrier.example"),
        ("UDP", "_sip._udp.carrier.example"),  # order 90, preference 40 before 50
        ("TCP", "_sip._tcp.carrier.example"),
    ]


def test_a_sips_uri_takes_only_sips_records_and_a_named_transport_only_its_own() -> None:
    assert naptr_services(NAPTR, plan(parse_uri("sips:carrier.example"))) == [
        ("TLS", "_sips._tcp.carrier.example")
    ]
    assert naptr_services(NAPTR, plan(parse_uri("sip:carrier.example;transport=tcp"))) == [
        ("TCP", "_sip._tcp.carrier.example")
    ]


def test_without_naptr_srv_is_asked_per_transport() -> None:
    assert srv_fallback(plan(parse_uri("sip:carrier.example"))) == [
        ("UDP", "_sip._udp.carrier.example"),
        ("TCP", "_sip._tcp.carrier.example"),
    ]
    assert srv_fallback(plan(parse_uri("sips:carrier.example"))) == [
        ("TLS", "_sips._tcp.carrier.example")
    ]
    assert srv_fallback(plan(parse_uri("sip:carrier.example;transport=tcp"))) == [
        ("TCP", "_sip._tcp.carrier.example")
    ]
    assert srv_fallback(plan(parse_uri("sip:carrier.example;transport=tls"))) == [
        ("TLS", "_sips._tcp.carrier.example")
    ]


def test_srv_lowest_priority_first() -> None:
    records = [Srv(20, 0, 5062, "c"), Srv(10, 0, 5060, "a"), Srv(15, 0, 5061, "b")]
    assert [r.target for r in order_srv(records, random.Random(1))] == ["a", "b", "c"]


def test_srv_weights_share_the_first_place_in_proportion() -> None:
    """RFC 2782: within a priority, the chance of coming first is weight / total."""
    records = [Srv(10, 60, 5060, "heavy"), Srv(10, 20, 5060, "light"), Srv(10, 20, 5060, "x")]
    rng = random.Random(7)
    first = Counter(order_srv(records, rng)[0].target for _ in range(4000))
    assert 0.55 < first["heavy"] / 4000 < 0.65
    assert 0.15 < first["light"] / 4000 < 0.25
    # every ordering holds every record exactly once
    assert sorted(r.target for r in order_srv(records, rng)) == ["heavy", "light", "x"]


def test_srv_weight_zero_is_last_resort_when_others_weigh() -> None:
    records = [Srv(10, 0, 5060, "zero"), Srv(10, 100, 5060, "weighty")]
    rng = random.Random(3)
    firsts = Counter(order_srv(records, rng)[0].target for _ in range(1000))
    assert firsts["weighty"] > 980  # zero comes first only when the draw is exactly 0


def test_a_dot_target_means_no_service() -> None:
    assert order_srv([Srv(0, 0, 0, ".")]) == []
    assert order_srv([Srv(0, 0, 0, "")]) == []
