from __future__ import annotations

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
