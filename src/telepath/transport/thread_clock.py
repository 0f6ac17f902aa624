"""How long the event-loop thread was busy: on a CPU, or runnable and waiting for one.

``time.thread_time`` counts the time on a CPU only. Where other processes share the cores —
SIP workers beside each other, the database, a benchmark's SIPp — a saturated event loop spends
part of its time runnable but waiting for a CPU, so its CPU share stays below any threshold
while its work queues (measured: two workers on the 2-vCPU VM, 600 calls/s offered, never read
0.97; every refused call was refused by the receive-backlog guard, with 213 ms set-up and 367
retransmissions). Linux reports both per thread in ``/proc/thread-self/schedstat``
(``Documentation/scheduler/sched-stats.rst``: time on the CPU, time waiting on a run queue, in
ns; ``CONFIG_SCHED_INFO``). Their sum over wall time is the share of time the thread could not
have taken on more work — what the load admission needs.

Hand-written: two integers from one ``/proc`` file, kept open and re-read with ``pread``; no
library reads per-thread scheduler statistics.
"""

from __future__ import annotations

import os
import time

SCHEDSTAT = "/proc/thread-self/schedstat"


class BusyClock:
    """Seconds the thread that built it spent running or runnable (``time.thread_time`` where
    the kernel does not report run-queue waits). Build it on the thread to measure."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self._last = 0.0
        try:
            self._fd = os.open(SCHEDSTAT, os.O_RDONLY)
            self._last = self._read(self._fd)
        except (OSError, ValueError):
            self.close()
        self.waits_counted = self._fd is not None

    @staticmethod
    def _read(fd: int) -> float:
        run_ns, wait_ns = os.pread(fd, 128, 0).split()[:2]
        return (int(run_ns) + int(wait_ns)) / 1e9

    def __call__(self) -> float:
        """Busy seconds so far (monotonic; only differences mean anything)."""
        if self._fd is None:
            return time.thread_time()
        try:
            self._last = self._read(self._fd)
        except (OSError, ValueError):
            pass  # keep the last value: one quiet-looking period, not a jump between clocks
        return self._last

    def close(self) -> None:
        """Release the file (the clock then stops advancing if it was reading it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
