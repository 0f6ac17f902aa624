from __future__ import annotations

import random

import pytest

from telepath.rtp.stats import ReceiverStats

pytestmark = pytest.mark.unit


def test_no_loss_no_jitter_on_a_perfect_stream() -> None:
    stats = ReceiverStats()
    for i in range(50):
        stats.update(1, (65530 + i) & 0xFFFF, i * 160, i * 0.020)
    assert stats.expected == 50
    assert stats.lost == 0
    assert stats.extended_highest_sequence == 65536 + 43  # wrapped once
    assert stats.jitter_ms == pytest.approx(0, abs=1e-6)
    block = stats.report_block()
    assert block is not None
    assert (block.fraction_lost, block.packets_lost, block.highest_sequence) == (0, 0, 65579)


def test_loss_and_fraction_per_interval() -> None:
    stats = ReceiverStats()
    for seq in range(100):
        if seq % 4 != 3:  # lose one in four
            stats.update(7, seq, seq * 160, seq * 0.02)
    assert stats.expected == 99  # base 0, highest seen 98
    assert stats.received == 75
    assert stats.lost == 24
    assert stats.loss_percent == pytest.approx(100 * 24 / 99)
    block = stats.report_block(lsr=5, dlsr=6)
    assert block is not None
    assert block.fraction_lost == (24 << 8) // 99
    assert (block.lsr, block.dlsr) == (5, 6)
    # Next interval: seq 99 (lost) now counts as expected; 1 lost of 11.
    for seq in range(100, 110):
        stats.update(7, seq, seq * 160, seq * 0.02)
    block = stats.report_block()
    assert block is not None
    assert block.fraction_lost == (1 << 8) // 11
    assert block.packets_lost == 25
    for seq in range(110, 120):
        stats.update(7, seq, seq * 160, seq * 0.02)
    block = stats.report_block()
    assert block is not None
    assert (block.fraction_lost, block.packets_lost) == (0, 25)


def test_jitter_converges_to_alternating_delay() -> None:
    stats = ReceiverStats()
    for i in range(2000):
        stats.update(1, i, i * 160, i * 0.020 + (0.004 if i % 2 else 0.0))
    # |D| is always 4 ms, so J converges to 4 ms (32 timestamp units).
    assert stats.jitter_ms == pytest.approx(4.0, abs=0.01)
    assert stats.jitter == 31 or stats.jitter == 32


def test_new_ssrc_keeps_prior_totals() -> None:
    stats = ReceiverStats()
    for seq in (1, 2, 4):
        stats.update(1, seq, seq * 160, seq * 0.02)
    for seq in (900, 901):
        stats.update(2, seq, 0, 1.0)
    assert stats.ssrc == 2
    assert stats.lost == 1
    assert stats.received == 2
    assert ReceiverStats().report_block() is None
    assert ReceiverStats().loss_percent == 0.0


def test_one_packet_of_another_ssrc_is_not_a_new_source() -> None:
    """RFC 3550 §A.1: a new source is on probation until MIN_SEQUENTIAL (2) packets of it
    follow each other. One packet with another SSRC (a stray, RTCP read as RTP) restarted the
    statistics on itself, and the stream's next packet restarted them again: the report's
    cumulative loss and highest sequence started over."""
    stats = ReceiverStats()
    for seq in range(1000, 1005):
        stats.update(1, seq, seq * 160, seq * 0.02)
    stats.update(2, 5000, 7, 1.0)
    stats.update(1, 9000, 0, 1.02)  # a jump of the stream is not its confirmation either
    for seq in range(1005, 1010):
        stats.update(1, seq, seq * 160, seq * 0.02)
    assert stats.ssrc == 1
    assert (stats.prior_expected, stats.expected, stats.received, stats.lost) == (0, 10, 10, 0)
    stats.update(2, 5001, 167, 1.2)  # not after 5000: another packet on probation
    stats.update(2, 5002, 327, 1.22)  # confirms: both count
    assert stats.ssrc == 2
    assert (stats.prior_expected, stats.prior_received) == (10, 10)
    assert (stats.expected, stats.received, stats.lost) == (2, 2, 0)


def perfect_stream_with_stray(stray_offset: int) -> list[tuple[int, int]]:
    """(sequence number, timestamp) of 500 packets from 65100 (wrapping at 65536), and after
    65400 one stray packet ``stray_offset`` away from it (from another stream, or a wild
    duplicate), with a timestamp of its own."""
    stream = [((65100 + i) & 0xFFFF, i * 160) for i in range(500)]
    return [*stream[:301], ((65400 + stray_offset) & 0xFFFF, 12345678), *stream[301:]]


@pytest.mark.parametrize("stray_offset", [-200, -101, 3001, 20000])
def test_one_stray_packet_far_away_is_ignored_not_a_restart(stray_offset: int) -> None:
    # RFC 3550 §A.1: a large jump is a restart only when the next packet follows it
    # (bad_seq); otherwise the stray packet is not counted. It made the RTCP report say
    # packets_lost=200 (a restart at the stray's sequence number) on a perfect stream.
    stats = ReceiverStats()
    for i, (seq, ts) in enumerate(perfect_stream_with_stray(stray_offset)):
        stats.update(1, seq, ts, i * 0.020)
    assert (stats.expected, stats.received, stats.lost) == (500, 500, 0)
    assert stats.prior_expected == 0
    assert stats.extended_highest_sequence == 65536 + 63  # 65100 + 499, wrapped once
    block = stats.report_block()
    assert block is not None
    assert (block.packets_lost, block.fraction_lost) == (0, 0)
    assert stats.jitter_ms < 1  # its timestamp is no jitter sample either


def test_a_jump_followed_by_its_next_packet_is_a_restart() -> None:
    stats = ReceiverStats()
    for seq in range(1000, 1010):
        stats.update(1, seq, seq * 160, seq * 0.02)
    for seq in (20000, 20001, 20002):  # §A.1: the second confirms the restart
        stats.update(1, seq, seq * 160, seq * 0.02)
    assert (stats.prior_expected, stats.prior_received) == (10, 10)
    assert (stats.expected, stats.received, stats.lost) == (3, 3, 0)
    assert stats.extended_highest_sequence == 20002
    # A sender restarted far behind: the same.
    for seq in (5, 6):
        stats.update(1, seq, seq * 160, seq * 0.02)
    assert (stats.prior_expected, stats.prior_received) == (13, 13)
    assert (stats.expected, stats.received, stats.lost) == (2, 2, 0)
    # Restarted just before the wrap.
    stats = ReceiverStats()
    for seq in (30000, 30001, 65535, 0, 1):
        stats.update(1, seq, seq * 160, seq * 0.02)
    assert (stats.expected, stats.received, stats.lost) == (3, 3, 0)
    assert stats.extended_highest_sequence == 65536 + 1


def test_two_unrelated_strays_are_both_ignored() -> None:
    stats = ReceiverStats()
    stream = [*range(100, 120), 30000, *range(120, 130), 30001 + 5, *range(130, 140)]
    for i, seq in enumerate(stream):
        stats.update(1, seq, seq * 160, i * 0.02)
    assert (stats.expected, stats.received, stats.lost) == (40, 40, 0)


def test_a_packet_without_arrival_time_counts_but_is_no_jitter_sample() -> None:
    # RFC 4733 §2.5.1.2: every packet of an event carries its start timestamp; RFC 3550 §A.8's
    # transit of such a packet is no measure of the network.
    stats = ReceiverStats()
    for i in range(20):
        event = 5 <= i < 12
        stats.update(1, i, 5 * 160 if event else i * 160, None if event else i * 0.02)
    assert (stats.expected, stats.received, stats.lost) == (20, 20, 0)
    assert stats.jitter_ms == pytest.approx(0, abs=1e-6)


def test_continues_takes_the_same_ssrc_a_little_past_the_highest_sequence_only() -> None:
    """What lets a NAT rebinding move the media (transport/media_session.py's latching): the
    latched SSRC, up to ``window`` packets past the highest sequence seen, across the wrap."""
    stats = ReceiverStats()
    assert not stats.continues(1, 0, 32)  # nothing seen yet
    stats.update(1, 0xFFFE, 0, 0.0)
    assert stats.continues(1, 0xFFFF, 32)
    assert stats.continues(1, 30, 32)  # 32 after, past the wrap
    assert not stats.continues(1, 31, 32)  # 33 after
    assert not stats.continues(1, 0xFFFE, 32)  # the highest itself: a replay
    assert not stats.continues(1, 0xFFF0, 32)  # behind
    assert not stats.continues(2, 0xFFFF, 32)  # another stream


def test_the_calls_jitter_is_the_mean_of_the_estimate_not_its_last_value() -> None:
    """§1.7's ``jitter_ms`` is the call's "Average RTP jitter": 60 s of 20 ms packets delayed
    0-60 ms at random, then two clean seconds. The RFC 3550 §A.8 estimate (gain 1/16, about
    the last 16 packets) has forgotten the minute by then; the call's mean has not."""
    rng = random.Random(7)
    stats = ReceiverStats()
    for i in range(3000):  # 60 s of 20 ms packets, 0-60 ms of random delay
        stats.update(1, i, i * 160, i * 0.020 + rng.uniform(0, 0.060))
    noisy_mean = stats.mean_jitter_ms
    assert noisy_mean is not None and 15 < noisy_mean < 25
    for i in range(3000, 3100):  # two clean seconds (a constant delay is no jitter)
        stats.update(1, i, i * 160, i * 0.020 + 0.1)
    assert stats.jitter_ms < 1  # the RTCP report block's running value: RFC 3550 unchanged
    block = stats.report_block()
    assert block is not None and block.jitter == stats.jitter
    mean = stats.mean_jitter_ms
    assert mean is not None and mean > 15  # the record's: about the minute's, not < 1
    assert mean == pytest.approx(noisy_mean * 3000 / 3100, rel=0.05)


def test_the_mean_jitter_is_none_before_a_sample_and_spans_a_new_source() -> None:
    stats = ReceiverStats()
    assert stats.mean_jitter_ms is None
    stats.update(1, 0, 0, 0.0)  # one packet: no difference yet, no sample
    assert stats.mean_jitter_ms is None
    for i in range(1, 200):
        stats.update(1, i, i * 160, i * 0.020 + (0.004 if i % 2 else 0.0))
    first = stats.mean_jitter_ms
    assert first is not None and first > 3
    for i in range(2):  # a new SSRC, confirmed by its second packet: the call's mean goes on
        stats.update(2, 500 + i, 9000 + i * 160, 10.0 + i * 0.020)
    mean = stats.mean_jitter_ms
    assert mean is not None and mean > 3


def test_duplicates_do_not_hide_loss_from_the_loss_without_them() -> None:
    """5 % lost and 5 % duplicated: RFC 3550's cumulative loss counts each duplicate as a
    packet received (§A.3), so it reads 0 — as report blocks must say; the record's
    "percentage of RTP packets lost" (telepath-product.md §1.7) takes the duplicates out."""
    stats = ReceiverStats()
    for seq in range(100):
        if seq % 20 == 10:
            continue  # lost: 5 of 100
        stats.update(1, seq, seq * 160, seq * 0.020)
        if seq % 20 == 15:
            stats.update(1, seq, seq * 160, seq * 0.020 + 0.001)  # duplicated: 5 of 100
    assert (stats.expected, stats.received, stats.lost, stats.loss_percent) == (100, 100, 0, 0.0)
    block = stats.report_block()
    assert block is not None and block.packets_lost == 0  # RFC 3550 semantics kept
    assert stats.lost_without(duplicates=5) == 5
    assert stats.loss_percent_without(duplicates=5) == pytest.approx(5.0)
    assert ReceiverStats().loss_percent_without(duplicates=0) == 0.0
