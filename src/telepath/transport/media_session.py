"""Per-call media session: RTP/RTCP sockets, symmetric latching, paced playout, inbound events.

API for call control
--------------------
::

    allocator = RtpPortAllocator.from_settings(settings)          # once per process
    session = await MediaSession.open(
        allocator.allocate(),                                      # raises RtpPortsExhausted (503)
        remote=("203.0.113.5", 40000),                             # from the SDP c=/m= lines
        codec=CodecSpec.static("PCMU"),                            # negotiated codec
        dtmf_payload_type=101, ptime_ms=20,
        recv_payload_type=0, recv_dtmf_payload_type=101,           # only if ours differ
        signalling_ip="203.0.113.5",                               # source IP of the INVITE
    )
    session.play(ulaw_bytes)               # pass-through: audio already in the call's codec
    session.play_pcm(pcm16, sample_rate=24000)   # or PCM16 at 8/16/24 kHz (resampled, encoded)
    session.mark("item-42")                # MarkPlayed("item-42") once playout passes here
    played_ms = session.flush()            # barge-in: queue emptied now; ms actually played
    session.send_dtmf("5")                 # RFC 4733 to the caller
    async for event in session.events():   # AudioReceived / DtmfReceived / MarkPlayed / MediaEnded
        ...
    session.update_remote(("198.51.100.7", 50000))   # re-INVITE moved the media
    session.hold(True); session.hold(False)          # sendonly/inactive: stop sending, keep call
    session.set_audio_sink(callback)       # AudioReceived synchronously (per-frame fast path)
    session.rekey(keys)                    # SRTP: a re-INVITE brought new keys
    session.stats()                        # live MediaStats; final after close
    await session.close()                  # idempotent; releases the ports; MediaEnded("closed")

``open`` takes ownership of the lease: the ports are released on every exit path (close, a
failure inside ``open``, media timeout). Alternatively pass ``on_event=`` to receive events
synchronously from the protocol callback instead of through the bounded queue.

Latching policy (symmetric RTP without RTP Bleed)
-------------------------------------------------
We send to the SDP address until media from the peer tells us otherwise: the peer sends from
where it receives (symmetric RTP, RFC 4961), so the source of its packets is where a NAT lets
ours through. A datagram with a negotiated payload type from another address is accepted, and
becomes the destination ("latched"), only when:

1. it comes from the SDP address itself (always: what the signalling named; our audio then
   goes where the call's own SDP said, which a third party cannot receive),
2. its IP equals the SDP address's IP or the signalling source IP (a NAT rewrote only the port;
   both IPs come from the call's signalling, so a later NAT rebinding there is followed too),
3. or nothing has latched yet: the first valid RTP packet with a negotiated payload type wins,
   once (an endpoint behind NAT that put its private address in SDP).

The first latch, by whichever rule, closes rule 3 for the rest of the offer/answer ("latch once,
early", as SBCs do), and narrows rule 2: a carrier's SBC relays many calls from one IP, so
another port on it may be another call's relay, a spoofed source or a previous call's tail.
Once latched, a packet from a new port on those IPs moves the media only when it

* continues the latched stream: its SSRC, and a sequence number at most
  ``REBIND_SEQ_WINDOW`` after the highest seen (a NAT that rebound the caller's mapping), or
* comes after the latched source has been silent ``LATCH_SILENCE_S`` (a genuine move: a new
  mapping or relay port with a new stream; a caller back from hold),

as Asterisk's strictrtp and rtpengine do. Everything else is dropped and counted in
``rejected_source``: it is neither delivered nor latched, and never redirects our audio, so a
third party spraying packets at our port (the "RTP Bleed" attack) can neither steal the
caller's audio nor inject its own while the call's media is flowing. Only a re-INVITE/UPDATE
that changes the SDP address or its RTCP address (``update_remote``) opens the window again,
for the new address; one that repeats them (a session-timer refresh, RFC 4028) changes nothing.

Addresses: the SDP gives IP addresses; each is written once (at :meth:`MediaSession.open`
and :meth:`MediaSession.update_remote`) as the RTP socket sends to and reports peers
(:meth:`~telepath.transport.ports.PortLease.peer_host`): on a dual-stack AF_INET6 socket an
IPv4 caller is ``('::ffff:a.b.c.d', port, 0, 0)``, the tuple its datagrams arrive with, so the
latching rules compare like with like and the per-packet check stays one tuple compare. An
address the socket cannot send to (the other IP version; a name, which call control refuses
with 488 before it gets here) is no destination: nothing is sent until the peer's RTP latches
one. And whatever a send raises, the rest of the tick and of :meth:`close` still runs.

SRTP (``srtp=`` keys from SDES, RFC 4568): every datagram is authenticated and decrypted
first, and one that fails (forged, corrupted, replayed, or plain) is dropped and counted in
``unauthenticated`` before it can latch, so with SRTP only the holder of the peer's key can
move our media; every packet we send, RTCP included, is protected last.

Inbound path, per datagram: source check, RTCP refused (RFC 5761 §4: we do not multiplex, so
it is malformed RTP), parse, RFC 4733 events straight to the DTMF decoder,
audio through the jitter buffer (reorder, loss and duplicate detection, concealment), decode,
deliver; events and the latched source's packets of other types (comfort noise) count as
received and keep their slots in the buffer, unplayed, and only audio is a jitter sample.
Outbound path, per tick of the shared deadline pacer: one frame from
:class:`telepath.rtp.playout.Playout` (agent audio, silence, or DTMF), one ``sendto``.

Ticks run in the shared pacer's context, which is no call's (``media_pacer.py``); the session
keeps the ``contextvars`` context it was opened in — its call's, with the call id every log line
carries (``log.py``) — and what a tick does for this call alone that may log (the inactivity
timeout and the session's end) runs in it. Only then: entering a context costs, and a tick is
on the media path of every call.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import logging
import random
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from enum import StrEnum
from time import perf_counter_ns

from telepath.rtp.codecs import SAME_AS_SEND, CodecSpec, make_codec
from telepath.rtp.demux import is_stun
from telepath.rtp.dtmf import DtmfDecoder, DtmfDigit
from telepath.rtp.errors import RtpError
from telepath.rtp.jitter import Concealer, JitterBuffer, JitterFrame
from telepath.rtp.packet import (
    FIXED_HEADER,
    PLAIN_V2,
    RTP_HEADER_LENGTH,
    RtpPacket,
    is_rtcp,
    pack_rtp,
)
from telepath.rtp.playout import Playout
from telepath.rtp.rtcp import (
    SDES_CNAME,
    RtcpBye,
    RtcpPacket,
    RtcpReceiverReport,
    RtcpSdes,
    RtcpSenderReport,
    RtcpSourceDescription,
    last_sr_fields,
    ntp_from_unix,
    ntp_middle32,
    parse_compound,
    serialize_compound,
)
from telepath.rtp.srtp import SrtpContext, SrtpError
from telepath.rtp.srtp_keys import SrtpKeys
from telepath.rtp.stats import ReceiverStats
from telepath.transport import media_pacer
from telepath.transport.media_pacer import Pacer
from telepath.transport.media_stats import DirectionStats, MediaStats, ProcessingTimer
from telepath.transport.ports import PortLease

logger = logging.getLogger(__name__)

_PLAIN = bytes((PLAIN_V2,))  # the first octet of a plain RTP packet

Address = tuple[str, int]
# What the RTP socket reports and takes: (host, port) for AF_INET, (host, port, flowinfo,
# scope_id) for AF_INET6 (also what it takes; a 2-tuple is taken too).
SockAddr = tuple[str, int] | tuple[str, int, int, int]
DEFAULT_EVENT_QUEUE = 100  # 2 s of 20 ms frames
DEFAULT_INACTIVITY_TIMEOUT_S = 30.0
RTCP_INTERVAL_S = 5.0  # RFC 3550 §6.2 minimum; randomised x[0.5, 1.5] (§6.3.1)
DTMF_EXPIRE_S = 0.3
_UNSPECIFIED = frozenset(("0.0.0.0", "::"))  # an SDP connection address meaning "none"
# Latching (module docstring): how long the latched source must have sent nothing before a new
# port on a trusted IP may take the media over. Ten 20 ms packets: far longer than the jitter
# of a flowing stream, short enough that a genuine move loses a fraction of a second.
LATCH_SILENCE_S = 0.2
# ... and how far past the highest sequence number a packet of the latched SSRC from a new port
# continues its stream (a NAT rebinding): 32 packets (640 ms at 20 ms), longer than the silence.
REBIND_SEQ_WINDOW = 32


class MediaEndReason(StrEnum):
    """Why a media session ended."""

    CLOSED = "closed"
    MEDIA_TIMEOUT = "media-timeout"


@dataclass(slots=True)  # not frozen: built per 20 ms frame (frozen costs 3x)
class AudioReceived:
    """One inbound frame, in playout order.

    Attributes:
        pcm: decoded PCM16 at ``sample_rate`` (concealment when ``lost``).
        payload: the codec payload (re-encoded concealment when ``lost``) for pass-through.
        sample_rate: PCM rate in Hz.
        timestamp: RTP timestamp.
        lost: True when the packet never arrived and this frame was concealed.
    """

    pcm: bytes
    payload: bytes
    sample_rate: int
    timestamp: int
    lost: bool


@dataclass(frozen=True, slots=True)
class DtmfReceived:
    """A key press from the caller (RFC 4733), reported once when it ends."""

    digit: DtmfDigit


@dataclass(frozen=True, slots=True)
class MarkPlayed:
    """Playout passed a mark, or a flush cleared it (``cleared=True``) before it was reached."""

    name: str
    cleared: bool = False


@dataclass(frozen=True, slots=True)
class MediaEnded:
    """The session ended; always the last event."""

    reason: MediaEndReason


MediaEvent = AudioReceived | DtmfReceived | MarkPlayed | MediaEnded


class _Protocol(asyncio.DatagramProtocol):
    def __init__(
        self,
        handler: Callable[[bytes, SockAddr], None],
        send_failed: Callable[[Exception], None],
    ) -> None:
        self.datagram_received = handler  # type: ignore[method-assign,assignment]
        self._send_failed = send_failed

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable while the peer is not yet listening: expected, not fatal.
        if isinstance(exc, ConnectionRefusedError):
            logger.debug("media socket error: %s", type(exc).__name__)
            return
        # Anything else is a send the kernel refused (EACCES, ENETUNREACH, EPERM …): asyncio
        # and uvloop both hand sendto's OSError here instead of raising it.
        self._send_failed(exc)


class MediaSession:
    """One call's RTP/RTCP media. Create with :meth:`open`; see the module docstring."""

    def __init__(
        self,
        lease: PortLease,
        remote: Address | None,
        codec: CodecSpec,
        *,
        dtmf_payload_type: int | None,
        recv_payload_type: int,
        recv_dtmf_payload_type: int | None,
        ptime_ms: int,
        signalling_ip: str | None,
        inactivity_timeout_s: float,
        jitter_min_ms: int,
        jitter_max_ms: int,
        event_queue_size: int,
        on_event: Callable[[MediaEvent], None] | None,
        cname: str | None,
        rtcp_interval_s: float,
        srtp: SrtpKeys | None,
    ) -> None:
        self.lease = lease
        self._srtp = None if srtp is None else SrtpContext(srtp)
        self.codec = codec
        self.ptime_ms = ptime_ms
        self.dtmf_payload_type = dtmf_payload_type
        # What the peer sends with: the numbers of OUR SDP (RFC 3264 §5.1), which differ from
        # the send side's only after an answer that renumbered our offer (§6.1). Plain ints,
        # fixed here, so classifying a packet costs what it did with one number per format.
        self.recv_dtmf_payload_type = (
            dtmf_payload_type if recv_dtmf_payload_type == SAME_AS_SEND else recv_dtmf_payload_type
        )
        self.inactivity_timeout_s = inactivity_timeout_s
        self._signalling_ip = signalling_ip
        self._six = lease.family == socket.AF_INET6  # peers are 4-tuples
        # the signalling IP as the RTP socket reports it (a dual-stack SIP socket's
        # ::ffff:a.b.c.d on an IPv4 RTP socket, or the other way round)
        self._trusted_ip = None if signalling_ip is None else lease.peer_host(signalling_ip)
        self._send_errors = 0
        self._codec = make_codec(codec)
        # A concealed frame's payload gets an encoder of its own: through the outbound one (a
        # stateful codec: G.722 is ADPCM) each lost inbound packet would put a frame into the
        # state of the caller's stream.
        self._conceal_codec = make_codec(codec)
        self._codec_pt = (  # the codec's number on RECEIVED packets
            codec.payload_type if recv_payload_type == SAME_AS_SEND else recv_payload_type
        )
        self._rate = codec.sample_rate
        self.ssrc = secrets.randbits(32)
        self._seq = secrets.randbits(16)
        self._playout = Playout(self._codec, ptime_ms, secrets.randbits(32), dtmf_payload_type)
        self._jitter = JitterBuffer(
            ptime_ms,
            self._playout.samples_per_frame,
            min_depth_ms=jitter_min_ms,
            max_depth_ms=jitter_max_ms,
        )
        self._concealer = Concealer(codec.pcm_bytes(ptime_ms))
        self._dtmf = DtmfDecoder()
        self._rx = ReceiverStats(codec.clock_rate)
        self._in_timer = ProcessingTimer()
        self._out_timer = ProcessingTimer()
        self._queue: asyncio.Queue[MediaEvent] = asyncio.Queue(event_queue_size)
        self._on_event = on_event
        self._audio_sink: Callable[[AudioReceived], None] | None = None
        # RFC 3550 §6.5.1: unique per session; RFC 7022 §4.2, §5: a short-term persistent one,
        # 96 random bits in base64, unless the caller of open gives one.
        self._cname = base64.b64encode(secrets.token_bytes(12)) if cname is None else cname.encode()
        self._rtcp_interval = rtcp_interval_s
        self._loop = asyncio.get_running_loop()
        self._context = contextvars.copy_context()  # the call's (module docstring)
        self._rtp: asyncio.DatagramTransport | None = None
        self._rtcp: asyncio.DatagramTransport | None = None
        self._pacer = Pacer.for_loop(ptime_ms, self._loop)
        self._tick_handle: int | None = None
        self._held = False
        self._inbound_expected = True  # False: the peer said it sends nothing (recvonly)
        self._ended: MediaEndReason | None = None
        self._final: MediaStats | None = None
        # addressing
        self._sdp: SockAddr | None = None
        self._rtcp_sdp: SockAddr | None = None
        self._dest: SockAddr | None = None
        self._rtcp_dest: SockAddr | None = None
        # A packet from an accepted source set the destination since the SDP address was set:
        # first-packet latching (rule 3) is over until the next one (module docstring).
        self._latched = False
        # _rtcp_dest is where the peer's RTCP came from (symmetric RTCP, RFC 4961), not derived
        # from the SDP or a latch: a latch to that IP keeps it.
        self._rtcp_learned = False
        self._set_remote(remote, None)
        # counters
        now = time.monotonic()
        self._last_rx = now
        self._last_dtmf_rx = now
        self._packets_sent = 0
        self._octets_sent = 0
        self._sent_since_report = False
        self._packets_received = 0
        self._bytes_received = 0
        self._concealed = 0
        self._dtmf_count = 0
        self._rejected = 0
        self._malformed = 0
        self._unauthenticated = 0
        self._events_dropped = 0
        self._next_rtcp = now + rtcp_interval_s * random.uniform(0.5, 1.5)
        self._last_sr: tuple[int, float] | None = None  # (LSR, monotonic time received)
        self._remote_loss = 0.0
        self._remote_jitter_ms = 0.0
        self._rtt_ms: float | None = None
        self._remote_reports = 0  # the peer's SR/RR compounds
        self._reports_without_us = 0  # the latest of them in a row without our block, sending
        self._sent_at_report = 0  # our packets sent when its previous report came

    # ---- lifecycle -------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        lease: PortLease,
        *,
        remote: Address | None,
        codec: CodecSpec,
        dtmf_payload_type: int | None = 101,
        recv_payload_type: int = SAME_AS_SEND,
        recv_dtmf_payload_type: int | None = SAME_AS_SEND,
        ptime_ms: int = 20,
        signalling_ip: str | None = None,
        inactivity_timeout_s: float = DEFAULT_INACTIVITY_TIMEOUT_S,
        jitter_min_ms: int = 20,
        jitter_max_ms: int = 60,
        event_queue_size: int = DEFAULT_EVENT_QUEUE,
        on_event: Callable[[MediaEvent], None] | None = None,
        cname: str | None = None,
        rtcp_interval_s: float = RTCP_INTERVAL_S,
        srtp: SrtpKeys | None = None,
        rtcp: Address | None = None,
    ) -> MediaSession:
        """Start media on a leased port pair and begin paced sending.

        Args:
            lease: the ports; owned by the session from now on (released on every exit path).
            remote: the peer's RTP address from SDP; None to wait for an offer (nothing is sent
                until :meth:`update_remote`).
            codec: the negotiated audio codec, with the payload type we send it with.
            dtmf_payload_type: the telephone-event payload type we send with, None if not
                negotiated.
            recv_payload_type: the codec's payload type on packets we receive: our SDP's
                number (RFC 3264 §5.1); by default ``codec.payload_type``. It differs only
                when we offered and the answer renumbered the codec (§6.1).
            recv_dtmf_payload_type: likewise for telephone-event (None: the peer sends no
                events); by default ``dtmf_payload_type``.
            ptime_ms: packet time (20 unless SDP says otherwise).
            signalling_ip: source IP of the SIP request, trusted for latching.
            inactivity_timeout_s: end the session when no RTP arrives for this long (not on
                hold); 0 disables.
            jitter_min_ms: least jitter-buffer depth.
            jitter_max_ms: greatest jitter-buffer depth.
            event_queue_size: bound of the inbound event queue (oldest audio is dropped).
            on_event: receive events synchronously instead of through :meth:`events`.
            cname: RTCP SDES CNAME; None: a random one of this session's (RFC 7022 §5).
            rtcp_interval_s: mean RTCP report interval (randomised x[0.5, 1.5], §6.3.1).
            srtp: the SRTP keys of an ``RTP/SAVP`` stream; None for plain RTP.
            rtcp: the peer's RTCP address from SDP (``a=rtcp``, RFC 3605); None: the RTP
                port + 1 (RFC 3550 §11), and no RTCP is sent when the RTP port is 65535.

        Returns:
            The running session.
        """
        try:
            session = cls(
                lease,
                remote,
                codec,
                dtmf_payload_type=dtmf_payload_type,
                recv_payload_type=recv_payload_type,
                recv_dtmf_payload_type=recv_dtmf_payload_type,
                ptime_ms=ptime_ms,
                signalling_ip=signalling_ip,
                inactivity_timeout_s=inactivity_timeout_s,
                jitter_min_ms=jitter_min_ms,
                jitter_max_ms=jitter_max_ms,
                event_queue_size=event_queue_size,
                on_event=on_event,
                cname=cname,
                rtcp_interval_s=rtcp_interval_s,
                srtp=srtp,
            )
        except BaseException:
            lease.release()
            raise
        if rtcp is not None:
            session._set_remote(remote, rtcp)
        loop = session._loop
        try:
            session._rtp, _ = await loop.create_datagram_endpoint(
                lambda: _Protocol(session._on_rtp, session._send_failed), sock=lease.rtp_socket
            )
            session._rtcp, _ = await loop.create_datagram_endpoint(
                lambda: _Protocol(session._on_rtcp, session._send_failed), sock=lease.rtcp_socket
            )
        except BaseException:
            if session._rtp is not None:
                session._rtp.close()
            lease.release()
            raise
        session._tick_handle = session._pacer.subscribe(session._on_tick)
        return session

    async def close(self) -> MediaStats:
        """Stop media, send RTCP BYE, release the ports. Idempotent.

        Returns:
            The final statistics.
        """
        self._end(MediaEndReason.CLOSED)
        await asyncio.sleep(0)  # let the transports finish closing
        return self.stats()  # the final snapshot

    async def __aenter__(self) -> MediaSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def local_port(self) -> int:
        """The RTP port to put in our SDP (the NAT's outside port when STUN found one)."""
        return self.lease.sdp_port

    @property
    def local_rtcp_port(self) -> int | None:
        """The RTCP port to put in our SDP's ``a=rtcp`` (None: the RTP port + 1)."""
        return self.lease.sdp_rtcp_port

    @property
    def ended(self) -> MediaEndReason | None:
        """Why the session ended, or None while it runs."""
        return self._ended

    @property
    def signalling_ip(self) -> str | None:
        """The IP address the call's signalling came from (given at open)."""
        return self._signalling_ip

    @property
    def remote(self) -> Address | None:
        """Where RTP is being sent now (the SDP address or the latched one), written as SDP
        writes it (an IPv4 peer of a dual-stack socket as ``a.b.c.d``); None: nowhere yet."""
        dest = self._dest
        if dest is None:
            return None
        host = dest[0]
        if host.startswith("::ffff:") and "." in host:
            host = host[7:]
        return host, dest[1]

    # ---- outbound API ----------------------------------------------------------------------

    def play(self, payload: bytes) -> None:
        """Queue agent audio already encoded in the call's codec (pass-through, no transcode).

        Raises:
            PlayoutOverflow: more than two minutes of audio would be queued.
        """
        self._playout.enqueue(payload)

    def play_pcm(self, pcm: bytes, sample_rate: int = 8000) -> None:
        """Queue agent audio as PCM16 at 8, 16 or 24 kHz (resampled and encoded here)."""
        self._playout.enqueue_pcm(pcm, sample_rate)

    def mark(self, name: str, *, bounded: bool = True) -> None:
        """Emit ``MarkPlayed(name)`` once everything queued so far has been sent.

        Raises:
            PlayoutOverflow: ``bounded`` and too many marks wait (:meth:`Playout.mark`).
        """
        self._playout.mark(name, bounded=bounded)

    def flush(self) -> float:
        """Barge-in: drop queued agent audio now; the next frame is silence.

        Returns:
            Agent audio actually sent since the previous flush, in ms.
        """
        played, cleared = self._playout.flush()
        for name in cleared:
            self._emit(MarkPlayed(name, cleared=True))
        return played

    @property
    def queued_ms(self) -> float:
        """Agent audio waiting to be played, in ms."""
        return self._playout.queued_ms

    def send_dtmf(self, key: str, duration_ms: int = 100) -> None:
        """Send an RFC 4733 key press to the caller, starting on the next frame."""
        self._playout.send_dtmf(key, duration_ms)

    def hold(self, held: bool) -> None:
        """Stop (True) or resume (False) sending RTP; the call and RTCP continue.

        Use for SDP sendonly/inactive from the peer (we must not send) and for resuming. The
        RTP clock keeps running, so timestamps after resume reflect the elapsed time, and the
        first packet after resume carries the marker bit. Queued agent audio is kept.
        """
        self._held = held
        if not held:
            self._last_rx = time.monotonic()  # the peer may have been silent while held

    def set_dtmf_payload_type(
        self, payload_type: int | None, recv: int | None = SAME_AS_SEND
    ) -> None:
        """Follow a new offer/answer's telephone-event payload type (None: not negotiated):
        ``payload_type`` to send with, ``recv`` on received packets (by default the same, as
        when we answer an offer: RFC 3264 §6.1)."""
        self.dtmf_payload_type = payload_type
        self.recv_dtmf_payload_type = payload_type if recv == SAME_AS_SEND else recv
        self._playout.set_dtmf_payload_type(payload_type)

    def set_recv_payload_type(self, payload_type: int) -> None:
        """Follow a new offer/answer's payload type for the codec on received packets (our
        SDP's number, RFC 3264 §5.1); the codec itself, and the number we send it with, stay."""
        self._codec_pt = payload_type

    def expect_inbound(self, expected: bool) -> None:
        """Whether the peer is to send RTP: False for an ``a=recvonly`` peer (RFC 3264 §6.1),
        whose silence is then no media timeout; True again restarts the timeout's clock."""
        if expected and not self._inbound_expected:
            self._last_rx = time.monotonic()
        self._inbound_expected = expected

    def update_remote(self, remote: Address, rtcp: Address | None = None) -> None:
        """Follow a re-INVITE's or UPDATE's media address and a=rtcp address (None: as in
        open). Only a change of either (RFC 3264 §8.3.1) moves the media and starts latching
        afresh; the same ones again (a session refresh) keep it where it latched."""
        self._set_remote(remote, rtcp)

    @property
    def srtp(self) -> SrtpKeys | None:
        """The SRTP keys in use; None for plain RTP."""
        return None if self._srtp is None else self._srtp.keys

    def rekey(self, keys: SrtpKeys) -> None:
        """The SRTP keys of a re-INVITE (RFC 4568 §7.1.4): a new key of the peer's starts its
        direction afresh; ours and the suite cannot change (:meth:`SrtpContext.rekey`)."""
        if self._srtp is None:
            raise ValueError("a plain RTP session cannot switch to SRTP")
        self._srtp.rekey(keys)

    # ---- inbound API -----------------------------------------------------------------------

    def set_audio_sink(self, sink: Callable[[AudioReceived], None] | None) -> None:
        """Deliver ``AudioReceived`` to ``sink`` synchronously, from the receive path, instead
        of through :meth:`events` (which keeps every other event). Frames already queued stay
        queued: consume them from :meth:`events` first — it yields them without waiting — so
        that order holds."""
        self._audio_sink = sink

    async def events(self) -> AsyncIterator[MediaEvent]:
        """Yield inbound events until (and including) :class:`MediaEnded`."""
        while True:
            event = await self._queue.get()
            yield event
            if isinstance(event, MediaEnded):
                return

    def stats(self) -> MediaStats:
        """Live statistics (the final snapshot once closed)."""
        if self._final is not None:
            return self._final
        duplicates = self._jitter.stats.duplicates
        return MediaStats(
            packets_sent=self._packets_sent,
            packets_received=self._packets_received,
            bytes_received=self._bytes_received,
            # duplicates taken out: RFC 3550 counts them as received (§A.3), which hid loss;
            # RTCP report blocks keep its count
            packets_lost=self._rx.lost_without(duplicates),
            # not measured before the first packet (0 % / 0 ms would read as a perfect line)
            loss_percent=(
                self._rx.loss_percent_without(duplicates) if self._packets_received else None
            ),
            # the call's mean of the RFC 3550 estimate (§1.7 "Average RTP jitter"); RTCP
            # report blocks carry the running one
            jitter_ms=(self._rx.mean_jitter_ms or 0.0) if self._packets_received else None,
            late=self._jitter.stats.late,
            duplicates=self._jitter.stats.duplicates,
            concealed_frames=self._concealed,
            jitter_buffer_ms=self._jitter.depth_ms,
            dtmf_received=self._dtmf_count,
            rejected_source=self._rejected,
            malformed=self._malformed,
            unauthenticated=self._unauthenticated,
            send_errors=self._send_errors,
            audio_played_ms=self._playout.played_ms,
            remote_loss_fraction=self._remote_loss,
            remote_jitter_ms=self._remote_jitter_ms,
            rtt_ms=self._rtt_ms,
            remote_reports=self._remote_reports,
            remote_reports_without_us=self._reports_without_us,
            inbound=DirectionStats.of(self._in_timer),
            outbound=DirectionStats.of(self._out_timer),
        )

    # ---- internals: addressing ---------------------------------------------------------------

    def _peer(self, address: Address | None) -> SockAddr | None:
        """An SDP address as the RTP socket reports peers (module docstring); None for None
        and for one it cannot send to."""
        if address is None:
            return None
        host = self.lease.peer_host(address[0])
        if host is None:
            # The other IP version (linphone gives its IPv6 address with IPv6 off and sends
            # over IPv4; call control refuses only names): no destination rather than a send
            # that raises; the caller's RTP latches one (rules 2 and 3).
            logger.info("SDP media address not reachable from the RTP socket; latching instead")
            return None
        return (host, address[1], 0, 0) if self._six else (host, address[1])

    def _set_remote(self, remote: Address | None, rtcp: Address | None) -> None:
        sdp = self._peer(remote)
        rtcp_sdp: SockAddr | None
        if rtcp is None and sdp is not None and sdp[1] < 0xFFFF:
            # RFC 3550 §11: the next port; RTP on 65535 has none: no RTCP
            rtcp_sdp = (sdp[0], sdp[1] + 1, 0, 0) if self._six else (sdp[0], sdp[1] + 1)
        else:
            rtcp_sdp = self._peer(rtcp)
        if sdp == self._sdp and rtcp_sdp == self._rtcp_sdp:
            # The same SDP addresses (a session refresh, RFC 4028; a hold or resume in place):
            # media stays where it latched — behind a NAT the SDP address is its unreachable
            # inside — and first-packet latching stays over. Compared with the SDP's previous
            # values, not with where media goes now.
            return
        self._sdp = self._dest = sdp
        self._rtcp_sdp = self._rtcp_dest = rtcp_sdp
        self._rtcp_learned = False
        self._latched = False

    def _accept_source(self, addr: SockAddr) -> bool:
        """The latching policy's address rules from the module docstring; True if ``addr`` may
        be latched (once latched, a port of rule 2 only as :meth:`_may_move` says)."""
        sdp = self._sdp
        if sdp is not None and addr == sdp:
            return True
        ip = addr[0]
        if (sdp is not None and ip == sdp[0]) or ip == self._trusted_ip:
            return True
        # Rule 3 only until the first latch, whichever rule made it: a latch by rule 2 (the
        # commonest NAT case: the SDP gives a private address, RTP comes from the signalling
        # IP) left it open for the whole call, so one packet from anyone took the media.
        return not self._latched

    def _may_move(self, addr: SockAddr, packet: RtpPacket) -> bool:
        """Whether a packet of a negotiated type from an accepted source other than the latched
        one may move the media there, once latched (module docstring): the SDP address itself
        (rule 1), a continuation of the latched stream, or a source after the latched one's
        silence. Only on the path of a source not yet known: the steady state never gets here."""
        if addr == self._sdp:
            return True
        if self._rx.continues(packet.ssrc, packet.sequence_number, REBIND_SEQ_WINDOW):
            return True
        # _last_rx: the latched source's last packet (every other one latched or was refused),
        # or a resume from hold, after which the silence is counted afresh.
        return time.monotonic() - self._last_rx >= LATCH_SILENCE_S

    def _latch(self, addr: SockAddr) -> None:
        self._latched = True
        if addr != self._dest:
            logger.info("RTP latched to the observed source address")
            self._dest = addr
            rtcp, named, sdp = self._rtcp_dest, self._rtcp_sdp, self._sdp
            if self._rtcp_learned and rtcp is not None and rtcp[0] == addr[0]:
                return  # where the peer's own RTCP comes from (RFC 4961): its NAT's mapping
            if named is not None and sdp is not None and named[0] != sdp[0]:
                return  # a=rtcp named an IP of its own (RFC 3605 §2.1): RTP's says nothing of it
            rtcp_port = self._rtcp_sdp[1] if self._rtcp_sdp is not None else addr[1] + 1
            self._rtcp_dest = (addr[0], rtcp_port)
            self._rtcp_learned = False

    # ---- internals: inbound --------------------------------------------------------------------

    def _on_rtp(self, data: bytes, addr: SockAddr) -> None:
        media_pacer.serve_due()  # a send that is due goes before this packet (serve_due)
        started = perf_counter_ns()
        if self._ended is not None:
            return
        if self._srtp is not None:
            try:
                data = self._srtp.unprotect(data)
            except SrtpError:
                if not is_stun(data):
                    self._unauthenticated += 1
                return
        known = addr == self._dest
        if known and self._latched and data[:1] == _PLAIN and len(data) > RTP_HEADER_LENGTH:
            # The steady state: the next packet of the negotiated codec from the latched source,
            # with a plain header (RFC 3550 §5.1) and nothing waiting in the jitter buffer. The
            # same accounting as below, without the general path's packet and frame objects.
            _, second, seq, ts, ssrc = FIXED_HEADER.unpack_from(data)
            if second & 0x7F == self._codec_pt and self._jitter.take_next(ssrc, seq, ts):
                payload = data[RTP_HEADER_LENGTH:]
                # the arrival, to the µs: uvloop's loop.time() is whole ms, frozen for a batch
                # of callbacks (quantisation noise in the RFC 3550 §A.8 jitter); the pacer's
                # ticks, which compare with it, read this clock too (media_pacer.py)
                now = time.monotonic()
                self._last_rx = now
                self._packets_received += 1
                self._bytes_received += len(payload)
                self._rx.update(ssrc, seq, ts, now)
                pcm = self._concealer.good(self._codec.decode(payload))
                self._emit(AudioReceived(pcm, payload, self._rate, ts, False))
                self._in_timer.record(perf_counter_ns() - started)
                return
        if not known and not self._accept_source(addr):
            if not is_stun(data):
                self._rejected += 1
            return
        if is_rtcp(data):
            # RFC 5761 §4: RTCP (a marker bit and payload type 64-95 as RTP), which belongs on
            # the RTCP port: we never answer a=rtcp-mux (sdp/negotiate.py). Not RTP; read as
            # RTP, its SSRC restarted the stream's statistics and its jitter buffer.
            self._malformed += 1
            return
        try:
            packet = RtpPacket.parse(data)
        except RtpError:
            if not is_stun(data):
                self._malformed += 1
            return
        pt = packet.payload_type
        is_audio = pt == self._codec_pt
        is_dtmf = pt == self.recv_dtmf_payload_type
        if is_audio or is_dtmf:
            if not known and self._latched and not self._may_move(addr, packet):
                self._rejected += 1
                return  # another port on a trusted IP while the latched source flows
            if not known or not self._latched:  # known: the SDP address's first packet
                self._latch(addr)
        elif not known:
            self._rejected += 1
            return  # an unnegotiated type from a source not latched: refused, latches nothing
        # From here on comfort noise (RFC 3389) or another unnegotiated type from the latched
        # source too: it takes a sequence number and counts as received (RFC 3550 §A.3), and
        # keeps its slot in the jitter buffer (not played: _deliver), or it would be a loss.
        now = time.monotonic()
        self._last_rx = now
        self._packets_received += 1
        self._bytes_received += len(packet.payload)
        seq, ts = packet.sequence_number, packet.timestamp
        # RFC 3550 §6.4.1/§A.8: only audio is a jitter sample. An RFC 4733 event's packets all
        # carry its start timestamp (§2.5.1.2); an unnegotiated type's clock is unknown.
        self._rx.update(packet.ssrc, seq, ts, now if is_audio else None)
        if is_dtmf:
            self._last_dtmf_rx = now
            try:
                digits = self._dtmf.feed(ts, packet.payload)
            except RtpError:
                self._malformed += 1
                digits = []
            for digit in digits:
                self._dtmf_count += 1
                self._emit(DtmfReceived(digit))
        frames = self._jitter.push(packet.ssrc, seq, ts, packet.payload, now, packet.marker, pt)
        if frames:
            self._deliver(frames)
        self._in_timer.record(perf_counter_ns() - started)

    def _deliver(self, frames: list[JitterFrame]) -> None:
        codec = self._codec
        rate = self.codec.sample_rate
        for frame in frames:
            if frame.lost:
                self._concealed += 1
                pcm = self._concealer.conceal()
                payload = self._conceal_codec.encode(pcm)
                self._emit(AudioReceived(pcm, payload, rate, frame.timestamp, True))
            elif frame.payload_type != self._codec_pt:
                continue  # telephone-event, comfort noise: only kept its slot in the sequence
            else:
                pcm = self._concealer.good(codec.decode(frame.payload))
                self._emit(AudioReceived(pcm, frame.payload, rate, frame.timestamp, False))

    def _emit(self, event: MediaEvent) -> None:
        if self._on_event is not None:
            self._on_event(event)
            return
        if self._audio_sink is not None and type(event) is AudioReceived:
            self._audio_sink(event)
            return
        queue = self._queue
        if queue.full():
            if isinstance(event, AudioReceived):
                self._events_dropped += 1
                return
            queue.get_nowait()  # control events displace the oldest entry
            self._events_dropped += 1
        queue.put_nowait(event)

    # ---- internals: outbound, timers -----------------------------------------------------------

    def _on_tick(self, now: float, frames: int) -> None:
        started = perf_counter_ns()
        playout = self._playout
        send = not self._held and self._dest is not None and self._rtp is not None
        skipped_marks: list[str] = []
        for _ in range(frames - 1):
            if send:  # a stall: keep the clock and the agent's audio on real time
                skipped_marks += playout.skip_frame()
            else:
                playout.next_frame(send=False)  # on hold: the clock runs, audio is kept
        frame, reached = playout.next_frame(send=send)
        reached = skipped_marks + reached
        if frame is not None and self._rtp is not None and self._dest is not None:
            data = pack_rtp(
                frame.payload_type,
                self._seq,
                frame.timestamp,
                self.ssrc,
                frame.payload,
                frame.marker,
            )
            self._seq = (self._seq + 1) & 0xFFFF
            if self._srtp is not None:
                data = self._srtp.protect(data)
            try:
                self._rtp.sendto(data, self._dest)
            except Exception as exc:  # the rest of the tick must run (the inactivity check)
                self._send_failed(exc)
            else:
                self._packets_sent += 1
                self._octets_sent += len(frame.payload)
                self._sent_since_report = True
            self._out_timer.record(perf_counter_ns() - started)
        for name in reached:
            self._emit(MarkPlayed(name))
        released = self._jitter.poll(now)
        if released:
            self._deliver(released)
        if self._dtmf.active is not None and now - self._last_dtmf_rx > DTMF_EXPIRE_S:
            for digit in self._dtmf.expire():
                self._dtmf_count += 1
                self._emit(DtmfReceived(digit))
        if now >= self._next_rtcp:
            self._next_rtcp = now + self._rtcp_interval * random.uniform(0.5, 1.5)
            self._jitter.adapt(self._rx.jitter_ms)
            self._send_rtcp([], now)
        timeout = self.inactivity_timeout_s
        if timeout and not self._held and self._inbound_expected and now - self._last_rx > timeout:
            self._context.run(self._timed_out)

    def _timed_out(self) -> None:
        logger.info("media inactivity timeout")
        self._end(MediaEndReason.MEDIA_TIMEOUT)

    def _report(self, tick_at: float | None) -> list[RtcpPacket]:
        lsr = dlsr = 0
        if self._last_sr is not None:  # 0 and 0 once too old for DLSR's 32 bits (§6.4.1)
            lsr, dlsr = last_sr_fields(self._last_sr[0], time.monotonic() - self._last_sr[1])
        block = self._rx.report_block(lsr, dlsr)
        blocks = [block] if block is not None else []
        head: RtcpPacket
        if self._sent_since_report:
            # RFC 3550 §6.4.1: the RTP timestamp of the NTP timestamp's instant, on the clock
            # the packets' come from: the playout's, which has moved on to the next frame; the
            # last tick's frame, plus the time since that tick (tick_at, time.monotonic).
            elapsed = 0.0 if tick_at is None else max(0.0, time.monotonic() - tick_at)
            clock = self._playout.timestamp - self._playout.samples_per_frame
            clock += round(elapsed * self.codec.clock_rate)
            head = RtcpSenderReport(
                self.ssrc,
                ntp_from_unix(time.time()),  # NTP is wall time by definition (RFC 3550 §4)
                clock & 0xFFFFFFFF,
                self._packets_sent & 0xFFFFFFFF,
                self._octets_sent & 0xFFFFFFFF,
                blocks,
            )
        else:
            head = RtcpReceiverReport(self.ssrc, blocks)
        self._sent_since_report = False
        return [head, RtcpSdes([RtcpSourceDescription(self.ssrc, [(SDES_CNAME, self._cname)])])]

    def _send_rtcp(self, extra: list[RtcpPacket], tick_at: float | None) -> None:
        """Send a report (and ``extra``); ``tick_at``: when the playout's last frame was due
        (the monotonic time of the last tick), None before any."""
        # On hold too: RTCP goes on whatever the stream's direction (RFC 3264 §5.1) — but not
        # to an old-style hold's c=0.0.0.0 (RFC 3264 §8.4), which Linux would deliver locally.
        dest = self._rtcp_dest
        if self._rtcp is None or dest is None or dest[0] in _UNSPECIFIED:
            return
        data = serialize_compound(self._report(tick_at) + extra)
        if self._srtp is not None:
            data = self._srtp.protect_rtcp(data)
        try:
            self._rtcp.sendto(data, dest)
        except Exception as exc:  # a tick, or close(), goes on
            self._send_failed(exc)

    def _send_failed(self, exc: Exception) -> None:
        """A send failed: an OSError the loop passed to ``error_received`` (or raised), or
        uvloop's ValueError for an address of the other family or a name. Logged once per session
        (50 a second otherwise); its text names the address, so only at DEBUG."""
        self._send_errors += 1
        if self._send_errors == 1:
            logger.warning("media send failed: %s", type(exc).__name__)
            logger.debug("media send failure", exc_info=exc)

    def _on_rtcp(self, data: bytes, addr: SockAddr) -> None:
        if self._ended is not None:
            return
        # From where RTP goes, the signalling IP, or the IP a=rtcp named (RFC 3605 §2.1).
        ip, dest, named = addr[0], self._dest, self._rtcp_sdp
        trusted = (
            (dest is not None and ip == dest[0])
            or ip == self._trusted_ip
            or (named is not None and ip == named[0])
        )
        if not trusted:
            if not is_stun(data):
                self._rejected += 1
            return
        if self._srtp is not None:
            try:
                data = self._srtp.unprotect_rtcp(data)
            except SrtpError:
                if not is_stun(data):
                    self._unauthenticated += 1
                return
        try:
            packets = parse_compound(data)
        except RtpError:
            if not is_stun(data):
                self._malformed += 1
            return
        self._rtcp_dest = addr  # symmetric RTCP (RFC 4961)
        self._rtcp_learned = True
        now = time.monotonic()
        reported = ours = False
        for packet in packets:
            if isinstance(packet, RtcpSenderReport):
                self._last_sr = (ntp_middle32(packet.ntp_timestamp), now)
            if isinstance(packet, RtcpSenderReport | RtcpReceiverReport):
                reported = True
                for block in packet.reports:
                    if block.ssrc == self.ssrc:
                        ours = True
                        self._on_report_block(
                            block.fraction_lost, block.jitter, block.lsr, block.dlsr
                        )
        if reported:
            self._count_report(ours)

    def _count_report(self, ours: bool) -> None:
        """A report of the peer's: with a block for our stream (``ours``) or without. RFC 3550
        §6.4: a receiver reports the sources it heard since its last report, so one without
        ours, after an interval in which we sent RTP — and had sent before it began, or our
        first packets may not have reached the peer yet — says none of ours arrived."""
        self._remote_reports += 1
        sent = self._packets_sent
        if ours:
            self._reports_without_us = 0
        elif self._sent_at_report and sent > self._sent_at_report:
            self._reports_without_us += 1
        self._sent_at_report = sent

    def _on_report_block(self, fraction: int, jitter: int, lsr: int, dlsr: int) -> None:
        self._remote_loss = fraction / 256
        self._remote_jitter_ms = jitter * 1000 / self.codec.clock_rate
        if lsr:
            # RFC 3550 §6.4.1: RTT = A - LSR - DLSR, all in 1/65536 s.
            arrival = ntp_middle32(ntp_from_unix(time.time()))
            rtt = (arrival - lsr - dlsr) & 0xFFFFFFFF
            if rtt < 0x80000000:
                self._rtt_ms = rtt * 1000 / 65536

    def _end(self, reason: MediaEndReason) -> None:
        if self._ended is not None:
            return
        self._ended = reason
        try:
            self._final = self.stats()  # first: the BYE counts no packet or byte (nor its failure)
            tick_at = None
            if self._tick_handle is not None:
                tick_at = self._pacer.last_tick(self._tick_handle)
                self._pacer.unsubscribe(self._tick_handle)
            self._send_rtcp([RtcpBye([self.ssrc])], tick_at)
        finally:
            # Whatever the above raised, the sockets close and the ports go back.
            for transport in (self._rtp, self._rtcp):
                if transport is not None:
                    transport.close()
            self.lease.release()
        _, cleared = self._playout.flush()
        for name in cleared:
            self._emit(MarkPlayed(name, cleared=True))
        self._emit(MediaEnded(reason))
