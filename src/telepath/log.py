"""Logging set-up: one line per event, each carrying the call id of the call it belongs to.

The call id lives in a context variable that call control sets when it starts handling an
INVITE; asyncio copies context into the tasks a call spawns, so every line those tasks log is
tagged without passing the id around. What serves every call (the media clock,
``transport/media_pacer.py``) must not be registered from inside one call's context, or all it
logs carries that call's id: it runs in an empty one. Phone numbers, audio, transcripts and
secrets are never logged at INFO or above (transcripts go to DEBUG only, see ``calls/call.py``),
and secrets not at DEBUG either: the agent WebSockets' library logs its handshakes and frames
at DEBUG, so it gets a logger that stays at INFO (``bridges/ws_socket.py``), and aiosqlite,
which logs every statement with its parameters (HA1 hashes, numbers, transcripts) at DEBUG, is
kept at INFO (``configure_logging``).
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Literal

call_id_var: ContextVar[str] = ContextVar("telepath_call_id", default="-")


class CallIdFilter(logging.Filter):
    """Adds ``record.call_id`` from the context."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Tag and keep the record."""
        record.call_id = call_id_var.get()
        return True


class WorkerFilter(logging.Filter):
    """Adds ``record.worker``: which SIP worker process logged (``cli/workers.py``)."""

    def __init__(self, worker: int) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        """Tag and keep the record."""
        record.worker = self.worker
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, call_id, message (+ exception)."""

    def format(self, record: logging.LogRecord) -> str:
        """Serialize ``record``."""
        data = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "call_id": getattr(record, "call_id", "-"),
            "message": record.getMessage(),
        }
        worker = getattr(record, "worker", None)
        if worker is not None:
            data["worker"] = worker
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


def configure_logging(
    level: str, fmt: Literal["text", "json"] = "text", worker: int | None = None
) -> None:
    """Install the root handler (stderr) with call ids on every line.

    ``worker``: in a SIP worker process, its index, on every line too (``w1``, JSON ``worker``).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(CallIdFilter())
    tag = ""
    if worker is not None:
        handler.addFilter(WorkerFilter(worker))
        tag = "w%(worker)s "
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s %(name)s {tag}[%(call_id)s] %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # every statement with its parameters at DEBUG (module docstring)
    logging.getLogger("aiosqlite").setLevel(max(logging.INFO, root.level))


class Streak:
    """A recurring task's failures, logged once per streak rather than once per round (a
    database outage would otherwise log every few seconds for its whole length), with the
    error's type only; and once when it works again."""

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self._logger = logger
        self._what = what
        self.failing = False

    def failed(self, exc: BaseException) -> None:
        """This round failed with ``exc``."""
        if not self.failing:
            self.failing = True
            self._logger.warning(
                "%s failed (%s); trying again until it works", self._what, type(exc).__name__
            )

    def worked(self) -> None:
        """This round worked."""
        if self.failing:
            self.failing = False
            self._logger.info("%s works again", self._what)
