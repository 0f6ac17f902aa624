"""SIP timer values (RFC 3261 §17 and Table 4) and a deadline queue for the state machines.

Timers are inputs: the transport asks :meth:`TimerQueue.next_deadline`, sleeps until then and
feeds the current time back, so tests drive time with a fake clock and never sleep.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from typing import Protocol


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
    """A heap of (deadline, owner, name); cancelling bumps a generation (lazy deletion)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int, TimerOwner, str]] = []
        self._counter = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(self, owner: TimerOwner, name: str, deadline: float) -> None:
        """(Re)arm ``owner``'s timer ``name`` for ``deadline``."""
        gen = next(self._counter)
        owner.timer_generation[name] = gen
        heapq.heappush(self._heap, (deadline, gen, gen, owner, name))

    @staticmethod
    def cancel(owner: HasTimers, name: str) -> None:
        """Disarm ``owner``'s timer ``name`` (no-op when not armed)."""
        owner.timer_generation.pop(name, None)

    def _live(self, entry: tuple[float, int, int, TimerOwner, str]) -> bool:
        _, _, gen, owner, name = entry
        return owner.timer_generation.get(name) == gen

    def next_deadline(self) -> float | None:
        """The earliest live deadline, or None."""
        while self._heap and not self._live(self._heap[0]):
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def fire_due(self, now: float) -> int:
        """Fire every timer due at ``now``; return how many fired."""
        fired = 0
        while self._heap and self._heap[0][0] <= now:
            entry = heapq.heappop(self._heap)
            if not self._live(entry):
                continue
            _, _, _, owner, name = entry
            del owner.timer_generation[name]
            owner.on_timer(name, now)
            fired += 1
        return fired
