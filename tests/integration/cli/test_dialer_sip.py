"""``telepath call``'s dialler against a scripted SIP peer on a raw UDP socket: what it sends
that the gateway would take either way (RFC 3261 §22, §13.2.2.4, §9.1)."""

from __future__ import annotations

import pytest

from telepath.cli.dialer import Dialer
from telepath.sip.message import Request, Response, make_response
from tests.integration.cli.sip_peer import TAG, ok_with_sdp, sip_peer

pytestmark = pytest.mark.integration

PASSWORD = "peer-pass-1"


async def test_a_407_is_answered_in_proxy_authorization() -> None:
    """RFC 3261 §22.3: a 407's Proxy-Authenticate is answered in Proxy-Authorization (a proxy
    reads no Authorization: the call would be challenged again and fail)."""

    def script(request: Request) -> list[Response]:
        if request.method != "INVITE":
            return []
        if peer.answered(request, PASSWORD, "Proxy-Authorization"):
            return [make_response(request, 486, to_tag=TAG)]
        return [peer.challenge(request, 407)]

    async with sip_peer(script) as peer:
        result = await Dialer(peer.uri("bob"), username="bob", password=PASSWORD).run(duration_s=1)
        challenged, retried = await peer.received("INVITE", 2)
    assert result.status == 486
    assert challenged.headers.get("Proxy-Authorization") is None
    assert retried.headers.get("Authorization") is None
    assert retried.cseq.seq == challenged.cseq.seq + 1


@pytest.mark.parametrize(
    ("status", "header"), [(401, "Authorization"), (407, "Proxy-Authorization")]
)
async def test_the_ack_for_a_2xx_carries_the_invites_credentials(status: int, header: str) -> None:
    """RFC 3261 §13.2.2.4: "The ACK MUST contain the same credentials as the INVITE" — a
    proxy that authenticates every request would otherwise refuse the ACK and the UAS would
    never learn the call was set up."""

    def script(request: Request) -> list[Response]:
        if request.method != "INVITE":
            return []
        if peer.answered(request, PASSWORD, header):
            return [ok_with_sdp(peer, request)]
        return [peer.challenge(request, status)]

    async with sip_peer(script) as peer:
        result = await Dialer(peer.uri("bob"), username="bob", password=PASSWORD).run(
            duration_s=0.2, tone_hz=None
        )
        invite = (await peer.received("INVITE", 2))[1]
        await peer.received("BYE")
    assert result.status == 200 and result.ended_by == "dialer"
    (ack,) = [a for a in peer.of("ACK") if a.cseq.seq == invite.cseq.seq]
    assert ack.headers.get(header) == invite.headers.get(header) is not None
