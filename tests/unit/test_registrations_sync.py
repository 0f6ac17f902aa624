"""The registrations driver against an in-memory store: a registration that cannot be started
(a registrar no URI parser takes) is skipped, and the others still register; a REGISTER that
times out on a connection closes it."""

from __future__ import annotations

import asyncio
from datetime import datetime

import pytest

from telepath.calls.ports import RegistrationConfig
from telepath.calls.registrations import Registrations
from telepath.clock import FakeClock
from telepath.sip.locate import Target
from telepath.sip.message import Request, make_response
from telepath.sip.parser import parse_message
from telepath.sip.ua import Output, RequestAnswered, Send, UaConfig, UserAgentCore
from telepath.sip.uri import SipUri
from telepath.transport.dns import SipLocator

pytestmark = pytest.mark.unit


class Store:
    def __init__(self, configs: list[RegistrationConfig]) -> None:
        self.configs = configs

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
        return None


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


async def test_a_register_unanswered_on_a_connection_closes_it() -> None:
    """A TCP connection a NAT silently forgot stays "open" here (no RST ever comes): a REGISTER
    that times out on it must close it, or every retry would be sent into it again (a closed
    one is replaced: tests/interop/sip/test_outbound_registration.py)."""
    sent: list[Output] = []
    opened: list[int] = []
    closed: list[int] = []
    arrived = asyncio.Event()

    def send(outputs: list[Output]) -> None:
        sent.extend(outputs)
        arrived.set()

    async def connect(transport: str, addr: tuple[str, int], host: str) -> int:
        opened.append(len(opened) + 1)
        return opened[-1]

    core = UserAgentCore(UaConfig(contact_host="127.0.0.1"), FakeClock(100.0))
    store = Store([config("tcp", "sip:127.0.0.1:5999;transport=tcp")])
    registrations = Registrations(
        store,
        core,
        send,
        connect=connect,
        is_open=lambda conn: conn not in closed,
        disconnect=closed.append,
    )
    await registrations.sync()
    async with asyncio.timeout(5):
        await arrived.wait()
    (register,) = [parse_message(o.data) for o in sent if isinstance(o, Send)]
    assert isinstance(register, Request) and register.top_via.transport == "TCP"
    assert opened == [1] and closed == []
    registrations.answered(RequestAnswered(register, None))  # Timer F: no answer at all
    assert closed == [1]
    await registrations.close(timeout_s=0.1)


class TwoServers(SipLocator):
    """Two TCP servers for any registrar (as SRV records would give)."""

    async def locate(self, uri: SipUri) -> list[Target]:
        return [Target("TCP", "127.0.0.2", 5999), Target("TCP", "127.0.0.3", 5999)]


@pytest.mark.parametrize("in_use", [False, True])
async def test_failover_closes_the_old_connection_unless_a_call_uses_it(in_use: bool) -> None:
    """A 503 moves the binding to the next server over a new connection; the old one is closed
    — unless a call's dialog still signals over it (the registrar sends calls back on it)."""
    sent: list[Output] = []
    opened: list[tuple[str, int]] = []
    closed: list[int] = []
    arrived = asyncio.Event()

    def send(outputs: list[Output]) -> None:
        sent.extend(outputs)
        arrived.set()

    async def connect(transport: str, addr: tuple[str, int], host: str) -> int:
        opened.append(addr)
        return len(opened)

    core = UserAgentCore(UaConfig(contact_host="127.0.0.1"), FakeClock(100.0))
    store = Store([config("tcp", "sip:carrier.example;transport=tcp")])
    registrations = Registrations(
        store,
        core,
        send,
        connect=connect,
        is_open=lambda conn: conn not in closed,
        disconnect=closed.append,
        locator=TwoServers(),
        in_use=lambda conn: in_use and conn == 1,
    )
    await registrations.sync()
    async with asyncio.timeout(5):
        await arrived.wait()
    (first,) = [parse_message(o.data) for o in sent if isinstance(o, Send)]
    assert isinstance(first, Request)
    arrived.clear()
    registrations.answered(RequestAnswered(first, make_response(first, 503)))
    async with asyncio.timeout(5):  # the REGISTER to the next server: the old one let go first
        await arrived.wait()
    assert opened == [("127.0.0.2", 5999), ("127.0.0.3", 5999)]
    assert closed == ([] if in_use else [1])
    await registrations.close(timeout_s=0.1)
