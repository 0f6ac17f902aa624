"""What was logged, with the call id each line would carry (``log.CallIdFilter``); the media
clocks' state between tests."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from telepath.log import CallIdFilter
from telepath.transport import media_pacer


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.addFilter(CallIdFilter())  # as configure_logging's handler: at emit time
        self.lines: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.getMessage(), record.call_id))  # type: ignore[attr-defined]


@contextlib.contextmanager
def call_ids_logged(*names: str) -> Iterator[list[tuple[str, str]]]:
    """``(message, call_id)`` of every line the loggers ``names`` log meanwhile."""
    keep = _Keep()
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(keep)
        logger.setLevel(logging.DEBUG)
    try:
        yield keep.lines
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(keep)
            logger.setLevel(level)


def drop_clocks_of_closed_loops() -> None:
    """Forget the clocks earlier tests' loops left running: ``serve_due`` drops one such clock
    per call and serves nothing else that time (fine in a process with one loop)."""
    media_pacer._live[:] = [p for p in media_pacer._live if not p._loop.is_closed()]
