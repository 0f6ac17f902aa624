"""Turns as the gateway measures them (calls/call.py TurnTracker), with made-up times."""

from __future__ import annotations

import pytest

from telepath.calls.call import TurnTracker
from telepath.calls.model import Turn

pytestmark = pytest.mark.unit


def speak(turns: TurnTracker, start: float, seconds: float) -> float:
    """Voiced caller frames every 20 ms from ``start`` for ``seconds``; the last one's time."""
    frames = round(seconds / 0.02)
    for i in range(frames):
        turns.caller_frame(start + i * 0.02, voiced=True)
    return start + (frames - 1) * 0.02


def test_a_pause_ends_the_callers_turn_and_the_agents_answer_measures_from_it() -> None:
    turns = TurnTracker()
    last = speak(turns, 0.0, 1.0)
    turns.caller_frame(last + 0.7, voiced=False)  # over the 0.6 s turn gap: the turn ends
    turns.agent_audio(last + 0.8, 500)
    turns.finish()
    assert turns.turns == [Turn(1, "caller", 980, 0), Turn(2, "agent", 500, 800)]


def test_a_caller_still_speaking_at_the_end_keeps_the_turn() -> None:
    """The caller talks and hangs up mid-sentence: that speech is a turn of the record."""
    turns = TurnTracker()
    turns.agent_audio(0.0, 1000)  # the greeting
    last = speak(turns, 2.0, 1.5)
    turns.finish()
    assert turns.turns == [
        Turn(1, "agent", 1000, 0),
        Turn(2, "caller", round((last - 2.0) * 1000), 0),
    ]


def test_open_turns_close_in_the_order_they_started() -> None:
    turns = TurnTracker()
    speak(turns, 0.0, 0.5)  # the caller starts...
    turns.agent_audio(0.3, 2000)  # ...the agent talks over it; both still open at the end
    turns.finish(unplayed_ms=500)
    assert [t.speaker for t in turns.turns] == ["caller", "agent"]
    assert turns.turns[1].duration_ms == 1500  # the unplayed part was never heard


def test_turns_come_out_in_time_order_when_an_agent_turn_is_still_open() -> None:
    """A caller turn closes after the turn gap, an agent turn only when more agent audio
    comes: caller 0-2 s, agent 3 s, caller 8-10 s, agent 11 s is still that order."""
    turns = TurnTracker()
    last = speak(turns, 0.0, 2.0)
    turns.caller_frame(last + 0.7, voiced=False)
    turns.agent_audio(3.0, 1000)
    last = speak(turns, 8.0, 2.0)
    turns.caller_frame(last + 0.7, voiced=False)  # closes while the first agent turn is open
    turns.agent_audio(11.0, 1000)
    turns.finish()
    assert [(t.turn_number, t.speaker) for t in turns.turns] == [
        (1, "caller"),
        (2, "agent"),
        (3, "caller"),
        (4, "agent"),
    ]


def test_a_second_agent_burst_without_new_caller_speech_has_no_latency() -> None:
    """Caller 0-1 s, agent at 2.0 s and again at 3.5 s: only the first answers the caller."""
    turns = TurnTracker()
    last = speak(turns, 0.0, 1.0)
    turns.caller_frame(last + 0.7, voiced=False)
    turns.agent_audio(2.0, 500)
    turns.agent_audio(3.5, 500)  # over the turn gap: a new agent turn, the caller said nothing
    turns.finish()
    assert turns.turns == [
        Turn(1, "caller", 980, 0),
        Turn(2, "agent", 500, 1020),
        Turn(3, "agent", 500, 0),
    ]
    assert turns.ai_latency_ms() == 1020


def test_a_caller_who_stops_sending_in_pauses_still_takes_separate_turns() -> None:
    """Silence suppression (comfort noise, which is not played, or nothing at all): no frame
    arrives in the caller's pauses, so no unvoiced frame closes the turn. Caller 0-1 s, agent
    at 1.8 s for 2 s, caller 6-7 s are two caller turns, not one from 0 to 7 s spanning the
    agent's; the agent's latency is still from the caller's end of speech."""
    turns = TurnTracker()
    first = speak(turns, 0.0, 1.0)
    turns.agent_audio(1.8, 2000)
    second = speak(turns, 6.0, 1.0)
    turns.agent_audio(second + 0.5, 1000)
    turns.finish()
    assert turns.turns == [
        Turn(1, "caller", 980, 0),
        Turn(2, "agent", 2000, round((1.8 - first) * 1000)),
        Turn(3, "caller", 980, 0),
        Turn(4, "agent", 1000, 500),
    ]
    assert turns.ai_latency_ms() == round((820 + 500) / 2)


def test_a_pause_within_the_turn_gap_without_frames_keeps_one_turn() -> None:
    """A gap in the caller's packets no longer than the turn gap is a pause inside the turn."""
    turns = TurnTracker()
    last = speak(turns, 0.0, 1.0)
    last = speak(turns, last + 0.5, 1.0)
    turns.finish()
    assert turns.turns == [Turn(1, "caller", round(last * 1000), 0)]
