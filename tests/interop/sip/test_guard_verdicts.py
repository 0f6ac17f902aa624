"""What the transport does with the per-source guard's verdicts (``sip/defence.py``), per
transport, against the running gateway: over TCP/TLS nothing is retransmitted (RFC 3261
§17.1.1.2), so a rate-limited INVITE is answered ``503`` + ``Retry-After`` (§21.5.4), a BYE is
still handled and a banned source's connection closed; over UDP the limited are dropped
silently. Responses and ACKs (which finish what was admitted) are never counted nor limited.

Each test's source starts with a bucket of two requests that never refills (in the tests'
time), so where the limit bites is exact.
"""

from __future__ import annotations

from typing import Any

import pytest

from telepath.cli.gateway import Gateway
from telepath.sip.message import Request, make_response
from telepath.testing.fake_custom import FakeTelepathAgent
from tests.integration.conftest import Api
from tests.interop.calls.conftest import create_trunk
from tests.interop.sip.raw_streams import Stream, closed_by_gateway, connect
from tests.interop.sip.uac import CallLeg, Uac, new_branch, new_call_id
from tests.interop.sip.waits import ended_records, until

pytestmark = pytest.mark.interop

PASSWORD = "guard-verdicts-1"
MEDIA_PORT = 40006
RATE_PER_S = 0.001  # one token per 1000 s: what the burst gives is all a source has


@pytest.fixture
def settings_overrides(settings_overrides: dict[str, Any]) -> dict[str, Any]:
    return {**settings_overrides, "sip_rate_limit_per_s": RATE_PER_S, "sip_rate_burst": 2}


def counter(gateway: Gateway, name: str) -> int:
    return gateway.server.core.counters[name]


async def test_a_rate_limited_invite_over_tcp_gets_503_with_retry_after(
    gateway: Gateway, tcp: Uac
) -> None:
    """The trunk fails over at once instead of waiting Timer B on a request nobody will see
    again; other new requests (here OPTIONS) are dropped, and the connection stays."""
    for cseq in (1, 2):
        call_id = new_call_id()
        tcp.send(tcp.request("OPTIONS", "alice", call_id=call_id, cseq=cseq))
        await tcp.response(200, call_id)
    leg = CallLeg(tcp, "alice")
    branch = new_branch()
    tcp.send(leg.build("INVITE", branch=branch, body=b""))
    busy = await tcp.response(503, leg.call_id)
    assert busy.headers.get("Retry-After") == str(round(1 / RATE_PER_S))  # a token's refill
    tcp.send(leg.build("ACK", branch=branch, to_tag=busy.to.tag, cseq_method="ACK"))
    assert gateway.manager.active_calls == 0 and gateway.server.core.dialog_count == 0
    tcp.send(tcp.request("OPTIONS", "alice", call_id=new_call_id(), cseq=3))
    await until(lambda: counter(gateway, "dropped_rate_limited") == 1)
    assert counter(gateway, "rejected_rate_limited") == 1
    assert gateway.server.is_open(next(iter(gateway.server.connections)))


async def test_a_rate_limited_invite_over_udp_is_dropped_silently(
    gateway: Gateway, uac: Uac
) -> None:
    """defence.py: a UDP source may be forged; an answer would be reflected at its victim."""
    for cseq in (1, 2):
        call_id = new_call_id()
        uac.send(uac.request("OPTIONS", "alice", call_id=call_id, cseq=cseq))
        await uac.response(200, call_id)
    leg = CallLeg(uac, "alice")
    uac.send(leg.build("INVITE", body=b""))
    await until(lambda: counter(gateway, "dropped_rate_limited") == 1)
    assert uac.responses(leg.call_id) == []
    assert counter(gateway, "rejected_rate_limited") == 0


async def _call_on_the_last_tokens(uac: Uac) -> CallLeg:
    """A call whose two INVITEs (challenged, then authenticated) take the bucket's two tokens;
    its ACKs come after, when the source is limited."""
    leg = CallLeg(uac, "alice")
    await leg.challenge(MEDIA_PORT)
    await leg.answered(leg.authenticated_invite(PASSWORD, MEDIA_PORT))
    uac.send(leg.ack())
    return leg


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
async def test_acks_and_responses_of_a_limited_source_are_handled(
    api: Api, gateway: Gateway, transport: str
) -> None:
    """The ACK to our 200 OK and the 200 OK to our BYE come when the carrier's bucket is empty:
    they finish what was admitted, so neither is counted nor dropped — the agent's hang-up is a
    BYE at once (not after the ACK's timeout) that ends the dialog at its answer (not Timer F)."""
    uac = await Uac.open(transport, gateway.server.bound[transport])
    try:
        async with FakeTelepathAgent(agent="tone", response_ms=300, hangup=True) as agent:
            await create_trunk(
                api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=agent.url
            )
            leg = await _call_on_the_last_tokens(uac)
            after = len(uac.received)
            bye = await uac.wait_for(
                lambda m: isinstance(m, Request) and m.method == "BYE", after=after
            )
            assert isinstance(bye.message, Request)
            uac.send(make_response(bye.message, 200).to_bytes())
            await until(lambda: gateway.server.core.dialog_count == 0)
            (record,) = await ended_records(api, gateway)
        assert record["disconnect_reason"] == "agent_hangup"
        core = gateway.server.core
        assert core.counters["client_tx_timeouts"] == 0
        assert counter(gateway, "dropped_rate_limited") == 0
        assert leg.to_tag is not None
    finally:
        await uac.close()


async def test_a_bye_of_a_limited_source_over_tcp_is_handled(
    api: Api, gateway: Gateway, tcp: Uac
) -> None:
    """A BYE over a stream is never sent again: dropped, it would leave the call up."""
    async with FakeTelepathAgent(agent="silent") as agent:
        await create_trunk(api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=agent.url)
        leg = await _call_on_the_last_tokens(tcp)
        await until(lambda: gateway.manager.active_calls == 1)
        await leg.bye()
        (record,) = await ended_records(api, gateway)
    assert record["disconnect_reason"] == "caller_hangup"


async def test_a_banned_source_s_connection_is_closed(
    gateway: Gateway, streams: list[Stream]
) -> None:
    """defence.py: a banned source's messages are dropped before parsing and, on a stream, its
    connection closed (it was open before the ban)."""
    stream = await connect(gateway, streams, "127.0.0.3")
    guard = gateway.manager.guard
    assert guard is not None
    while not guard.record_auth_failure("127.0.0.3"):
        pass
    _, writer = stream
    uac = Uac("TCP", gateway.server.bound["TCP"], local=writer.get_extra_info("sockname"))
    writer.write(uac.request("OPTIONS", "alice", call_id=new_call_id(), cseq=1))
    assert await closed_by_gateway(stream) == b""  # closed, the OPTIONS never answered
    assert counter(gateway, "dropped_banned") == 1
