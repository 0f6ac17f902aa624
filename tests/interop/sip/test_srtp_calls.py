"""SRTP calls (SDES, RFC 4568) placed by a raw TLS client whose media is a real UDP socket with
its own libsrtp context: a tone goes to an echo agent and comes back through both of the
gateway's SRTP directions; re-INVITEs re-key, and may not drop SRTP or change its suite (an
AES-GCM call, RFC 7714, is refreshed and re-offered in its own suite);
``TELEPATH_SIP_SRTP=require`` refuses plain RTP and offers SRTP itself."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from telepath.cli.gateway import Gateway
from telepath.rtp import g711
from telepath.rtp.packet import RtpPacket
from telepath.rtp.srtp import SrtpContext
from telepath.rtp.srtp_keys import SUITES, SrtpKeys
from telepath.sdp import (
    MediaSecurity,
    NegotiatedMedia,
    SessionDescription,
    create_offer,
    negotiate_answer,
    negotiate_offer_answer,
    parse,
)
from telepath.sdp.crypto import format_crypto
from telepath.sip.message import Response
from telepath.testing.fake_custom import FakeTelepathAgent
from tests.certs import tls_listener
from tests.integration.conftest import Api
from tests.integration.media.peer import UdpPeer, rtp_stream
from tests.interop.calls.conftest import create_trunk
from tests.interop.sip.test_tls_sha256 import client_context
from tests.interop.sip.uac import CallLeg, Message, Uac, sdp_offer
from tests.interop.sip.waits import ended_records, until
from tests.unit.rtp.audio import dominant_hz, tone

pytestmark = pytest.mark.interop

PASSWORD = "srtp-calls-pass"


@pytest.fixture
def srtp_mode() -> str:
    return "allow"


@pytest.fixture
def settings_overrides(
    settings_overrides: dict[str, Any], tmp_path: Path, srtp_mode: str
) -> dict[str, Any]:
    return {
        **settings_overrides,
        **tls_listener(tmp_path),
        "sip_srtp": srtp_mode,
    }


@pytest.fixture
async def agent(api: Api) -> AsyncIterator[FakeTelepathAgent]:
    async with FakeTelepathAgent(agent="echo") as fake:
        await create_trunk(api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=fake.url)
        yield fake


@pytest.fixture
async def tls_uac(api: Api, gateway: Gateway) -> AsyncIterator[Uac]:
    cert = api.state.settings.sip_tls_cert
    assert cert is not None
    client = await Uac.open("TLS", gateway.server.bound["TLS"], client_context(cert))
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def peer() -> AsyncIterator[UdpPeer]:
    p = await UdpPeer.bind()
    try:
        yield p
    finally:
        p.close()


def offer(
    port: int, key: bytes | None, version: int = 1, suite: str = "AES_CM_128_HMAC_SHA1_80"
) -> SessionDescription:
    return create_offer(
        local_address="127.0.0.1",
        local_port=port,
        session_id=4242,
        session_version=version,
        preference=("PCMU",),
        srtp_key=key,
        srtp_suite=SUITES[suite],
    )


async def reinvite(leg: CallLeg, body: bytes, status: int = 200) -> Response:
    leg.cseq += 1
    start = len(leg.uac.received)
    leg.uac.send(leg.build("INVITE", body=body))
    response = await leg.uac.response(status, leg.call_id, method="INVITE", after=start)
    if status == 200:
        leg.uac.send(leg.ack())
    return response


def gateway_media(negotiated: NegotiatedMedia) -> tuple[str, int]:
    return negotiated.remote_address, negotiated.remote_port


async def echo_heard(peer: UdpPeer, ours: SrtpContext, target: tuple[str, int], seq: int) -> float:
    """Send 1 s of a 1 kHz tone as SRTP, paced; the frequency of what comes back, decrypted."""
    frames = g711.pcm16_to_ulaw(tone(1000, 8000, 1.0))
    start = len(peer.recorder.received)
    for i, packet in enumerate(
        rtp_stream([frames[i : i + 160] for i in range(0, len(frames), 160)], seq=seq)
    ):
        peer.send(ours.protect(packet), target)
        if i % 5 == 4:
            await asyncio.sleep(0.1)
    await asyncio.sleep(0.6)
    payloads = [
        RtpPacket.parse(ours.unprotect(data)).payload for data, _ in peer.recorder.received[start:]
    ]
    audio = [p for p in payloads if p != b"\xff" * 160]
    assert len(audio) >= 20, len(audio)
    return dominant_hz(b"".join(g711.ulaw_to_pcm16(a) for a in audio), 8000)


async def srtp_call(
    uac: Uac, peer: UdpPeer, key: bytes, suite: str = "AES_CM_128_HMAC_SHA1_80"
) -> tuple[CallLeg, SessionDescription, NegotiatedMedia]:
    leg = CallLeg(uac, "alice")
    sent = offer(peer.address[1], key, suite=suite)
    await leg.challenge(None, body=sent.to_bytes())
    ok = await leg.answered(leg.authenticated_invite(PASSWORD, None, body=sent.to_bytes()))
    uac.send(leg.ack())
    answer = parse(ok.body)
    return leg, answer, negotiate_offer_answer(sent, answer)


async def test_srtp_call_both_ways_rekey_and_refusals(
    api: Api, gateway: Gateway, agent: FakeTelepathAgent, tls_uac: Uac, peer: UdpPeer
) -> None:
    first = os.urandom(30)
    leg, answer, negotiated = await srtp_call(tls_uac, peer, first)
    assert answer.media[0].proto == "RTP/SAVP"
    assert negotiated.srtp is not None and negotiated.srtp.local_key == first
    gateway_key = negotiated.srtp.remote_key
    await until(lambda: bool(gateway.manager.calls))
    (call,) = gateway.manager.calls.values()
    assert call.media.srtp is not None and call.media.srtp.remote_key == first

    ours = SrtpContext(negotiated.srtp)
    target = gateway_media(negotiated)
    assert await echo_heard(peer, ours, target, seq=100) == pytest.approx(1000, abs=15)

    # A re-INVITE with a new key of ours (RFC 4568 §7.1.4): the gateway keeps its own key.
    second = os.urandom(30)
    ok = await reinvite(leg, offer(peer.address[1], second, version=2).to_bytes())
    rekeyed = negotiate_offer_answer(offer(peer.address[1], second, 2), parse(ok.body))
    assert rekeyed.srtp is not None and rekeyed.srtp.remote_key == gateway_key
    await until(lambda: call.media.srtp is not None and call.media.srtp.remote_key == second)
    before = call.media.stats().unauthenticated
    peer.send(ours.protect(rtp_stream([b"\xff" * 160], seq=200)[0]), target)
    await until(lambda: call.media.stats().unauthenticated == before + 1)  # the old key
    fresh = SrtpContext(rekeyed.srtp)
    assert await echo_heard(peer, fresh, target, seq=300) == pytest.approx(1000, abs=15)

    # No downgrade to plain RTP mid-call, and no change of suite (our key stays).
    refused = await reinvite(leg, sdp_offer(peer.address[1]), status=488)
    assert (refused.headers.get("Warning") or "").startswith("302 ")
    other_suite = offer(peer.address[1], second, 3).to_bytes().replace(b"_SHA1_80", b"_SHA1_32")
    refused = await reinvite(leg, other_suite, status=488)
    assert "suite" in (refused.headers.get("Warning") or "")
    assert call.media.srtp is not None and call.media.srtp.suite.name.endswith("_80")
    dropped = call.media.stats().unauthenticated
    await leg.bye()
    (record,) = await ended_records(api, gateway)
    assert record["disconnect_reason"] == "caller_hangup"
    # what the call's media dropped reaches /metrics as it ends
    metrics = api.state.metrics.render().decode()
    assert f'telepath_rtp_packets_dropped_total{{reason="unauthenticated"}} {dropped}.0' in metrics
    trace = (await api.get(f"/v1/calls/{record['id']}")).json()["sip_trace"]
    assert "inline:<redacted>" in trace
    for key in (first, second, gateway_key):
        assert base64.b64encode(key).decode() not in trace


async def test_gcm_call_is_refreshed_and_reoffered_in_its_own_suite(
    api: Api, gateway: Gateway, agent: FakeTelepathAgent, tls_uac: Uac, peer: UdpPeer
) -> None:
    mine = os.urandom(44)
    leg, answer, negotiated = await srtp_call(tls_uac, peer, mine, suite="AEAD_AES_256_GCM")
    assert negotiated.srtp is not None and negotiated.srtp.suite.name == "AEAD_AES_256_GCM"
    gateway_key = negotiated.srtp.remote_key
    assert len(gateway_key) == 44
    ours, target = SrtpContext(negotiated.srtp), gateway_media(negotiated)
    assert await echo_heard(peer, ours, target, seq=100) == pytest.approx(1000, abs=15)

    # An offerless re-INVITE (a session refresh, RFC 3261 §14.2): the 2xx offers the call's
    # suite with the gateway's key, and our answer in the ACK keeps the call as it was.
    leg.cseq += 1
    start = len(tls_uac.received)
    tls_uac.send(leg.build("INVITE", body=b""))
    ok = await tls_uac.response(200, leg.call_id, method="INVITE", after=start)
    (crypto,) = parse(ok.body).media[0].attribute_values("crypto")
    assert crypto == format_crypto(1, SUITES["AEAD_AES_256_GCM"], gateway_key)
    reply, _ = negotiate_answer(
        parse(ok.body),
        local_address="127.0.0.1",
        local_port=peer.address[1],
        session_id=4242,
        session_version=2,
        security=MediaSecurity(key=mine),
    )
    tls_uac.send(leg.build("ACK", cseq_method="ACK", body=reply.to_bytes()))

    # A re-offer listing another suite first is answered in the call's, with the same key.
    two = offer(peer.address[1], os.urandom(30), version=3).to_bytes().decode()
    gcm = format_crypto(2, SUITES["AEAD_AES_256_GCM"], mine)
    two += f"a=crypto:{gcm}\r\n"
    assert two.count("a=crypto:") == 2 and two.index("a=crypto:1") < two.index("a=crypto:2")
    ok = await reinvite(leg, two.encode())
    (crypto,) = parse(ok.body).media[0].attribute_values("crypto")
    assert crypto == format_crypto(2, SUITES["AEAD_AES_256_GCM"], gateway_key)
    again = SrtpContext(SrtpKeys(SUITES["AEAD_AES_256_GCM"], 2, mine, gateway_key))
    assert await echo_heard(peer, again, target, seq=400) == pytest.approx(1000, abs=15)
    await leg.bye()
    (record,) = await ended_records(api, gateway)
    assert record["disconnect_reason"] == "caller_hangup"


async def test_plain_rtp_call_over_tls_stays_plain_and_cannot_upgrade(
    api: Api, gateway: Gateway, agent: FakeTelepathAgent, tls_uac: Uac, peer: UdpPeer
) -> None:
    leg = CallLeg(tls_uac, "alice")
    await leg.challenge(peer.address[1])
    ok = await leg.answered(leg.authenticated_invite(PASSWORD, peer.address[1]))
    tls_uac.send(leg.ack())
    assert b"RTP/AVP" in ok.body and b"a=crypto" not in ok.body
    refused = await reinvite(leg, offer(peer.address[1], os.urandom(30), 2).to_bytes(), 488)
    assert "without SRTP" in (refused.headers.get("Warning") or "")
    await leg.bye()
    await ended_records(api, gateway)


@pytest.mark.parametrize("srtp_mode", ["require"])
async def test_required_srtp_refuses_plain_and_offers_srtp_itself(
    api: Api, gateway: Gateway, agent: FakeTelepathAgent, tls_uac: Uac, peer: UdpPeer
) -> None:
    leg = CallLeg(tls_uac, "alice")
    await leg.challenge(peer.address[1])
    start = len(tls_uac.received)
    tls_uac.send(leg.authenticated_invite(PASSWORD, peer.address[1]))
    refused = await tls_uac.response(488, leg.call_id, after=start)
    assert "required" in (refused.headers.get("Warning") or "")

    # A delayed offer over TLS: the gateway offers RTP/SAVP in the 200, we answer in the ACK.
    leg = CallLeg(tls_uac, "alice")
    await leg.challenge(None)
    ok = await leg.answered(leg.authenticated_invite(PASSWORD, None))
    gateway_offer = parse(ok.body)
    assert gateway_offer.media[0].proto == "RTP/SAVP"
    answer, ours = negotiate_answer(
        gateway_offer,
        local_address="127.0.0.1",
        local_port=peer.address[1],
        session_id=9,
        session_version=1,
        preference=("PCMU",),
        security=MediaSecurity(key=os.urandom(30)),
    )
    tls_uac.send(leg.build("ACK", cseq_method="ACK", body=answer.to_bytes()))
    assert ours.srtp is not None
    heard = await echo_heard(peer, SrtpContext(ours.srtp), gateway_media(ours), seq=10)
    assert heard == pytest.approx(1000, abs=15)
    await leg.bye()
    await ended_records(api, gateway)

    # Over UDP nothing qualifies: keys are not taken there, and plain RTP is refused.
    udp = await Uac.open("UDP", gateway.server.bound["UDP"])
    try:
        for body in (None, offer(peer.address[1], os.urandom(30)).to_bytes()):
            leg = CallLeg(udp, "alice")
            await leg.challenge(None, body=body)
            start = len(udp.received)
            udp.send(leg.authenticated_invite(PASSWORD, None, body=body))
            refused = await udp.response(488, leg.call_id, after=start)
            assert "TLS" in (refused.headers.get("Warning") or "")
    finally:
        await udp.close()


async def test_a_trunks_media_encryption_overrides_the_installations(
    api: Api, gateway: Gateway, agent: FakeTelepathAgent, tls_uac: Uac, peer: UdpPeer
) -> None:
    """The installation allows SRTP (the default); one trunk requires it, another disables it."""

    async def final_status(user: str, body: bytes) -> tuple[CallLeg, Response]:
        leg = CallLeg(tls_uac, user)
        await leg.challenge(None, body=body)
        start = len(tls_uac.received)
        tls_uac.send(leg.authenticated_invite(PASSWORD, None, body=body))

        def final(message: Message) -> bool:
            return (
                isinstance(message, Response)
                and message.call_id == leg.call_id
                and (message.status >= 200)
            )

        response = (await tls_uac.wait_for(final, after=start)).message
        assert isinstance(response, Response)
        return leg, response

    for user, mode in (("strict", "required"), ("plain", "disabled")):
        await create_trunk(
            api,
            user,
            PASSWORD,
            ai_provider="custom",
            custom_endpoint=agent.url,
            media_encryption=mode,
        )
    plain = sdp_offer(peer.address[1])
    secured = offer(peer.address[1], os.urandom(30)).to_bytes()
    _, refused = await final_status("strict", plain)
    assert refused.status == 488 and "required" in (refused.headers.get("Warning") or "")
    _, refused = await final_status("plain", secured)
    assert refused.status == 488
    assert "turned off for this trunk" in (refused.headers.get("Warning") or "")
    # what each does take (and the installation's default for a trunk that does not say)
    for user, body, proto in (
        ("strict", secured, "RTP/SAVP"),
        ("plain", plain, "RTP/AVP"),
        ("alice", secured, "RTP/SAVP"),
    ):
        leg, ok = await final_status(user, body)
        assert ok.status == 200 and parse(ok.body).media[0].proto == proto
        leg.to_tag = ok.to.tag
        tls_uac.send(leg.ack())
        await leg.bye()
    await ended_records(api, gateway, count=3)


async def test_a_disabled_srtp_stream_comes_back_through_our_offer_with_the_call_s_key(
    api: Api, gateway: Gateway, agent: FakeTelepathAgent, tls_uac: Uac, peer: UdpPeer
) -> None:
    """The caller disables the audio (m=audio 0, RFC 3264 §8.2), then sends a re-INVITE
    without SDP: the 2xx offers the stream live again in its slot (§8.1), RTP/SAVP with the
    call's suite and the gateway's key (RFC 4568 §7.1.4), and the caller's answer in the ACK
    resumes the media, encrypted both ways. It offered port 0 again, and the audio was lost."""
    mine = os.urandom(30)
    leg, _, negotiated = await srtp_call(tls_uac, peer, mine)
    assert negotiated.srtp is not None
    gateway_key = negotiated.srtp.remote_key
    await until(lambda: bool(gateway.manager.calls))
    (call,) = gateway.manager.calls.values()

    port = peer.address[1]
    disabling = (
        offer(port, mine, version=2).to_bytes().replace(f"m=audio {port} ".encode(), b"m=audio 0 ")
    )
    ok = await reinvite(leg, disabling)
    assert [m.port for m in parse(ok.body).media] == [0]
    await until(lambda: call.negotiated.remote_port == 0)

    leg.cseq += 1
    start = len(tls_uac.received)
    tls_uac.send(leg.build("INVITE", body=b""))
    ok = await tls_uac.response(200, leg.call_id, method="INVITE", after=start)
    (audio,) = parse(ok.body).media
    assert (audio.port, audio.proto) == (call.media.local_port, "RTP/SAVP")
    assert audio.attribute_values("crypto") == [
        format_crypto(1, SUITES["AES_CM_128_HMAC_SHA1_80"], gateway_key)
    ]
    reply, resumed = negotiate_answer(
        parse(ok.body),
        local_address="127.0.0.1",
        local_port=port,
        session_id=4242,
        session_version=3,
        security=MediaSecurity(key=mine),
    )
    tls_uac.send(leg.build("ACK", cseq_method="ACK", body=reply.to_bytes()))
    await until(lambda: call.negotiated.remote_port == port)
    assert resumed.srtp is not None and resumed.srtp.remote_key == gateway_key
    ours = SrtpContext(resumed.srtp)
    heard = await echo_heard(peer, ours, gateway_media(negotiated), seq=100)
    assert heard == pytest.approx(1000, abs=15)
    await leg.bye()
