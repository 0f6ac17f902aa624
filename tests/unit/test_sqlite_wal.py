"""The switch of a new SQLite file to WAL, retried when processes open the file together."""

from __future__ import annotations

import sqlite3

import pytest

from telepath.db import engine


class _Cursor:
    """Answers ``PRAGMA journal_mode=WAL`` with the given errors first, then succeeds."""

    def __init__(self, errors: list[Exception]) -> None:
        self.errors = errors
        self.calls = 0

    def execute(self, sql: str) -> None:
        assert sql == "PRAGMA journal_mode=WAL"
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)


@pytest.fixture(autouse=True)
def _no_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "WAL_RETRY_S", 0.0)


def test_a_locked_file_is_tried_again_until_the_switch_succeeds() -> None:
    locked: list[Exception] = [sqlite3.OperationalError("database is locked") for _ in range(3)]
    cur = _Cursor(locked)
    engine._wal(cur)
    assert cur.calls == 4


def test_another_error_is_raised_at_once() -> None:
    cur = _Cursor([sqlite3.OperationalError("disk I/O error")])
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        engine._wal(cur)
    assert cur.calls == 1


def test_a_file_locked_for_every_try_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "WAL_TRIES", 3)
    cur = _Cursor([sqlite3.OperationalError("database is locked") for _ in range(5)])
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        engine._wal(cur)
    assert cur.calls == 3
