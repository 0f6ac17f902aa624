"""The statements each committed transaction on an engine ran: a test's proof that two writes
share one transaction (no crash can fall between them) on the real database."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine


class Transactions:
    """The statements of every committed transaction on an engine, by connection (real DB)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine.sync_engine
        self.open: dict[int, list[str]] = {}
        self.committed: list[list[str]] = []

    def __enter__(self) -> Transactions:
        event.listen(self.engine, "before_cursor_execute", self._statement)
        event.listen(self.engine, "commit", self._commit)
        return self

    def __exit__(self, *_: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._statement)
        event.remove(self.engine, "commit", self._commit)

    def _statement(self, conn: Any, _c: Any, statement: str, params: Any, *_: Any) -> None:
        self.open.setdefault(id(conn), []).append(f"{statement} {params!r}")

    def _commit(self, conn: Any) -> None:
        self.committed.append(self.open.pop(id(conn), []))
