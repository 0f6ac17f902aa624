"""A one-shot timer at an absolute deadline on the event loop's clock, to the microsecond.

Why not ``loop.call_at``: uvloop (libuv) keeps time in whole milliseconds — the loop's clock is
truncated to the millisecond and a timer fires on the first loop iteration whose truncated time
has reached it — so a timer due at 100.0 ms runs anywhere in [100, 101) ms and, in the media
pacer, every RTP send interval carried up to a millisecond of error from that alone (measured at
100 calls: tick lateness p50 0.41 ms, p90 1.03 ms). A Linux ``timerfd`` armed at the absolute
deadline (``TFD_TIMER_ABSTIME`` on ``CLOCK_MONOTONIC``, the clock both uvloop's and asyncio's
``loop.time()`` read) is an hrtimer: the file descriptor becomes readable on time and the loop,
which polls it like a socket, wakes then.

Hand-written because the standard library has ``os.timerfd_create`` only from Python 3.13; two
libc calls through ``ctypes`` (timerfd_create(2), timerfd_settime(2)) are all it takes. Where
those are missing (not Linux) the timer falls back to ``loop.call_at``, as before.

One difference to ``call_at``: the callback runs with the loop's other I/O callbacks rather
than in its timer phase, i.e. possibly after some of the datagrams that arrived at the same
moment.

The callback runs in an empty ``contextvars`` context, not in the one ``arm`` was called from:
the timer serves every call (the media pacer's) yet is first armed from inside one call's set-up,
and a callback registered there would carry that call's context — its id on every line logged
from it, for every call (``log.py``).
"""

from __future__ import annotations

import asyncio
import contextvars
import ctypes
import logging
import math
import os
import sys
import time
import weakref
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

_TFD_TIMER_ABSTIME = 1  # <sys/timerfd.h>


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


class _Itimerspec(ctypes.Structure):
    _fields_ = (("it_interval", _Timespec), ("it_value", _Timespec))


def _load_libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        # The interpreter's own symbol namespace, which holds libc's: no library search
        # (``ctypes.util.find_library`` would run ``ldconfig -p`` at every start-up).
        libc = ctypes.CDLL(None, use_errno=True)
        libc.timerfd_create.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.timerfd_settime.argtypes = (
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(_Itimerspec),
            ctypes.c_void_p,
        )
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _load_libc()


class DeadlineTimer:
    """Calls ``callback()`` once the loop's clock reaches the deadline given to :meth:`arm`.

    Args:
        loop: the event loop (its ``time()`` must be ``CLOCK_MONOTONIC`` seconds, as uvloop's
            and asyncio's are).
        callback: what to run; re-arm from inside it for the next deadline.
        precise: False forces the ``call_at`` fallback.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        callback: Callable[[], None],
        *,
        precise: bool = True,
    ) -> None:
        self._loop = loop
        self._callback = callback
        self._handle: asyncio.TimerHandle | None = None
        self._fd = -1
        self._armed = False
        self._reading = False
        self._spec = _Itimerspec()
        self._no_call = contextvars.Context()  # what the callback runs in (module docstring)
        if precise and _LIBC is not None:
            fd = _LIBC.timerfd_create(time.CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
            if fd >= 0:
                self._fd = fd
                weakref.finalize(self, os.close, fd)
            else:
                logger.debug("timerfd_create failed (errno %d); using call_at", ctypes.get_errno())

    @property
    def precise(self) -> bool:
        """Whether the kernel's timer is used (False: ``loop.call_at``)."""
        return self._fd >= 0

    def arm(self, deadline: float) -> None:
        """Fire at ``deadline`` (loop time, seconds); at once if it has passed."""
        if self._fd < 0:
            if self._handle is not None:
                self._handle.cancel()
            self._handle = self._loop.call_at(deadline, self._fire, context=self._no_call)
            return
        spec = self._spec
        frac, whole = math.modf(max(deadline, 1e-9))
        spec.it_value.tv_sec = int(whole)
        spec.it_value.tv_nsec = int(frac * 1e9)
        if _LIBC.timerfd_settime(self._fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None) != 0:
            # Never leave the caller without its timer (the media pacer would stop every call's
            # audio): fall back to the loop's own for good.
            logger.warning(
                "timerfd_settime failed (errno %d); falling back to loop timers",
                ctypes.get_errno(),
            )
            self.disarm()
            self._fd = -1  # the finalizer still closes the descriptor
            self.arm(deadline)
            return
        self._armed = True
        if not self._reading:
            # add_reader takes no context: it copies the current one, so register from inside
            # an empty one (a fresh one: this may run from inside the callback itself)
            contextvars.Context().run(self._loop.add_reader, self._fd, self._readable)
            self._reading = True

    def disarm(self) -> None:
        """Cancel a pending deadline and stop watching the timer (idempotent)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._fd < 0:
            return
        if self._armed:
            self._spec.it_value.tv_sec = self._spec.it_value.tv_nsec = 0  # zero disarms
            _LIBC.timerfd_settime(self._fd, 0, ctypes.byref(self._spec), None)
            self._armed = False
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False

    def _readable(self) -> None:
        try:
            os.read(self._fd, 8)  # the expiration count; reading clears readiness
        except BlockingIOError:
            return  # re-armed after it became readable: not due yet
        self._armed = False
        self._callback()

    def _fire(self) -> None:
        self._handle = None
        self._callback()
