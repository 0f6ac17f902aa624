"""One deadline-paced clock per (event loop, ptime), shared by every media session on it.

A single task wakes every ``ptime`` and calls each subscribed session, instead of one timer per
call (``reference/sip-stack.md`` §4 item 6). The deadline advances by exactly ``ptime`` each
tick (``next += ptime``; never ``sleep(ptime)`` after work), so there is no drift. After a stall
longer than ``MAX_CATCH_UP`` packet times the clock jumps ahead instead of bursting, and tells
subscribers how many frames elapsed so RTP timestamps keep following real time.

The clock is a chain of one-shot timers at absolute deadlines rather than a task that sleeps
(a sleeping task is woken through the ready queue and costs a future and a task step per
wake-up). The timer is a kernel ``timerfd`` (``deadline_timer.py``): uvloop's own timers keep
whole milliseconds, which put up to a millisecond of error into every send interval; where
there is no timerfd it is ``loop.call_at``.

Subscribers are placed in ``ptime / SLOT_MS`` slots (4 for 20 ms), each woken on its own 5 ms
phase. A slot takes up to ``SLOT_CAPACITY`` streams before the next one is opened, and a slot
with no streams costs no wake-up: with few calls one wake-up per ``ptime`` serves them all
(fewer wake-ups, and each finds the code it runs still in cache — at small N, per-event cache
misses are most of the cost), while past ``SLOT_CAPACITY`` streams each burst stays bounded, so
the lateness of the last stream in a burst stays small. A stream never changes slot, so its
packets always leave exactly one ``ptime`` apart.

The clock serves every call, so it runs in no call's ``contextvars`` context (``log.py``'s call
id), wherever it was started or served from (its timer: ``deadline_timer.py``; ``serve_due``:
whichever call's packet came in): its own lines carry no call id, and a subscriber's failure is
logged in the context that subscriber subscribed from — its own call's.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import weakref
from collections.abc import Callable

from telepath.transport import gc_schedule
from telepath.transport.deadline_timer import DeadlineTimer

logger = logging.getLogger(__name__)

TickCallback = Callable[[float, int], None]
MAX_CATCH_UP = 3
SLOT_MS = 5
SLOT_CAPACITY = 16  # streams a slot takes before the next one is opened (~0.3 ms of sends)

_observe_lateness: Callable[[float], None] | None = None
_skipped = 0  # frame times skipped after stalls, every pacer of the process


def skipped_frames() -> int:
    """Frame times the pacers of this process have skipped after a stall (a frame time per
    stream: each stream's audio of that time was not sent) since it started."""
    return _skipped


def observe_lateness(observer: Callable[[float], None] | None) -> None:
    """Have every pacer report each wake-up's lateness, in seconds, to ``observer`` (None:
    stop). How late the clock wakes is how late every stream of that slot sends: the gateway's
    own share of the jitter a phone measures (``telepath_media_tick_lateness_seconds``)."""
    global _observe_lateness
    _observe_lateness = observer


_live: list[Pacer] = []  # running clocks (one per loop and ptime; normally one)


def serve_due() -> None:
    """Serve a clock whose deadline has passed, from inside another I/O callback.

    The loop runs every callback that is ready in one iteration before it looks at the next: at
    200 calls that is hundreds of RTP datagrams and agent frames (~40 µs each), and a clock due
    in the middle of them used to wait for all of them — measured with
    ``telepath_media_tick_lateness_seconds``: 20–31 % of wake-ups more than 2 ms late at N=200
    on a 2-vCPU AMD EPYC VM. The per-packet and per-frame receive paths call this first, so a
    due slot waits for at most one callback (A/B, three pairs at N=200: wake-ups > 2 ms late
    20–25 % → 0.65–0.85 %, the phones' jitter p99 14–19 → 3.5–4.6 ms, CPU per call unchanged).
    Costs one clock read per call; the timer's own wake-up, if already pending, then finds the
    clock re-armed and does nothing (``DeadlineTimer._readable``).
    """
    if _live:
        now = time.monotonic()
        for pacer in _live:
            if now >= pacer._deadline and not pacer._in_tick:
                if pacer._loop.is_closed():  # left running when its loop ended (tests)
                    _live.remove(pacer)
                    return
                # not in the context of the call whose packet this is (module docstring)
                contextvars.Context().run(pacer._tick)


_pacers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, Pacer]] = (
    weakref.WeakKeyDictionary()
)


class Pacer:
    """Calls every subscriber once per ``ptime_ms`` with ``(now, frames_elapsed)``; ``now`` is
    ``time.monotonic()``: the clock ``loop.time()`` reads (both loops'), to the microsecond.

    Args:
        ptime_ms: the tick interval.
        loop: the event loop to run on.
        precise: False: ``loop.call_at`` (millisecond grain under uvloop) instead of a timerfd.
    """

    def __init__(
        self, ptime_ms: int, loop: asyncio.AbstractEventLoop, *, precise: bool = True
    ) -> None:
        self.ptime = ptime_ms / 1000
        self._loop = loop
        self.slots = max(1, ptime_ms // SLOT_MS)
        self._slot_time = self.ptime / self.slots
        self._subscribers: list[dict[int, TickCallback]] = [{} for _ in range(self.slots)]
        self._slot_of: dict[int, int] = {}
        self._context_of: dict[int, contextvars.Context] = {}  # where each subscribed from
        self._timer = DeadlineTimer(loop, self._tick, precise=precise)
        self._running = False
        self._deadline = 0.0
        self._last: list[float] = []
        self._slot = 0
        self._next_id = 0
        self._in_tick = False
        self.wakeups = 0  # timer wake-ups so far (tests, debugging)

    @classmethod
    def for_loop(cls, ptime_ms: int, loop: asyncio.AbstractEventLoop | None = None) -> Pacer:
        """Return the shared pacer for this loop and ptime, creating it on first use."""
        loop = loop or asyncio.get_running_loop()
        per_loop = _pacers.setdefault(loop, {})
        pacer = per_loop.get(ptime_ms)
        if pacer is None:
            pacer = per_loop[ptime_ms] = cls(ptime_ms, loop)
        return pacer

    def subscribe(self, callback: TickCallback) -> int:
        """Start calling ``callback`` every tick; returns a handle for :meth:`unsubscribe`."""
        handle = self._next_id
        self._next_id += 1
        slots = self._subscribers
        slot = next((i for i, subs in enumerate(slots) if len(subs) < SLOT_CAPACITY), None)
        if slot is None:  # every slot full: the least loaded
            slot = min(range(self.slots), key=lambda i: len(slots[i]))
        self._subscribers[slot][handle] = callback
        self._slot_of[handle] = slot
        self._context_of[handle] = contextvars.copy_context()  # its failures are logged there
        if not self._running:
            self._start()
        return handle

    def unsubscribe(self, handle: int) -> None:
        """Stop calling a subscriber (the clock stops when none is left)."""
        slot = self._slot_of.pop(handle, None)
        if slot is not None:
            self._subscribers[slot].pop(handle, None)
        self._context_of.pop(handle, None)

    def last_tick(self, handle: int) -> float | None:
        """The deadline (monotonic time, the clock ``loop.time()`` reads) a subscriber was last
        called for, which the frame it then produced belongs to; None once unsubscribed. Before
        its first call: a time before it subscribed."""
        slot = self._slot_of.get(handle)
        return None if slot is None else self._last[slot]

    @property
    def subscriber_count(self) -> int:
        """How many sessions are subscribed."""
        return len(self._slot_of)

    def _start(self) -> None:
        self._running = True
        _live.append(self)
        gc_schedule.clock_started()
        now = self._loop.time()
        self._deadline = now
        # The deadline each slot was last served at, so a stall counts its frames per slot.
        self._last = [now - self.ptime + i * self._slot_time for i in range(self.slots)]
        self._slot = 0
        self._schedule()

    def _schedule(self) -> None:
        """Arm the clock for the next slot with streams. An empty slot is passed over without a
        wake-up, its clock advanced as if served, so a stream that joins it later counts one
        frame, not the whole time it was empty."""
        for _ in range(self.slots):
            self._deadline += self._slot_time
            if self._subscribers[self._slot]:
                break
            self._last[self._slot] = self._deadline
            self._slot = (self._slot + 1) % self.slots
        self._timer.arm(self._deadline)

    def _failed(self, slot: int, callback: TickCallback) -> None:
        """Log a subscriber's failure (in ``except``) in the context it subscribed from: its
        call's id on the line. Its handle is looked up here, not carried through the tick's
        loop, which runs for every stream every ``ptime``."""
        handle = next((h for h, c in self._subscribers[slot].items() if c is callback), None)
        context = self._context_of.get(handle) if handle is not None else None
        if context is None:  # it unsubscribed itself, then failed
            logger.exception("media session tick failed")
        else:
            context.run(logger.exception, "media session tick failed")

    def _tick(self) -> None:
        """One slot's wake-up."""
        self.wakeups += 1
        if not self._slot_of:
            self._running = False
            if self in _live:
                _live.remove(self)
            self._timer.disarm()
            gc_schedule.clock_stopped()
            return  # nobody left: stop; the next subscribe starts again
        ptime = self.ptime
        # time.monotonic, not loop.time: uvloop's clock is the same one in whole ms, frozen for
        # a batch of callbacks; subscribers compare this with RTP arrival times read from it
        now = time.monotonic()
        behind = now - self._deadline
        observe = _observe_lateness
        if observe is not None:
            observe(behind if behind > 0 else 0.0)
        if behind > MAX_CATCH_UP * ptime:
            global _skipped
            skipped = int(behind / ptime)
            _skipped += skipped
            self._deadline += skipped * ptime
            logger.warning("media pacer stalled; skipping frames")
        slot = self._slot
        frames = max(1, round((self._deadline - self._last[slot]) / ptime))
        self._last[slot] = self._deadline
        self._in_tick = True  # a subscriber's own sends must not re-enter (serve_due)
        try:
            for callback in list(self._subscribers[slot].values()):
                try:
                    callback(now, frames)
                except Exception:  # one broken session must not stop every call's audio
                    self._failed(slot, callback)
        finally:
            self._in_tick = False
        self._slot = (slot + 1) % self.slots
        self._schedule()
        # The garbage collector's young generations run here, in the gap after the burst,
        # rather than wherever an allocation crosses the threshold (gc_schedule.py).
        gc_schedule.after_tick()
