"""MediaSession over real loopback UDP sockets: audio both ways, DTMF, flush, marks, latching,
hold, re-INVITE, RTCP, inactivity and port release."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import socket
import time
import warnings
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from telepath.log import call_id_var
from telepath.rtp import g711
from telepath.rtp.codecs import CodecSpec, make_codec
from telepath.rtp.dtmf import DtmfDecoder, DtmfDigit, DtmfKey, encode_dtmf
from telepath.rtp.packet import RtpPacket, pack_rtp
from telepath.rtp.rtcp import (
    SDES_CNAME,
    RtcpBye,
    RtcpReceiverReport,
    RtcpReportBlock,
    RtcpSdes,
    RtcpSenderReport,
    RtcpSourceDescription,
    ntp_from_unix,
    ntp_middle32,
    parse_compound,
    serialize_compound,
)
from telepath.transport import media_pacer, media_session
from telepath.transport.media_session import (
    AudioReceived,
    DtmfReceived,
    MarkPlayed,
    MediaEnded,
    MediaEndReason,
    MediaEvent,
    MediaSession,
)
from telepath.transport.ports import RtpPortAllocator, RtpPortsExhausted
from tests.conftest import skip_loudly
from tests.coturn import binding_response
from tests.integration.media.logged import call_ids_logged, drop_clocks_of_closed_loops
from tests.unit.rtp.audio import dominant_hz, tone
from tests.unit.rtp.captures import load_capture

from .peer import UdpPeer, rtp_stream, until

pytestmark = pytest.mark.integration

PCMU = CodecSpec.static("PCMU")


def ulaw_frames(freq: float, seconds: float) -> list[bytes]:
    data = g711.pcm16_to_ulaw(tone(freq, 8000, seconds))
    return [data[i : i + 160] for i in range(0, len(data), 160)]


async def collect(
    session: MediaSession, count: int, kind: type = AudioReceived
) -> list[MediaEvent]:
    out: list[MediaEvent] = []
    async with asyncio.timeout(10):
        async for event in session.events():
            if isinstance(event, kind):
                out.append(event)
                if len(out) >= count:
                    return out
    return out


async def taken_in(session: MediaSession, count: int) -> None:
    """Wait until the session has taken in ``count`` datagrams: received or refused for their
    source."""

    def counted() -> bool:
        stats = session.stats()
        return stats.packets_received + stats.rejected_source == count

    await until(counted)


async def open_session(
    allocator: RtpPortAllocator, peer: UdpPeer | None, **kwargs: object
) -> MediaSession:
    remote = peer.address if peer is not None else None
    return await MediaSession.open(allocator.allocate(), remote=remote, codec=PCMU, **kwargs)  # type: ignore[arg-type]


async def test_tone_from_peer_arrives_decoded_at_the_right_frequency(
    allocator: RtpPortAllocator,
) -> None:
    peer = await UdpPeer.bind()
    session = await open_session(allocator, peer)
    try:
        for data in rtp_stream(ulaw_frames(1000, 1.0)):
            peer.send(data, ("127.0.0.1", session.local_port))
        frames = await collect(session, 50)
        pcm = b"".join(f.pcm for f in frames if isinstance(f, AudioReceived))
        assert dominant_hz(pcm, 8000) == pytest.approx(1000, abs=10)
        stats = session.stats()
        assert stats.packets_received == 50
        assert stats.packets_lost == 0
        assert stats.inbound.packets == 50
        assert stats.inbound.p50_us > 0
    finally:
        await session.close()
        peer.close()
    assert allocator.in_use == 0


async def test_played_audio_reaches_peer_paced_without_marker_and_continuous_timestamps(
    allocator: RtpPortAllocator,
) -> None:
    peer = await UdpPeer.bind()
    session = await open_session(allocator, peer)
    try:
        await peer.wait_for(2)  # silence while idle
        session.play(b"".join(ulaw_frames(440, 0.5)))
        session.mark("end")
        await collect(session, 1, MarkPlayed)
        await peer.wait_for(session.stats().packets_sent)
        packets = peer.packets()
        audio = [p for p in packets if p.payload != b"\xff" * 160]
        assert len(audio) == 25
        # sent after contiguous silence: no talkspurt marker (RFC 3551 §4.1)
        assert not any(p.marker for p in packets)
        for a, b in zip(packets, packets[1:], strict=False):
            assert (b.sequence_number - a.sequence_number) & 0xFFFF == 1
            assert (b.timestamp - a.timestamp) & 0xFFFFFFFF == 160
        pcm = b"".join(g711.ulaw_to_pcm16(p.payload) for p in audio)
        assert dominant_hz(pcm, 8000) == pytest.approx(440, abs=10)
        assert session.stats().audio_played_ms == 500
        assert session.stats().outbound.packets >= len(packets)
    finally:
        await session.close()
        peer.close()


async def test_flush_reports_played_ms_and_clears_pending_marks(
    allocator: RtpPortAllocator,
) -> None:
    peer = await UdpPeer.bind()
    session = await open_session(allocator, peer)
    try:
        frames = ulaw_frames(300, 2.0)
        session.play(b"".join(frames[:10]))
        session.mark("first-200ms")
        session.play(b"".join(frames[10:]))
        session.mark("end")
        (reached,) = await collect(session, 1, MarkPlayed)
        assert reached == MarkPlayed("first-200ms")
        played = session.flush()
        sent = session.stats().packets_sent
        assert played % 20 == 0 and 200 <= played < 2000
        assert session.queued_ms == 0
        (cleared,) = await collect(session, 1, MarkPlayed)
        assert cleared == MarkPlayed("end", cleared=True)
        # Every packet sent after the flush is silence: it took effect within one frame.
        await peer.wait_for(sent + 3)
        tail = peer.packets()[sent:]
        assert all(p.payload == b"\xff" * 160 for p in tail)
        assert session.flush() == 0  # nothing played since the previous flush
    finally:
        await session.close()
        peer.close()


async def test_pcm_at_24khz_is_resampled_and_encoded(allocator: RtpPortAllocator) -> None:
    peer = await UdpPeer.bind()
    session = await open_session(allocator, peer)
    try:
        session.play_pcm(tone(1000, 24000, 0.4), sample_rate=24000)
        session.mark("done")
        await collect(session, 1, MarkPlayed)
        await peer.wait_for(session.stats().packets_sent)
        audio = [p for p in peer.packets() if p.payload != b"\xff" * 160]
        pcm = b"".join(g711.ulaw_to_pcm16(p.payload) for p in audio)
        assert len(pcm) == 2 * 3200
        assert dominant_hz(pcm, 8000) == pytest.approx(1000, abs=10)
    finally:
        await session.close()
        peer.close()


async def test_dtmf_from_sipp_capture_is_reported_once(allocator: RtpPortAllocator) -> None:
    peer = await UdpPeer.bind()
    session = await open_session(allocator, peer)
    try:
        for data in load_capture("dtmf_2833_pound"):
            peer.send(data, ("127.0.0.1", session.local_port))
        (event,) = await collect(session, 1, DtmfReceived)
        assert isinstance(event, DtmfReceived)
        assert event.digit.key == DtmfKey.POUND
        assert event.digit.duration_ms == 280
        assert session.stats().dtmf_received == 1
    finally:
        await session.close()
        peer.close()


async def test_send_dtmf_reaches_peer_as_rfc4733(allocator: RtpPortAllocator) -> None:
    peer = await UdpPeer.bind()
    session = await open_session(allocator, peer)
    try:
        session.send_dtmf("7", duration_ms=100)
        decoder = DtmfDecoder()
        digits: list[DtmfDigit] = []
        async with asyncio.timeout(10):
            while not digits:
                await peer.wait_for(len(peer.recorder.received) + 1)
                packet = RtpPacket.parse(peer.recorder.received[-1][0])
                if packet.payload_type == 101:
                    digits += decoder.feed(packet.timestamp, packet.payload)
        assert digits[0].key == "7"
        assert digits[0].duration_ms == 100
    finally:
        await session.close()
        peer.close()


async def test_latching_follows_first_packet_then_refuses_third_parties(
    allocator: RtpPortAllocator,
) -> None:
    silent = await UdpPeer.bind("127.0.0.1")  # the SDP address; never speaks first
    natted = await UdpPeer.bind("127.0.0.2")  # the real endpoint behind NAT
    attacker = await UdpPeer.bind("127.0.0.3")
    session = await open_session(allocator, silent, signalling_ip="127.0.0.9")
    port = ("127.0.0.1", session.local_port)
    try:
        assert session.remote == silent.address
        natted.send(rtp_stream(ulaw_frames(500, 0.02))[0], port)
        await collect(session, 1)
        assert session.remote == natted.address  # rule 3: first packet, SDP address silent
        attacker.send(rtp_stream(ulaw_frames(500, 0.02), ssrc=666)[0], port)
        await natted.wait_for(3)
        assert session.remote == natted.address
        assert session.stats().rejected_source == 1
        # The SDP address itself is always preferred once it speaks. (Two packets: a lone one
        # this far from the stream is a stray, dropped by RFC 3550 §A.1, though it latches.)
        for data in rtp_stream(ulaw_frames(500, 0.04), seq=5000):
            silent.send(data, port)
        await collect(session, 2)
        assert session.remote == silent.address
        natted.send(rtp_stream(ulaw_frames(500, 0.02), seq=9000)[0], port)
        await silent.wait_for(2)
        assert session.remote == silent.address  # no re-latching to a foreign address
    finally:
        await session.close()
        for p in (silent, natted, attacker):
            p.close()


def stun_answer() -> bytes:
    """A STUN Binding success response (RFC 8489), as a STUN server sends it."""
    return binding_response(("198.51.100.20", 40000))


async def test_late_stun_answers_are_not_counted_as_dropped_media(
    allocator: RtpPortAllocator,
) -> None:
    # Call control asks a STUN server for the RTP and RTCP sockets' mappings before media owns
    # them (transport/stun.py): answers to retransmitted requests can arrive after that, from
    # the STUN server's address. They are neither a third party's media nor malformed RTP, and
    # counted as such they turned a call's "no_inbound_rtp" into "rtp_from_unexpected_address".
    peer = await UdpPeer.bind("127.0.0.1")
    server = await UdpPeer.bind("127.0.0.5")
    session = await open_session(allocator, peer)
    rtp = ("127.0.0.1", session.local_port)
    rtcp = ("127.0.0.1", session.local_port + 1)
    try:
        for port in (rtp, rtcp):
            server.send(stun_answer(), port)
        peer.send(b"\x80\x00", rtp)  # then what is counted: a runt from the peer,
        server.send(b"\x81\xc9" + bytes(6), rtcp)  # RTCP from a stranger
        await until(lambda: session.stats().malformed >= 1)
        await until(lambda: session.stats().rejected_source >= 1)
        stats = session.stats()
        assert (stats.malformed, stats.rejected_source) == (1, 1)
        assert stats.packets_received == 0
        # and once the caller's RTP is latched: the server's answer on RTP, one that arrived on
        # RTCP from the caller's own address, then a counted packet of each kind
        peer.send(rtp_stream(ulaw_frames(500, 0.02))[0], rtp)
        await collect(session, 1)
        server.send(stun_answer(), rtp)
        peer.send(stun_answer(), rtcp)
        server.send(rtp_stream(ulaw_frames(500, 0.02), ssrc=666)[0], rtp)
        peer.send(b"\x81\xc9", rtcp)
        await until(lambda: session.stats().malformed >= 2)
        await until(lambda: session.stats().rejected_source >= 2)
        stats = session.stats()
        assert (stats.malformed, stats.rejected_source) == (2, 2)
        assert session.remote == peer.address
    finally:
        await session.close()
        peer.close()
        server.close()


async def test_latching_accepts_signalling_ip_with_new_port(allocator: RtpPortAllocator) -> None:
    sdp = await UdpPeer.bind("127.0.0.1")
    rewritten = await UdpPeer.bind("127.0.0.4")
    session = await open_session(allocator, sdp, signalling_ip="127.0.0.4")
    port = ("127.0.0.1", session.local_port)
    try:
        sdp.send(rtp_stream(ulaw_frames(500, 0.02))[0], port)
        await collect(session, 1)
        rewritten.send(rtp_stream(ulaw_frames(500, 0.02), seq=1001)[0], port)
        await collect(session, 1)
        assert session.remote == rewritten.address  # rule 2: the signalling IP
    finally:
        await session.close()
        sdp.close()
        rewritten.close()


@pytest.mark.parametrize("natted_ip", ["127.0.0.4", "127.0.0.1"], ids=["signalling-ip", "sdp-ip"])
async def test_a_latch_by_a_trusted_ip_closes_the_first_packet_window(
    allocator: RtpPortAllocator, natted_ip: str
) -> None:
    """The commonest NAT case: the phone's SDP gives its private address (silent from here),
    and its RTP comes from the signalling IP — or the SDP IP — on a port the NAT chose (rule
    2). That latch ends the first-packet window like any other: it stayed open for the whole
    call, so one packet from anyone took the caller's media (and fed the agent) until the
    caller's next packet took it back."""
    sdp = await UdpPeer.bind("127.0.0.1")  # the SDP address; never speaks
    natted = await UdpPeer.bind(natted_ip)  # the phone, through its NAT
    attacker = await UdpPeer.bind("127.0.0.3")
    session = await open_session(allocator, sdp, signalling_ip="127.0.0.4")
    port = ("127.0.0.1", session.local_port)
    try:
        natted.send(rtp_stream(ulaw_frames(500, 0.02))[0], port)
        await collect(session, 1)
        assert session.remote == natted.address  # rule 2
        attacker.send(rtp_stream(ulaw_frames(500, 0.02), ssrc=666)[0], port)
        # the attacker's packet either counted as rejected or received (and latched)
        await until(lambda: session.stats().rejected_source + session.stats().packets_received > 1)
        assert session.remote == natted.address
        assert (session.stats().rejected_source, session.stats().packets_received) == (1, 1)
        sent = len(natted.recorder.received)
        await natted.wait_for(sent + 2)  # our audio still goes to the phone
        assert attacker.recorder.received == []
    finally:
        await session.close()
        for p in (sdp, natted, attacker):
            p.close()


async def test_a_second_sender_on_the_trusted_ip_can_neither_take_nor_feed_a_flowing_call(
    allocator: RtpPortAllocator,
) -> None:
    """A carrier's SBC relays many calls from one IP, the signalling IP (rule 2): another
    call's relay port on it — or a spoofed source, or a previous call's tail — sending to our
    port while the caller's media flows is neither latched nor delivered. Rule 2 let any port
    on that IP move our audio there and feed the agent, packet by packet."""
    caller = await UdpPeer.bind("127.0.0.5")  # the SBC's relay port of this call
    other = await UdpPeer.bind("127.0.0.5")  # the same SBC, another call's relay port
    session = await open_session(allocator, caller, signalling_ip="127.0.0.5")
    port = ("127.0.0.1", session.local_port)
    heard: list[bytes] = []
    session.set_audio_sink(lambda event: heard.append(event.payload))
    ours = rtp_stream([b"\x11" * 160] * 12, ssrc=1)
    theirs = rtp_stream([b"\x99" * 160] * 24, ssrc=2, seq=5000)
    try:
        caller.send(ours[0], port)
        await until(lambda: session.stats().packets_received == 1)
        session.play(b"\x55" * 160 * 50)
        for i in range(1, 12):
            caller.send(ours[i], port)  # the caller still flows: each just before the other's
            other.send(theirs[2 * i], port)
            other.send(theirs[2 * i + 1], port)
            await taken_in(session, 3 * i + 1)
        stats = session.stats()
        assert (stats.packets_received, stats.rejected_source) == (12, 22)
        assert session.remote == caller.address
        assert heard == [b"\x11" * 160] * 12  # the agent heard the caller only
        sent = len(caller.recorder.received)
        await caller.wait_for(sent + 2)  # our audio still goes to the caller,
        assert other.recorder.received == []  # and never went anywhere else
    finally:
        await session.close()
        caller.close()
        other.close()


async def test_a_new_port_on_the_trusted_ip_takes_over_once_the_latched_one_fell_silent(
    allocator: RtpPortAllocator,
) -> None:
    """The other side of the rule above: a genuine move (a NAT's new mapping with a new SSRC,
    an SBC that switched relay ports without a re-INVITE) is followed once the latched source
    has been silent for LATCH_SILENCE_S — not while it still sends."""
    caller = await UdpPeer.bind("127.0.0.5")
    moved = await UdpPeer.bind("127.0.0.5")
    session = await open_session(allocator, caller, signalling_ip="127.0.0.5")
    port = ("127.0.0.1", session.local_port)
    heard: list[bytes] = []
    session.set_audio_sink(lambda event: heard.append(event.payload))
    new = rtp_stream([b"\x99" * 160] * 200, ssrc=2, seq=5000)
    try:
        for data in rtp_stream([b"\x11" * 160] * 3, ssrc=1):
            caller.send(data, port)
        await until(lambda: session.stats().packets_received == 3)
        for sent, data in enumerate(new, 1):  # the caller stopped; the new source streams
            moved.send(data, port)
            await taken_in(session, 3 + sent)
            if session.remote == moved.address:
                break
            await asyncio.sleep(0.02)
        assert session.remote == moved.address
        assert session.stats().rejected_source == sent - 1  # until the silence was long enough
        before = len(moved.recorder.received)
        await moved.wait_for(before + 2)  # our audio follows it
        moved.send(new[sent], port)  # (a new SSRC's first packet waits for its second: §A.1)
        await until(lambda: heard.count(b"\x99" * 160) == 2)  # and its audio reaches the agent
    finally:
        await session.close()
        caller.close()
        moved.close()


@pytest.mark.parametrize("queued", [True, False], ids=["agent-audio", "nothing-queued"])
async def test_hold_stops_sending_and_resume_has_marker_and_later_timestamp(
    allocator: RtpPortAllocator, queued: bool
) -> None:
    """The first packet after the hold marks the new talkspurt (RFC 3551 §4.1) whatever it
    carries: the agent's queued audio, or silence when nothing is queued."""
    peer = await UdpPeer.bind()
    session = await open_session(allocator, peer)
    try:
        await peer.wait_for(2)
        session.hold(True)
        held_at = session.stats().packets_sent
        await asyncio.sleep(0.1)
        assert session.stats().packets_sent == held_at
        before = len(peer.recorder.received)
        last = peer.packets()[-1]
        if queued:
            session.play(b"".join(ulaw_frames(440, 0.1)))
        session.hold(False)
        await peer.wait_for(before + 1)
        resumed = peer.packets()[before]
        assert resumed.marker
        assert (resumed.payload != b"\xff" * 160) is queued
        assert (resumed.sequence_number - last.sequence_number) & 0xFFFF == 1
        gap = (resumed.timestamp - last.timestamp) & 0xFFFFFFFF
        assert gap % 160 == 0 and gap > 160
        assert session.ended is None
    finally:
        await session.close()
        peer.close()


async def test_update_remote_moves_outbound_media(allocator: RtpPortAllocator) -> None:
    first, second = await UdpPeer.bind(), await UdpPeer.bind()
    session = await open_session(allocator, first)
    try:
        await first.wait_for(1)
        session.update_remote(second.address)
        await second.wait_for(2)
        assert session.remote == second.address
    finally:
        await session.close()
        first.close()
        second.close()


async def test_a_re_offer_with_the_same_address_keeps_the_latch(
    allocator: RtpPortAllocator,
) -> None:
    """A session-timer refresh (RFC 4028) or any re-INVITE/UPDATE repeating the SDP address:
    media stays where it was latched (the caller behind NAT) and the first-packet window stays
    shut. It went back to the raw SDP address — the NAT's unreachable inside — and reopened the
    window to anyone. A new address (RFC 3264 §8.3.1) does move the media, and reopens it."""
    sdp = await UdpPeer.bind("127.0.0.1")  # the SDP address: silent, as a private one would be
    natted = await UdpPeer.bind("127.0.0.2")
    attacker = await UdpPeer.bind("127.0.0.3")
    moved = await UdpPeer.bind("127.0.0.1")
    session = await open_session(allocator, sdp, rtcp_interval_s=0.05)
    port = ("127.0.0.1", session.local_port)
    try:
        natted.send(rtp_stream(ulaw_frames(500, 0.02))[0], port)
        await collect(session, 1)
        assert session.remote == natted.address  # rule 3
        session.update_remote(sdp.address)  # the refresh: same SDP
        session.update_remote(sdp.address, (sdp.address[0], sdp.address[1] + 1))  # a=rtcp: same
        assert session.remote == natted.address
        attacker.send(rtp_stream(ulaw_frames(500, 0.02), ssrc=666)[0], port)
        await until(lambda: session.stats().rejected_source + session.stats().packets_received > 1)
        assert session.remote == natted.address
        assert session.stats().rejected_source == 1
        sent = len(natted.recorder.received)
        await natted.wait_for(sent + 2)  # still where the caller is
        session.update_remote(moved.address)  # a new address: media moves there
        assert session.remote == moved.address
        await moved.wait_for(2)
    finally:
        await session.close()
        for p in (sdp, natted, attacker, moved):
            p.close()


async def test_rtcp_reports_both_ways_and_rtt(allocator: RtpPortAllocator) -> None:
    peer = await UdpPeer.bind()
    peer_rtcp = await UdpPeer.bind(port=peer.address[1] + 1)
    session = await open_session(allocator, peer, rtcp_interval_s=0.1)
    try:
        for data in rtp_stream(ulaw_frames(1000, 0.2)):
            peer.send(data, ("127.0.0.1", session.local_port))
        await collect(session, 10)
        await peer_rtcp.wait_for(2)
        reports = [p for d, _ in peer_rtcp.recorder.received for p in parse_compound(d)]
        srs = [p for p in reports if isinstance(p, RtcpSenderReport)]
        assert srs and srs[-1].ssrc == session.ssrc
        block = [b for sr in srs for b in sr.reports if b.ssrc == 0x5EED][-1]
        assert block.packets_lost == 0
        assert block.highest_sequence == 1009
        rr = RtcpReceiverReport(
            0x5EED,
            [RtcpReportBlock(session.ssrc, 64, 3, 0, 80, ntp_middle32(srs[-1].ntp_timestamp), 0)],
        )
        peer_rtcp.send(bytes(rr), ("127.0.0.1", session.local_port + 1))
        await until(lambda: session.stats().rtt_ms is not None)
        stats = session.stats()
        assert stats.remote_loss_fraction == 0.25
        assert stats.remote_jitter_ms == 10.0
        assert stats.rtt_ms is not None and stats.rtt_ms >= 0
        before = len(peer_rtcp.recorder.received)
        await session.close()
        await peer_rtcp.wait_for(before + 1)
        bye = parse_compound(peer_rtcp.recorder.received[-1][0])[-1]
        assert isinstance(bye, RtcpBye) and bye.sources == [session.ssrc]
    finally:
        await session.close()
        peer.close()
        peer_rtcp.close()


async def test_peer_reports_without_a_block_for_our_stream_are_counted_while_we_send(
    allocator: RtpPortAllocator,
) -> None:
    """A caller that hears none of our RTP reports no block for it (RFC 3550 §6.4): its
    reports without one, each after an interval in which we sent RTP, are counted in a row
    (the first, which may have come before our audio could arrive, not); one naming our
    stream starts the count afresh."""
    peer = await UdpPeer.bind()
    peer_rtcp = await UdpPeer.bind(port=peer.address[1] + 1)
    session = await open_session(allocator, peer)
    rtcp_port = ("127.0.0.1", session.local_port + 1)

    async def report(blocks: list[RtcpReportBlock]) -> None:
        sent = session.stats().packets_sent
        await until(lambda: session.stats().packets_sent > sent)  # we sent in this interval
        reports = session.stats().remote_reports
        peer_rtcp.send(bytes(RtcpReceiverReport(0x5EED, blocks)), rtcp_port)
        await until(lambda: session.stats().remote_reports > reports)

    try:
        for _ in range(4):
            await report([])
        assert session.stats().remote_reports_without_us == 3
        await report([RtcpReportBlock(0x1234)])  # another source's block: still not ours
        assert session.stats().remote_reports_without_us == 4
        await report([RtcpReportBlock(session.ssrc)])
        assert session.stats().remote_reports_without_us == 0
    finally:
        await session.close()
        peer.close()
        peer_rtcp.close()


async def test_an_rtcp_address_learned_from_the_peer_s_rtcp_survives_the_rtp_latch(
    allocator: RtpPortAllocator,
) -> None:
    """Symmetric RTCP (RFC 4961): behind a NAT the caller's RTCP comes from the NAT's mapping
    for its RTCP port, which is where ours must go. Its RTP then latched the media to the same
    IP, and that put our RTCP back on the SDP's RTCP port — the inside port, which the NAT
    does not forward. A latch to the IP our RTCP already goes to keeps the learned port."""
    sdp = await UdpPeer.bind("127.0.0.1")  # the phone's private address: silent
    nat_rtp = await UdpPeer.bind("127.0.0.4")
    nat_rtcp = await UdpPeer.bind("127.0.0.4")  # not the RTP port + 1: the NAT's choice
    session = await open_session(allocator, sdp, signalling_ip="127.0.0.4", rtcp_interval_s=0.05)
    try:
        rr = RtcpReceiverReport(0x5EED, [RtcpReportBlock(session.ssrc, 64)])
        nat_rtcp.send(bytes(rr), ("127.0.0.1", session.local_port + 1))
        await until(lambda: session.stats().remote_loss_fraction == 0.25)
        nat_rtp.send(rtp_stream(ulaw_frames(500, 0.02))[0], ("127.0.0.1", session.local_port))
        await until(lambda: session.remote == nat_rtp.address)

        def reported_on_rtp() -> bool:  # a report sent after the latch: it has a block on it
            reports = [p for d, _ in nat_rtcp.recorder.received for p in parse_compound(d)]
            blocks = [
                b
                for r in reports
                if isinstance(r, RtcpReceiverReport | RtcpSenderReport)
                for b in r.reports
            ]
            return any(b.ssrc == 0x5EED for b in blocks)

        await until(reported_on_rtp)
    finally:
        await session.close()
        for p in (sdp, nat_rtp, nat_rtcp):
            p.close()


async def test_a_sender_report_s_rtp_timestamp_is_that_of_its_ntp_instant(
    allocator: RtpPortAllocator,
) -> None:
    """RFC 3550 §6.4.1: an SR's RTP timestamp corresponds to the same instant as its NTP
    timestamp. A report goes out in the tick that just sent a packet, so its RTP timestamp is
    that packet's, give or take the microseconds between the two: it was the next frame's,
    a whole packet time (160 samples) ahead, which a receiver's lip-sync and RTT-free clock
    mapping take at face value."""
    peer = await UdpPeer.bind()
    peer_rtcp = await UdpPeer.bind(port=peer.address[1] + 1)
    session = await open_session(allocator, peer, rtcp_interval_s=0.05)
    try:
        await peer_rtcp.wait_for(3)
        reports = [p for d, _ in peer_rtcp.recorder.received[:3] for p in parse_compound(d)]
        srs = [p for p in reports if isinstance(p, RtcpSenderReport)]
        assert len(srs) >= 2
        await peer.wait_for(max(sr.packet_count for sr in srs))
    finally:
        await session.close()
        peer.close()
        peer_rtcp.close()
    sent = peer.packets()
    for sr in srs:
        last = sent[sr.packet_count - 1]  # the packet the report's tick sent, just before it
        ahead = (sr.rtp_timestamp - last.timestamp + 0x80000000) % 0x100000000 - 0x80000000
        assert 0 <= ahead < 80  # within half a frame


async def test_each_session_has_its_own_rtcp_cname_unless_given_one(
    allocator: RtpPortAllocator,
) -> None:
    """RFC 3550 §6.5.1: the CNAME is unique among the participants of a session; RFC 7022
    §4.2, §5: generated per session (96 random bits, base64) when there is no persistent one.
    Every call's was "telepath"."""
    peers = [await UdpPeer.bind() for _ in range(3)]
    rtcp = [await UdpPeer.bind(port=p.address[1] + 1) for p in peers]
    given = {"cname": "agent@gw.example"}
    sessions = [
        await open_session(allocator, p, rtcp_interval_s=0.05, **kwargs)
        for p, kwargs in zip(peers, [{}, {}, given], strict=True)
    ]

    def cname(received: UdpPeer) -> bytes:
        packets = parse_compound(received.recorder.received[0][0])
        (sdes,) = [p for p in packets if isinstance(p, RtcpSdes)]
        ((kind, value),) = sdes.chunks[0].items
        assert kind == SDES_CNAME
        return value

    try:
        for p in rtcp:
            await p.wait_for(1)
        first, second, third = (cname(p) for p in rtcp)
    finally:
        for s in sessions:
            await s.close()
        for p in peers + rtcp:
            p.close()
    assert first != second
    assert len(first) == len(second) == 16  # base64 of 12 octets
    assert third == b"agent@gw.example"


async def test_a_sender_report_too_old_for_dlsr_is_none_and_close_releases_the_ports(
    allocator: RtpPortAllocator,
) -> None:
    """RFC 3550 §6.4.1: DLSR is 32 bits of 1/65536 s (about 18.2 h). A peer's last SR older
    than that (a long call, the peer stopped sending) is reported as none, LSR = DLSR = 0: the
    closing RTCP BYE's report packed the delay as it was, and struct.error ended close()
    before the ports went back."""
    peer = await UdpPeer.bind()
    peer_rtcp = await UdpPeer.bind(port=peer.address[1] + 1)
    session = await open_session(allocator, peer, rtcp_interval_s=3600.0)
    try:
        for data in rtp_stream(ulaw_frames(1000, 0.1)):  # a report block needs a source
            peer.send(data, ("127.0.0.1", session.local_port))
        await collect(session, 3)
        sr = RtcpSenderReport(0x5EED, ntp_from_unix(1.7e9), 0, 5, 800)
        peer_rtcp.send(bytes(sr), ("127.0.0.1", session.local_port + 1))
        await until(lambda: session._last_sr is not None)
        # The session reads the event loop's clock, which a test cannot move on 19 hours:
        # the SR's arrival is moved back instead.
        assert session._last_sr is not None
        lsr, arrived = session._last_sr
        assert lsr == ntp_middle32(sr.ntp_timestamp)
        session._last_sr = (lsr, arrived - 70_000)
        await session.close()
        assert allocator.in_use == 0
        await peer_rtcp.wait_for(1)
        report, *_, bye = parse_compound(peer_rtcp.recorder.received[-1][0])
        assert isinstance(bye, RtcpBye)
        assert isinstance(report, RtcpReceiverReport | RtcpSenderReport)
        (block,) = report.reports
        assert (block.ssrc, block.lsr, block.dlsr) == (0x5EED, 0, 0)
    finally:
        await session.close()
        peer.close()
        peer_rtcp.close()


async def test_inactivity_timeout_ends_with_reason_and_releases_ports(
    allocator: RtpPortAllocator,
) -> None:
    session = await open_session(allocator, None, inactivity_timeout_s=0.1)
    (ended,) = await collect(session, 1, MediaEnded)
    assert ended == MediaEnded(MediaEndReason.MEDIA_TIMEOUT)
    assert session.ended == MediaEndReason.MEDIA_TIMEOUT
    assert session.lease.released
    assert allocator.in_use == 0
    await session.close()  # idempotent


@pytest.mark.parametrize("served_by", ["clock", "first call's packet"])
async def test_an_inactivity_timeout_is_logged_with_its_own_calls_id(
    allocator: RtpPortAllocator, served_by: str
) -> None:
    """Two calls share the media clock; the first call's set-up started it. The second call's
    timeout, whether the clock's timer or the first call's RTP (``serve_due``) served the
    tick, is logged with the second call's id (it used to carry the first's)."""
    loop = asyncio.get_running_loop()
    sessions: list[MediaSession] = []
    drop_clocks_of_closed_loops()

    async def call(call_id: str, timeout_s: float) -> None:
        call_id_var.set(call_id)  # as call control does for a call's set-up task
        sessions.append(await open_session(allocator, None, inactivity_timeout_s=timeout_s))

    with call_ids_logged("telepath.transport.media_session") as lines:
        await loop.create_task(call("call_first", 0))
        await loop.create_task(call("call_second", 0.1))
        first, second = sessions
        try:
            if served_by == "clock":
                await collect(second, 1, MediaEnded)
            else:
                in_first = contextvars.copy_context()  # its socket's receive callbacks' context
                in_first.run(call_id_var.set, "call_first")
                time.sleep(0.15)  # noqa: ASYNC251  (no wake-up of the clock meanwhile)
                in_first.run(media_pacer.serve_due)
            assert second.ended == MediaEndReason.MEDIA_TIMEOUT
        finally:
            await first.close()
            await second.close()
    assert [c for m, c in lines if m == "media inactivity timeout"] == ["call_second"]


async def test_on_event_callback_receives_frames(allocator: RtpPortAllocator) -> None:
    peer = await UdpPeer.bind()
    got: list[MediaEvent] = []
    session = await open_session(allocator, peer, on_event=got.append)
    try:
        for data in rtp_stream(ulaw_frames(1000, 0.1)):
            peer.send(data, ("127.0.0.1", session.local_port))
        await until(lambda: len(got) >= 5)
        assert all(isinstance(e, AudioReceived) for e in got)
    finally:
        await session.close()
        peer.close()


def test_port_allocator_pairs_exhaustion_and_release() -> None:
    allocator = RtpPortAllocator(43001, 43006, host="127.0.0.1")  # pairs 43002/3, 43004/5
    assert allocator.capacity == 2
    a = allocator.allocate()
    b = allocator.allocate()
    assert {a.port, b.port} == {43002, 43004}
    assert a.rtcp_port == a.port + 1
    with pytest.raises(RtpPortsExhausted) as excinfo:
        allocator.allocate()
    assert excinfo.value.status_hint == 503
    a.release()
    a.release()  # idempotent
    with allocator.allocate() as c:
        assert c.port == a.port
    assert allocator.in_use == 1
    b.release()
    assert allocator.in_use == 0


def test_port_held_by_another_process_is_skipped() -> None:
    import socket

    squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    squatter.bind(("127.0.0.1", 43011))  # the RTCP half of the first pair
    try:
        allocator = RtpPortAllocator(43010, 43013, host="127.0.0.1")
        with allocator.allocate() as lease:
            assert lease.port == 43012
    finally:
        squatter.close()


async def test_each_received_packet_first_serves_a_due_media_clock(
    allocator: RtpPortAllocator, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[None] = []
    monkeypatch.setattr(media_pacer, "serve_due", lambda: calls.append(None))
    peer = await UdpPeer.bind()
    session = await open_session(allocator, peer)
    try:
        for data in rtp_stream(ulaw_frames(1000, 0.2)):
            peer.send(data, ("127.0.0.1", session.local_port))
        await collect(session, 10)
    finally:
        await session.close()
        peer.close()
    assert len(calls) >= 10


async def test_in_order_packets_and_the_general_path_give_one_stream(
    allocator: RtpPortAllocator,
) -> None:
    """In-order packets take a shortcut (no packet or frame objects); reordered, duplicated,
    CSRC-carrying and restarted-stream packets the general path. Both feed one stream: every
    frame once, in order, and the same counters."""
    peer = await UdpPeer.bind()
    got: list[MediaEvent] = []
    session = await open_session(allocator, peer, on_event=got.append)
    frames = [bytes([i]) * 160 for i in range(12)]
    plain = rtp_stream(frames)  # sequence 1000..1011

    def with_csrc(i: int) -> bytes:
        packet = RtpPacket.parse(plain[i])
        packet.csrc = [0xC0FFEE]  # a mixer's packet: not the plain header
        return bytes(packet)

    order = [0, 1, 2, 3, 5, 4, 4, 6]  # 5 before 4, then 4 again
    try:
        for i in order:
            peer.send(plain[i], ("127.0.0.1", session.local_port))
            await asyncio.sleep(0.005)  # arrive in this order
        peer.send(with_csrc(7), ("127.0.0.1", session.local_port))
        for i in range(8, 12):
            peer.send(plain[i], ("127.0.0.1", session.local_port))
        await until(lambda: len(got) >= 12)
        await asyncio.sleep(0.05)  # nothing more comes
        audio = [e for e in got if isinstance(e, AudioReceived)]
        assert [e.payload for e in audio] == frames
        assert [e.timestamp for e in audio] == [160 * i for i in range(12)]
        assert not any(e.lost for e in audio)
        assert [e.pcm for e in audio] == [g711.ulaw_to_pcm16(f) for f in frames]
        stats = session.stats()
        assert stats.packets_received == 13  # the duplicate included (RFC 3550 counts it)
        assert stats.duplicates == 1 and stats.late == 0 and stats.packets_lost == 0
        assert stats.inbound.packets == 13
    finally:
        await session.close()
        peer.close()


async def test_duplicated_packets_do_not_hide_lost_ones_in_the_calls_loss(
    allocator: RtpPortAllocator,
) -> None:
    """2 of 40 packets lost and 2 others duplicated: RFC 3550's cumulative loss reads 0 (its
    duplicates count as received); the call's loss (telepath-product.md §1.7) is 5 %."""
    peer = await UdpPeer.bind()
    got: list[MediaEvent] = []
    session = await open_session(allocator, peer, on_event=got.append)
    plain = rtp_stream([bytes([i]) * 160 for i in range(40)])
    try:
        for i in range(40):
            if i in (10, 30):
                continue  # lost
            peer.send(plain[i], ("127.0.0.1", session.local_port))
            if i in (15, 35):
                peer.send(plain[i], ("127.0.0.1", session.local_port))  # duplicated
        await until(lambda: session.stats().packets_received == 40)
        stats = session.stats()
        assert stats.duplicates == 2
        assert stats.packets_lost == 2
        assert stats.loss_percent == pytest.approx(5.0)
    finally:
        await session.close()
        peer.close()


class PreciseClock:
    """Stands in for the ``time`` module in media_session: ``monotonic`` is set by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now

    @staticmethod
    def time() -> float:
        return time.time()


async def test_arrival_times_are_read_from_the_precise_clock_not_the_loops(
    allocator: RtpPortAllocator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uvloop's ``loop.time()`` is whole milliseconds, frozen for a batch of callbacks: jitter
    below about a millisecond read through it is quantisation noise, yet ``jitter_us`` claims
    10 µs. Arrivals are read from ``time.monotonic``: packets 20 ms apart, every other one
    0.4 ms late, handed over in one batch (the loop's clock does not move), read 0.4 ms."""
    peer = await UdpPeer.bind()
    session = await open_session(allocator, peer)
    clock = PreciseClock(time.monotonic())
    monkeypatch.setattr(media_session, "time", clock)
    start = clock.now
    try:
        for i, data in enumerate(rtp_stream(ulaw_frames(1000, 4.0))):
            clock.now = start + i * 0.020 + (0.0004 if i % 2 else 0.0)
            session._on_rtp(data, session._dest)  # type: ignore[arg-type]  # one batch
        assert session.stats().packets_received == 200
        assert session._rx.jitter_ms == pytest.approx(0.4, abs=0.05)
        # the inactivity timeout measures from the same clock's last arrival
        assert session._last_rx == clock.now
    finally:
        monkeypatch.undo()
        await session.close()
        peer.close()


async def test_concealing_lost_g722_keeps_the_outbound_encoder_s_state(
    allocator: RtpPortAllocator,
) -> None:
    """G.722 is ADPCM: each frame's encoding depends on the ones before. A concealed inbound
    frame's payload is encoded by an encoder of its own — through the outbound one, every lost
    packet put a frame into the caller's stream state, and the caller's decoder went wrong."""
    g722 = CodecSpec.static("G722")
    peer = await UdpPeer.bind()
    got: list[MediaEvent] = []
    session = await MediaSession.open(
        allocator.allocate(), remote=peer.address, codec=g722, on_event=got.append
    )
    first, second = tone(700, 16000, 3.0), tone(900, 16000, 0.2)
    try:
        session.play_pcm(first, 16000)  # before the first tick: no silence ahead of it
        inbound = rtp_stream([bytes([0x55]) * 160] * 20, pt=g722.payload_type)
        for i in [*range(5), *range(8, 20)]:  # 5, 6 and 7 lost
            peer.send(inbound[i], ("127.0.0.1", session.local_port))
        await until(lambda: any(isinstance(e, AudioReceived) and e.lost for e in got))
        session.play_pcm(second, 16000)  # while the first still plays: one continuous stream
        frames = (len(first) + len(second)) // 640
        await peer.wait_for(frames)
    finally:
        await session.close()
        peer.close()
    sent = peer.packets()[:frames]  # in order: loopback does not reorder
    expected = make_codec(g722).encode(first + second)
    assert b"".join(p.payload for p in sent) == expected


async def test_rtcp_goes_on_while_held_and_to_the_a_rtcp_port_from_the_start(
    allocator: RtpPortAllocator,
) -> None:
    """RTCP continues whatever the direction (RFC 3264 §5.1: a peer that put us on hold keeps
    its RTCP timers); an offer's a=rtcp port (RFC 3605) is used from the first report."""
    peer, peer_rtcp = await UdpPeer.bind(), await UdpPeer.bind()  # not the RTP port + 1
    session = await open_session(allocator, peer, rtcp_interval_s=0.05, rtcp=peer_rtcp.address)
    try:
        session.hold(True)
        await peer_rtcp.wait_for(3)
        reports = [p for d, _ in peer_rtcp.recorder.received for p in parse_compound(d)]
        assert any(isinstance(p, RtcpReceiverReport | RtcpSenderReport) for p in reports)
    finally:
        await session.close()
        peer.close()
        peer_rtcp.close()


async def test_rtcp_from_the_sdp_s_rtcp_address_is_read(allocator: RtpPortAllocator) -> None:
    """RFC 3605 §2.1: a=rtcp may put the peer's RTCP on another IP than its RTP. We send our
    reports there, and its own reports come from there (symmetric RTCP, RFC 4961): they were
    refused as a stranger's, since only the RTP address's IP and the signalling IP were."""
    peer = await UdpPeer.bind("127.0.0.1")
    peer_rtcp = await UdpPeer.bind("127.0.0.6")
    session = await open_session(allocator, peer, rtcp_interval_s=0.05, rtcp=peer_rtcp.address)
    try:
        await peer_rtcp.wait_for(1)  # ours go there
        rr = RtcpReceiverReport(0x5EED, [RtcpReportBlock(session.ssrc, 64)])
        peer_rtcp.send(bytes(rr), ("127.0.0.1", session.local_port + 1))
        await until(lambda: session.stats().remote_loss_fraction == 0.25)
        assert session.stats().rejected_source == 0
    finally:
        await session.close()
        peer.close()
        peer_rtcp.close()


async def test_an_a_rtcp_address_on_another_ip_survives_the_rtp_latch(
    allocator: RtpPortAllocator,
) -> None:
    """RFC 3605 §2.1: a=rtcp named another IP than the c= line's. RTP latching to a source
    other than the SDP's (here the signalling IP) moved our RTCP to that source's IP, with
    the a=rtcp port: somewhere the peer never said its RTCP is. The named address stays."""
    sdp = await UdpPeer.bind("127.0.0.1")  # the c= address: silent
    peer_rtcp = await UdpPeer.bind("127.0.0.6")
    rtp = await UdpPeer.bind("127.0.0.4")
    session = await open_session(
        allocator, sdp, signalling_ip="127.0.0.4", rtcp_interval_s=0.05, rtcp=peer_rtcp.address
    )
    try:
        await peer_rtcp.wait_for(1)
        rtp.send(rtp_stream(ulaw_frames(500, 0.02))[0], ("127.0.0.1", session.local_port))
        await until(lambda: session.remote == rtp.address)
        await peer_rtcp.wait_for(len(peer_rtcp.recorder.received) + 2)  # reports after it
    finally:
        await session.close()
        for p in (sdp, peer_rtcp, rtp):
            p.close()


@pytest.mark.parametrize("when", ["open", "re-INVITE"])
async def test_an_rtp_port_of_65535_has_no_rtcp_port_and_gets_no_rtcp(
    allocator: RtpPortAllocator, when: str
) -> None:
    """RFC 3550 §11: RTCP goes to the RTP port + 1, and m=audio 65535 has none (only an a=rtcp
    line, RFC 3605, could name one): no RTCP is sent. It went to port 65536 — with asyncio an
    OverflowError that closed the RTCP socket, so the caller's reports went unread; uvloop
    sent to port 0. The caller's own RTCP is still read, and answered where it came from."""
    peer, peer_rtcp = await UdpPeer.bind(), await UdpPeer.bind()
    no_rtcp_port = ("127.0.0.1", 65535)
    first = no_rtcp_port if when == "open" else peer.address
    session = await MediaSession.open(
        allocator.allocate(), remote=first, codec=PCMU, rtcp_interval_s=0.05
    )
    try:
        if when == "re-INVITE":
            session.update_remote(no_rtcp_port)
        await asyncio.sleep(0.3)  # six report intervals
        rr = RtcpReceiverReport(0x5EED, [RtcpReportBlock(session.ssrc, 64)])
        peer_rtcp.send(bytes(rr), ("127.0.0.1", session.local_port + 1))
        await until(lambda: session.stats().remote_loss_fraction == 0.25)
        await peer_rtcp.wait_for(1)  # symmetric RTCP: ours now goes where the caller's came from
    finally:
        await session.close()
        peer.close()
        peer_rtcp.close()
    assert allocator.in_use == 0


async def test_no_rtcp_goes_to_an_old_style_hold_address(allocator: RtpPortAllocator) -> None:
    """c=0.0.0.0 (RFC 3264 §8.4) is no address: Linux would deliver there locally."""
    local = await UdpPeer.bind("0.0.0.0")
    session = await open_session(allocator, None, rtcp_interval_s=0.05)
    try:
        session.update_remote(("0.0.0.0", local.address[1] - 1), ("0.0.0.0", local.address[1]))
        session.hold(True)
        await asyncio.sleep(0.3)  # six report intervals
        assert local.recorder.received == []
    finally:
        await session.close()
        local.close()


async def test_a_peer_that_sends_nothing_by_its_sdp_is_no_media_timeout(
    allocator: RtpPortAllocator,
) -> None:
    """``expect_inbound(False)`` for an a=recvonly peer (RFC 3264 §6.1): we go on sending,
    and its silence ends nothing; expected again, the timeout's clock starts afresh."""
    peer = await UdpPeer.bind()
    session = await open_session(allocator, peer, inactivity_timeout_s=0.1)
    try:
        session.expect_inbound(False)
        await asyncio.sleep(0.3)
        assert session.ended is None
        before = len(peer.recorder.received)
        await peer.wait_for(before + 2)  # still sending
        session.expect_inbound(True)
        await until(lambda: session.ended == MediaEndReason.MEDIA_TIMEOUT)
    finally:
        await session.close()
        peer.close()


async def test_comfort_noise_keeps_its_slot_and_counts_as_received(
    allocator: RtpPortAllocator,
) -> None:
    """A packet of a payload type we did not negotiate (Comfort Noise, PT 13, RFC 3389) from
    the peer still takes a sequence number and counts as received (RFC 3550 §A.3): it is not
    played, but it is no loss. Dropped before the statistics and the jitter buffer, each one
    was counted lost and concealed, and the next talkspurt waited out its hole and began with
    a faded repeat. From anyone else it is refused, and latches nothing."""
    peer = await UdpPeer.bind("127.0.0.1")
    other = await UdpPeer.bind("127.0.0.2")
    got: list[MediaEvent] = []
    session = await open_session(allocator, peer, on_event=got.append)
    port = ("127.0.0.1", session.local_port)
    frames = [bytes([0x10 + i]) * 160 for i in range(10)]
    first = rtp_stream(frames[:5], seq=1000)
    noise = pack_rtp(13, 1005, 800, 0x5EED, b"\x40", False)  # RFC 3389 §3: one SID octet
    second = rtp_stream(frames[5:], seq=1006, ts=800 + 160 * 50)  # after 1 s of silence
    try:
        other.send(pack_rtp(13, 7, 0, 0x5EED, b"\x40", False), port)  # not latched: refused
        await until(lambda: session.stats().rejected_source == 1)
        assert session.remote == peer.address
        for data in [*first, noise, *second]:
            peer.send(data, port)
            await asyncio.sleep(0.005)  # arrive in this order
        await until(lambda: len(got) >= 10)
        await asyncio.sleep(0.1)  # nothing more comes (no concealment of the noise's slot)
        audio = [e for e in got if isinstance(e, AudioReceived)]
        assert [e.payload for e in audio] == frames
        assert not any(e.lost for e in audio)
        other.send(pack_rtp(13, 1011, 9000, 0x5EED, b"\x40", False), port)  # still refused
        await until(lambda: session.stats().rejected_source == 2)
        stats = session.stats()
        assert (stats.packets_received, stats.packets_lost, stats.concealed_frames) == (11, 0, 0)
        assert session.remote == peer.address
    finally:
        await session.close()
        peer.close()
        other.close()


async def test_rtcp_on_the_rtp_port_is_not_rtp(allocator: RtpPortAllocator) -> None:
    """RFC 5761 §4: a datagram whose second octet is 192-223 is RTCP (a marker bit and payload
    type 64-95 as RTP), and we never answer a=rtcp-mux: one the peer sends to our RTP port is
    dropped and counted malformed. Read as RTP (payload type 73, its report block's SSRC as
    the stream's) it counted as received, and its SSRC flushed the jitter buffer and restarted
    the receiver statistics — twice, with the caller's next packet."""
    peer = await UdpPeer.bind()
    got: list[MediaEvent] = []
    session = await open_session(allocator, peer, on_event=got.append)
    port = ("127.0.0.1", session.local_port)
    frames = [bytes([0x10 + i]) * 160 for i in range(10)]
    stream = rtp_stream(frames, ssrc=0xABC)
    report = serialize_compound(
        [
            RtcpReceiverReport(0xABC, [RtcpReportBlock(session.ssrc)]),
            RtcpSdes([RtcpSourceDescription(0xABC, [(SDES_CNAME, b"peer")])]),
        ]
    )
    try:
        for data in [*stream[:5], report, *stream[5:]]:
            peer.send(data, port)
            await asyncio.sleep(0.005)  # arrive in this order
        await until(lambda: len(got) >= 10)
        await until(lambda: session.stats().packets_received + session.stats().malformed == 11)
        audio = [e for e in got if isinstance(e, AudioReceived)]
        assert [e.payload for e in audio] == frames
        stats = session.stats()
        assert (stats.packets_received, stats.malformed, stats.packets_lost) == (10, 1, 0)
        assert session._jitter.stats.resyncs == 0
    finally:
        await session.close()
        peer.close()


async def test_telephone_events_count_but_are_no_jitter_samples(
    allocator: RtpPortAllocator,
) -> None:
    """Every packet of an RFC 4733 event carries the event's start timestamp (§2.5.1.2), so it
    says nothing about network jitter (RFC 3550 §6.4.1, §A.8): three digits on a perfect
    network took the estimate from 0 to about 11 ms (and the jitter buffer's depth with it).
    They still count as received for sequence and loss."""
    peer = await UdpPeer.bind()
    session = await open_session(allocator, peer)
    port = ("127.0.0.1", session.local_port)
    loop = asyncio.get_running_loop()
    packets: list[bytes] = []
    seq, slot = 2000, 0
    for key in "123":
        for _ in range(5):  # 100 ms of audio
            packets.append(pack_rtp(0, seq, slot * 160, 0x5EED, b"\xff" * 160, False))
            seq, slot = seq + 1, slot + 1
        start = slot * 160
        for dtmf in encode_dtmf(key, 100):  # one packet per 20 ms, all at ``start``
            packets.append(pack_rtp(101, seq, start, 0x5EED, dtmf.payload, dtmf.marker))
            seq, slot = seq + 1, slot + 1
    for _ in range(5):
        packets.append(pack_rtp(0, seq, slot * 160, 0x5EED, b"\xff" * 160, False))
        seq, slot = seq + 1, slot + 1
    try:
        begin = loop.time()
        for i, data in enumerate(packets):  # paced like a real sender: one per 20 ms
            await asyncio.sleep(max(0.0, begin + i * 0.020 - loop.time()))
            peer.send(data, port)
        await until(lambda: session.stats().packets_received == len(packets))
        stats = session.stats()
        assert stats.dtmf_received == 3
        assert stats.packets_lost == 0
        assert stats.jitter_ms is not None and stats.jitter_ms < 4, stats.jitter_ms  # loopback
    finally:
        await session.close()
        peer.close()


async def test_a_lost_30_ms_packet_is_concealed_with_30_ms_of_faded_audio(
    allocator: RtpPortAllocator,
) -> None:
    """A peer that sends 30 ms packets (a=ptime:30, 240 samples) while we send 20 ms: a lost
    one is a faded repeat of the last 30 ms, not 20 ms of silence."""
    peer = await UdpPeer.bind()
    got: list[MediaEvent] = []
    session = await open_session(allocator, peer, on_event=got.append)
    data = g711.pcm16_to_ulaw(tone(500, 8000, 0.3))
    frames = [data[i : i + 240] for i in range(0, len(data), 240)]  # 10 packets of 30 ms
    port = ("127.0.0.1", session.local_port)
    try:
        for i, payload in enumerate(frames):
            if i != 4:  # lost
                peer.send(pack_rtp(0, 3000 + i, 240 * i, 0x5EED, payload, i == 0), port)
        await until(lambda: len(got) >= 10)
        audio = [e for e in got if isinstance(e, AudioReceived)]
        assert [e.lost for e in audio] == [i == 4 for i in range(10)]
        concealed = audio[4]
        assert len(concealed.pcm) == len(audio[3].pcm) == 480
        assert max(abs(s) for s in memoryview(concealed.pcm).cast("h")) > 1000  # not silence
    finally:
        await session.close()
        peer.close()


async def test_received_packets_are_read_with_our_numbers_and_sent_with_the_peer_s(
    allocator: RtpPortAllocator,
) -> None:
    """We offered PCMU as 0 and telephone-event as 101; the answer renumbered them 96 and 97
    (RFC 3264 §6.1 lets it). Each side's SDP numbers are what it receives (§5.1), so the peer
    sends 0 and 101, and we send 96 and 97: its audio and its key press both get through."""
    peer = await UdpPeer.bind()
    got: list[MediaEvent] = []
    session = await MediaSession.open(
        allocator.allocate(),
        remote=peer.address,
        codec=CodecSpec("PCMU", 96),
        recv_payload_type=0,
        dtmf_payload_type=97,
        recv_dtmf_payload_type=101,
        on_event=got.append,
    )
    port = ("127.0.0.1", session.local_port)
    tone_frames = ulaw_frames(1000, 0.6)
    packets = rtp_stream(tone_frames)  # PT 0, seq 1000.., ts 0..
    seq, ts = 1000 + len(tone_frames), 160 * len(tone_frames)
    for dtmf in encode_dtmf("5", 100):
        packets.append(pack_rtp(101, seq, ts, 0x5EED, dtmf.payload, dtmf.marker))
        seq += 1
    try:
        for data in packets:
            peer.send(data, port)
        await until(lambda: session.stats().packets_received == len(packets))
        await until(lambda: any(isinstance(e, DtmfReceived) for e in got))
        assert [e.digit.key for e in got if isinstance(e, DtmfReceived)] == [DtmfKey.D5]
        session.send_dtmf("7")
        await until(lambda: any(p.payload_type == 97 for p in peer.packets()))
        stats = session.stats()
        assert (stats.rejected_source, stats.malformed, stats.packets_lost) == (0, 0, 0)
        assert {p.payload_type for p in peer.packets()} == {96, 97}
    finally:
        await session.close()
        peer.close()
    frames = [e for e in got if isinstance(e, AudioReceived) and not e.lost]
    assert len(frames) >= len(tone_frames) - 3  # the jitter buffer's last few may be unplayed
    pcm = b"".join(f.pcm for f in frames)
    assert dominant_hz(pcm, 8000) == pytest.approx(1000, abs=10)


async def test_a_re_offer_moves_the_numbers_we_receive_with(allocator: RtpPortAllocator) -> None:
    """A later offer from the peer, answered with its own numbers (RFC 3264 §6.1), is what it
    then sends with: ``set_recv_payload_type`` and ``set_dtmf_payload_type`` follow it."""
    peer = await UdpPeer.bind()
    got: list[MediaEvent] = []
    session = await MediaSession.open(
        allocator.allocate(),
        remote=peer.address,
        codec=CodecSpec("PCMU", 96),
        recv_payload_type=0,
        dtmf_payload_type=97,
        recv_dtmf_payload_type=101,
        on_event=got.append,
    )
    session.set_recv_payload_type(96)
    session.set_dtmf_payload_type(97)  # both ways, as when we answer
    port = ("127.0.0.1", session.local_port)
    packets = rtp_stream(ulaw_frames(1000, 0.2), pt=96)
    for i, dtmf in enumerate(encode_dtmf("9", 100)):
        packets.append(pack_rtp(97, 1010 + i, 1600, 0x5EED, dtmf.payload, dtmf.marker))
    try:
        for data in packets:
            peer.send(data, port)
        await until(lambda: any(isinstance(e, DtmfReceived) for e in got))
        assert [e.digit.key for e in got if isinstance(e, DtmfReceived)] == [DtmfKey.D9]
        await until(lambda: sum(isinstance(e, AudioReceived) and not e.lost for e in got) >= 8)
        assert session.recv_dtmf_payload_type == session.dtmf_payload_type == 97
    finally:
        await session.close()
        peer.close()


# --- SDP addresses the RTP socket cannot send to -----------------------------------------------


def on_uvloop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test under uvloop, the production loop: its ``sendto`` raises ValueError
    (not OSError, which asyncio's hands to ``error_received``) for an address of the other
    family or a name, before any system call.

    A socket left open fails the test, as everywhere (``filterwarnings = error``), but from a
    record of the ResourceWarnings: raised inside uvloop's ``loop.close()``, one hangs it."""

    @functools.wraps(test)  # the test's signature: pytest's fixtures and parameters
    def run(*args: Any, **kwargs: Any) -> None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("error")
            warnings.simplefilter("always", ResourceWarning)
            uvloop.run(test(*args, **kwargs))
        leaked = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
        assert not leaked

    return run


@pytest.mark.parametrize("host", ["::1", "media.example.com"], ids=["ipv6", "name"])
@on_uvloop
async def test_an_sdp_address_the_socket_cannot_send_to_still_times_out_and_frees_the_ports(
    allocator: RtpPortAllocator, host: str
) -> None:
    """An IPv6 c= on an IPv4 socket (call control accepts it: linphone gives one and sends
    over IPv4), or a name (which it refuses, 488): every tick raised before the jitter poll,
    the RTCP and the inactivity check (no media timeout, a traceback 50 times a second), and
    close() raised from the RTCP BYE before releasing the ports. Such an address is no
    destination: nothing is sent until the peer's RTP latches one."""
    session = await MediaSession.open(
        allocator.allocate(),
        remote=(host, 40000),
        codec=PCMU,
        inactivity_timeout_s=0.2,
        rtcp_interval_s=0.05,
    )
    try:
        assert session.remote is None
        (ended,) = await collect(session, 1, MediaEnded)
        assert ended == MediaEnded(MediaEndReason.MEDIA_TIMEOUT)
    finally:
        await session.close()
    assert session.lease.released
    assert allocator.in_use == 0


class _FailingSends:
    """A datagram transport whose every send raises, as uvloop's does for an address it
    cannot take; closing it closes the real one."""

    def __init__(self, real: asyncio.DatagramTransport) -> None:
        self.real = real
        self.sends = 0

    def sendto(self, data: bytes, addr: object = None) -> None:
        self.sends += 1
        raise ValueError("socket family mismatch or a DNS lookup is required")

    def close(self) -> None:
        self.real.close()


@on_uvloop
async def test_a_failing_send_skips_nothing_else_and_close_still_frees_the_ports(
    allocator: RtpPortAllocator,
) -> None:
    """Defence in depth: whatever a send raises, the rest of the tick (the inactivity check
    among it) runs, and close() releases the ports and closes the sockets though its RTCP BYE
    raises too."""
    peer = await UdpPeer.bind()
    session = await open_session(allocator, peer, inactivity_timeout_s=0.2, rtcp_interval_s=0.05)
    assert session._rtp is not None and session._rtcp is not None
    rtp, rtcp = _FailingSends(session._rtp), _FailingSends(session._rtcp)
    session._rtp, session._rtcp = rtp, rtcp  # type: ignore[assignment]
    try:
        (ended,) = await collect(session, 1, MediaEnded)
        assert ended == MediaEnded(MediaEndReason.MEDIA_TIMEOUT)
        assert rtp.sends > 1 and rtcp.sends >= 1
    finally:
        await session.close()
        peer.close()
    # every failure counted (the call record's media report and /metrics say so), not only
    # logged once; all but the closing RTCP BYE's, sent after the final snapshot
    assert session.stats().send_errors == rtp.sends + rtcp.sends - 1
    assert session.lease.released
    assert rtp.real.is_closing() and rtcp.real.is_closing()
    assert allocator.in_use == 0


async def test_close_frees_the_ports_whatever_its_rtcp_bye_raises(
    allocator: RtpPortAllocator,
) -> None:
    """A send error no longer leaves the RTCP code, but anything else raised while the BYE is
    built (a bug) still closes the sockets and releases the ports before it propagates."""
    session = await open_session(allocator, None)

    def broken(extra: object, tick_at: object) -> None:
        raise RuntimeError("simulated bug")

    session._send_rtcp = broken  # type: ignore[method-assign]
    rtp, rtcp = session._rtp, session._rtcp
    assert rtp is not None and rtcp is not None
    with pytest.raises(RuntimeError):
        await session.close()
    assert session.lease.released and allocator.in_use == 0
    assert rtp.is_closing() and rtcp.is_closing()
    await session.close()  # idempotent


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize("peer_host", ["127.0.0.1", "::1"], ids=["ipv4-peer", "ipv6-peer"])
@on_uvloop
async def test_dual_stack_sockets_reach_and_latch_ipv4_and_ipv6_callers(
    dual_stack_allocator: RtpPortAllocator, peer_host: str
) -> None:
    """TELEPATH_SIP_HOST=:: binds the RTP ports dual-stack (AF_INET6): an IPv4 caller's packets
    arrive from ``('::ffff:a.b.c.d', port, 0, 0)``, and its SDP's ``a.b.c.d`` had to be sent
    to and compared in that form — uvloop refused to send to it, and no packet ever matched the
    SDP address (rule 1), so the first-packet window never closed."""
    if not _ipv6_loopback():
        skip_loudly("IPv6 loopback", "cannot bind ::1 on this machine")
    peer = await UdpPeer.bind(peer_host)
    attacker = await UdpPeer.bind("127.0.0.3")
    session = await MediaSession.open(
        dual_stack_allocator.allocate(),
        remote=peer.address,
        codec=PCMU,
        signalling_ip=peer_host,
    )
    port = (peer_host, session.local_port)
    try:
        await peer.wait_for(2)  # our RTP reaches it
        assert session.remote == peer.address  # as the SDP writes it
        for data in rtp_stream(ulaw_frames(500, 0.1)):
            peer.send(data, port)
        await collect(session, 3)
        attacker.send(rtp_stream(ulaw_frames(500, 0.02), ssrc=666)[0], ("127.0.0.1", port[1]))
        await until(lambda: session.stats().rejected_source == 1)
        assert session.remote == peer.address
        assert session.stats().packets_received == 5
    finally:
        await session.close()
        peer.close()
        attacker.close()
    assert dual_stack_allocator.in_use == 0


@pytest.mark.parametrize("signalling_ip", ["127.0.0.4", "::ffff:127.0.0.4"])
@on_uvloop
async def test_dual_stack_sockets_trust_the_signalling_ip_in_either_form(
    dual_stack_allocator: RtpPortAllocator, signalling_ip: str
) -> None:
    """Rule 2 on a dual-stack socket: the INVITE's source IP, as an IPv4 SIP socket gives it
    or as a dual-stack one does, is the IP the RTP socket reports the caller's packets from."""
    if not _ipv6_loopback():
        skip_loudly("IPv6 loopback", "cannot bind ::1 on this machine")
    sdp = await UdpPeer.bind("127.0.0.1")
    rewritten = await UdpPeer.bind("127.0.0.4")
    session = await MediaSession.open(
        dual_stack_allocator.allocate(), remote=sdp.address, codec=PCMU, signalling_ip=signalling_ip
    )
    port = ("127.0.0.1", session.local_port)
    try:
        sdp.send(rtp_stream(ulaw_frames(500, 0.02))[0], port)
        await collect(session, 1)  # rule 1: the window is closed from here
        rewritten.send(rtp_stream(ulaw_frames(500, 0.02), seq=1001)[0], port)
        await until(lambda: session.stats().packets_received + session.stats().rejected_source > 1)
        assert session.remote == rewritten.address  # rule 2: the signalling IP
    finally:
        await session.close()
        sdp.close()
        rewritten.close()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_send_the_kernel_refuses_is_counted_on_either_loop(
    allocator: RtpPortAllocator, loop: str
) -> None:
    """A send error of the system call (EACCES: a broadcast address without SO_BROADCAST, as
    ENETUNREACH, EPERM from a firewall) is not raised: asyncio and uvloop both hand it to the
    protocol's ``error_received``, which only logged it at DEBUG — send_errors said 0 while
    no packet left."""

    async def run() -> None:
        session = await MediaSession.open(
            allocator.allocate(),
            remote=("255.255.255.255", 40000),
            codec=PCMU,
            inactivity_timeout_s=0.2,
            rtcp_interval_s=0.05,
        )
        try:
            await collect(session, 1, MediaEnded)
        finally:
            await session.close()
        assert session.stats().send_errors > 0

    if loop == "uvloop":
        on_uvloop(run)()
    else:
        asyncio.run(run())
