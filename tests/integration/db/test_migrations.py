"""The Alembic migrations build exactly the schema the models describe, on both databases, and
their data migrations change the stored records as they say."""

from __future__ import annotations

import asyncio
import os
import sys
import warnings
from asyncio.subprocess import PIPE
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text
from sqlalchemy.exc import SAWarning

import telepath
from telepath.config import Settings
from telepath.db.base import Base
from telepath.db.engine import alembic_config, make_engine, migrate

pytestmark = pytest.mark.integration


def _differences(conn: Connection) -> list[Any]:
    context = MigrationContext.configure(conn, opts={"compare_type": True})
    with warnings.catch_warnings():
        # the case-insensitive username index is an expression: SQLite cannot reflect it
        warnings.filterwarnings("ignore", "autogenerate skipping", UserWarning)
        warnings.filterwarnings("ignore", "Skipped unsupported reflection", SAWarning)
        return list(compare_metadata(context, Base.metadata))


def _calls_indexes(conn: Connection) -> dict[str, dict[str, Any]]:
    return {str(i["name"]): dict(i) for i in inspect(conn).get_indexes("calls")}


async def test_migrated_schema_matches_the_models(settings: Settings) -> None:
    engine = make_engine(settings.effective_database_url)
    try:
        await migrate(engine)
        async with engine.connect() as conn:
            assert await conn.run_sync(_differences) == []
            indexes = await conn.run_sync(_calls_indexes)
        index = indexes["ix_calls_open_instance"]
        assert index["column_names"] == ["instance_id"]
        unpurged = indexes["ix_calls_unpurged_end"]
        assert unpurged["column_names"] == ["end_time"]
        if engine.dialect.name == "postgresql":  # partial: only open / unpurged records
            assert "end_time IS NULL" in str(index["dialect_options"]["postgresql_where"])
            where = str(unpurged["dialect_options"]["postgresql_where"])
            assert "detail_purged_at IS NULL" in where
    finally:
        await engine.dispose()


# (id, answer_time, end_time, status, disconnect_reason) of records written before 0018
_OLD_RECORDS = [
    ("call_hangup", True, True, "disconnected", "caller_hangup"),
    ("call_agent", True, True, "disconnected", "agent_hangup"),
    ("call_transfer", True, True, "disconnected", "transferred"),
    ("call_shutdown", True, True, "disconnected", "shutdown"),
    ("call_silent", True, True, "disconnected", "media_timeout"),
    ("call_session", True, True, "disconnected", "session_limit"),
    ("call_long", True, True, "disconnected", "max_duration"),
    ("call_deleted", True, True, "disconnected", "trunk_deleted"),
    ("call_provider", True, True, "disconnected", "ai_provider_error"),
    ("call_carrier", True, True, "disconnected", "carrier_error"),
    ("call_unknown", True, True, "disconnected", "unknown"),
    ("call_lost", True, False, "disconnected", "lost"),  # the sweep: no end time
    ("call_lost_ended", True, True, "disconnected", "lost"),
    ("call_refused", False, True, "failed", "connection_failed"),
    ("call_up", True, False, "connected", None),
]
_MIGRATED = {
    "call_hangup": "connected",
    "call_agent": "connected",
    "call_transfer": "connected",
    "call_shutdown": "connected",
    "call_silent": "connected",
    "call_session": "connected",
    "call_long": "connected",
    "call_deleted": "connected",
    "call_provider": "disconnected",
    "call_carrier": "disconnected",
    "call_unknown": "disconnected",
    "call_lost": "disconnected",
    "call_lost_ended": "disconnected",
    "call_refused": "failed",
    "call_up": "connected",
}


def _to_revision(revision: str, *, down: bool = False) -> Callable[[Connection], None]:
    def run(conn: Connection) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, revision)

    return run


def _insert_old_records(conn: Connection) -> None:
    at = datetime(2026, 3, 5, 10, 30)
    conn.execute(
        text("INSERT INTO accounts (id, name, created_at) VALUES ('acct_m', 'm', :at)"),
        {"at": at},
    )
    for call_id, answered, ended, status, reason in _OLD_RECORDS:
        conn.execute(
            text(
                "INSERT INTO calls (id, account_id, trunk_id, status, ai_provider, start_time,"
                " answer_time, end_time, duration_seconds, disconnect_reason, updated_at)"
                " VALUES (:id, 'acct_m', 'conn_m', :status, 'custom', :at, :answer, :end, 0,"
                " :reason, :at)"
            ),
            {
                "id": call_id,
                "status": status,
                "at": at,
                "answer": at if answered else None,
                "end": at if ended else None,
                "reason": reason,
            },
        )


def _statuses(conn: Connection) -> dict[str, str]:
    return {row.id: row.status for row in conn.execute(text("SELECT id, status FROM calls"))}


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database without a table yet (the migrations are run to a revision by the test)."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'telepath.db'}"
    return str(request.getfixturevalue("own_postgres"))


async def test_records_that_ended_normally_become_connected(empty_database_url: str) -> None:
    """0018: a record an earlier version closed ``disconnected`` although its call ended
    normally (every answered call's end was) reads ``connected``; the abnormal ends stay
    ``disconnected``, the refused ``failed``. The downgrade gives the ended ``connected``
    records their old ``disconnected`` back."""
    engine = make_engine(empty_database_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_to_revision("0017"))
            await conn.run_sync(_insert_old_records)
        await migrate(engine)
        async with engine.connect() as conn:
            assert await conn.run_sync(_statuses) == _MIGRATED
        async with engine.begin() as conn:
            await conn.run_sync(_to_revision("0017", down=True))
            before = {call_id: status for call_id, _, _, status, _ in _OLD_RECORDS}
            assert await conn.run_sync(_statuses) == before
    finally:
        await engine.dispose()


# one process's start, up to its migrations: ready, then all at once on "go" (the imports alone
# take longer than the migrations, so processes simply started together rarely overlap)
_MIGRATE = """
import asyncio, sys, time
from pathlib import Path
from telepath.db.engine import make_engine, migrate

async def main(url: str, ready: Path, go: Path) -> None:
    engine = make_engine(url)
    try:
        ready.touch()
        while not go.exists():
            time.sleep(0.001)
        await migrate(engine)
    finally:
        await engine.dispose()

asyncio.run(main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])))
"""
_SOURCES = str(Path(telepath.__file__).resolve().parents[1])


async def _migrate_together(url: str, directory: Path, processes: int) -> list[tuple[int, str]]:
    """Run ``migrate`` in ``processes`` processes at once; each one's exit code and stderr."""
    env = dict(os.environ, PYTHONPATH=_SOURCES)
    go = directory / "go"
    ready = [directory / f"ready{i}" for i in range(processes)]
    started = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", _MIGRATE, url, str(r), str(go), env=env, stderr=PIPE
        )
        for r in ready
    ]
    for _ in range(3000):
        if all(r.exists() for r in ready):
            break
        await asyncio.sleep(0.01)
    go.touch()
    outcomes = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in started)), 120)
    return [
        (p.returncode or 0, err.decode()) for p, (_, err) in zip(started, outcomes, strict=True)
    ]


def _revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def _head() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


@pytest.mark.parametrize("start", [None, "0001"], ids=["empty", "upgrade"])
async def test_processes_starting_together_migrate_once(
    empty_database_url: str, start: str | None, tmp_path: Path
) -> None:
    """Every ``telepath serve`` migrates at start: two hosts on one database (or processes on
    one SQLite file) started together read the same revision and all ran its migration; all
    but the first failed (a table or column that already exists) and did not start. They take
    turns now, and the later ones find nothing left to do."""
    engine = make_engine(empty_database_url)
    try:
        if start is not None:
            async with engine.begin() as conn:
                await conn.run_sync(_to_revision(start))
        outcomes = await _migrate_together(empty_database_url, tmp_path, 3)
        assert [code for code, _ in outcomes] == [0, 0, 0], [err[-600:] for _, err in outcomes]
        async with engine.connect() as conn:
            assert await conn.run_sync(_revision) == _head()
            assert await conn.run_sync(_differences) == []
    finally:
        await engine.dispose()
