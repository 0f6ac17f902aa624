"""Fixtures for media tests: a port allocator on a private loopback range."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

from telepath.transport.ports import RtpPortAllocator

# Each xdist worker / test gets its own slice so parallel runs never collide.
_slices = itertools.count()


@pytest.fixture
def allocator() -> Iterator[RtpPortAllocator]:
    base = 41000 + 200 * (next(_slices) % 40) + 8000 * (os.getpid() % 2)
    yield RtpPortAllocator(base, base + 199, host="127.0.0.1")


@pytest.fixture
def dual_stack_allocator() -> Iterator[RtpPortAllocator]:
    """Ports bound to ``::`` (``TELEPATH_SIP_HOST=::``): one AF_INET6 socket per port that
    IPv4 peers reach too (as ``::ffff:a.b.c.d``), when the host has IPv6 at all."""
    base = 41000 + 200 * (next(_slices) % 40) + 8000 * (os.getpid() % 2)
    yield RtpPortAllocator(base, base + 199, host="::")
