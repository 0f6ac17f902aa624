"""Registrars found through DNS (RFC 3263): a registration to ``sip:carrier.test`` — a domain
with NAPTR/SRV records on a real DNS server (dnsmasq), as carriers publish them — goes to the
servers those records name, fails over to the next on a 503 (§4.3), and the calls those
servers send to the contact are the trunk's (their addresses are the registrar's).
The gateway asks dnsmasq through its own setting, ``TELEPATH_DNS_SERVERS``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from telepath.cli.gateway import Gateway
from telepath.sip.message import Request, make_response
from tests.conftest import free_udp_port
from tests.dnsmasq import Naptr, Srv, dnsmasq
from tests.integration.conftest import Api
from tests.interop.calls.conftest import GATEWAY_SETTINGS
from tests.interop.sip.kamailio import config, kamailio
from tests.interop.sip.test_outbound_registration import (
    REG_PASSWORD,
    REGISTRAR_ROUTING,
    contacts,
    first_final,
    grant,
    next_register,
    registration_body,
    registration_trunk,
    routed_to,
    until_status,
)
from tests.interop.sip.uac import CallLeg, Uac

pytestmark = pytest.mark.interop


@dataclass
class Carrier:
    """Two registrar sockets behind ``carrier.test``'s SRV records, and the DNS port."""

    down: Uac  # sip1.carrier.test (127.0.0.2), priority 10: answers 503
    up: Uac  # sip2.carrier.test (127.0.0.3), priority 20
    dns_port: int
    kamailio_port: int  # naptr.test: NAPTR SIP+D2T -> _sip._tcp.naptr.test -> kamailio here


@pytest.fixture
async def carrier() -> AsyncIterator[Carrier]:
    nowhere = ("127.0.0.1", 9)  # where they send is set once the gateway is up
    down = await Uac.open("UDP", nowhere, host="127.0.0.2")
    up = await Uac.open("UDP", nowhere, host="127.0.0.3")
    kamailio_port = free_udp_port()
    try:
        async with dnsmasq(
            hosts={
                "sip1.carrier.test": "127.0.0.2",
                "sip2.carrier.test": "127.0.0.3",
                "tcp.naptr.test": "127.0.0.1",
            },
            srv=[
                Srv("_sip._udp.carrier.test", "sip1.carrier.test", down.local[1], priority=10),
                Srv("_sip._udp.carrier.test", "sip2.carrier.test", up.local[1], priority=20),
                # first a server that refuses the connection: the next one at once (§4.3)
                Srv("_sip._tcp.naptr.test", "tcp.naptr.test", free_udp_port(), priority=5),
                Srv("_sip._tcp.naptr.test", "tcp.naptr.test", kamailio_port),
                # a UDP record too: NAPTR, not our UDP preference, must choose
                Srv("_sip._udp.naptr.test", "tcp.naptr.test", kamailio_port),
            ],
            naptr=[Naptr("naptr.test", 10, 10, "SIP+D2T", "_sip._tcp.naptr.test")],
        ) as port:
            yield Carrier(down, up, port, kamailio_port)
    finally:
        await down.close()
        await up.close()


@pytest.fixture
def settings_overrides(carrier: Carrier) -> dict[str, Any]:
    return {**GATEWAY_SETTINGS, "dns_servers": f"127.0.0.1:{carrier.dns_port}"}


async def test_srv_servers_in_order_a_503_fails_over_and_their_calls_are_the_trunks(
    api: Api, gateway: Gateway, carrier: Carrier
) -> None:
    gw = gateway.server.bound["UDP"]
    carrier.down.target = carrier.up.target = gw
    registration = registration_body("sip:carrier.test")
    trunk = await registration_trunk(api, "reg-srv", "ws://127.0.0.1:9/a", registration)
    assert gateway.registrations is not None
    gateway.registrations.trunks_changed()

    # priority 10 first: it is overloaded
    _, first = await next_register(carrier.down, 0)
    assert str(first.uri) == "sip:carrier.test"  # the Request-URI stays the domain (§10.2)
    assert first.to.uri.host == "carrier.test"
    carrier.down.send(make_response(first, 503).to_bytes())

    # the next server at once, not after a back-off
    seen, second = await next_register(carrier.up, 0)
    assert str(second.uri) == "sip:carrier.test"
    (contact,) = contacts(second)
    grant(carrier.up, second, gw, contact[1:-1])
    registered = await until_status(api, gateway, trunk["id"], "registered")
    assert registered["contact_address"] == f"127.0.0.1:{gw[1]}"

    # a call from the server that took the registration: the trunk's, unchallenged (the
    # agent is unreachable, so the clean failure is 480); from elsewhere: challenged
    uri = contact[1:-1]
    assert await first_final(CallLeg(carrier.up, "from-srv-target", uri=uri)) == 480
    stranger = await Uac.open("UDP", gw, host="127.0.0.4")
    try:
        assert await first_final(CallLeg(stranger, "from-elsewhere", uri=uri)) == 401
    finally:
        await stranger.close()

    # unregistering goes to the server that has the binding
    task = asyncio.create_task(gateway.registrations.close())
    _, leaving = await next_register(carrier.up, seen)
    assert leaving.headers.get("Expires") == "0"
    grant(carrier.up, leaving, gw, contact[1:-1])
    await task
    downs = [r for r in carrier.down.received if isinstance(r.message, Request)]
    assert len(downs) == 1  # the overloaded server got nothing after its 503


async def test_naptr_chooses_tcp_and_kamailio_routes_calls_back_on_the_connection(
    api: Api, gateway: Gateway, carrier: Carrier, tmp_path: Path
) -> None:
    """``sip:naptr.test`` names no transport; its NAPTR record says TCP (RFC 3263 §4.1): the
    gateway registers with kamailio over TCP — after the first SRV server refused the
    connection —, with a ``transport=tcp`` contact, and kamailio's requests for the
    address-of-record reach the gateway on that connection."""
    port = carrier.kamailio_port
    routing = REGISTRAR_ROUTING.format(password=REG_PASSWORD, in_dialog="")
    cfg = config(port, routing, modules=("usrloc", "registrar", "auth"), tcp=True)
    async with kamailio(cfg, tmp_path, port, ready=b"SIP/2.0 200"):
        registration = registration_body("sip:naptr.test")
        trunk = await registration_trunk(api, "reg-naptr", "ws://127.0.0.1:9/a", registration)
        await until_status(api, gateway, trunk["id"], "registered")
        assert gateway.registrations is not None
        contact = gateway.registrations.contact_of(trunk["id"])
        assert contact is not None and contact.endswith(";transport=tcp")
        (conn,) = gateway.server.connections.values()
        assert conn.peer == ("127.0.0.1", port)
        assert await routed_to(port) == 405  # the gateway's answer, relayed over TCP
        await gateway.registrations.close()
        assert await routed_to(port) == 404
