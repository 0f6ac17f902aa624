"""SIP timer values (RFC 3261 §17 and Table 4) and a deadline queue for the state machines.

Timers are inputs: the transport asks :meth:`TimerQueue.next_deadline`, sleeps until then and
feeds the current time back, so tests drive time with a fake clock and never sleep.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SipTimers:
    """T1, T2, T4 of RFC 3261 §17.1.1.1 (defaults per Table 4); derived timers are methods."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0

    @property
    def b(self) -> float:
        """Timers B, F, H, J, L and the 2xx give-up time: 64*T1."""
        return 64 * self.t1


class HasTimers(Protocol):
    """An object that records its armed timers' generations."""

    @property
    def timer_generation(self) -> dict[str, int]:
        """name → generation of the armed timer."""
        ...


class TimerOwner(HasTimers, Protocol):
    """An object whose timers live in a :class:`TimerQueue`."""

    def on_timer(self, name: str, now: float) -> None:
        """Timer ``name`` fired."""
        ...


class TimerQueue:
    """A heap of deadlines; cancelling is lazy (the heap entry stays until it comes up).

    The heap holds only ``(deadline, generation)``; the owner of a live timer is found through
    ``_armed``, which cancelling and re-arming clear at once. So a cancelled timer keeps no
    reference to its owner: a dialog's 32 s give-up timer, cancelled when the ACK comes, must not
    keep the dialog — and through it the whole call — alive until it would have fired. Dead
    entries are dropped when they reach the top, and the heap is rebuilt from the live ones when
    they are outnumbered (long timers cancelled at a high call rate would otherwise pile up).
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int]] = []
        self._armed: dict[int, tuple[TimerOwner, str]] = {}
        self._counter = itertools.count()

    def __len__(self) -> int:
        """How many timers are armed."""
        return len(self._armed)

    def schedule(self, owner: TimerOwner, name: str, deadline: float) -> None:
        """(Re)arm ``owner``'s timer ``name`` for ``deadline``."""
        previous = owner.timer_generation.get(name)
        if previous is not None:
            self._armed.pop(previous, None)
        gen = next(self._counter)
        owner.timer_generation[name] = gen
        self._armed[gen] = (owner, name)
        heapq.heappush(self._heap, (deadline, gen))
        if len(self._heap) > 64 and len(self._heap) > 2 * len(self._armed):
            # in place: fire_due may be iterating this list (an owner re-arming from on_timer)
            self._heap[:] = [entry for entry in self._heap if entry[1] in self._armed]
            heapq.heapify(self._heap)

    def cancel(self, owner: HasTimers, name: str) -> None:
        """Disarm ``owner``'s timer ``name`` (no-op when not armed)."""
        gen = owner.timer_generation.pop(name, None)
        if gen is not None:
            self._armed.pop(gen, None)

    def next_deadline(self) -> float | None:
        """The earliest live deadline, or None."""
        heap = self._heap
        while heap and heap[0][1] not in self._armed:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def fire_due(self, now: float) -> int:
        """Fire every timer due at ``now``; return how many fired. A handler that raises is
        logged and counted as fired: the timers after it still fire, and the caller still
        re-arms from :meth:`next_deadline` (one call's bug must not stall every call's)."""
        fired = 0
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, gen = heapq.heappop(heap)
            armed = self._armed.pop(gen, None)
            if armed is None:
                continue
            owner, name = armed
            if owner.timer_generation.get(name) != gen:
                continue  # disarmed behind our back
            del owner.timer_generation[name]
            fired += 1
            try:
                owner.on_timer(name, now)
            except Exception:  # one owner's failure must not stop every other timer
                log.exception("SIP timer %s failed", name)
        return fired
