"""``BENCH_PROBE=1 python -m bench calls``: the gateway's per-frame callbacks timed in situ.

Put on the gateway's ``PYTHONPATH`` by ``bench.procs.Gateway`` when ``BENCH_PROBE_OUT`` names a
file; Python imports ``sitecustomize`` at start-up. Wraps our three per-frame entry points (RTP
in, agent bytes in, the pacer's wake-up) and the two sends inside them (the agent socket's
TCP write, the RTP ``sendto``) with the thread CPU clock, and appends the running totals —
``{"t": monotonic, "cpu": [user, system], "acc": {name: [ns, calls]}}`` — to the file every
second. The timing itself costs a few µs per call, so CPU figures of a probed run read high.
Private names are reached on purpose: a rename fails loudly here (AttributeError at start-up).
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

OUT = os.environ.get("BENCH_PROBE_OUT")

if OUT:  # only in a gateway started with the probe
    from telepath.bridges import ws_socket
    from telepath.transport import media_pacer, media_session

    _acc: dict[str, list[int]] = {}
    _clock = time.thread_time_ns

    def _timed(name: str, fn: Any) -> Any:
        slot = _acc.setdefault(name, [0, 0])

        def timed(*args: Any) -> Any:
            start = _clock()
            try:
                return fn(*args)
            finally:
                slot[0] += _clock() - start
                slot[1] += 1

        return timed

    def _wrap(cls: Any, method: str, name: str) -> None:
        setattr(cls, method, _timed(name, getattr(cls, method)))

    _wrap(media_session.MediaSession, "_on_rtp", "rtp_in")
    _wrap(ws_socket.AgentSocket, "data_received", "agent_in")
    _wrap(media_pacer.Pacer, "_tick", "tick")

    class _Sends:
        """A transport whose one send method is timed; everything else passes through."""

        def __init__(self, inner: Any, method: str, name: str) -> None:
            self._inner = inner
            setattr(self, method, _timed(name, getattr(inner, method)))

        def __getattr__(self, attr: str) -> Any:
            return getattr(self._inner, attr)

    _made = ws_socket.AgentSocket.connection_made

    def _connection_made(self: Any, transport: Any) -> None:
        _made(self, transport)
        self._transport = _Sends(transport, "write", "tcp_write")

    ws_socket.AgentSocket.connection_made = _connection_made  # type: ignore[method-assign]
    _on_tick = media_session.MediaSession._on_tick

    def _tick_with_timed_sends(self: Any, now: float, frames: int) -> None:
        if self._rtp is not None and not isinstance(self._rtp, _Sends):
            self._rtp = _Sends(self._rtp, "sendto", "udp_sendto")
        _on_tick(self, now, frames)

    media_session.MediaSession._on_tick = _tick_with_timed_sends  # type: ignore[method-assign]

    def _dump(path: str) -> None:
        while True:
            time.sleep(1.0)
            cpu = os.times()
            line = {"t": time.monotonic(), "cpu": [cpu.user, cpu.system], "acc": _acc}
            with open(path, "a") as f:
                f.write(json.dumps(line) + "\n")

    threading.Thread(target=_dump, args=(OUT,), daemon=True).start()
