"""The bench phones' own accounting (bench/workers.py ``Phones.summary``), fed by hand."""

from __future__ import annotations

import pytest
from bench.workers import Phones, _Phone

pytestmark = pytest.mark.unit


def phones(count: int) -> Phones:
    ph = Phones()
    ph.phones = [_Phone(i, ph) for i in range(count)]
    return ph


def test_calls_bridged_are_the_phones_whose_frames_came_back_in_the_window() -> None:
    ph = phones(3)
    ph.sent = {"0:1": 1.0, "0:2": 1.02, "1:1": 1.0, "2:1": 1.0}
    ph.recv = {"0:1": 1.003, "1:1": 1.004, "2:7": 0.5}  # phone 2: only a frame from before
    assert ph.summary()["calls_bridged"] == 2
