"""The benchmarks' percentile (bench/common.py ``pct``): the nearest-rank definition."""

from __future__ import annotations

import pytest
from bench.common import pct

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([1, 2, 3, 4, 5], 50, 3),  # rank ceil(2.5) = 3; round() gave 2 (half to even)
        (list(range(1, 32)), 95, 30),  # rank ceil(29.45) = 30; round() gave 29
        (list(range(1, 151)), 99, 149),  # rank ceil(148.5) = 149; round() gave 148
        (list(range(1, 101)), 99, 99),
        (list(range(1, 101)), 100, 100),
        ([7.0], 99, 7.0),
        ([3, 1, 2], 0, 1),
    ],
)
def test_pct_is_the_nearest_rank(values: list[float], q: float, expected: float) -> None:
    assert pct(values, q) == expected


def test_pct_of_nothing_is_none() -> None:
    assert pct([], 99) is None
