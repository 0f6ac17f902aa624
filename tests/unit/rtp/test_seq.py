from __future__ import annotations

import pytest

from telepath.rtp.seq import (
    seq_add,
    seq_diff,
    seq_gt,
    seq_gte,
    ts_add,
    ts_diff,
    ts_gt,
    ts_gte,
)

pytestmark = pytest.mark.unit


def test_seq_add_wraps_both_ways() -> None:
    assert seq_add(65535, 1) == 0
    assert seq_add(0, -1) == 65535
    assert seq_add(100, 5) == 105


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [(1, 65535, 2), (65535, 1, -2), (5, 5, 0), (32767, 0, 32767), (32768, 0, -32768)],
)
def test_seq_diff_is_signed_shortest_distance(a: int, b: int, expected: int) -> None:
    assert seq_diff(a, b) == expected


def test_seq_comparisons_across_wrap() -> None:
    assert seq_gt(0, 65535)
    assert not seq_gt(65535, 0)
    assert seq_gte(7, 7)
    assert not seq_gt(7, 7)


def test_timestamp_helpers_wrap_at_32_bits() -> None:
    assert ts_add(0xFFFFFFF0, 0x20) == 0x10
    assert ts_add(0, -160) == 0xFFFFFF60
    assert ts_diff(0x10, 0xFFFFFFF0) == 0x20
    assert ts_diff(0xFFFFFFF0, 0x10) == -0x20
    assert ts_gt(160, 0xFFFFFF60)
    assert ts_gte(160, 160)
    assert not ts_gt(0xFFFFFF60, 160)
