"""``telepath call``'s dialler against a scripted SIP peer on a raw UDP socket: what it sends
that the gateway would take either way (RFC 3261 §22, §13.2.2.4, §9.1)."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Callable

import pytest

from telepath.cli.dialer import Dialer
from telepath.cli.sip_link import source_address
from telepath.rtp import g711
from telepath.sip.headers import parse_name_addr
from telepath.sip.message import Request, Response, make_response
from telepath.sip.parser import parse_message, validate_request
from tests.integration.cli.sip_peer import (
    TAG,
    Script,
    SipPeer,
    answer_sdp,
    ok_with_sdp,
    sip_peer,
)
from tests.integration.media.peer import UdpPeer, rtp_stream, until
from tests.unit.rtp.audio import dominant_hz
from tests.unit.rtp.audio import tone as tone_pcm

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


@pytest.mark.parametrize("proxies", [1, 2])
async def test_the_ack_and_the_bye_follow_the_route_set(proxies: int) -> None:
    """A record-routing proxy in front of the gateway (RFC 3261 §12.1.2): the route set is the
    2xx's Record-Route reversed, and the ACK (§13.2.2.4) and the BYE carry it as Route headers
    to the remote target, the 2xx's Contact (§12.2.1.1, loose routing). Without them a proxy
    that routes in-dialog requests by their Route (Kamailio's ``loose_route``) refuses the BYE,
    and the ACK never reaches the gateway, which then ends the call unacknowledged."""
    record_route: list[str] = []

    def script(request: Request) -> list[Response]:
        if request.method != "INVITE":
            return []
        answer = ok_with_sdp(peer, request)
        answer.headers.add("Record-Route", ", ".join(record_route))  # one line, a comma list
        return [answer]

    async with sip_peer(script) as peer:
        # the proxy nearest the gateway first: the dialler's own proxy (the peer) is last
        record_route += [f"<sip:198.51.100.{n}:5060;lr;ftag=x>" for n in range(1, proxies)]
        record_route.append(f"<sip:127.0.0.1:{peer.port};lr>")
        result = await Dialer(peer.uri("bob"), username="bob", password=PASSWORD).run(
            duration_s=0.2, tone_hz=None
        )
        (ack,) = await peer.received("ACK")
        (bye,) = await peer.received("BYE")
    assert result.status == 200 and result.ended_by == "dialer"
    for request in (ack, bye):
        assert request.headers.get_all("Route") == record_route[::-1]
        assert str(request.uri) == f"sip:peer@127.0.0.1:{peer.port}"  # the 2xx's Contact


async def test_a_retransmitted_2xx_is_acknowledged_again() -> None:
    """The ACK is lost (UDP): the gateway sends its 200 again (RFC 3261 §13.3.1.4), and "the
    UAC core MUST generate an ACK request for each 2xx received" (§13.2.2.4) — the same ACK.
    Unanswered, the gateway would end the call at 64*T1 for want of one."""
    answers: list[Response] = []

    def script(request: Request) -> list[Response]:
        if request.method == "INVITE":
            answers.append(ok_with_sdp(peer, request))
            return answers[:1]
        if request.method == "ACK" and len(peer.of("ACK")) == 1:
            return answers[:1]  # as if the first ACK had been lost: the 200 again
        return []

    async with sip_peer(script) as peer:
        result = await Dialer(peer.uri("bob"), username="bob", password=PASSWORD).run(
            duration_s=1, tone_hz=None
        )
        first, again = await peer.received("ACK", 2)
    assert result.status == 200 and result.ended_by == "dialer"
    assert again.to_bytes() == first.to_bytes()


def _ringing(peer: SipPeer, cancelled: Callable[[Request], Response]) -> Script:
    """INVITE: 180 Ringing and nothing more; CANCEL: 200, then ``cancelled(invite)``."""

    def script(request: Request) -> list[Response]:
        if request.method == "INVITE":
            return [make_response(request, 180, to_tag=TAG)]
        if request.method == "CANCEL":
            invite = peer.of("INVITE")[0]
            return [make_response(request, 200, to_tag=TAG), cancelled(invite)]
        return []

    return script


async def test_giving_up_after_a_180_cancels_the_invite() -> None:
    """The gateway rings longer than ``ring_timeout_s``: the dialler sends CANCEL (RFC 3261
    §9.1) instead of leaving, and acknowledges the 487 the INVITE then gets (§17.1.1.3) — no
    answered call is left for nobody to acknowledge."""
    async with sip_peer() as peer:
        peer.script = _ringing(peer, lambda invite: make_response(invite, 487, to_tag=TAG))
        result = await Dialer(peer.uri("bob"), username="bob", password=PASSWORD).run(
            duration_s=1, ring_timeout_s=0.3
        )
        (ack,) = await peer.received("ACK")
    invite, cancel = peer.of("INVITE")[0], peer.of("CANCEL")[0]
    assert result.status == 487 and result.cancelled and result.setup_ms is None
    # §9.1: the INVITE's Request-URI, Call-ID, From, To, CSeq number and (single) Via
    assert cancel.uri == invite.uri
    assert cancel.headers.get_all("Via") == invite.headers.get_all("Via")
    for name in ("From", "To", "Call-ID"):
        assert cancel.headers.get(name) == invite.headers.get(name)
    assert (cancel.cseq.seq, cancel.cseq.method) == (invite.cseq.seq, "CANCEL")
    # §17.1.1.3: the 487 is acknowledged within the INVITE's transaction
    assert ack.top_via.branch == invite.top_via.branch
    assert (ack.cseq.seq, ack.to.tag) == (invite.cseq.seq, TAG)


async def test_a_200_that_crosses_the_cancel_is_acknowledged_and_hung_up() -> None:
    """The INVITE is answered just as the CANCEL goes (§9.1: a CANCEL has no effect on a
    request already answered): the 200 is acknowledged (§13.2.2.4) and the call ended with BYE
    (§15) instead of being left up."""
    async with sip_peer() as peer:
        peer.script = _ringing(peer, lambda invite: ok_with_sdp(peer, invite))
        result = await Dialer(peer.uri("bob"), username="bob", password=PASSWORD).run(
            duration_s=1, ring_timeout_s=0.3
        )
        (ack,) = await peer.received("ACK")
        (bye,) = await peer.received("BYE")
    invite = peer.of("INVITE")[0]
    assert result.cancelled and result.setup_ms is None
    assert (ack.cseq.seq, ack.to.tag) == (invite.cseq.seq, TAG)
    assert bye.to.tag == TAG and bye.cseq.seq > invite.cseq.seq


@pytest.mark.parametrize("final", [487, 200])
async def test_a_dialler_stopped_while_ringing_cancels_the_invite(final: int) -> None:
    """The dialler is stopped (Ctrl-C: its task cancelled) after the 180: it cancels the INVITE
    (RFC 3261 §9.1) on its way out, as it does when the ring timeout passes, instead of leaving
    the gateway to answer a call nobody acknowledges. The INVITE's final response is
    acknowledged — a 487 in its transaction (§17.1.1.3), a 200 that crossed the CANCEL end to
    end and then hung up (§13.2.2.4, §15) — and the cancellation goes on."""
    async with sip_peer() as peer:
        peer.script = _ringing(
            peer,
            lambda invite: (
                ok_with_sdp(peer, invite)
                if final == 200
                else make_response(invite, 487, to_tag=TAG)
            ),
        )
        dialer = Dialer(peer.uri("bob"), username="bob", password=PASSWORD)
        call = asyncio.get_running_loop().create_task(dialer.run(duration_s=60))
        await until(lambda: dialer.rang)  # the 180 has come
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        (ack,) = await peer.received("ACK")
    invite, (cancel,) = peer.of("INVITE")[0], peer.of("CANCEL")
    assert cancel.top_via.branch == invite.top_via.branch
    assert (ack.cseq.seq, ack.to.tag) == (invite.cseq.seq, TAG)
    if final == 487:
        assert ack.top_via.branch == invite.top_via.branch and not peer.of("BYE")
    else:
        (bye,) = peer.of("BYE")
        assert bye.to.tag == TAG and bye.cseq.seq > invite.cseq.seq


async def test_a_dialler_stopped_before_a_provisional_response_sends_no_cancel() -> None:
    """§9.1: "If no provisional response has been received, the CANCEL request MUST NOT be
    sent" — stopped then, the dialler just leaves."""
    async with sip_peer() as peer:
        call = asyncio.get_running_loop().create_task(
            Dialer(peer.uri("bob"), username="bob", password=PASSWORD).run(duration_s=1)
        )
        await peer.received("INVITE")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    assert not peer.of("CANCEL")


async def test_no_cancel_without_a_provisional_response() -> None:
    """§9.1: "If no provisional response has been received, the CANCEL request MUST NOT be
    sent": a peer that never answers is left as it is."""
    async with sip_peer() as peer:
        with pytest.raises(TimeoutError):
            await Dialer(peer.uri("bob"), username="bob", password=PASSWORD).run(
                duration_s=1, timeout_s=0.3, ring_timeout_s=0.3
            )
    assert peer.of("INVITE") and not peer.of("CANCEL")


async def test_an_unusable_sdp_answer_is_hung_up() -> None:
    """The 200's SDP takes no codec the dialler offered (G.722 for PCMU/PCMA): the call is up
    all the same, so it is acknowledged and ended with BYE at once (RFC 3261 §13.2.2.4, §15)
    — not left to the peer's media timeout — and the result says why."""

    def script(request: Request) -> list[Response]:
        if request.method != "INVITE":
            return []
        answer = ok_with_sdp(peer, request)
        answer.body = answer.body.replace(b"RTP/AVP 0", b"RTP/AVP 9").replace(
            b"0 PCMU/8000", b"9 G722/8000"
        )
        return [answer]

    async with sip_peer(script) as peer:
        result = await Dialer(peer.uri("bob"), username="bob", password=PASSWORD).run(duration_s=1)
        (bye,) = await peer.received("BYE")
    assert result.status == 200 and result.setup_ms is None
    assert result.error is not None and "SDP answer" in result.error
    assert bye.to.tag == TAG


async def test_a_2xx_whose_record_route_does_not_parse_is_acknowledged_and_hung_up() -> None:
    """The 200's Record-Route is no rec-route (RFC 3261 §20.30): no route set can be made of
    it (§12.1.2), but the 2xx is acknowledged all the same (§13.2.2.4) and the call ended at
    once, over the connection the INVITE went on, with the result saying why — not an
    exception out of the dialler with the call left to the peer's ACK timeout."""

    def script(request: Request) -> list[Response]:
        if request.method != "INVITE":
            return []
        answer = ok_with_sdp(peer, request)
        answer.headers.add("Record-Route", "garbage")
        return [answer]

    async with sip_peer(script) as peer:
        result = await Dialer(peer.uri("bob"), username="bob", password=PASSWORD).run(duration_s=1)
        (ack,) = await peer.received("ACK")
        (bye,) = await peer.received("BYE")
    assert result.status == 200 and result.setup_ms is None
    assert result.error is not None and "Record-Route" in result.error
    assert ack.to.tag == bye.to.tag == TAG and bye.headers.get_all("Route") == []


def _routed_address() -> str:
    """This host's address on its default route (found as the route to TEST-NET-1, RFC 5737,
    which ``connect`` on a UDP socket only looks up: nothing is sent); skipped without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            pytest.skip("no default route on this host")
        address = str(probe.getsockname()[0])
    if address.startswith("127."):
        pytest.skip("the default route is loopback")
    return address


def _said_addresses(invite: Request) -> set[str]:
    """The hosts the INVITE gives as ours: Via sent-by, Contact, SDP connection address."""
    sdp = invite.body.decode()
    connection = next(line for line in sdp.splitlines() if line.startswith("c=IN IP4 "))
    contact = parse_name_addr(invite.headers.get("Contact") or "").uri
    return {invite.top_via.host, contact.host, connection.removeprefix("c=IN IP4 ")}


def test_the_source_address_is_the_route_s() -> None:
    assert source_address("127.0.0.1") == "127.0.0.1"


async def test_the_dialler_speaks_from_the_address_routed_to_the_gateway() -> None:
    """No --local-ip: a gateway on another address than loopback is called from the address
    the route to it leaves by, and the INVITE says so (Via, Contact, SDP). Bound to 127.0.0.1
    it could not even send to a remote gateway (EINVAL, swallowed by asyncio: a 15 s
    'timeout'), and its Via, Contact and SDP would send the gateway's answers and media
    nowhere."""
    address = _routed_address()
    async with sip_peer(lambda r: [make_response(r, 486, to_tag=TAG)], host=address) as peer:
        result = await Dialer(peer.uri("bob", address), username="bob", password=None).run(
            duration_s=1
        )
        (invite,) = await peer.received("INVITE")
    assert result.status == 486
    assert _said_addresses(invite) == {address}


async def test_local_ip_overrides_the_route() -> None:
    address = _routed_address()
    async with sip_peer(lambda r: [make_response(r, 486, to_tag=TAG)], host="0.0.0.0") as peer:
        dialer = Dialer(peer.uri("bob"), username="bob", password=None, local_ip=address)
        result = await dialer.run(duration_s=1)
        (invite,) = await peer.received("INVITE")
    assert result.status == 486
    assert _said_addresses(invite) == {address}  # not 127.0.0.1, the route to the peer


async def test_an_answer_renumbering_pcmu_is_sent_its_number_and_heard_on_ours() -> None:
    """The dialler offers PCMU as 0; an answer may map it to 96 (RFC 3264 §6.1: SHOULD, not
    MUST, keep the offer's numbers). Each side's numbers are what it receives (§5.1): the
    dialler sends 96, the peer sends 0 — which was dropped as an unnegotiated type."""
    rtp = await UdpPeer.bind()

    def script(request: Request) -> list[Response]:
        if request.method != "INVITE":
            return []
        answer = ok_with_sdp(peer, request)
        answer.body = answer_sdp(rtp.address[1]).replace(b"RTP/AVP 0", b"RTP/AVP 96")
        answer.body = answer.body.replace(b"rtpmap:0 PCMU", b"rtpmap:96 PCMU")
        return [answer]

    async def talk() -> None:
        (invite,) = await peer.received("INVITE")
        match = re.search(rb"m=audio ([0-9]+) ", invite.body)
        assert match is not None
        dest = ("127.0.0.1", int(match.group(1)))
        tone = g711.pcm16_to_ulaw(tone_pcm(1000, 8000, 1.0))
        frames = [tone[i : i + 160] for i in range(0, len(tone), 160)]
        for data in rtp_stream(frames):  # PT 0: the number of the dialler's offer
            rtp.send(data, dest)
            await asyncio.sleep(0.02)

    try:
        async with sip_peer(script) as peer:
            sender = asyncio.get_running_loop().create_task(talk())
            result = await Dialer(peer.uri("bob"), username="bob", password=PASSWORD).run(
                duration_s=1.5, tone_hz=440
            )
            await sender
            await peer.received("BYE")
    finally:
        rtp.close()
    assert result.status == 200 and result.error is None
    assert result.received_ms >= 800
    assert dominant_hz(result.recorded, 8000) == pytest.approx(1000, abs=10)
    assert {p.payload_type for p in rtp.packets()} == {96}


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_the_dialler_writes_an_ipv6_address_of_its_own_in_brackets(transport: str) -> None:
    """RFC 3261 §25.1: an IPv6 address in a URI or a Via sent-by is an IPv6reference, in
    brackets. Its own address bare (``Via: SIP/2.0/UDP ::1:40000``, ``<sip:dialer@::1:40000>``)
    made an INVITE the gateway's parser refuses."""
    scheme = "sips" if transport == "tls" else "sip"
    dialer = Dialer(
        f"{scheme}:bob@[::1]:5060;transport={transport}",
        username="bob",
        password=None,
        local_ip="::1",
    )
    for method in ("INVITE", "ACK", "BYE"):
        request = parse_message(dialer._request(method, 40000, body=b"v=0\r\n").to_bytes())
        assert isinstance(request, Request)
        validate_request(request)  # raises SipParseError on a malformed one
        assert (request.top_via.host, request.top_via.port) == ("[::1]", 40000)
        assert request.from_.uri.host == "[::1]"
        assert parse_name_addr(request.headers.get("Contact") or "").uri.host_port == "[::1]:40000"
        assert request.to.uri.host_port == "[::1]:5060"


async def test_a_call_to_an_ipv6_peer_is_answered() -> None:
    """The whole call over IPv6 loopback: the peer parses what the dialler sends and answers."""
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close()
    except OSError:
        pytest.skip("no IPv6")
    async with sip_peer(lambda r: [make_response(r, 486, to_tag=TAG)], host="::1") as peer:
        dialer = Dialer(f"sip:bob@[::1]:{peer.port}", username="bob", password=None)
        result = await dialer.run(duration_s=1, timeout_s=3)
        (invite,) = await peer.received("INVITE")
    assert result.status == 486
    validate_request(invite)
    assert invite.top_via.host == "[::1]"


def test_a_target_without_a_user_part_is_called_at_its_host() -> None:
    """A target URI may have no user part (RFC 3261 §19.1.1: userinfo is optional): the To is
    the target's host — it was ``<sip:None@host>``."""
    dialer = Dialer("sip:127.0.0.1:5060", username="", password=None, local_ip="127.0.0.1")
    request = parse_message(dialer._request("INVITE", 40000).to_bytes())
    assert isinstance(request, Request)
    validate_request(request)
    assert request.headers.get("To") == "<sip:127.0.0.1:5060>"
    assert request.to.uri.user is None
