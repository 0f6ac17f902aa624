"""When a stream's RTP sends should move to follow an agent that speaks in real time.

The media pacer sends each stream at a fixed phase of its packet-time clock
(``transport/media_pacer.py``). An agent that sends its audio in real time — a frame per packet
time, as an echo does, or a Twilio-protocol agent streaming as it synthesises — delivers each
frame at a phase of its own, and the frame then waits for the stream's next send: anywhere from
nothing to a whole packet time, the same for the whole call, set by where the two phases happen
to fall. That wait was most of what the gateway added from agent to caller (issue 6's benchmark,
2026-12-07: 13.9 ms p50, 21.9 ms p99 at 10 calls, while caller to agent took 0.27 / 0.85 ms).

:class:`SendPhase` watches the *slack* of the frames that reach an empty queue: how long from
their arrival until the stream's next send. Over a window of :data:`WINDOW` such arrivals, if even
the one with least slack waited more than :data:`MARGIN_S` plus :data:`MIN_SHIFT_S`, the sends can
all move earlier by that least slack less :data:`MARGIN_S` and every frame of the window would
still have made its send. The window's minimum, not its mean, so that moving costs no frame a
late send (a frame that misses its send waits a whole packet time more); the margin keeps room for
arrivals a little later than any seen in the window.

Only arrivals to an empty queue count: that wait is the phase's. An agent that sends faster
than real time (OpenAI Realtime, ElevenLabs: a reply arrives in bursts) queues its audio, and
its frames' wait is the queue's, which moving the phase would not shorten; such an agent reaches
an empty queue only at the start of a reply, at phases that vary from reply to reply, so the
window's minimum stays small and the phase stays where it is.

A move makes one send interval shorter than a packet time (the RTP timestamps still advance by
one frame): the receiver sees that packet early, once, and keeps it in its jitter buffer. Pure
and synchronous; the media session feeds it and applies the move (``media_session.py``).
"""

from __future__ import annotations

import math

#: Arrivals to an empty queue per decision (50: a second of a real-time agent at 20 ms).
WINDOW = 50
#: Slack kept after a move, for arrivals later than any in the window (loopback at 100 calls:
#: caller→agent p99 − p50 ≈ 1.4 ms, issue 6's benchmark).
MARGIN_S = 0.002
#: Smaller moves are not made: each costs one short send interval at the caller.
MIN_SHIFT_S = 0.002


class SendPhase:
    """Decides, from the slack of agent frames arriving to an empty queue, when a stream's
    sends should come earlier, and by how much."""

    __slots__ = ("_count", "_least")

    def __init__(self) -> None:
        self._count = 0
        self._least = math.inf

    def arrival(self, slack: float) -> float:
        """A frame reached an empty queue ``slack`` seconds before the stream's next send.

        Returns:
            How much earlier, in seconds, the stream's sends should come from now on: 0.0 to
            stay (the window is not full, or the least slack in it leaves no room).
        """
        if slack < self._least:
            self._least = slack
        self._count += 1
        if self._count < WINDOW:
            return 0.0
        shift = self._least - MARGIN_S
        self._count = 0
        self._least = math.inf
        return shift if shift >= MIN_SHIFT_S else 0.0
