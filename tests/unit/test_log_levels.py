"""configure_logging keeps the libraries that log secrets at DEBUG above DEBUG."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from telepath.log import configure_logging


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    quiet = logging.getLogger("aiosqlite")
    quiet_level = quiet.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        quiet.setLevel(quiet_level)


@pytest.mark.usefixtures("restored_logging")
def test_at_debug_aiosqlite_does_not_log_statements_and_their_parameters() -> None:
    """aiosqlite logs every statement it runs with its parameters at DEBUG: HA1 hashes (enough
    to answer a digest challenge), numbers, transcripts; TELEPATH_LOG_LEVEL=DEBUG on SQLite
    wrote them all to the log."""
    configure_logging("DEBUG")
    assert logging.getLogger("telepath").isEnabledFor(logging.DEBUG)
    assert not logging.getLogger("aiosqlite").isEnabledFor(logging.DEBUG)
    assert logging.getLogger("aiosqlite").isEnabledFor(logging.WARNING)
