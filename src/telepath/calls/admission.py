"""Admission by the event-loop thread's load: new call attempts at a rate the loop can serve.

Call set-up and every call's media run on one event-loop thread. Offered more new calls than
that thread can set up, the work queues (first in the kernel's socket buffer, where the loop
cannot see it), set-up time grows for every call and the callers' retransmissions add load:
on this project's 2-vCPU VM, capacity 250/s, 400/s offered with no limit gave 273 ms set-up
and 81 retransmissions even with the receive-backlog guard. A fixed ``TELEPATH_SIP_MAX_CPS``
avoids that, but has to be measured on each machine; this controller measures instead.

Every period it reads the share of wall time the loop thread was busy: on a CPU, or runnable
and waiting for one (``transport/thread_clock.py``; this thread only — the process's other
threads, the database driver's, used 0.05–0.1 of a core at capacity, the loop thread
0.96–0.98). Counting the wait matters where other processes share the cores: there a saturated
loop's CPU share alone stayed under the threshold (two SIP workers on 2 vCPUs, below):

- at or above ``high`` (saturated), the rate of new attempts admitted falls to ``DECREASE`` of
  what the loop served in that period: the calls it answered, or the attempts it admitted if
  fewer. Answered calls are the loop's throughput, so the first saturated period already puts
  the limit under capacity; the admitted rate alone, at 600/s offered to a 250/s gateway, took
  3 s to come down, and the queue built meanwhile. Once limited, one period lowers the limit
  by ``DECREASE`` at most: a saturated loop's set-ups outlast a period, so a period's answered
  count can read far below its throughput (280 → 110/s in one step at 2× capacity offered,
  after which the limit climbed back 10 % a period: ~120–150 calls/s served of a 250/s
  capacity; bounded, it settled at ~190/s);
- below ``low``, it is lifted if no attempt was refused in that period (callers asked for less
  than it) or if the loop was less than half that busy (the saturation was a one-off: a long
  API request on the same loop, say — rising 10 % a period from the 1/s floor would refuse a
  quiet gateway's calls for seconds), and otherwise rises by ``INCREASE`` per period;
- in between, it holds.

Live calls' media count too: with the loop saturated by media alone, new attempts are admitted
at ``floor_cps`` — more calls would degrade every call's audio. FreeSWITCH's ``min-idle-cpu``
refuses calls on the same principle, from the machine's idle CPU; the loop thread is what
saturates first here. Pure: the caller passes the clocks in (no asyncio, no clock reads).

Hand-written: a token bucket and a few lines of arithmetic; no maintained library controls an
admission rate from a thread's CPU share.
"""

from __future__ import annotations

DECREASE = 0.8  # saturated: admit this share of what the loop served in the last period
INCREASE = 1.1  # idle enough: raise the limit by this factor per period
BURST_S = 0.1  # the token bucket holds this many seconds of the limit (at least one token)


class TokenBucket:
    """``rate`` tokens a second, holding ``burst_s`` seconds of them (at least one token)."""

    def __init__(self, rate: float, burst_s: float, now: float, *, full: bool = True) -> None:
        self.rate = rate
        self.burst_s = burst_s
        self._tokens = self._burst() if full else 0.0
        self._at = now

    def _burst(self) -> float:
        return max(1.0, self.rate * self.burst_s)

    def take(self, now: float) -> bool:
        """One token at ``now`` (monotonic), if there is one."""
        self._tokens = min(self._burst(), self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class LoadAdmission:
    """Admits new call attempts at a rate that keeps the loop thread below saturation."""

    def __init__(self, *, high: float, low: float, floor_cps: float = 1.0) -> None:
        if not 0 < low < high:
            raise ValueError("need 0 < low < high")
        self.high = high
        self.low = low
        self.floor_cps = floor_cps
        self.limit_cps: float | None = None  # None: every attempt is admitted
        self.busy = 0.0  # the loop thread's CPU share in the last period
        self._admitted = 0  # attempts admitted since the last update
        self._refused = 0  # attempts refused since the last update
        self._answered = 0  # calls answered since the last update
        self._last: tuple[float, float] | None = None  # (wall, thread cpu) at the last update
        self._bucket = TokenBucket(0.0, BURST_S, 0.0, full=False)  # the limit, when there is one

    def update(self, wall: float, cpu: float) -> None:
        """End a period: ``wall`` a monotonic time, ``cpu`` the loop thread's CPU time (s)."""
        last, self._last = self._last, (wall, cpu)
        refused, self._refused = self._refused, 0
        admitted, self._admitted = self._admitted, 0
        answered, self._answered = self._answered, 0
        if last is None or wall <= last[0]:
            return
        elapsed = wall - last[0]
        self.busy = (cpu - last[1]) / elapsed
        served = min(admitted, answered) if answered else admitted
        if self.busy >= self.high:
            cut = DECREASE * served / elapsed
            if self.limit_cps is None:
                # Newly limited. Attempts admitted in the period have set-ups queued behind the
                # saturation: the bucket starts empty. With none admitted nothing queues (the
                # loop was busy with an API request, start-up, or other processes held the
                # cores): one token, so the next caller is served, not refused (a 503 to the
                # first call placed after creating a trunk, seen in CI).
                self._bucket = TokenBucket(0.0, BURST_S, wall, full=admitted == 0)
            else:  # already limited: down by DECREASE at most per period
                cut = max(cut, DECREASE * self.limit_cps)
            self.limit_cps = max(self.floor_cps, cut)
        elif self.busy < self.low and self.limit_cps is not None:
            limited = refused and self.busy >= self.low / 2
            self.limit_cps = self.limit_cps * INCREASE if limited else None

    def answered(self) -> None:
        """A call was answered: one set-up the loop got through."""
        self._answered += 1

    def admit(self, now: float) -> bool:
        """May a new call attempt arriving at ``now`` (monotonic) go on?"""
        if self.limit_cps is not None:
            self._bucket.rate = self.limit_cps
            if not self._bucket.take(now):
                self._refused += 1
                return False
        self._admitted += 1
        return True
