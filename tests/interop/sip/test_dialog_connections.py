"""Our in-dialog messages over TCP when the connection the call came in on is gone, as when a
carrier's proxy closes idle connections during a long call (kamailio's
``tcp_connection_lifetime``) or reconnects: RFC 3261 §18.1.1 — a request goes on a
connection open to its next hop, else a new one; §18.2.2 — a response on the request's
connection, else a new one to its Via. Raw TCP "carriers" that listen on the address in their
Via and Contact, against the running gateway; the agent hangs up on the test's cue."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from telepath.bridges.custom import events as ev
from telepath.cli.gateway import Gateway
from telepath.sip.message import Request, make_response
from telepath.sip.parser import parse_message
from telepath.testing.fake_custom import FakeTelepathAgent
from tests.integration.conftest import Api
from tests.interop.calls.conftest import create_trunk
from tests.interop.sip.uac import CallLeg, Listener, Received, Uac, new_call_id
from tests.interop.sip.waits import ended_records, until

pytestmark = pytest.mark.interop

PASSWORD = "dialog-connections-1"
MEDIA_PORT = 40008


class CuedAgent(FakeTelepathAgent):
    """A silent agent that hangs up when the test sets :attr:`cue`."""

    def __init__(self, handshake_delay_s: float = 0.0) -> None:
        super().__init__(agent="silent", handshake_delay_s=handshake_delay_s)
        self.cue = asyncio.Event()
        self._waiting: set[asyncio.Task[None]] = set()

    async def _on_start(self, ws: ServerConnection, start: ev.Start) -> bool:
        done = await super()._on_start(ws, start)
        task = asyncio.get_running_loop().create_task(self._hang_up_on_cue(ws))
        self._waiting.add(task)
        task.add_done_callback(self._waiting.discard)
        return done

    async def _hang_up_on_cue(self, ws: ServerConnection) -> None:
        await self.cue.wait()
        with contextlib.suppress(ConnectionClosed):
            await ws.send(ev.Hangup(reason="done").to_json())

    async def stop(self) -> None:
        for task in list(self._waiting):
            task.cancel()
        await super().stop()


@pytest.fixture
def settings_overrides(
    settings_overrides: dict[str, Any], request: pytest.FixtureRequest
) -> dict[str, Any]:
    return {**settings_overrides, **getattr(request, "param", {})}


@pytest.fixture
def answer_delay_s() -> float:
    """How long the agent takes to answer (its WebSocket handshake), so the call rings."""
    return 0.0


@pytest.fixture
async def agent(api: Api, answer_delay_s: float) -> AsyncIterator[CuedAgent]:
    async with CuedAgent(answer_delay_s) as fake:
        await create_trunk(api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=fake.url)
        yield fake


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    """The carrier's listening port."""
    port = await Listener.open()
    try:
        yield port
    finally:
        await port.close()


async def carrier(gateway: Gateway, listener: Listener) -> Uac:
    """A connection to the gateway from a carrier listening at ``listener`` (its Via sent-by
    and Contact: where a new connection to it goes)."""
    uac = await Uac.open("TCP", gateway.server.bound["TCP"])
    uac.local = listener.address
    return uac


async def call_then_drop_the_connection(gateway: Gateway, listener: Listener) -> CallLeg:
    """A call over TCP, answered and ACKed; then the carrier closes its connection."""
    uac = await carrier(gateway, listener)
    leg = CallLeg(uac, "alice")
    await leg.challenge(MEDIA_PORT)
    await leg.answered(leg.authenticated_invite(PASSWORD, MEDIA_PORT))
    uac.send(leg.ack())
    await until(lambda: gateway.manager.active_calls == 1)
    (conn,) = gateway.server.connections
    await uac.close()
    await until(lambda: not gateway.server.is_open(conn))
    return leg


async def bye_on(uac: Uac, leg: CallLeg) -> Received:
    bye = await uac.wait_for(
        lambda m: isinstance(m, Request) and m.method == "BYE" and m.call_id == leg.call_id
    )
    assert isinstance(bye.message, Request)
    uac.send(make_response(bye.message, 200).to_bytes())
    return bye


async def test_our_bye_opens_a_connection_when_the_calls_is_gone(
    api: Api, gateway: Gateway, agent: CuedAgent, listener: Listener
) -> None:
    """§18.1.1: no connection is open to the BYE's next hop (the caller's Contact, there being
    no Route), so one is opened; the caller's 200 comes back on it and ends the dialog."""
    leg = await call_then_drop_the_connection(gateway, listener)
    agent.cue.set()
    await bye_on(await listener.connection(), leg)
    (record,) = await ended_records(api, gateway)
    assert record["disconnect_reason"] == "agent_hangup"
    counters = gateway.server.core.counters
    assert counters["client_tx_timeouts"] == 0  # answered, not Timer F
    assert counters["stream_send_no_connection"] == 0
    assert gateway.server.core.dialog_count == 0


async def test_our_bye_follows_the_carrier_to_its_new_connection(
    api: Api, gateway: Gateway, agent: CuedAgent, listener: Listener
) -> None:
    """The carrier reconnected and sent an in-dialog request on its new connection: the
    dialog's messages go there from then on (none opens a connection of its own)."""
    leg = await call_then_drop_the_connection(gateway, listener)
    leg.uac = await carrier(gateway, listener)
    try:
        leg.cseq += 1
        leg.uac.send(leg.build("OPTIONS"))
        await leg.uac.response(200, leg.call_id, method="OPTIONS")
        agent.cue.set()
        await bye_on(leg.uac, leg)
        (record,) = await ended_records(api, gateway)
    finally:
        await leg.uac.close()
    assert record["disconnect_reason"] == "agent_hangup"
    assert listener.accepted == []
    assert gateway.server.core.counters["client_tx_timeouts"] == 0


@pytest.mark.parametrize("answer_delay_s", [2.0])
async def test_our_200_ok_opens_a_connection_to_the_via_when_the_invites_is_gone(
    api: Api, gateway: Gateway, agent: CuedAgent, listener: Listener
) -> None:
    """§18.2.2: the carrier's connection closed while the call rang; the 200 OK (and its
    retransmissions, §13.3.1.4) go on a connection to its Via's address and sent-by port, and
    the call goes on there: ACK, then the caller's BYE."""
    uac = await carrier(gateway, listener)
    leg = CallLeg(uac, "alice")
    await leg.challenge(MEDIA_PORT)
    start = len(uac.received)
    uac.send(leg.authenticated_invite(PASSWORD, MEDIA_PORT))
    await uac.response(180, leg.call_id, after=start)  # ringing: the agent is being dialled
    await uac.close()
    incoming = await listener.connection()
    leg.uac = incoming
    ok = await incoming.response(200, leg.call_id, method="INVITE")
    await incoming.wait_for(lambda m: len(incoming.responses(leg.call_id, "INVITE")) == 2)
    leg.to_tag = ok.to.tag
    incoming.send(leg.ack())  # after the first retransmission: it came on the same connection
    await until(lambda: gateway.manager.active_calls == 1)
    await leg.bye()
    (record,) = await ended_records(api, gateway)
    assert record["disconnect_reason"] == "caller_hangup"
    assert len(listener.accepted) == 1
    assert gateway.server.core.counters["stream_send_no_connection"] == 0


async def test_a_next_hop_that_cannot_be_reached_costs_the_message_not_the_gateway(
    gateway: Gateway, agent: CuedAgent, listener: Listener
) -> None:
    """Nothing listens where the carrier's Contact points any more: the BYE is lost, counted,
    and nothing else is harmed. Its transaction learns it at once (RFC 3261 §17.1.4) and the
    dialog ends then, not when Timer F (32 s) would have fired."""
    leg = await call_then_drop_the_connection(gateway, listener)
    await listener.close()
    agent.cue.set()
    counters = gateway.server.core.counters
    await until(lambda: counters["stream_reconnect_failed"] == 1)
    await until(lambda: counters["client_tx_transport_errors"] == 1)
    assert gateway.server.core.dialog_count == 0
    assert counters["client_tx_timeouts"] == 1  # its TU told as for a timeout (§8.1.3.1)
    assert listener.accepted == [] and leg.to_tag is not None
    uac = await Uac.open("TCP", gateway.server.bound["TCP"])  # the listener is still served
    try:
        uac.send(uac.request("OPTIONS", "alice", call_id="after-failure", cseq=1))
        await uac.response(200, "after-failure")
    finally:
        await uac.close()


@pytest.mark.parametrize(
    "settings_overrides", [{"sip_tcp_max_connections_per_source": 2}], indirect=True
)
async def test_connections_opened_for_gone_ones_are_held_to_the_caps(gateway: Gateway) -> None:
    """A peer that sends and hangs up at once, with another Via port each time, would have us
    open a connection per response (§18.2.2): they hold places under the same caps as the
    connections it opens to us (the third to 127.0.0.1 here is not opened)."""
    listeners = [await Listener.open() for _ in range(3)]

    def answer_via(listener: Listener) -> None:  # a 200 OK whose connection is gone
        peer = Uac("TCP", gateway.server.bound["TCP"], local=listener.address)
        options = parse_message(peer.request("OPTIONS", "alice", call_id=new_call_id(), cseq=1))
        assert isinstance(options, Request)
        gateway.server.write_stream(10_000, make_response(options, 200).to_bytes())

    try:
        for listener in listeners:
            answer_via(listener)
        for listener in listeners[:2]:
            await (await listener.connection()).wait_for(lambda m: True)
        counters = gateway.server.core.counters
        assert (counters["stream_reconnects"], counters["stream_refused_per_source"]) == (2, 1)
        assert listeners[2].accepted == []
        for listener in listeners[:2]:  # their peers close them: the places are free again
            await listener.accepted[0].close()
        await until(lambda: not gateway.server.connections)
        answer_via(listeners[2])
        await (await listeners[2].connection()).wait_for(lambda m: True)
    finally:
        for listener in listeners:
            await listener.close()
