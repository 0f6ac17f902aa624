"""Receiver statistics for one RTP source (RFC 3550 §A.1, §A.3, §A.8), pure and synchronous.

Tracks the extended highest sequence number (with wrap cycles), packets expected and received,
cumulative and interval loss for RTCP report blocks, and the interarrival jitter estimate
``J += (|D| - J) / 16`` in timestamp units. Arrival times are passed in (seconds, monotonic).
That estimate, with its gain of 1/16, follows about the last 16 packets: report blocks carry it
(§6.4.1), while the call's ``jitter_ms`` is its mean over every sample of the call
(:attr:`ReceiverStats.mean_jitter_ms`; telepath-product.md §1.7: "Average RTP jitter").
A new SSRC restarts the counters for the new stream and keeps the totals of the previous one in
``prior_*``. So does a sequence jump more than ``MAX_DROPOUT`` ahead or ``MAX_MISORDER`` behind.
Either only when the next packet of that SSRC follows (RFC 3550 §A.1: a new source's probation,
with its MIN_SEQUENTIAL of 2, and a jump's ``bad_seq``): a single stray packet (another
stream's, RTCP read as RTP, a wild duplicate) is not counted at all.
"""

from __future__ import annotations

from telepath.rtp.jitter import MAX_DROPOUT, MAX_MISORDER
from telepath.rtp.rtcp import RtcpReportBlock
from telepath.rtp.seq import SEQ_MODULUS, seq_diff


class ReceiverStats:
    """Reception statistics of one incoming stream.

    Args:
        clock_rate: the RTP clock rate (8000 for PCMU/PCMA/G.722).
    """

    def __init__(self, clock_rate: int = 8000) -> None:
        self.clock_rate = clock_rate
        self.ssrc: int | None = None
        self._base_seq = 0
        self._max_seq = 0
        self._cycles = 0
        self._received = 0
        self._expected_prior = 0
        self._received_prior = 0
        self._transit: float | None = None
        self._jitter = 0.0  # timestamp units
        # The estimate summed after each sample, and the samples: the call's mean (across
        # sources too), a sum and a count per packet rather than a list
        self._jitter_sum = 0.0
        self._jitter_samples = 0
        # §A.1: (SSRC, sequence number) of the packet that would confirm a new source or a jump
        self._bad: tuple[int, int] | None = None
        self.prior_expected = 0
        self.prior_received = 0

    def update(
        self, ssrc: int, sequence_number: int, timestamp: int, arrival: float | None
    ) -> None:
        """Account for one received RTP packet (before any duplicate filtering, as RFC 3550
        counts; duplicates therefore lower the loss, which may go negative). A lone packet far
        from the stream is not counted (§A.1, see the module docstring).

        Args:
            ssrc: the packet's SSRC.
            sequence_number: its sequence number.
            timestamp: its RTP timestamp.
            arrival: when it arrived (s, monotonic); None to count it for sequence and loss
                only, without a jitter sample — a telephone-event packet, which carries its
                event's start timestamp (RFC 4733 §2.5.1.2), or one of another clock.
        """
        if ssrc != self.ssrc:
            if self.ssrc is None:  # the first packet
                self._restart(ssrc, sequence_number)
            elif not self._confirmed(ssrc, sequence_number):  # another source: on probation
                return
        delta = seq_diff(sequence_number, self._max_seq)
        if 0 < delta <= MAX_DROPOUT:
            if sequence_number < self._max_seq:
                self._cycles += SEQ_MODULUS
            self._max_seq = sequence_number
        elif (delta > MAX_DROPOUT or -delta > MAX_MISORDER) and not self._confirmed(
            ssrc, sequence_number
        ):
            return  # RFC 3550 §A.1: a very large jump, not (yet) a restarted sender
        self._received += 1
        if arrival is None:
            return
        # §A.8: transit = arrival (in timestamp units) - RTP timestamp; the constant offset
        # between the clocks cancels in D.
        transit = arrival * self.clock_rate - timestamp
        if self._transit is not None:
            d = abs(transit - self._transit)
            if d < self.clock_rate * 10:  # a timestamp jump is not jitter
                self._jitter += (d - self._jitter) / 16
                self._jitter_sum += self._jitter
                self._jitter_samples += 1
        self._transit = transit

    def continues(self, ssrc: int, sequence_number: int, window: int) -> bool:
        """Whether a packet continues the current stream: its SSRC, and a sequence number at
        most ``window`` after the highest seen (RFC 3550 §A.1's in-order test, narrowed)."""
        return ssrc == self.ssrc and 0 < seq_diff(sequence_number, self._max_seq) <= window

    def _confirmed(self, ssrc: int, sequence_number: int) -> bool:
        """RFC 3550 §A.1: a packet of a new SSRC or a very large jump starts a new stream only
        when it follows the previous such packet of its SSRC (MIN_SEQUENTIAL, 2, in a row): the
        sender changed or restarted without telling us. Then re-sync, counting the first of
        them too (§A.1 counts only the last), and True. A lone one is not counted, not even for
        jitter: False."""
        if (ssrc, sequence_number) != self._bad:
            self._bad = (ssrc, (sequence_number + 1) & 0xFFFF)
            return False
        first = (sequence_number - 1) & 0xFFFF
        self._restart(ssrc, first)
        self._received = 1
        if sequence_number < first:
            self._cycles += SEQ_MODULUS
        self._max_seq = sequence_number
        return True

    def _restart(self, ssrc: int, sequence_number: int) -> None:
        if self.ssrc is not None:
            self.prior_expected += self.expected
            self.prior_received += self._received
        self.ssrc = ssrc
        self._base_seq = sequence_number
        self._max_seq = sequence_number
        self._cycles = 0
        self._received = 0
        self._expected_prior = 0
        self._received_prior = 0
        self._transit = None
        self._bad = None

    @property
    def extended_highest_sequence(self) -> int:
        """Cycles of wrap-around times 65536 plus the highest sequence number seen."""
        return self._cycles + self._max_seq

    @property
    def expected(self) -> int:
        """Packets expected from the current source (§A.3)."""
        if self.ssrc is None:
            return 0
        return self.extended_highest_sequence - self._base_seq + 1

    @property
    def received(self) -> int:
        """Packets received from the current source (duplicates included, per §A.3)."""
        return self._received

    @property
    def lost(self) -> int:
        """Cumulative packets lost over every source this session has seen."""
        return (self.prior_expected + self.expected) - (self.prior_received + self._received)

    @property
    def loss_percent(self) -> float:
        """Cumulative loss as a percentage of expected packets (0 when nothing expected)."""
        expected = self.prior_expected + self.expected
        return max(0.0, 100.0 * self.lost / expected) if expected else 0.0

    def lost_without(self, duplicates: int) -> int:
        """Packets lost with ``duplicates`` (the jitter buffer's count of packets received
        twice) taken out of the received ones: RFC 3550's :attr:`lost` counts each duplicate as
        a packet received (§A.3), so 5 % lost and 5 % duplicated read 0. The call's "percentage
        of RTP packets lost" (telepath-product.md §1.7) is this; report blocks keep §A.3's."""
        return max(0, self.lost + duplicates)

    def loss_percent_without(self, duplicates: int) -> float:
        """:meth:`lost_without` as a percentage of expected packets (0 when none expected)."""
        expected = self.prior_expected + self.expected
        return 100.0 * self.lost_without(duplicates) / expected if expected else 0.0

    @property
    def jitter(self) -> int:
        """Interarrival jitter in timestamp units, as carried in report blocks."""
        return int(self._jitter)

    @property
    def jitter_ms(self) -> float:
        """Interarrival jitter in milliseconds."""
        return self._jitter * 1000 / self.clock_rate

    @property
    def mean_jitter_ms(self) -> float | None:
        """The mean of the §A.8 estimate over every sample of the call, in milliseconds (the
        record's "Average RTP jitter", telepath-product.md §1.7); None before the first."""
        if not self._jitter_samples:
            return None
        return self._jitter_sum / self._jitter_samples * 1000 / self.clock_rate

    def report_block(self, lsr: int = 0, dlsr: int = 0) -> RtcpReportBlock | None:
        """Build a reception report block and start a new reporting interval (§A.3).

        Args:
            lsr: middle 32 bits of the last SR received from this source, 0 if none.
            dlsr: delay since that SR in 1/65536 s, 0 if none.

        Returns:
            The block, or None before any packet was received.
        """
        if self.ssrc is None:
            return None
        expected = self.expected
        expected_interval = expected - self._expected_prior
        received_interval = self._received - self._received_prior
        self._expected_prior = expected
        self._received_prior = self._received
        lost_interval = expected_interval - received_interval
        fraction = 0
        if expected_interval > 0 and lost_interval > 0:
            fraction = min(255, (lost_interval << 8) // expected_interval)
        return RtcpReportBlock(
            ssrc=self.ssrc,
            fraction_lost=fraction,
            packets_lost=expected - self._received,
            highest_sequence=self.extended_highest_sequence & 0xFFFFFFFF,
            jitter=self.jitter,
            lsr=lsr,
            dlsr=dlsr,
        )
