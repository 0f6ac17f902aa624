"""The RTP port allocator when the process is out of descriptors."""

from __future__ import annotations

import errno
import socket
from typing import Any

import pytest

from telepath.transport.ports import RtpPortAllocator, RtpPortsExhausted


def test_no_descriptor_for_rtcp_is_ports_exhausted_and_closes_the_rtp_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """EMFILE on the RTCP socket (the second): call control gets RtpPortsExhausted (its
    503 + Retry-After), not an OSError (a 500 and a traceback per INVITE), and the RTP
    socket made first is closed at once, not left to the garbage collector."""
    real = socket.socket
    made: list[socket.socket] = []

    def one_descriptor_left(*args: Any, **kwargs: Any) -> socket.socket:
        if made:
            raise OSError(errno.EMFILE, "Too many open files")
        sock = real(*args, **kwargs)
        made.append(sock)
        return sock

    allocator = RtpPortAllocator(40000, 40011, "127.0.0.1")
    monkeypatch.setattr(socket, "socket", one_descriptor_left)
    with pytest.raises(RtpPortsExhausted):
        allocator.allocate()
    monkeypatch.undo()
    (rtp,) = made
    assert rtp.fileno() == -1  # closed
    assert allocator.in_use == 0
    lease = allocator.allocate()  # descriptors back: the same range serves again
    lease.release()
