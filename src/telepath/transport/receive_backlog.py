"""Overload as the carrier sees it: how long SIP datagrams wait before the gateway reads them.

When the event loop is saturated, datagrams queue in the SIP socket's kernel buffer and behind
the loop's other callbacks. Each loop iteration can still be short, so the event-loop lag
monitor (``calls.manager.LagMonitor``) does not see it; measured at 2x capacity on the 2-vCPU
benchmark VM: every SIP datagram 80-200 ms old when read (0.2-1.5 ms at capacity), loop lag
under its threshold, 500 ms set-up times, INVITE retransmissions and no 503. The kernel stamps
each datagram on arrival (``SIOCGSTAMP``, Linux ``sock_ioctl``: the time the last datagram read
from the socket arrived), so the wait is measured, not estimated, at one ``ioctl`` per datagram.

:class:`BacklogMonitor` turns the waits into a shedding decision. A wait over the threshold on
every datagram read for ``hold_s`` is overload; one burst read right after a stall (a VM pause,
a full collection) is read within milliseconds and is not. Shedding stops at the first datagram
that waited less than half the threshold, so it lasts only while the queue is long.
No maintained library measures this; it is two system-level facts and a few comparisons.
"""

from __future__ import annotations

import errno
import fcntl
import struct
import time

SIOCGSTAMP = 0x8906  # linux/sockios.h: struct timeval of the last packet read (CLOCK_REALTIME)
_TIMEVAL = struct.Struct("@ll")  # struct timeval: tv_sec, tv_usec, two C longs
_EMPTY = bytes(_TIMEVAL.size)


class KernelReceiveTime:
    """How long the datagram just read from ``fd`` waited since the kernel received it."""

    __slots__ = ("_fd", "available")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self.available = True
        # The first SIOCGSTAMP turns the socket's timestamps on (``sock_gettstamp``), and the
        # kernel starts stamping a moment later: ask once now, not at the first datagram, so
        # the first datagrams do not read as not having waited.
        self.waited_s()

    def waited_s(self) -> float:
        """Seconds between the last read datagram's arrival and now (0.0 when unknown)."""
        if not self.available:
            return 0.0
        try:
            sec, usec = _TIMEVAL.unpack(fcntl.ioctl(self._fd, SIOCGSTAMP, _EMPTY))
        except OSError as exc:
            if exc.errno != errno.ENOENT:  # ENOENT: nothing read yet; else not Linux
                self.available = False
            return 0.0
        return max(0.0, time.time() - (float(sec) + float(usec) / 1e6))


class BacklogMonitor:
    """Overloaded while every datagram read for ``hold_s`` waited over ``threshold_s``."""

    __slots__ = ("threshold_s", "hold_s", "overloaded", "_over_since")

    def __init__(self, threshold_s: float, hold_s: float = 0.1) -> None:
        self.threshold_s = threshold_s
        self.hold_s = hold_s
        self.overloaded = False
        self._over_since: float | None = None

    def sample(self, waited_s: float, now: float) -> None:
        """One datagram read at ``now`` (monotonic seconds) after waiting ``waited_s``."""
        if waited_s > self.threshold_s:
            if self._over_since is None:
                self._over_since = now
            elif now - self._over_since >= self.hold_s:
                self.overloaded = True
            return
        self._over_since = None
        if waited_s < self.threshold_s / 2:
            self.overloaded = False
