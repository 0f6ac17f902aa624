"""MediaSession with SRTP (RFC 3711) over real loopback UDP sockets: a peer holding the other
end's keys hears our tone and is heard; forged, replayed and plain packets are dropped before
they can latch; RTCP is SRTCP both ways; a re-INVITE's new keys take over."""

from __future__ import annotations

import os

import pytest

from telepath.rtp import g711
from telepath.rtp.codecs import CodecSpec
from telepath.rtp.errors import RtpError
from telepath.rtp.packet import RtpPacket
from telepath.rtp.rtcp import RtcpReceiverReport, RtcpReportBlock, parse_compound
from telepath.rtp.srtp import SrtpContext
from telepath.rtp.srtp_keys import SUITES, SrtpKeys
from telepath.transport.media_session import AudioReceived, MediaSession
from telepath.transport.ports import RtpPortAllocator
from tests.unit.rtp.audio import dominant_hz

from .peer import UdpPeer, rtp_stream, until
from .test_media_session import collect, stun_answer, ulaw_frames

pytestmark = pytest.mark.integration

SUITE = SUITES["AES_CM_128_HMAC_SHA1_80"]


def keys() -> tuple[SrtpKeys, SrtpContext]:
    """Our keys for the session, and the peer's context (the same keys, seen from its side)."""
    ours, theirs = os.urandom(30), os.urandom(30)
    return SrtpKeys(SUITE, 1, ours, theirs), SrtpContext(SrtpKeys(SUITE, 1, theirs, ours))


async def test_srtp_tone_both_ways(allocator: RtpPortAllocator) -> None:
    ours, peer_srtp = keys()
    peer = await UdpPeer.bind()
    session = await MediaSession.open(
        allocator.allocate(), remote=peer.address, codec=CodecSpec.static("PCMU"), srtp=ours
    )
    try:
        assert session.srtp == ours
        for data in rtp_stream(ulaw_frames(1000, 1.0)):
            peer.send(peer_srtp.protect(data), ("127.0.0.1", session.local_port))
        frames = await collect(session, 50)
        pcm = b"".join(f.pcm for f in frames if isinstance(f, AudioReceived))
        assert dominant_hz(pcm, 8000) == pytest.approx(1000, abs=10)
        session.play(b"".join(ulaw_frames(440, 0.5)))
        await peer.wait_for(40)
        wire = [d for d, _ in peer.recorder.received]
        plain = [RtpPacket.parse(peer_srtp.unprotect(d)) for d in wire]
        assert all(len(d) == 12 + len(p.payload) + 10 for d, p in zip(wire, plain, strict=True))
        assert not any(p.payload in d for d, p in zip(wire, plain, strict=True))  # encrypted
        audio = [p.payload for p in plain if p.payload != b"\xff" * 160]
        assert len(audio) >= 10
        assert dominant_hz(b"".join(g711.ulaw_to_pcm16(a) for a in audio), 8000) == (
            pytest.approx(440, abs=10)
        )
        assert session.stats().unauthenticated == 0
    finally:
        await session.close()
        peer.close()
    assert allocator.in_use == 0


async def test_forged_replayed_and_plain_packets_are_dropped_before_latching(
    allocator: RtpPortAllocator,
) -> None:
    ours, peer_srtp = keys()
    sdp = await UdpPeer.bind("127.0.0.1")  # the SDP address; silent
    attacker = await UdpPeer.bind("127.0.0.3")
    session = await MediaSession.open(
        allocator.allocate(), remote=sdp.address, codec=CodecSpec.static("PCMU"), srtp=ours
    )
    port = ("127.0.0.1", session.local_port)
    try:
        stream = rtp_stream(ulaw_frames(500, 0.1))
        sealed = [peer_srtp.protect(p) for p in stream]
        attacker.send(stream[0], port)  # plain RTP: under plain RTP rule 3 would latch it
        forged = bytearray(sealed[0])
        forged[-1] ^= 0xFF  # a wrong tag
        attacker.send(bytes(forged), port)
        stranger = keys()[1]
        attacker.send(stranger.protect(stream[1]), port)  # another key
        attacker.send(b"\x80" + bytes(8999), port)  # a jumbo datagram
        await until(lambda: session.stats().unauthenticated == 4)
        assert session.remote == sdp.address  # nothing unauthenticated moved our media
        assert session.stats().packets_received == 0
        sdp.send(sealed[0], port)
        await collect(session, 1)
        sdp.send(sealed[0], port)  # a replay (RFC 3711 §3.3.2)
        await until(lambda: session.stats().unauthenticated == 5)
        assert session.stats().packets_received == 1
        attacker.send(sealed[1], port)  # authentic, from a third party after the latch
        await until(lambda: session.stats().rejected_source == 1)
        assert session.remote == sdp.address
    finally:
        await session.close()
        sdp.close()
        attacker.close()


async def test_late_stun_answers_are_not_counted_as_unauthenticated(
    allocator: RtpPortAllocator,
) -> None:
    # An answer to a retransmitted STUN request (transport/stun.py) reaching an SRTP session's
    # sockets is not a failed authentication (which the media report calls an SRTP key
    # mismatch): the same rule as plain RTP's (test_media_session.py).
    ours, peer_srtp = keys()
    peer = await UdpPeer.bind()
    session = await MediaSession.open(
        allocator.allocate(), remote=peer.address, codec=CodecSpec.static("PCMU"), srtp=ours
    )
    rtp, rtcp = ("127.0.0.1", session.local_port), ("127.0.0.1", session.local_port + 1)
    try:
        for port in (rtp, rtcp):
            peer.send(stun_answer(), port)
            peer.send(b"\x80" + bytes(40), port)  # then what is counted: garbage
        await until(lambda: session.stats().unauthenticated >= 2)
        assert session.stats().unauthenticated == 2
        assert session.stats().packets_received == 0
    finally:
        await session.close()
        peer.close()


async def test_rtcp_is_srtcp_both_ways(allocator: RtpPortAllocator) -> None:
    ours, peer_srtp = keys()
    peer = await UdpPeer.bind()
    peer_rtcp = await UdpPeer.bind(port=peer.address[1] + 1)
    session = await MediaSession.open(
        allocator.allocate(),
        remote=peer.address,
        codec=CodecSpec.static("PCMU"),
        srtp=ours,
        rtcp_interval_s=0.1,
    )
    try:
        for data in rtp_stream(ulaw_frames(1000, 0.2)):
            peer.send(peer_srtp.protect(data), ("127.0.0.1", session.local_port))
        await collect(session, 10)
        await peer_rtcp.wait_for(1)
        sealed = peer_rtcp.recorder.received[0][0]
        with pytest.raises(RtpError):  # encrypted after the first header (RFC 3711 §3.4)
            parse_compound(sealed)
        reports = parse_compound(peer_srtp.unprotect_rtcp(sealed))
        assert reports[0].ssrc == session.ssrc  # type: ignore[union-attr]
        block = RtcpReportBlock(session.ssrc, 64, 3, 0, 80, 0, 0)
        rr = bytes(RtcpReceiverReport(0x5EED, [block]))
        peer_rtcp.send(rr, ("127.0.0.1", session.local_port + 1))  # plain: dropped
        await until(lambda: session.stats().unauthenticated == 1)
        assert session.stats().remote_loss_fraction == 0
        peer_rtcp.send(peer_srtp.protect_rtcp(rr), ("127.0.0.1", session.local_port + 1))
        await until(lambda: session.stats().remote_loss_fraction == 0.25)
    finally:
        await session.close()
        peer.close()
        peer_rtcp.close()


async def test_rekey_takes_the_new_keys_and_refuses_the_old(allocator: RtpPortAllocator) -> None:
    ours, peer_srtp = keys()
    peer = await UdpPeer.bind()
    session = await MediaSession.open(
        allocator.allocate(), remote=peer.address, codec=CodecSpec.static("PCMU"), srtp=ours
    )
    port = ("127.0.0.1", session.local_port)
    try:
        stream = rtp_stream(ulaw_frames(500, 0.2))
        peer.send(peer_srtp.protect(stream[0]), port)
        await collect(session, 1)
        their_new_key = os.urandom(30)
        rekeyed = SrtpKeys(SUITE, 2, ours.local_key, their_new_key)
        session.rekey(rekeyed)
        assert session.srtp == rekeyed
        peer.send(peer_srtp.protect(stream[1]), port)  # the peer's old key: refused now
        await until(lambda: session.stats().unauthenticated == 1)
        new_peer = SrtpContext(SrtpKeys(SUITE, 2, their_new_key, ours.local_key))
        peer.send(new_peer.protect(stream[2]), port)
        await until(lambda: session.stats().packets_received == 2)
        # Our direction goes on in the same context: a fresh one under the same key would
        # repeat the keystream (RFC 3711 §9.1). The peer's context of our key still reads it.
        count = len(peer.recorder.received)
        await peer.wait_for(count + 2)
        assert RtpPacket.parse(peer_srtp.unprotect(peer.recorder.received[-1][0]))
        for changed in (
            keys()[0],
            SrtpKeys(SUITES["AES_CM_128_HMAC_SHA1_32"], 2, ours.local_key, their_new_key),
        ):
            with pytest.raises(ValueError, match="stay the same"):
                session.rekey(changed)
    finally:
        await session.close()
        peer.close()


async def test_plain_session_cannot_switch_to_srtp(allocator: RtpPortAllocator) -> None:
    session = await MediaSession.open(
        allocator.allocate(), remote=None, codec=CodecSpec.static("PCMU")
    )
    try:
        assert session.srtp is None
        with pytest.raises(ValueError, match="plain RTP"):
            session.rekey(keys()[0])
    finally:
        await session.close()
