"""The registrations driver against an in-memory store: a registration that cannot be started
(a registrar no URI parser takes) is skipped, and the others still register; a REGISTER that
times out on a connection closes it."""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest

from telepath.calls.ports import RegistrationConfig
from telepath.calls.registrations import KEEPALIVE, Registrations
from telepath.clock import FakeClock
from telepath.sip.locate import Target
from telepath.sip.message import Request, Response, make_response
from telepath.sip.parser import parse_message
from telepath.sip.ua import Output, RequestAnswered, Send, UaConfig, UserAgentCore
from telepath.sip.uri import SipUri
from telepath.transport.dns import SipLocator

pytestmark = pytest.mark.unit


class Store:
    def __init__(self, configs: list[RegistrationConfig]) -> None:
        self.configs = configs
        self.reported: list[tuple[str, str]] = []  # (trunk id, status)

    async def registrations(self) -> list[RegistrationConfig]:
        return self.configs

    async def set_registration_status(
        self,
        trunk_id: str,
        status: str,
        detail: str | None,
        until: datetime | None,
        contact_address: str | None = None,
    ) -> None:
        self.reported.append((trunk_id, status))


def config(trunk_id: str, registrar: str) -> RegistrationConfig:
    return RegistrationConfig(
        trunk_id, registrar, "alice", "secret", contact_user=f"tpr-{trunk_id}"
    )


async def test_a_registration_that_cannot_start_does_not_stop_the_others() -> None:
    sent: list[Output] = []
    arrived = asyncio.Event()

    def send(outputs: list[Output]) -> None:
        sent.extend(outputs)
        arrived.set()

    core = UserAgentCore(UaConfig(contact_host="127.0.0.1"), FakeClock(100.0))
    store = Store([config("bad", "sip:bad uri"), config("good", "sip:127.0.0.1:5999")])
    registrations = Registrations(store, core, send)
    await registrations.sync()
    assert registrations.count == 1 and registrations.contact_of("good") is not None
    async with asyncio.timeout(5):  # the registrar is resolved first (an IP literal: at once)
        await arrived.wait()
    (register,) = [parse_message(o.data) for o in sent if isinstance(o, Send)]
    assert isinstance(register, Request) and register.method == "REGISTER"
    assert str(register.uri) == "sip:127.0.0.1:5999"
    await registrations.close(timeout_s=0.1)


@dataclass
class Streams:
    """A registrations driver over fake stream connections: what it sent, which addresses it
    connected to (connection ids count from 1) and which connections it closed."""

    sent: list[Output] = field(default_factory=list)
    opened: list[tuple[str, int]] = field(default_factory=list)
    closed: list[int] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def send(self, outputs: list[Output]) -> None:
        self.sent.extend(outputs)
        self.arrived.set()

    hanging: set[tuple[str, int]] = field(default_factory=set)  # SYNs dropped: never connect
    refusing: set[tuple[str, int]] = field(default_factory=set)  # refused, or a bad certificate

    async def connect(self, transport: str, addr: tuple[str, int], host: str) -> int:
        self.opened.append(addr)
        if addr in self.hanging:
            await asyncio.sleep(3600)
        if addr in self.refusing:
            raise ssl.SSLCertVerificationError("certificate verify failed")
        return len(self.opened)

    async def start(self, registrar: str, **options: Any) -> Registrations:
        """A driver keeping one registration with ``registrar`` up, its REGISTER sent."""
        core = UserAgentCore(UaConfig(contact_host="127.0.0.1"), FakeClock(100.0))
        registrations = Registrations(
            Store([config("tcp", registrar)]),
            core,
            self.send,
            connect=self.connect,
            is_open=lambda conn: conn not in self.closed,
            disconnect=self.closed.append,
            **options,
        )
        await registrations.sync()
        await self.next_register()
        return registrations

    async def next_register(self) -> Request:
        """The REGISTER sent last, once it is (waited for)."""
        async with asyncio.timeout(5):
            await self.arrived.wait()
        self.arrived.clear()
        register = parse_message([o for o in self.sent if isinstance(o, Send)][-1].data)
        assert isinstance(register, Request) and register.method == "REGISTER"
        return register


@pytest.mark.parametrize("in_use", [False, True])
async def test_a_register_unanswered_on_a_connection_closes_it(in_use: bool) -> None:
    """A TCP connection a NAT silently forgot stays "open" here (no RST ever comes): a REGISTER
    that times out on it must close it, or every retry would be sent into it again (a closed
    one is replaced: tests/interop/sip/test_outbound_registration.py) — unless a call's dialog
    signals over it: then the registrar's registration side is what is silent, and closing it
    would cut the call off."""
    streams = Streams()
    registrations = await streams.start(
        "sip:127.0.0.1:5999;transport=tcp", in_use=lambda conn: in_use and conn == 1
    )
    (register,) = [parse_message(o.data) for o in streams.sent if isinstance(o, Send)]
    assert isinstance(register, Request) and register.top_via.transport == "TCP"
    assert streams.opened == [("127.0.0.1", 5999)] and streams.closed == []
    registrations.answered(RequestAnswered(register, None))  # Timer F: no answer at all
    assert streams.closed == ([] if in_use else [1])
    if in_use:
        # The call ends; the binding still holds the connection (its next attempt reuses it,
        # and closes it if that goes unanswered too): it is the binding's, not closed here.
        in_use = False
        await registrations.sync()
        assert streams.closed == []
    await registrations.close(timeout_s=0.1)


class TwoServers(SipLocator):
    """Two TCP servers for any registrar (as SRV records would give)."""

    async def locate(self, uri: SipUri) -> list[Target]:
        return [Target("TCP", "127.0.0.2", 5999), Target("TCP", "127.0.0.3", 5999)]


@pytest.mark.parametrize("in_use", [False, True])
async def test_failover_closes_the_old_connection_unless_a_call_uses_it(in_use: bool) -> None:
    """A 503 moves the binding to the next server over a new connection; the old one is closed
    — unless a call's dialog still signals over it (the registrar sends calls back on it)."""
    streams = Streams()
    registrations = await streams.start(
        "sip:carrier.example;transport=tcp",
        locator=TwoServers(),
        in_use=lambda conn: in_use and conn == 1,
    )
    (first,) = [parse_message(o.data) for o in streams.sent if isinstance(o, Send)]
    assert isinstance(first, Request)
    registrations.answered(RequestAnswered(first, make_response(first, 503)))
    await streams.next_register()  # to the next server: the old connection let go first
    assert streams.opened == [("127.0.0.2", 5999), ("127.0.0.3", 5999)]
    assert streams.closed == ([] if in_use else [1])
    calls_on_it = in_use
    in_use = False  # the call has ended: the next poll closes the connection left open for it
    await registrations.sync()
    assert streams.closed == [1]
    if calls_on_it:
        await registrations.sync()
        assert streams.closed == [1]  # once
    await registrations.close(timeout_s=0.1)


async def test_a_server_that_never_completes_the_connection_is_failed_over_in_time() -> None:
    """A server behind a firewall that drops the SYN: the connection attempt is cut at the
    connect timeout (not the system's two minutes) and the next server gets the REGISTER."""
    streams = Streams(hanging={("127.0.0.2", 5999)})
    registrations = await streams.start(
        "sip:carrier.example;transport=tcp", locator=TwoServers(), connect_timeout_s=0.1
    )
    assert streams.opened == [("127.0.0.2", 5999), ("127.0.0.3", 5999)]
    (register,) = [parse_message(o.data) for o in streams.sent if isinstance(o, Send)]
    assert isinstance(register, Request) and register.method == "REGISTER"
    await registrations.close(timeout_s=0.1)


class TlsThenUdp(SipLocator):
    """What a carrier's NAPTR records may give a ``sip:`` registrar: TLS preferred, then UDP."""

    async def locate(self, uri: SipUri) -> list[Target]:
        return [Target("TLS", "127.0.0.2", 5061), Target("UDP", "127.0.0.3", 5060)]


async def test_before_a_first_success_failover_crosses_transports() -> None:
    """NAPTR preferred TLS, whose server's certificate does not verify: the binding, never
    registered yet, goes on to the UDP server of the list, its Contact and Via on UDP and a
    new Call-ID (it stayed on TLS, retrying it forever, before)."""
    streams = Streams(refusing={("127.0.0.2", 5061)})
    registrations = await streams.start("sip:carrier.example", locator=TlsThenUdp())
    assert streams.opened == [("127.0.0.2", 5061)]
    sends = [o for o in streams.sent if isinstance(o, Send)]
    (register,) = [parse_message(o.data) for o in sends]
    assert isinstance(register, Request)
    assert (sends[0].dest.transport, sends[0].dest.addr) == ("UDP", ("127.0.0.3", 5060))
    assert register.top_via.transport == "UDP"
    assert "transport=" not in (register.headers.get("Contact") or "")
    assert registrations.contact_of("tcp") == (register.headers.get("Contact") or "").strip("<>")
    await registrations.close(timeout_s=0.1)


async def test_before_a_first_success_the_back_off_grows_across_transports() -> None:
    """Never registered, the binding goes down its NAPTR list each time (a TLS server that
    fails, then a UDP one that does not answer); each pass is one more failure, so the wait
    grows (RFC 5626 §4.5) — each move to another transport started its count again, and the
    list was tried every 15-30 s for ever."""
    streams = Streams(refusing={("127.0.0.2", 5061)})
    registrations = await streams.start("sip:carrier.example", locator=TlsThenUdp())
    (binding,) = registrations._bindings.values()
    (register,) = [parse_message(o.data) for o in streams.sent if isinstance(o, Send)]
    for failures in (1, 2, 3):
        assert isinstance(register, Request) and register.top_via.transport == "UDP"
        registrations.answered(RequestAnswered(register, None))  # Timer F
        assert binding.machine.failures == failures and binding.timer is not None
        registrations._attempt(binding)  # the back-off's timer fires
        register = await streams.next_register()  # TLS refused again, then UDP
    assert streams.opened == [("127.0.0.2", 5061)] * 4
    await registrations.close(timeout_s=0.1)


async def test_once_registered_failover_keeps_the_transport() -> None:
    """Registered over TLS (the first of a NAPTR list of TLS then UDP): when that server stops
    answering, no other TLS server is left, so the list is resolved again after the back-off —
    the binding does not move to UDP, whose Contact the registrar's routing would not expect."""
    streams = Streams()
    registrations = await streams.start("sip:carrier.example", locator=TlsThenUdp())
    (first,) = [parse_message(o.data) for o in streams.sent if isinstance(o, Send)]
    assert isinstance(first, Request) and first.top_via.transport == "TLS"
    registrations.answered(granted(first, 3600))
    registrations.answered(RequestAnswered(first, None))  # then the server is silent
    await asyncio.sleep(0.05)
    assert len([o for o in streams.sent if isinstance(o, Send)]) == 1  # nothing over UDP
    assert streams.opened == [("127.0.0.2", 5061)]
    await registrations.close(timeout_s=0.1)


class Draining(SipLocator):
    """Two UDP servers, until the carrier takes the first out of its SRV records."""

    def __init__(self) -> None:
        super().__init__()
        self.servers_now = [Target("UDP", "127.0.0.2", 5060), Target("UDP", "127.0.0.3", 5060)]

    async def locate(self, uri: SipUri) -> list[Target]:
        return list(self.servers_now)


def granted(register: Request, expires: int = 1) -> RequestAnswered:
    """The registrar's 200 to ``register``, granting ``expires`` s (1: refreshed in 0.5 s)."""
    contact = register.headers.get("Contact") or ""
    ok = make_response(
        register, 200, to_tag="r1", headers=[("Contact", f"{contact};expires={expires}")]
    )
    return RequestAnswered(register, ok)


async def registered_with(
    locator: SipLocator, streams: Streams, expires: int = 1
) -> tuple[Registrations, Request]:
    """A driver registered (200, granted ``expires`` s) with the first server ``locator``
    gives, relocating at every refresh; its REGISTER."""
    core = UserAgentCore(UaConfig(contact_host="127.0.0.1"), FakeClock(100.0))
    registrations = Registrations(
        Store([config("udp", "sip:carrier.example")]),
        core,
        streams.send,
        locator=locator,
        relocate_s=0.0,
    )
    await registrations.sync()
    first = await streams.next_register()
    registrations.answered(granted(first, expires))
    return registrations, first


async def test_a_refresh_follows_dns_when_the_server_is_taken_out() -> None:
    """Registered with the first server; the carrier takes it out of DNS (to drain it). The
    next refresh looks the servers up again and registers with one still listed — call
    control, which follows DNS too, would soon challenge the drained server's calls."""
    streams = Streams()
    locator = Draining()
    registrations, _ = await registered_with(locator, streams)
    assert last_dest(streams) == ("127.0.0.2", 5060)
    locator.servers_now = [Target("UDP", "127.0.0.3", 5060)]
    second = await streams.next_register()  # the refresh, 0.5 s later
    assert last_dest(streams) == ("127.0.0.3", 5060)
    # a server added ahead of it: the binding stays where it is registered (sticky)
    locator.servers_now = [Target("UDP", "127.0.0.4", 5060), Target("UDP", "127.0.0.3", 5060)]
    registrations.answered(granted(second))
    await streams.next_register()
    assert last_dest(streams) == ("127.0.0.3", 5060)
    await registrations.close(timeout_s=0.1)


def last_dest(streams: Streams) -> tuple[str, int]:
    return [o for o in streams.sent if isinstance(o, Send)][-1].dest.addr


async def test_after_a_relocation_failover_still_reaches_every_other_server() -> None:
    """Equal-priority servers come back in a random order: relocated, the server in use goes
    first and the others after it, so a timeout there still moves on at once (with the old
    index, one listed before it was skipped: a failure and a back-off instead)."""
    streams = Streams()
    locator = Draining()
    registrations, _ = await registered_with(locator, streams)
    assert last_dest(streams) == ("127.0.0.2", 5060)
    locator.servers_now = [Target("UDP", "127.0.0.3", 5060), Target("UDP", "127.0.0.2", 5060)]
    refresh = await streams.next_register()  # relocated: still the first server
    assert last_dest(streams) == ("127.0.0.2", 5060)
    registrations.answered(RequestAnswered(refresh, None))  # which stops answering
    await streams.next_register()
    assert last_dest(streams) == ("127.0.0.3", 5060)
    await registrations.close(timeout_s=0.1)


class LosesSrv(SipLocator):
    """SRV records for two servers; then the SRV question fails and only the domain's own A
    record (its website, say) is found — what a lost DNS answer looks like."""

    def __init__(self) -> None:
        super().__init__()
        self.lost = False

    async def locate(self, uri: SipUri) -> list[Target]:
        if self.lost:
            return [Target("UDP", "192.0.2.80", 5060, fallback=True)]
        return [Target("UDP", "127.0.0.2", 5060), Target("UDP", "127.0.0.3", 5060)]


async def test_a_relocation_that_finds_only_the_domains_own_address_keeps_the_server() -> None:
    streams = Streams()
    locator = LosesSrv()
    registrations, _ = await registered_with(locator, streams)
    locator.lost = True
    await streams.next_register()
    assert last_dest(streams) == ("127.0.0.2", 5060)
    await registrations.close(timeout_s=0.1)


async def test_dns_is_asked_again_at_refreshes_not_at_failovers() -> None:
    """A failover goes to the next server of the list at once, even though DNS changed since
    (it says the failing server only): a lookup there could send the binding straight back to
    the server that just failed."""
    streams = Streams()
    locator = Draining()
    registrations, _ = await registered_with(locator, streams)
    refresh = await streams.next_register()
    assert last_dest(streams) == ("127.0.0.2", 5060)
    locator.servers_now = [Target("UDP", "127.0.0.2", 5060)]
    registrations.answered(RequestAnswered(refresh, None))
    await streams.next_register()
    assert last_dest(streams) == ("127.0.0.3", 5060)
    await registrations.close(timeout_s=0.1)


async def test_a_huge_granted_interval_still_schedules_the_refresh() -> None:
    """A registrar granting 10**12 s: the answer is taken (as the 300 s asked for) and the
    refresh scheduled — ``registered_until`` overflowed a datetime, the answer was lost to an
    OverflowError and the binding was never refreshed again."""
    streams = Streams()
    registrations, _ = await registered_with(Draining(), streams, expires=10**12)
    (binding,) = registrations._bindings.values()
    assert binding.status == ("registered", None) and binding.timer is not None
    await registrations.close(timeout_s=0.1)


async def test_a_lost_connection_seen_during_a_refresh_starts_no_second_registration() -> None:
    """A refresh is still connecting (the old connection closed, the server slow) when the
    keep-alive finds the connection closed: one registration attempt, not two — two would
    each schedule their refresh, and the binding would REGISTER twice as often for good."""
    streams = Streams()
    registrations = await streams.start("sip:127.0.0.1:5999;transport=tcp", keepalive_s=0.01)
    (register,) = [parse_message(o.data) for o in streams.sent if isinstance(o, Send)]
    assert isinstance(register, Request)
    registrations.answered(RequestAnswered(register, make_response(register, 200)))
    (binding,) = registrations._bindings.values()
    assert binding.keepalive is not None  # TCP: kept alive
    streams.closed.append(1)  # the registrar's side went away
    streams.hanging.add(("127.0.0.1", 5999))  # and the new connection takes its time
    registrations._refresh(binding)  # the refresh timer fires
    for _ in range(50):  # the keep-alive fires meanwhile (every 10 ms)
        await asyncio.sleep(0.01)
    assert streams.opened == [("127.0.0.1", 5999)] * 2  # the first, and one attempt since
    await registrations.close(timeout_s=0.1)


async def test_a_changed_registration_is_sent_only_once_the_old_one_is_removed() -> None:
    """A trunk's registration changed (its interval, say): the old binding is removed with
    ``Expires: 0``, and the new one — another Call-ID, the same Contact — is sent once that
    removal is answered (RFC 3261 §10.2: no new registration before the previous one's final
    response or timeout). Sent at once, a registrar that took the ``Expires: 0`` last removed
    the new binding (§10.3 step 7: another Call-ID's zero expiry removes the contact), and
    the gateway showed it registered, refreshing only at its expiry."""
    streams = Streams()
    store = Store([config("udp", "sip:127.0.0.1:5999")])
    core = UserAgentCore(UaConfig(contact_host="127.0.0.1"), FakeClock(100.0))
    registrations = Registrations(store, core, streams.send, poll_s=3600)
    stop = asyncio.Event()
    running = asyncio.create_task(registrations.run(stop))
    first = await streams.next_register()
    registrations.answered(granted(first, 300))
    store.configs = [dataclasses.replace(store.configs[0], expires=600)]
    registrations.trunks_changed()
    removal = await streams.next_register()
    assert removal.headers.get("Expires") == "0" and removal.call_id == first.call_id
    for binding in list(registrations._bindings.values()):  # any attempt started meanwhile
        await asyncio.gather(*binding.resolving)
    last = parse_message([o for o in streams.sent if isinstance(o, Send)][-1].data)
    assert isinstance(last, Request) and last.headers.get("Expires") == "0"  # nothing since
    registrations.answered(RequestAnswered(removal, make_response(removal, 200)))
    new = await streams.next_register()  # at once, not at the next poll
    assert new.headers.get("Expires") == "600" and new.call_id != first.call_id
    assert new.headers.get("Contact") == first.headers.get("Contact")
    assert ("udp", "unregistered") not in store.reported  # replaced, not gone
    stop.set()
    await running


def seen_from(register: Request, ip: str, port: int) -> RequestAnswered:
    """The registrar's 200 to ``register``, which came from ``ip:port`` (a NAT's, RFC 3581)."""
    answer = granted(register, 300).response
    assert answer is not None
    answer.headers.set("Via", str(answer.top_via.with_received(ip, port)))
    parsed = parse_message(answer.to_bytes())
    assert isinstance(parsed, Response)
    return RequestAnswered(register, parsed)


async def test_a_drain_removes_the_bindings_and_keeps_the_nat_open_for_the_calls() -> None:
    """A gateway stopping removes its bindings as the drain begins (no new calls are sent
    here), while its calls go on: behind a NAT the keep-alives go on too, or the carrier's
    BYE for such a call could find the NAT's mapping gone; the last close ends them."""
    streams = Streams()
    core = UserAgentCore(UaConfig(contact_host="127.0.0.1"), FakeClock(100.0))
    store = Store([config("udp", "sip:127.0.0.1:5999")])
    registrations = Registrations(store, core, streams.send, keepalive_s=0.01)
    await registrations.sync()
    first = await streams.next_register()
    registrations.answered(seen_from(first, "198.51.100.9", 40001))
    moved = await streams.next_register()  # the contact moved to the NAT's address
    registrations.answered(seen_from(moved, "198.51.100.9", 40001))
    assert registrations.contact_of("udp") == "sip:tpr-udp@198.51.100.9:40001"
    withdrawing = asyncio.create_task(registrations.close(keep_alive=True))
    removal = await streams.next_register()
    assert removal.headers.get("Expires") == "0"
    registrations.answered(RequestAnswered(removal, make_response(removal, 200)))
    await withdrawing
    assert registrations.count == 0 and ("udp", "unregistered") in store.reported

    def keepalives() -> int:
        return sum(1 for o in streams.sent if isinstance(o, Send) and o.data == KEEPALIVE)

    before = keepalives()
    async with asyncio.timeout(5):
        while keepalives() < before + 2:  # to the registrar, every keepalive_s
            streams.arrived.clear()
            await streams.arrived.wait()
    await registrations.close()
    after = keepalives()
    await asyncio.sleep(0.05)
    assert keepalives() == after
