"""The existing media benchmarks (``media_bench.py``, ``media_codecs.py``) for ``-m bench``."""

from __future__ import annotations

import asyncio
from typing import Any

from bench import media_bench, media_codecs
from bench.common import loadavg, verdict

GOAL_DEV_P99_MS = 2.0  # issue 4: p99 pacing deviation at 250 sessions on one core


def run(quick: bool = False) -> dict[str, Any]:
    streams = [50] if quick else [50, 250]
    seconds = 5.0 if quick else 10.0
    previous = asyncio.get_event_loop_policy()
    try:
        loop = media_bench._loop_policy()
        print(f"\nMediaSession vs raw-socket baseline ({loop}; {streams} streams, {seconds} s)")
        rows = asyncio.run(media_bench._main(streams, seconds))
    finally:
        asyncio.set_event_loop_policy(previous)  # the process's later suites are not ours
    load = loadavg()
    print("\nCodecs and resamplers (µs per 20 ms frame)")
    codecs = media_codecs.main()
    top = max(streams)
    session = next(r for r in rows if r["mode"] == "session" and r["streams"] == top)
    goal = f"MediaSession send |dev| p99 <= {GOAL_DEV_P99_MS} ms at {top} sessions"
    goals = {goal: verdict(session["dev_p99"] <= GOAL_DEV_P99_MS)}
    print(f"  {goals[goal]}  {goal} (measured {session['dev_p99']:.2f} ms)")
    return {
        "rows": rows,
        "codecs_us_per_frame": codecs,
        "load": load,
        "summary": {"goals": goals, "event_loop": loop},
    }
