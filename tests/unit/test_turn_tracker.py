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


def test_agent_audio_the_caller_hears_back_to_back_is_one_turn_however_it_arrives() -> None:
    """Caller 0-1 s; 3 s of agent audio arrives at 1.5 s and 3 s more at 2.3 s: 0.8 s apart
    on arrival (over the turn gap), yet the second plays right after the first — the caller
    hears 6 s without a pause, one turn (README: as long as the caller heard it)."""
    turns = TurnTracker()
    last = speak(turns, 0.0, 1.0)
    turns.agent_audio(1.5, 3000)
    turns.agent_audio(2.3, 3000)
    turns.finish()
    assert turns.turns == [
        Turn(1, "caller", 980, 0),
        Turn(2, "agent", 6000, round((1.5 - last) * 1000)),
    ]


def test_a_barge_in_takes_the_unplayed_audio_from_the_turn_that_owns_it() -> None:
    """5 s of agent audio arrives at 1.5 s, 1 s more at 2.3 s, and the caller barges in with
    4.9 s of it unplayed: the caller heard 1.1 s of one turn (not 5 s of a first turn and a
    second that vanished)."""
    turns = TurnTracker()
    last = speak(turns, 0.0, 1.0)
    turns.agent_audio(1.5, 5000)
    turns.agent_audio(2.3, 1000)
    turns.finish_agent_turn(unplayed_ms=4900)  # the clear at 2.6 s
    turns.finish()
    assert turns.turns == [
        Turn(1, "caller", 980, 0),
        Turn(2, "agent", 1100, round((1.5 - last) * 1000)),
    ]


def test_unplayed_audio_beyond_the_open_turn_comes_off_the_turns_before_it() -> None:
    """The playout fell behind the estimate (audio kept while held): a second agent turn
    opened while 300 ms of the first were still queued. A flush with 800 ms unplayed takes
    the second's 500 ms (it was never heard: no turn) and 300 ms off the first."""
    turns = TurnTracker()
    turns.agent_audio(0.0, 1000)
    turns.agent_audio(5.0, 500)  # closes the first turn (1000 ms sent)
    turns.finish_agent_turn(unplayed_ms=800)
    speak(turns, 6.0, 0.5)
    turns.finish()
    assert [(t.turn_number, t.speaker, t.duration_ms) for t in turns.turns] == [
        (1, "agent", 700),
        (2, "caller", 480),
    ]


def test_after_a_barge_in_the_agents_next_audio_is_a_turn_of_its_own() -> None:
    """The flushed audio never plays: the agent's next audio, however soon, opens a turn
    whose length is its own."""
    turns = TurnTracker()
    turns.agent_audio(0.0, 5000)
    turns.finish_agent_turn(unplayed_ms=4000)  # at 1 s
    turns.agent_audio(1.2, 500)
    turns.agent_audio(1.5, 500)  # plays right after the previous: the same turn
    turns.finish()
    assert [t.duration_ms for t in turns.turns] == [1000, 1000]
