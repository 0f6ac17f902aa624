"""Raw UDP datagrams against the running gateway: what SIPp cannot stage cleanly.

Retransmitted INVITE and BYE are answered again from the transaction (RFC 3261 §17.2.1,
§17.2.2) without a second call; a late ACK stops the 2xx retransmissions (§13.3.1.4); bad
requests get the RFC's status codes; garbage never takes the listener down.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import AsyncIterator

import pytest

from telepath.calls.call import Call
from telepath.cli.gateway import Gateway
from telepath.sip.message import Response
from telepath.testing.fake_custom import FakeTelepathAgent
from tests.integration.conftest import Api
from tests.interop.calls.conftest import create_trunk
from tests.interop.calls.harness import Phone
from tests.interop.sip.uac import (
    CallLeg,
    Uac,
    challenge_params,
    new_branch,
    new_call_id,
    sdp_offer,
)
from tests.interop.sip.waits import ended_records, until

pytestmark = pytest.mark.interop

PASSWORD = "raw-secret-42"
MEDIA_PORT = 40000  # the caller's RTP port in the offers (nothing listens: media is not tested)


@pytest.fixture
async def agent(api: Api) -> AsyncIterator[FakeTelepathAgent]:
    async with FakeTelepathAgent(agent="silent") as fake:
        await create_trunk(api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=fake.url)
        yield fake


async def test_retransmitted_invite_is_absorbed(
    gateway: Gateway, uac: Uac, agent: FakeTelepathAgent, api: Api
) -> None:
    leg = CallLeg(uac, "alice")
    # The unauthenticated INVITE, twice: the same 401 (byte for byte) comes back twice.
    branch = new_branch()
    first = leg.build("INVITE", branch=branch, body=sdp_offer(MEDIA_PORT))
    uac.send(first)
    r401 = await uac.response(401, leg.call_id)
    uac.send(first)
    await uac.wait_for(lambda m: len(_finals(uac, leg.call_id, 401)) == 2)
    a, b = _finals(uac, leg.call_id, 401)
    assert a == b
    assert gateway.server.core.counters["retransmissions_absorbed"] == 1
    uac.send(leg.build("ACK", branch=branch, to_tag=r401.to.tag))
    leg.challenges = r401.headers.get_all("WWW-Authenticate")

    # The authenticated INVITE, retransmitted after 180 and again after 200: one call only.
    invite = leg.authenticated_invite(PASSWORD, MEDIA_PORT)
    start = len(uac.received)
    uac.send(invite)
    ringing = await uac.response(180, leg.call_id, after=start)
    uac.send(invite)  # Proceeding: the last provisional is sent again (§17.2.1)
    ok = await uac.response(200, leg.call_id, method="INVITE", after=start)
    uac.send(invite)  # Accepted (RFC 6026 §8.5): absorbed, the TU's 2xx timer covers it
    leg.to_tag = ok.to.tag
    uac.send(leg.ack())
    assert ringing.to.tag == ok.to.tag
    assert len(agent.handshakes) == 1
    assert gateway.manager.active_calls == 1
    await leg.bye()
    calls = await ended_records(api, gateway)
    assert len(calls) == 1 and calls[0]["disconnect_reason"] == "caller_hangup"
    assert gateway.server.core.counters["retransmissions_absorbed"] >= 3


async def test_retransmitted_bye_gets_200_again(
    gateway: Gateway, uac: Uac, agent: FakeTelepathAgent
) -> None:
    leg = await _call_up(uac)
    leg.cseq += 1
    bye = leg.build("BYE")
    uac.send(bye)
    await uac.response(200, leg.call_id, method="BYE")
    uac.send(bye)  # the carrier lost our 200: Completed answers it again (§17.2.2)
    await uac.wait_for(lambda m: len(uac.responses(leg.call_id, "BYE")) == 2)
    first, second = uac.responses(leg.call_id, "BYE")
    assert first.raw == second.raw
    assert first.message.status == 200  # type: ignore[union-attr]
    await until(lambda: gateway.manager.active_calls == 0)
    assert gateway.server.core.dialog_count == 0


async def test_late_ack_stops_2xx_retransmissions(
    gateway: Gateway, uac: Uac, agent: FakeTelepathAgent
) -> None:
    leg = CallLeg(uac, "alice")
    await leg.challenge(MEDIA_PORT)
    start = len(uac.received)
    uac.send(leg.authenticated_invite(PASSWORD, MEDIA_PORT))
    ok = await uac.response(200, leg.call_id, method="INVITE", after=start)
    leg.to_tag = ok.to.tag
    # No ACK: the 2xx comes again at T1 and 2*T1 after (§13.3.1.4) ...
    await uac.wait_for(lambda m: len(_oks(uac, leg.call_id)) >= 3)
    oks = _oks(uac, leg.call_id)
    assert len(set(oks)) == 1  # the very same 200 OK, byte for byte
    # ... and the late ACK stops it: no further 2xx, and the call is confirmed, not torn down.
    uac.send(leg.ack())
    count = len(_oks(uac, leg.call_id))
    (dialog,) = gateway.server.core._dialogs.values()
    await until(lambda: dialog.acked)
    assert dialog.pending_2xx is None and "2xx" not in dialog.timer_generation
    with pytest.raises(AssertionError, match="nothing matched"):  # next one due 4*T1 after
        await uac.wait_for(lambda m: len(_oks(uac, leg.call_id)) > count, within_s=2.5)
    assert gateway.manager.active_calls == 1
    await leg.bye()


async def test_malformed_request_gets_400_with_warning(gateway: Gateway, uac: Uac) -> None:
    call_id = new_call_id()
    raw = uac.request("OPTIONS", "alice", call_id=new_call_id(), cseq=1)
    # Two Call-IDs (RFC 4475 §3.1.2.19 multi01 style): the answer copies the first one.
    broken = raw.replace(b"Max-Forwards: 70", f"Call-ID: {call_id}\r\nMax-Forwards: 70".encode())
    uac.send(broken)
    resp = await uac.response(400, call_id)
    warning = resp.headers.get("Warning") or ""
    assert warning.startswith("399 ") and "Call-ID" in warning, warning
    assert gateway.server.core.counters["parse_errors"] == 1


@pytest.mark.parametrize(
    ("method", "headers", "max_forwards", "status", "check"),
    [
        ("OPTIONS", [], 0, 200, None),  # Max-Forwards 0 is a proxy's matter (RFC 4475 §3.3.11)
        ("OPTIONS", [("Require", "100rel, x-unknown-ext")], 70, 420, "Unsupported"),
        ("INVITE", [("Require", "x-unknown-ext")], 70, 420, "Unsupported"),
        ("SUBSCRIBE", [("Event", "presence")], 70, 405, "Allow"),
        ("MESSAGE", [], 70, 405, "Allow"),
        ("FOO", [], 70, 501, "Allow"),  # §21.5.2: not known at all
    ],
)
async def test_rfc_rejections(
    gateway: Gateway,
    uac: Uac,
    method: str,
    headers: list[tuple[str, str]],
    max_forwards: int,
    status: int,
    check: str | None,
) -> None:
    call_id = new_call_id()
    uac.send(
        uac.request(
            method, "alice", call_id=call_id, cseq=1, headers=headers, max_forwards=max_forwards
        )
    )
    resp = await uac.wait_for(
        lambda m: isinstance(m, Response) and m.call_id == call_id and m.status >= 200
    )
    assert isinstance(resp.message, Response)
    assert resp.message.status == status
    if check == "Unsupported":  # §8.2.2.3: list the options we do not support, and only those
        assert resp.message.headers.get_all("Unsupported") == [
            h.strip() for h in headers[0][1].split(",") if h.strip() != "timer"
        ]
    elif check == "Allow":  # §8.2.2.1: 405 MUST carry Allow (and so does our 501)
        allow = resp.message.headers.get_all("Allow")
        assert {"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS"} <= set(allow)
        assert method not in allow
    assert gateway.manager.active_calls == 0


async def test_garbage_never_crashes_the_listener(gateway: Gateway, uac: Uac) -> None:
    rng = random.Random(4475)
    valid = uac.request("OPTIONS", "alice", call_id=new_call_id(), cseq=1)
    junk = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 1400))) for _ in range(40)]
    junk += [valid[:n] for n in range(0, len(valid), 37)]  # every truncation of a request
    junk += [b"SIP/2.0 200 OK\r\n\r\n", b"\r\n\r\n", b"INVITE\r\n", b"\x00" * 64]
    junk += [valid.replace(b"Via:", b"Via: \xff\xfe")]
    junk += [valid.replace(b"Content-Length: 0", b"Content-Length: 99999")]
    for data in junk:
        uac.send(data)
    ok = await uac.answered_options()
    assert "INVITE" in ok.headers.get_all("Allow")
    assert gateway.server.core.counters["parse_errors"] >= 40
    assert gateway.manager.active_calls == 0


async def test_garbage_on_tcp_closes_only_that_connection(gateway: Gateway) -> None:
    target = gateway.server.bound["TCP"]
    bad = await Uac.open("TCP", target)
    bad.send(b"\x16\x03\x01 not sip at all\r\nContent-Length: x\r\n\r\n")
    await bad.close()
    good = await Uac.open("TCP", target)
    try:
        await good.answered_options()
    finally:
        await good.close()


async def test_a_request_before_a_broken_one_on_tcp_is_answered_then_the_stream_closed(
    gateway: Gateway,
) -> None:
    """§18.3: a stream that cannot be framed is closed — after what was framed before the fault
    in the same read is handled (it was dropped with the rest of the read)."""
    reader, writer = await asyncio.open_connection(*gateway.server.bound["TCP"])
    try:
        call_id = new_call_id()
        options = Uac("TCP", gateway.server.bound["TCP"], local=writer.get_extra_info("sockname"))
        raw = options.request("OPTIONS", "alice", call_id=call_id, cseq=1)
        writer.write(raw + b"OPTIONS sip:alice@x SIP/2.0\r\nVia: SIP/2.0/TCP h\r\n\r\n")
        status_line = await asyncio.wait_for(reader.readline(), 5)
        assert status_line == b"SIP/2.0 200 OK\r\n"
        await asyncio.wait_for(reader.read(), 5)  # then the gateway closes the connection
        assert reader.at_eof()
    finally:
        writer.close()
    assert gateway.server.core.counters["stream_framing_errors"] == 1


async def test_a_tcp_ping_gets_a_pong_and_a_pong_nothing(gateway: Gateway, uac: Uac) -> None:
    """RFC 5626 §3.5.1 on a connection: a double-CRLF ping is answered with a single-CRLF pong
    (a client keeping its flow alive sees that it is), a pong is answered with nothing, and the
    stream stays framed. On UDP a CRLF keep-alive is counted as one, not as a parse error."""
    reader, writer = await asyncio.open_connection(*gateway.server.bound["TCP"])
    try:
        writer.write(b"\r\n\r\n")
        assert await asyncio.wait_for(reader.readexactly(2), 5) == b"\r\n"
        writer.write(b"\r\n")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), 0.3)
        call_id = new_call_id()
        options = Uac("TCP", gateway.server.bound["TCP"], local=writer.get_extra_info("sockname"))
        writer.write(options.request("OPTIONS", "alice", call_id=call_id, cseq=1))
        status_line = await asyncio.wait_for(reader.readline(), 5)
        assert status_line == b"SIP/2.0 200 OK\r\n"
    finally:
        writer.close()
    counters = gateway.server.core.counters
    errors, keepalives = counters["parse_errors"], counters["keepalives"]
    uac.send(b"\r\n\r\n")
    await uac.answered_options()  # after the keep-alive: it has been read
    assert (counters["parse_errors"], counters["keepalives"]) == (errors, keepalives + 1)


async def test_a_tcp_ping_split_across_reads_gets_one_pong(gateway: Gateway) -> None:
    """RFC 5626 §4.4.1: a double-CRLF ping TCP delivers in two reads is still one ping, owed
    one single-CRLF pong. It got none: CRLFs were never paired across reads, which only matters
    on connections we ping ourselves (a registrar's single-CRLF pongs, one a read), never on one
    accepted from a client."""
    reader, writer = await asyncio.open_connection(*gateway.server.bound["TCP"])
    try:
        local = writer.get_extra_info("sockname")
        conns = gateway.server.connections.values()
        await until(lambda: any(c.peer == local for c in conns))
        (conn,) = [c for c in conns if c.peer == local]
        writer.write(b"\r\n")
        await until(lambda: conn.framer.keepalives == 1)  # read on its own
        writer.write(b"\r\n")
        assert await asyncio.wait_for(reader.readexactly(2), 5) == b"\r\n"  # the pong
        call_id = new_call_id()
        options = Uac("TCP", gateway.server.bound["TCP"], local=local)
        writer.write(options.request("OPTIONS", "alice", call_id=call_id, cseq=1))
        status_line = await asyncio.wait_for(reader.readline(), 5)
        assert status_line == b"SIP/2.0 200 OK\r\n"  # one pong only, nothing before this
        assert conn.framer.pings == 1
    finally:
        writer.close()


async def test_unknown_user_is_challenged_like_a_known_one(
    gateway: Gateway, uac: Uac, agent: FakeTelepathAgent
) -> None:
    shapes = []
    for user in ("alice", "mallory"):
        leg = CallLeg(uac, user)
        r401 = await leg.challenge(MEDIA_PORT)
        shapes.append(_shape(r401))
        start = len(uac.received)
        uac.send(leg.authenticated_invite("wrong-password", MEDIA_PORT))
        forbidden = await uac.response(403, leg.call_id, after=start)
        shapes.append(_shape(forbidden))
        uac.send(leg.build("ACK", to_tag=forbidden.to.tag, branch=forbidden.top_via.branch))
    assert shapes[0] == shapes[2]  # the 401s
    assert shapes[1] == shapes[3]  # the 403s
    assert len(agent.handshakes) == 0


# ---------------------------------------------------------------- helpers


def _finals(uac: Uac, call_id: str, status: int) -> list[bytes]:
    return [
        r.raw
        for r in uac.responses(call_id, "INVITE")
        if isinstance(r.message, Response) and r.message.status == status
    ]


def _oks(uac: Uac, call_id: str) -> list[bytes]:
    return _finals(uac, call_id, 200)


def _shape(resp: Response) -> tuple[object, ...]:
    """Status, header names and challenge parameters without per-request values."""
    names = tuple(name for name, _ in resp.headers)
    challenges = tuple(
        tuple(sorted((k, v) for k, v in challenge_params(c).items() if k != "nonce"))
        for c in resp.headers.get_all("WWW-Authenticate")
    )
    return resp.status, resp.reason, names, challenges


async def _call_up(uac: Uac) -> CallLeg:
    leg = CallLeg(uac, "alice")
    await leg.challenge(MEDIA_PORT)
    await leg.answered(leg.authenticated_invite(PASSWORD, MEDIA_PORT))
    uac.send(leg.ack())
    return leg


async def test_no_common_codec_is_488_with_warning_and_releases_the_port(
    gateway: Gateway, uac: Uac, agent: FakeTelepathAgent
) -> None:
    leg = CallLeg(uac, "alice")
    await leg.challenge(MEDIA_PORT)
    raw = leg.authenticated_invite(PASSWORD, MEDIA_PORT)
    head, _, body = raw.partition(b"\r\n\r\n")
    g729 = (
        body.split(b"m=audio")[0]
        + f"m=audio {MEDIA_PORT} RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n".encode()
    )
    head = re.sub(rb"Content-Length: \d+", f"Content-Length: {len(g729)}".encode(), head)
    start = len(uac.received)
    uac.send(head + b"\r\n\r\n" + g729)
    resp = await uac.response(488, leg.call_id, after=start)
    assert (resp.headers.get("Warning") or "").startswith("305 ")
    assert gateway.manager.ports.in_use == 0  # the RTP pair leased for the call went back
    assert len(agent.handshakes) == 0  # the agent was never dialled


async def test_a_media_address_that_is_a_name_is_488_with_warning_301(
    gateway: Gateway, uac: Uac, agent: FakeTelepathAgent
) -> None:
    """A name in c= (RFC 4566 allows an FQDN; we do not resolve one): refused before the call
    exists, 488 with RFC 3261 §20.43 warn-code 301. Answered, under uvloop every send to it
    raised: no media timeout, and a call that never ended. A re-INVITE moving an answered call
    there gets the same 488, and the call keeps its media (RFC 3261 §14.2)."""
    named = sdp_offer(MEDIA_PORT).replace(b"c=IN IP4 127.0.0.1", b"c=IN IP4 media.example.com")
    leg = CallLeg(uac, "alice")
    await leg.challenge(MEDIA_PORT)
    start = len(uac.received)
    uac.send(leg.authenticated_invite(PASSWORD, MEDIA_PORT, body=named))
    resp = await uac.response(488, leg.call_id, after=start)
    assert (resp.headers.get("Warning") or "").startswith(
        '301 telepath "Incompatible network address formats'
    )
    assert gateway.manager.ports.in_use == 0
    assert len(agent.handshakes) == 0

    leg, call = await answered_call(gateway, uac)
    leg.cseq += 1
    start = len(uac.received)
    branch = new_branch()
    uac.send(leg.build("INVITE", branch=branch, body=named))
    refused = await uac.response(488, leg.call_id, method="INVITE", after=start)
    assert (refused.headers.get("Warning") or "").startswith("301 ")
    uac.send(leg.build("ACK", branch=branch, cseq_method="ACK"))  # §17.1.1.3
    assert call.media.remote == ("127.0.0.1", MEDIA_PORT)
    assert gateway.manager.active_calls == 1
    await leg.bye()


async def test_an_ipv6_media_address_on_ipv4_rtp_latches_onto_the_caller_s_rtp(
    gateway: Gateway, uac: Uac, agent: FakeTelepathAgent, phone: Phone
) -> None:
    """What linphone does (it gives its IPv6 address in c= with IPv6 off): an IPv6 c= to a
    gateway whose RTP sockets are IPv4. Nothing is sent there — under uvloop every send raised
    — and the caller's IPv4 RTP latches the media, both ways."""
    leg = CallLeg(uac, "alice")
    await leg.challenge(phone.port)
    ipv6 = sdp_offer(phone.port).replace(b"c=IN IP4 127.0.0.1", b"c=IN IP6 ::1")
    await leg.answered(leg.authenticated_invite(PASSWORD, phone.port, body=ipv6))
    uac.send(leg.ack())
    await until(lambda: bool(gateway.manager.calls))
    (call,) = gateway.manager.calls.values()
    assert call.media.remote is None
    phone.start_tone(("127.0.0.1", call.media.local_port), 440, 1.0)
    await until(lambda: call.media.remote == ("127.0.0.1", phone.port))
    await until(lambda: len(phone.received) > 3)  # the agent's audio reaches the caller
    await leg.bye()


async def test_offerless_reinvite_answer_in_ack_moves_and_holds_the_media(
    gateway: Gateway, uac: Uac, agent: FakeTelepathAgent
) -> None:
    """§14.2: a body-less re-INVITE gets our last SDP as an offer in the 200 OK; the caller's
    answer in the ACK is applied (new RTP port, on hold). A body-less UPDATE gets a 200
    without SDP (RFC 3311 §5.2: no ACK could carry an answer)."""
    leg = CallLeg(uac, "alice")
    await leg.challenge(MEDIA_PORT)
    await leg.answered(leg.authenticated_invite(PASSWORD, MEDIA_PORT))
    uac.send(leg.ack())
    await until(lambda: bool(gateway.manager.calls))
    (call,) = gateway.manager.calls.values()
    assert call.media.remote == ("127.0.0.1", MEDIA_PORT)

    leg.cseq += 1
    start = len(uac.received)
    uac.send(leg.build("INVITE", body=b""))
    ok = await uac.response(200, leg.call_id, method="INVITE", after=start)
    assert ok.content_type == "application/sdp" and b"m=audio" in ok.body
    uac.send(leg.build("ACK", cseq_method="ACK", body=sdp_offer(MEDIA_PORT + 2, "sendonly")))
    await until(lambda: call.negotiated.on_hold)
    assert call.media.remote == ("127.0.0.1", MEDIA_PORT + 2)

    leg.cseq += 1
    start = len(uac.received)
    uac.send(leg.build("UPDATE", body=b""))
    updated = await uac.response(200, leg.call_id, method="UPDATE", after=start)
    assert not updated.body
    assert gateway.manager.active_calls == 1
    await leg.bye()


def _origin_version(sdp: bytes) -> int:
    """The session version of an SDP's ``o=`` line (RFC 4566 §5.2)."""
    match = re.search(rb"^o=\S+ \S+ ([0-9]+) ", sdp, re.M)
    assert match is not None, sdp
    return int(match.group(1))


async def test_an_offerless_reinvite_after_a_hold_offers_sendrecv_and_resumes_the_media(
    gateway: Gateway, uac: Uac, agent: FakeTelepathAgent, phone: Phone
) -> None:
    """The caller holds us (a=sendonly, our answer a=recvonly), then resumes with a re-INVITE
    without SDP, as PBXs and B2BUAs do. Our 200's offer says what WE want, a=sendrecv, with the
    next o= version (RFC 6337 §5.1, RFC 3264 §8) — it repeated our a=recvonly answer, to which
    the only valid answers are sendonly/inactive (§6.1): the agent went unheard for good. The
    caller's sendrecv answer in the ACK brings the agent's audio back to it."""
    leg = CallLeg(uac, "alice")
    await leg.challenge(phone.port)
    await leg.answered(leg.authenticated_invite(PASSWORD, phone.port))
    uac.send(leg.ack())
    await until(lambda: bool(gateway.manager.calls))
    (call,) = gateway.manager.calls.values()
    await until(lambda: len(phone.received) > 3)  # the agent's (silent) audio reaches us

    held = await reoffer(leg, sdp_offer(phone.port, "sendonly"))
    assert b"a=recvonly" in held
    await until(lambda: call.negotiated.on_hold)
    await asyncio.sleep(0.1)
    quiet = len(phone.received)
    await asyncio.sleep(0.2)  # ten packet times
    assert len(phone.received) == quiet  # held: nothing sent

    leg.cseq += 1
    start = len(uac.received)
    uac.send(leg.build("INVITE", body=b""))
    ok = await uac.response(200, leg.call_id, method="INVITE", after=start)
    assert b"a=sendrecv" in ok.body and b"a=recvonly" not in ok.body, ok.body
    assert _origin_version(ok.body) == _origin_version(held) + 1  # it differs: RFC 3264 §8
    uac.send(leg.build("ACK", cseq_method="ACK", body=sdp_offer(phone.port, "sendrecv")))
    await until(lambda: not call.negotiated.on_hold)
    assert call.negotiated.direction == "sendrecv"
    await until(lambda: len(phone.received) > quiet + 3)  # the agent is heard again
    await leg.bye()


async def answered_call(gateway: Gateway, uac: Uac) -> tuple[CallLeg, Call]:
    """A call to alice answered and ACKed, and the gateway's side of it."""
    leg = CallLeg(uac, "alice")
    await leg.challenge(MEDIA_PORT)
    await leg.answered(leg.authenticated_invite(PASSWORD, MEDIA_PORT))
    uac.send(leg.ack())
    await until(lambda: bool(gateway.manager.calls))
    (call,) = gateway.manager.calls.values()
    return leg, call


async def reoffer(leg: CallLeg, body: bytes) -> bytes:
    """A re-INVITE in ``leg`` with ``body``, its 200 ACKed; the 200's body."""
    leg.cseq += 1
    start = len(leg.uac.received)
    leg.uac.send(leg.build("INVITE", body=body))
    ok = await leg.uac.response(200, leg.call_id, method="INVITE", after=start)
    leg.uac.send(leg.build("ACK", cseq_method="ACK"))
    return ok.body


async def test_an_old_style_hold_keeps_the_media_address_and_a_new_dtmf_type_is_followed(
    gateway: Gateway, uac: Uac, agent: FakeTelepathAgent
) -> None:
    """A re-INVITE with c=0.0.0.0 (RFC 3264 §8.4) holds the call without making 0.0.0.0 its
    media address (RTP latching stayed open to anyone for the hold, and RTCP went there);
    a re-offer that moves telephone-event to another payload type is applied, not only
    answered (DTMF on the new type was dropped as unnegotiated)."""
    leg, call = await answered_call(gateway, uac)

    await reoffer(leg, sdp_offer(MEDIA_PORT).replace(b"c=IN IP4 127.0.0.1", b"c=IN IP4 0.0.0.0"))
    await until(lambda: call.negotiated.on_hold)
    assert call.media.remote == ("127.0.0.1", MEDIA_PORT)
    moved = sdp_offer(MEDIA_PORT).replace(b"101", b"96")
    await reoffer(leg, moved)
    await until(lambda: not call.negotiated.on_hold)
    assert call.negotiated.dtmf_payload_type == 96
    assert call.media.dtmf_payload_type == 96
    assert call.media.remote == ("127.0.0.1", MEDIA_PORT)
    await leg.bye()


async def test_rtcp_goes_to_the_address_an_offer_s_a_rtcp_names(
    gateway: Gateway, uac: Uac, agent: FakeTelepathAgent
) -> None:
    """RFC 3605 §2.1: a=rtcp may give the RTCP address with its port, in an offer and a
    re-offer; ``IN IP4 0.0.0.0`` there keeps the RTP address. Only the port was read, and
    RTCP went to it on the RTP address."""

    def offer(rtcp: str) -> bytes:
        return sdp_offer(MEDIA_PORT) + f"a=rtcp:{rtcp}\r\n".encode()

    leg = CallLeg(uac, "alice")
    await leg.challenge(MEDIA_PORT)
    body = offer("40011 IN IP4 127.0.0.6")
    await leg.answered(leg.authenticated_invite(PASSWORD, MEDIA_PORT, body=body))
    uac.send(leg.ack())
    await until(lambda: bool(gateway.manager.calls))
    (call,) = gateway.manager.calls.values()
    assert call.media._rtcp_dest == ("127.0.0.6", 40011)
    await reoffer(leg, offer("40013 IN IP4 127.0.0.7"))
    await until(lambda: call.media._rtcp_dest == ("127.0.0.7", 40013))
    await reoffer(leg, offer("40015 IN IP4 0.0.0.0"))
    await until(lambda: call.media._rtcp_dest == ("127.0.0.1", 40015))
    assert call.media.remote == ("127.0.0.1", MEDIA_PORT)
    await leg.bye()


async def test_a_reinvite_disabling_audio_is_answered_with_port_zero_and_holds_the_call(
    gateway: Gateway, uac: Uac, agent: FakeTelepathAgent
) -> None:
    """RFC 3264 §8.2: a re-offer with m=audio 0 disables the stream; the answer has port 0 for
    it and the call goes on, its media held (it was answered 488 as "no active audio stream").
    A later re-offer with a port enables it again."""
    leg, call = await answered_call(gateway, uac)

    disabled = await reoffer(leg, sdp_offer(MEDIA_PORT).replace(b"m=audio 40000", b"m=audio 0"))
    assert [line for line in disabled.split(b"\r\n") if line.startswith(b"m=")] == [
        b"m=audio 0 RTP/AVP 0 8 101"
    ]
    assert call.negotiated.remote_port == 0
    sent = call.media.stats().packets_sent
    await asyncio.sleep(0.2)  # ten packet times
    assert call.media.stats().packets_sent == sent  # held: nothing sent
    assert gateway.manager.active_calls == 1

    resumed = await reoffer(leg, sdp_offer(MEDIA_PORT + 2))
    (m_line,) = [line for line in resumed.split(b"\r\n") if line.startswith(b"m=")]
    assert m_line.startswith(f"m=audio {call.media.local_port} ".encode())
    assert call.media.remote == ("127.0.0.1", MEDIA_PORT + 2)
    await until(lambda: call.media.stats().packets_sent > sent + 2)  # sending again
    assert gateway.manager.active_calls == 1
    await leg.bye()


async def test_after_audio_is_disabled_an_offerless_reinvite_gets_a_live_offer_and_resumes(
    gateway: Gateway, uac: Uac, agent: FakeTelepathAgent, phone: Phone
) -> None:
    """The caller disables the audio (m=audio 0, RFC 3264 §8.2), then resumes with a re-INVITE
    without SDP, as PBXs and B2BUAs do (RFC 3261 §14.2). Our 2xx repeated the port-0 answer as
    its offer, so the caller's answer had to keep port 0 too (§6) and the audio never came
    back. It now offers the call's stream live again in the disabled slot (§8.1): our RTP port,
    the call's codec and telephone-event, sendrecv; the caller's answer in the ACK gives a new
    port, and the agent's audio flows there."""
    leg, call = await answered_call(gateway, uac)  # its media to MEDIA_PORT, where none listens

    disabled = await reoffer(leg, sdp_offer(MEDIA_PORT).replace(b"m=audio 40000", b"m=audio 0"))
    assert b"m=audio 0 " in disabled
    await until(lambda: call.negotiated.remote_port == 0)

    leg.cseq += 1
    start = len(uac.received)
    uac.send(leg.build("INVITE", body=b""))
    ok = await uac.response(200, leg.call_id, method="INVITE", after=start)
    (m_line,) = [line for line in ok.body.split(b"\r\n") if line.startswith(b"m=")]
    assert m_line == f"m=audio {call.media.local_port} RTP/AVP 0 101".encode(), ok.body
    assert b"a=sendrecv" in ok.body
    assert _origin_version(ok.body) == _origin_version(disabled) + 1  # RFC 3264 §8
    uac.send(leg.build("ACK", cseq_method="ACK", body=sdp_offer(phone.port)))
    await until(lambda: call.media.remote == ("127.0.0.1", phone.port))
    assert call.negotiated.direction == "sendrecv" and not call.negotiated.on_hold
    await until(lambda: len(phone.received) > 3)  # the agent is heard again, at the new port
    assert gateway.manager.active_calls == 1
    await leg.bye()
