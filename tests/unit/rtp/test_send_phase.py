"""SendPhase: when a stream's sends move earlier to follow an agent speaking in real time."""

from __future__ import annotations

import pytest

from telepath.rtp.send_phase import MARGIN_S, MIN_SHIFT_S, WINDOW, SendPhase


def feed(phase: SendPhase, slacks: list[float]) -> list[float]:
    return [phase.arrival(slack) for slack in slacks]


def test_a_real_time_agent_far_from_the_send_moves_it_to_the_least_slack_less_the_margin() -> None:
    phase = SendPhase()
    slacks = [0.0125 + 0.0001 * (i % 7) for i in range(WINDOW)]
    decisions = feed(phase, slacks)
    assert decisions[:-1] == [0.0] * (WINDOW - 1)  # nothing before the window is full
    assert decisions[-1] == pytest.approx(min(slacks) - MARGIN_S)
    # every frame of the window would still have made the earlier send
    assert all(slack - decisions[-1] >= MARGIN_S - 1e-12 for slack in slacks)


def test_one_frame_with_little_slack_in_the_window_keeps_the_phase() -> None:
    phase = SendPhase()
    slacks = [0.015] * WINDOW
    slacks[17] = MARGIN_S + MIN_SHIFT_S / 2  # replies starting at varying phases: one near
    assert feed(phase, slacks) == [0.0] * WINDOW


def test_each_window_is_decided_on_its_own_arrivals() -> None:
    phase = SendPhase()
    assert feed(phase, [0.001] * WINDOW)[-1] == 0.0
    assert feed(phase, [0.010] * WINDOW)[-1] == pytest.approx(0.010 - MARGIN_S)
    assert feed(phase, [MARGIN_S + 0.0005] * WINDOW)[-1] == 0.0  # a move too small to make


def test_a_move_of_exactly_the_minimum_is_made() -> None:
    phase = SendPhase()
    assert feed(phase, [MARGIN_S + MIN_SHIFT_S] * WINDOW)[-1] == pytest.approx(MIN_SHIFT_S)
