"""SIPp as the real RTP peer, over loopback: its pcap playback into our MediaSession (with and
without injected loss/reordering), and our playout echoed back by SIPp's RTP echo."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import cast

import pytest

from telepath.rtp import g711
from telepath.rtp.codecs import CodecSpec
from telepath.transport.media_session import AudioReceived, DtmfReceived, MediaSession
from telepath.transport.ports import RtpPortAllocator
from tests.integration.media.peer import rtp_stream
from tests.unit.rtp.audio import dominant_hz, tone
from tests.unit.rtp.captures import load_capture

from .sipp import PAUSE, PLAY, SipStub, require_sipp, run_sipp, write_rtp_pcap

pytestmark = pytest.mark.interop

PCMU = CodecSpec.static("PCMU")


def tone_packets(freq: float, seconds: float) -> list[bytes]:
    data = g711.pcm16_to_ulaw(tone(freq, 8000, seconds))
    return rtp_stream([data[i : i + 160] for i in range(0, len(data), 160)], ssrc=0x51BB)


@pytest.fixture
def allocator() -> RtpPortAllocator:
    return RtpPortAllocator(47000, 47099, host="127.0.0.1")


class LossyRelay(asyncio.DatagramProtocol):
    """Forwards SIPp's RTP to the session, dropping every 10th packet and swapping each
    7th packet with the one after it (reordering)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.transport: asyncio.DatagramTransport | None = None
        self.count = 0
        self.held: bytes | None = None
        self.dropped = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        if addr == self.target:
            return  # our own outbound audio (everything is 127.0.0.1 here): not SIPp's stream
        self.count += 1
        if self.count % 10 == 0:
            self.dropped += 1
            return
        if self.count % 7 == 0 and self.held is None:
            self.held = data
            return
        self.transport.sendto(data, self.target)
        if self.held is not None:
            self.transport.sendto(self.held, self.target)
            self.held = None


async def _call(
    tmp_path: Path, media_port_for_sdp: int, media_xml: str, echo: bool = False
) -> tuple[SipStub, asyncio.subprocess.Process, asyncio.DatagramTransport]:
    loop = asyncio.get_running_loop()
    transport, stub = await loop.create_datagram_endpoint(
        lambda: SipStub(media_port_for_sdp), local_addr=("127.0.0.1", 0)
    )
    sip_port = transport.get_extra_info("sockname")[1]
    sipp_media = 47200 + (sip_port % 50) * 4
    proc = await run_sipp(tmp_path, sip_port, sipp_media, media_xml, echo=echo)
    return stub, proc, transport


async def _finish(proc: asyncio.subprocess.Process, tmp_path: Path) -> None:
    async with asyncio.timeout(30):
        _, err = await proc.communicate()
    log = tmp_path / "sipp_errors.log"
    detail = log.read_text() if log.exists() else err.decode(errors="replace")
    assert proc.returncode == 0, detail


async def _inbound_tone(
    tmp_path: Path, allocator: RtpPortAllocator, lossy: bool
) -> tuple[bytes, MediaSession, LossyRelay | None]:
    require_sipp()
    pcap = tmp_path / "tone.pcap"
    write_rtp_pcap(pcap, tone_packets(1000, 2.02))  # 101: last one not dropped
    session = await MediaSession.open(allocator.allocate(), remote=None, codec=PCMU)
    relay: LossyRelay | None = None
    sdp_port = session.local_port
    relay_transport = None
    if lossy:
        loop = asyncio.get_running_loop()
        relay_transport, relay = await loop.create_datagram_endpoint(
            lambda: LossyRelay(("127.0.0.1", session.local_port)), local_addr=("127.0.0.1", 0)
        )
        sdp_port = relay_transport.get_extra_info("sockname")[1]
    stub, proc, sip = await _call(tmp_path, sdp_port, PLAY % {"pcap": pcap, "ms": 2600})
    try:
        async with asyncio.timeout(20):
            await stub.invited.wait()
        session.update_remote(("127.0.0.1", stub.offered_media_port()))
        pcm = b""
        async with asyncio.timeout(20):
            async for event in session.events():
                if isinstance(event, AudioReceived):
                    pcm += event.pcm
                    if len(pcm) >= 2 * 8000 * 1.8:
                        break
        await _finish(proc, tmp_path)
    finally:
        if proc.returncode is None:
            proc.kill()
        sip.close()
        if relay_transport is not None:
            relay_transport.close()
        await session.close()
    return pcm, session, relay


async def test_sipp_pcap_tone_arrives_decoded_at_1khz(
    tmp_path: Path, allocator: RtpPortAllocator
) -> None:
    pcm, session, _ = await _inbound_tone(tmp_path, allocator, lossy=False)
    assert dominant_hz(pcm, 8000) == pytest.approx(1000, abs=10)
    stats = session.stats()
    assert stats.packets_lost == 0 and stats.concealed_frames == 0
    assert stats.packets_received >= 90


async def test_loss_and_reordering_between_sipp_and_us_are_measured_and_concealed(
    tmp_path: Path, allocator: RtpPortAllocator
) -> None:
    pcm, session, relay = await _inbound_tone(tmp_path, allocator, lossy=True)
    assert relay is not None and relay.dropped >= 9
    stats = session.stats()
    # Every dropped packet is counted lost (RFC 3550) and concealed. A packet swapped with its
    # neighbour is repaired by the jitter buffer (one packet of reorder fits the default 20 ms
    # depth); only when the swap coincides with a drop (a two-packet hole) does the held packet
    # come too late and get concealed as well.
    assert stats.packets_lost == relay.dropped
    assert stats.loss_percent == pytest.approx(10, abs=1.5)
    assert stats.late <= 1
    assert stats.concealed_frames == relay.dropped + stats.late
    assert dominant_hz(pcm, 8000) == pytest.approx(1000, abs=10)


async def test_sipp_dtmf_capture_is_decoded(tmp_path: Path, allocator: RtpPortAllocator) -> None:
    require_sipp()
    session = await MediaSession.open(allocator.allocate(), remote=None, codec=PCMU)
    # The RFC 4733 packets SIPp ships in dtmf_2833_5.pcap (committed extract), replayed by SIPp.
    pcap = tmp_path / "dtmf.pcap"
    write_rtp_pcap(pcap, load_capture("dtmf_2833_5"))
    stub, proc, sip = await _call(tmp_path, session.local_port, PLAY % {"pcap": pcap, "ms": 800})
    try:
        async with asyncio.timeout(20):
            async for event in session.events():
                if isinstance(event, DtmfReceived):
                    assert event.digit.key == "5"
                    break
        await _finish(proc, tmp_path)
    finally:
        if proc.returncode is None:
            proc.kill()
        sip.close()
        await session.close()
    assert session.stats().dtmf_received == 1


async def test_our_playout_reaches_sipp_and_is_echoed_back_at_the_right_frequency(
    tmp_path: Path, allocator: RtpPortAllocator
) -> None:
    require_sipp()
    session = await MediaSession.open(allocator.allocate(), remote=None, codec=PCMU)
    stub, proc, sip = await _call(tmp_path, session.local_port, PAUSE % {"ms": 2500}, echo=True)
    try:
        async with asyncio.timeout(20):
            await stub.invited.wait()
        session.update_remote(("127.0.0.1", stub.offered_media_port()))
        session.play(g711.pcm16_to_ulaw(tone(700, 8000, 1.5)))
        pcm = b""
        async with asyncio.timeout(20):
            async for event in session.events():
                if isinstance(event, AudioReceived) and event.payload != b"\xff" * 160:
                    pcm += event.pcm
                    if len(pcm) >= 2 * 8000:
                        break
        await _finish(proc, tmp_path)
    finally:
        if proc.returncode is None:
            proc.kill()
        sip.close()
        await session.close()
    assert dominant_hz(pcm, 8000) == pytest.approx(700, abs=10)
    assert session.remote is not None
