"""The RTP port's public mapping by STUN (``TELEPATH_STUN_SERVER``): the SDP answer gives where
the STUN server saw the call's RTP socket, instead of the configured public address and the
socket's own port; without an answer the call goes on with the configured address.

coturn is the real STUN server (on loopback it sees the socket as it is: 127.0.0.1 and the RTP
port, where ``TELEPATH_PUBLIC_ADDRESS`` says 203.0.113.9). A NAT that changes the port cannot be
built on loopback: a STUN responder of the test's own, answering as such a NAT's server would
(another port), shows the SDP takes the port from the answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from aioice import stun

from telepath.cli.gateway import Gateway
from telepath.config import Settings
from telepath.testing.fake_custom import FakeTelepathAgent
from tests.coturn import binding_response, stun_server
from tests.integration.conftest import Api
from tests.interop.calls.conftest import GATEWAY_SETTINGS, create_trunk
from tests.interop.sip.uac import CallLeg, Uac

pytestmark = pytest.mark.interop

PUBLIC = "203.0.113.9"  # the configured public address: what the SDP says without STUN
SHIFT = 1000  # the test's "NAT" maps each even (RTP) port to this many above it
RTCP_SHIFT = 3000  # and each odd (RTCP) port this many: RTCP no longer on the RTP port + 1


class NattingStun(asyncio.DatagramProtocol):
    """A STUN server behind which every client port looks ``SHIFT`` (even) or ``RTCP_SHIFT``
    (odd) higher; or silent."""

    def __init__(self, silent: bool = False) -> None:
        self.silent = silent
        self.requests = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        request = stun.parse_message(data)
        self.requests += 1
        if self.silent or self.transport is None:
            return
        shift = SHIFT if addr[1] % 2 == 0 else RTCP_SHIFT
        mapped = ("198.51.100.20", addr[1] + shift)
        self.transport.sendto(binding_response(mapped, request.transaction_id), addr)


@pytest.fixture
async def stun_port(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[int]:
    kind = getattr(request, "param", "coturn")
    if kind == "coturn":
        async with stun_server(tmp_path) as port:
            yield port
        return
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: NattingStun(silent=kind == "silent"), local_addr=("127.0.0.1", 0)
    )
    request.node.stun_protocol = protocol
    try:
        yield int(transport.get_extra_info("sockname")[1])
    finally:
        transport.close()


@pytest.fixture
def settings_overrides(stun_port: int) -> dict[str, Any]:
    return {**GATEWAY_SETTINGS, "public_address": PUBLIC, "stun_server": f"127.0.0.1:{stun_port}"}


async def _answered_sdp(api: Api, gateway: Gateway, uac: Uac, name: str) -> tuple[str, str, int]:
    """A call's 200 OK: its Contact, its SDP, and the RTP port the gateway really bound."""
    async with FakeTelepathAgent(agent="silent") as agent:
        await create_trunk(
            api, name, "stun-pass-123", ai_provider="custom", custom_endpoint=agent.url
        )
        leg = CallLeg(uac, name)
        await leg.challenge(40006)
        ok = await leg.answered(leg.authenticated_invite("stun-pass-123", 40006))
        (call,) = gateway.manager.calls.values()
        bound = call.media.lease.port
        # what re-offers and the media report give as our ports: the SDP's, not the bound ones
        assert call.media.local_port == _media(ok.body.decode())[1]
        rtcp = call.media.local_rtcp_port
        apart = rtcp is not None and rtcp != call.media.local_port + 1
        assert ("a=rtcp:" in ok.body.decode()) == apart
        assert not apart or f"a=rtcp:{rtcp}\r\n" in ok.body.decode()
        uac.send(leg.ack())
    return ok.headers.get("Contact") or "", ok.body.decode(), bound


def _media(sdp: str) -> tuple[str, int]:
    address = sdp.split("c=IN IP4 ", 1)[1].split()[0]
    port = int(sdp.split("m=audio ", 1)[1].split()[0])
    return address, port


async def test_the_sdp_gives_where_coturn_saw_the_rtp_socket(
    api: Api, gateway: Gateway, uac: Uac
) -> None:
    contact, sdp, bound = await _answered_sdp(api, gateway, uac, "stunned")
    assert _media(sdp) == ("127.0.0.1", bound)  # measured, not the configured 203.0.113.9
    assert "a=rtcp:" not in sdp  # RTCP seen on the RTP port + 1: nothing to announce
    assert f"@{PUBLIC}:" in contact  # signalling keeps the configured address


@pytest.mark.parametrize("stun_port", ["natting"], indirect=True)
async def test_a_nat_that_changes_the_port_is_followed(
    api: Api, gateway: Gateway, uac: Uac, request: pytest.FixtureRequest
) -> None:
    _, sdp, bound = await _answered_sdp(api, gateway, uac, "natted")
    assert _media(sdp) == ("198.51.100.20", bound + SHIFT)
    # RTCP's own mapping, apart from the RTP port + 1: announced (RFC 3605)
    assert f"a=rtcp:{bound + 1 + RTCP_SHIFT}\r\n" in sdp
    assert request.node.stun_protocol.requests == 2  # one per socket, at once


@pytest.mark.parametrize("stun_port", ["silent"], indirect=True)
async def test_no_stun_answer_leaves_the_configured_address(
    api: Api, gateway: Gateway, uac: Uac, request: pytest.FixtureRequest
) -> None:
    _, sdp, bound = await _answered_sdp(api, gateway, uac, "unanswered")
    assert _media(sdp) == (PUBLIC, bound)
    assert request.node.stun_protocol.requests >= 2  # retransmitted within the timeout


def test_a_stun_server_setting_that_is_not_host_port_is_refused() -> None:
    assert Settings(stun_server="stun.example.net").stun_server_address == (
        "stun.example.net",
        3478,
    )
    assert Settings(stun_server="127.0.0.1:3479").stun_server_address == ("127.0.0.1", 3479)
    for bad in ("stun.example.net:0", "stun.example.net:x", "[::1]:3478", "a b"):
        with pytest.raises(ValueError, match="TELEPATH_STUN_SERVER"):
            Settings(stun_server=bad)
