"""Garbage collection timed by the media clock, while calls are up.

CPython collects its young generations whenever allocations cross a threshold, i.e. at any
moment — in the middle of a pacer burst, delaying every RTP packet after it. Measured with 50
calls up and 100 set-ups per second beside them: jitter p99 at the phones 2.2–13 ms with the
collector as it is, 1.2–1.3 ms with it off (max 20–50 ms vs 3–4 ms). A young collection takes
0.1–2 ms; right after a pacer tick there are ≥ 5 ms before the next.

So while a media clock runs, the automatic thresholds are raised (a safety net, should ticks
stop) and :func:`after_tick` runs the collection CPython would have run, once per tick, after
the burst. CPython's own rule picks the generation (``gc.get_count``, ``gc.get_threshold``:
generation 1 after ``threshold1`` young collections), except that a full collection, which no
gap can hide (20–50 ms with a few hundred calls' objects), waits for ``FULL_AFTER`` generation-1
collections instead of CPython's ``threshold2``: a call's objects are freed by reference
counting (``test_call_memory.py``), so little is left for a full collection to find. When the
last clock stops, the thresholds are restored.

Hand-written: no library schedules CPython's collector; the standard ``gc`` module is all it uses.
"""

from __future__ import annotations

import gc
import threading

SAFETY_THRESHOLD0 = 50_000  # automatic young collections while clocks run (ticks stopped)
FULL_AFTER = 100  # generation-1 collections between full collections while clocks run
_FAR = 1 << 30  # no automatic full collection while clocks run

_lock = threading.Lock()
_clocks = 0
_saved: tuple[int, int, int] | None = None
collecting = False  # True while after_tick collects (for tests)


def clock_started() -> None:
    """A media clock started: take young collections out of the allocation path."""
    global _clocks, _saved
    with _lock:
        _clocks += 1
        if _clocks == 1:
            _saved = gc.get_threshold()
            gc.set_threshold(max(_saved[0], SAFETY_THRESHOLD0), _saved[1], _FAR)


def clock_stopped() -> None:
    """A media clock stopped; with none left, CPython's thresholds are back."""
    global _clocks, _saved
    with _lock:
        if _clocks == 0:
            return
        _clocks -= 1
        if _clocks == 0 and _saved is not None:
            gc.set_threshold(*_saved)
            _saved = None


def after_tick() -> int | None:
    """Run the collection that is due, if any; returns the generation collected."""
    global collecting
    saved = _saved
    if saved is None or not gc.isenabled():
        return None  # no clock, or collection switched off by someone else: not ours to run
    count0, count1, count2 = gc.get_count()
    if count0 <= saved[0]:
        return None
    # CPython's rule (Modules/gcmodule.c, collect_generations): the oldest generation whose
    # count exceeds its threshold; counts are young collections since the last older one.
    if count2 > FULL_AFTER:
        generation = 2
    elif count1 > saved[1]:
        generation = 1
    else:
        generation = 0
    collecting = True
    try:
        gc.collect(generation)
    finally:
        collecting = False
    return generation
