"""Per-call media statistics: counters, RFC 3550 figures and the gateway's own processing time.

Processing time is what *this process* spends per packet, measured with ``perf_counter_ns``
from a datagram's arrival in the protocol callback to the end of its handling (inbound), and
from the start of a frame's preparation to the return of ``sendto`` (outbound). It excludes
network and pacing delay, which the peer's RTCP jitter and our interarrival jitter report.
A bounded ring of the latest samples gives p50/p99 without unbounded memory.
"""

from __future__ import annotations

import array
from dataclasses import dataclass

_RING = 4096


class ProcessingTimer:
    """Records per-packet processing times in nanoseconds; reports percentiles in µs."""

    __slots__ = ("_count", "_max", "_ring", "_total")

    def __init__(self) -> None:
        # Grown as samples come (a short call never touches 32 KiB it does not need; the
        # zero-filled ring up front showed up in the call-setup profile).
        self._ring = array.array("Q")
        self._count = 0
        self._total = 0
        self._max = 0

    def record(self, nanoseconds: int) -> None:
        """Add one sample."""
        if self._count < _RING:
            self._ring.append(nanoseconds)
        else:
            self._ring[self._count % _RING] = nanoseconds
        self._count += 1
        self._total += nanoseconds
        if nanoseconds > self._max:
            self._max = nanoseconds

    @property
    def count(self) -> int:
        """Samples recorded since creation."""
        return self._count

    @property
    def mean_us(self) -> float:
        """Mean over all samples, in µs."""
        return self._total / self._count / 1000 if self._count else 0.0

    @property
    def max_us(self) -> float:
        """Largest sample, in µs."""
        return self._max / 1000

    def percentile_us(self, q: float) -> float:
        """The ``q`` quantile (0-1) of the latest samples (up to 4096), in µs."""
        n = min(self._count, _RING)
        if not n:
            return 0.0
        ordered = sorted(self._ring[:n])
        return ordered[min(n - 1, int(q * n))] / 1000


@dataclass(frozen=True, slots=True)
class DirectionStats:
    """Processing-time summary for one direction, in µs."""

    packets: int
    mean_us: float
    p50_us: float
    p99_us: float
    max_us: float

    @classmethod
    def of(cls, timer: ProcessingTimer) -> DirectionStats:
        """Summarise a timer."""
        return cls(
            timer.count,
            timer.mean_us,
            timer.percentile_us(0.5),
            timer.percentile_us(0.99),
            timer.max_us,
        )


@dataclass(frozen=True, slots=True)
class MediaStats:
    """A snapshot of one call's media statistics (live, or final after close).

    Attributes:
        packets_sent: RTP packets sent (audio, silence and DTMF).
        packets_received: valid RTP packets accepted from the peer.
        bytes_received: RTP payload octets accepted.
        packets_lost: cumulative loss: expected minus received, duplicates not counted as
            received (RFC 3550 §A.3 counts them, which hid loss: its count goes in RTCP only).
        loss_percent: ``packets_lost`` as a percentage of expected packets; None before any
            packet was received (not measured: a one-way-audio call is no perfect line).
        jitter_ms: the mean, over the call, of the inbound stream's RFC 3550 interarrival
            jitter estimate (§A.8; the "Average RTP jitter" of telepath-product.md §1.7 — the
            running estimate, about the last 16 packets, goes in RTCP); None as
            ``loss_percent``.
        late: packets that arrived after their slot was concealed.
        duplicates: packets received twice.
        concealed_frames: frames synthesised for lost packets.
        jitter_buffer_ms: the jitter buffer's current depth.
        dtmf_received: key presses decoded.
        rejected_source: datagrams dropped because they came from an address the latching
            policy does not accept (RTP Bleed defence).
        malformed: datagrams that failed to parse.
        unauthenticated: SRTP/SRTCP datagrams dropped by the SRTP check (forged, corrupted,
            replayed, or sent in the clear), RFC 3711 §3.3.
        send_errors: RTP/RTCP datagrams of ours the socket refused to send (an address of the
            other family, a network error): audio the caller never got.
        audio_played_ms: agent audio sent to the caller, or dropped in a sender stall (its
            time has passed: it counts as played for the barge-in cut, ``Playout.played_ms``).
        remote_loss_fraction: loss of *our* stream as last reported by the peer's RTCP (0-1).
        remote_jitter_ms: jitter of our stream as reported by the peer's RTCP.
        rtt_ms: round-trip time from RTCP LSR/DLSR, None until measured.
        remote_reports: the peer's RTCP reports (SR or RR compounds) received.
        remote_reports_without_us: the peer's latest reports in a row with no report block for
            our SSRC, each received after an interval in which we sent RTP (and we had sent
            before the interval began). A receiver reports only the sources it heard since its
            last report (RFC 3550 §6.4): a peer that gets none of our RTP sends no block for
            it — no loss figure to read — so this is how one-way audio shows.
        inbound: gateway processing per received packet.
        outbound: gateway processing per sent packet.
    """

    packets_sent: int
    packets_received: int
    bytes_received: int
    packets_lost: int
    loss_percent: float | None
    jitter_ms: float | None
    late: int
    duplicates: int
    concealed_frames: int
    jitter_buffer_ms: int
    dtmf_received: int
    rejected_source: int
    malformed: int
    audio_played_ms: float
    remote_loss_fraction: float
    remote_jitter_ms: float
    rtt_ms: float | None
    inbound: DirectionStats
    outbound: DirectionStats
    unauthenticated: int = 0
    send_errors: int = 0
    remote_reports: int = 0
    remote_reports_without_us: int = 0

    @property
    def gateway_processing_ms(self) -> float | None:
        """Mean gateway processing time per packet over both directions, in ms (call records);
        None when no packet went either way (not measured)."""
        packets = self.inbound.packets + self.outbound.packets
        if not packets:
            return None
        total_us = (
            self.inbound.mean_us * self.inbound.packets
            + self.outbound.mean_us * self.outbound.packets
        )
        return total_us / packets / 1000
