"""Writes kept through a database outage, copied to local disk so a process that dies meanwhile
loses none.

``GroupCommit`` keeps a write that failed on a transient error in memory and retries it until the
database takes it. Alone, that loses the kept writes — call records, webhook events — when the
process dies before the database is back (killed, out of memory, a deploy that would not wait).
Here every kept write is also appended, as one JSON line, to
``<data_dir>/journal/<instance id>.<writer>.jsonl``, and the file is removed once nothing is kept.
The next ``telepath serve`` on that data directory (or the front, when a SIP worker exits)
replays the files of processes that are gone before it closes their calls as ``lost``
(``cli/instances.py``), so a call that ended during the outage is recorded with its real end.

Decisions: no ``fsync`` per line (a write per kept item, during an outage only): the lines
survive the process's death, not the machine's. Replaying is safe more than once, because every
journaled write is idempotent — a record's start is insert-or-ignore, its end an upsert of the
same values, an event's outbox row inserted once per endpoint — so a file replayed twice (a
second crash, a write that landed just before the death) duplicates nothing. A torn last line
(a death in mid-write) is skipped.

Hand-written: appending JSON lines needs no library; the encoding tags datetimes, the one
non-JSON type the writes carry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable, Collection
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Generic, TypeVar

__all__ = [
    "WriteJournal",
    "journal_owners",
    "journal_path",
    "journals_of",
    "read_journal",
    "replay_journal",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# A long outage under load must not fill the disk: past this a writer's journal takes no more
# (what is kept is still bounded in memory by ``GroupCommit``'s ``max_parked``).
MAX_BYTES = 256 * 1024 * 1024

_DATETIME = "$datetime"


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return {_DATETIME: value.isoformat()}
    raise TypeError(f"{type(value).__name__} cannot be journaled")


def _hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and _DATETIME in obj:
        return datetime.fromisoformat(obj[_DATETIME])
    return obj


def journal_path(directory: Path, instance_id: str, writer: str) -> Path:
    return directory / f"{instance_id}.{writer}.jsonl"


def journals_of(directory: Path, instance_ids: Collection[str], writer: str) -> list[Path]:
    """The journal files ``writer`` of the processes ``instance_ids`` left in ``directory``."""
    return [
        path
        for instance_id in instance_ids
        if (path := journal_path(directory, instance_id, writer)).is_file()
    ]


def journal_owners(directory: Path) -> set[str]:
    """The instance ids of every process that left a journal in ``directory``."""
    if not directory.is_dir():
        return set()
    return {path.name.split(".", 1)[0] for path in directory.glob("*.*.jsonl")}


def read_journal(path: Path) -> list[dict[str, Any]]:
    """The writes in ``path``, in the order they were kept; a torn line is skipped."""
    items: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            try:
                item = json.loads(line, object_hook=_hook)
            except ValueError:
                logger.warning("journal %s: a torn or unreadable line skipped", path.name)
                continue
            if isinstance(item, dict):
                items.append(item)
    return items


class WriteJournal(Generic[T]):
    """The on-disk copy of one writer's kept writes (``GroupCommit(journal=...)``).

    Never raises into the write path: a disk that refuses (full, read-only) is logged once and
    the journal is off from then on — the writes are still kept in memory as before. Past
    ``max_bytes`` (``MAX_BYTES``) it takes no more until it is emptied.
    """

    def __init__(
        self, path: Path, encode: Callable[[T], dict[str, Any]], *, max_bytes: int = MAX_BYTES
    ) -> None:
        self.path = path
        self._encode = encode
        self._max_bytes = max_bytes
        self._file: IO[str] | None = None
        self._broken = False
        self._detached = False
        self._full = False
        self._bytes = 0
        self.lines = 0  # written since the file was last removed (tests and diagnostics)

    def kept(self, item: T) -> None:
        """``item`` is kept for retry: copy it to disk now."""
        if self._broken or self._full:
            return
        try:
            line = json.dumps(self._encode(item), default=_default) + "\n"
            size = len(line.encode())
            if self._bytes + size > self._max_bytes:
                self._full = True
                logger.error(
                    "journal %s: %d bytes, full; further kept writes are in memory only",
                    self.path.name,
                    self._bytes,
                )
                return
            if self._file is None:
                # owner only: call records (numbers, SIP traces) and event payloads
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                self._file = os.fdopen(fd, "a", encoding="utf-8")
            self._file.write(line)
            self._file.flush()  # in the kernel's hands: survives the process
            self._bytes += size
            self.lines += 1
            if self._detached:  # a write given up after shutdown began: closed again
                self._close()
        except (OSError, TypeError, ValueError) as exc:
            self._broken = True
            logger.error(
                "journal %s: writing failed (%s); kept writes are in memory only",
                self.path.name,
                type(exc).__name__,
            )

    def emptied(self) -> None:
        """Nothing is kept any more (it all landed): remove the file."""
        if self._detached:
            return
        self._close()
        self.lines = self._bytes = 0
        self._full = False
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning("journal %s: removing failed (%s)", self.path.name, type(exc).__name__)

    def detach(self) -> None:
        """Shutting down with writes still kept: leave the file for the next start (a write
        kept later is still appended)."""
        self._close()
        self._detached = True  # what is given up now stays in the file

    def _close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None


async def replay_journal(
    path: Path,
    decode: Callable[[dict[str, Any]], T],
    submit: Callable[[T], asyncio.Future[None]],
    timeout_s: float,
) -> int:
    """Write again what a dead process kept in ``path``, in order; returns how many writes.

    The file is removed once every write has landed or failed for good. If the database does
    not take them within ``timeout_s`` they stay kept here (and journaled by this process), and
    the file stays too: a later replay duplicates nothing.
    """
    items: list[T] = []
    for raw in read_journal(path):
        try:
            items.append(decode(raw))
        except (KeyError, TypeError, ValueError):
            logger.warning("journal %s: an unreadable write skipped", path.name)
    done = [submit(item) for item in items]
    if done:
        _, pending = await asyncio.wait(done, timeout=timeout_s)
        if pending:
            logger.warning(
                "journal %s: %d write(s) not yet landed; kept for retry", path.name, len(pending)
            )
            return len(items)
        failed = sum(1 for d in done if not d.cancelled() and d.exception() is not None)
        if failed:
            logger.error("journal %s: %d write(s) failed for good", path.name, failed)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    logger.warning("replayed %d write(s) a stopped process had kept (%s)", len(items), path.name)
    return len(items)
