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
from sqlalchemy.exc import IntegrityError, SAWarning
from sqlalchemy.ext.asyncio import create_async_engine

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


def _upgrade_directly(revision: str) -> Callable[[Connection], None]:
    """Alembic's upgrade on a connection, without ``migrate``."""

    def run(conn: Connection) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)

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
        await migrate(engine, "0017")
        async with engine.begin() as conn:
            await conn.run_sync(_insert_old_records)
        await migrate(engine)
        async with engine.connect() as conn:
            assert await conn.run_sync(_statuses) == _MIGRATED
        await migrate(engine, "0017", down=True)
        async with engine.connect() as conn:
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
            await migrate(engine, start)
        outcomes = await _migrate_together(empty_database_url, tmp_path, 3)
        assert [code for code, _ in outcomes] == [0, 0, 0], [err[-600:] for _, err in outcomes]
        async with engine.connect() as conn:
            assert await conn.run_sync(_revision) == _head()
            assert await conn.run_sync(_differences) == []
    finally:
        await engine.dispose()


_AT = datetime(2026, 3, 5, 10, 30)


def _insert_trunk(conn: Connection, trunk_id: str, sip_username: str) -> None:
    conn.execute(
        text(
            "INSERT INTO trunks (id, account_id, name, status, ai_provider, sip_username,"
            " sip_realm, ha1_md5, ha1_sha256, created_at, updated_at) VALUES (:id, 'acct_m',"
            " :id, 'active', 'custom', :username, 'sip.example.test', '', '', :at, :at)"
        ),
        {"id": trunk_id, "username": sip_username, "at": _AT},
    )


def _insert_trunk_with_children(conn: Connection) -> None:
    conn.execute(
        text("INSERT INTO accounts (id, name, created_at) VALUES ('acct_m', 'm', :at)"),
        {"at": _AT},
    )
    _insert_trunk(conn, "conn_m", "abc")
    conn.execute(text("INSERT INTO trunk_numbers VALUES ('+14155550100', 'conn_m')"))
    conn.execute(
        text(
            "INSERT INTO trunk_registrations (trunk_id, registrar, username, expires,"
            " password_enc, contact_user, status, updated_at) VALUES ('conn_m',"
            " 'sip:registrar.example.test', 'abc', 3600, 'sealed', 'tpr-m', 'pending', :at)"
        ),
        {"at": _AT},
    )


def _children(conn: Connection) -> dict[str, int]:
    return {
        table: conn.execute(
            text(f"SELECT count(*) FROM {table} WHERE trunk_id = 'conn_m'")
        ).scalar_one()
        for table in ("trunk_numbers", "trunk_registrations")
    }


def _username_index(conn: Connection) -> str | None:
    """The SQL of the case-insensitive username index, read by name from the catalogue: Alembic
    (``compare_metadata``) skips expression indexes on SQLite and would not miss it."""
    if conn.dialect.name == "sqlite":
        query = "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = :name"
    else:
        query = "SELECT indexdef FROM pg_indexes WHERE indexname = :name"
    found = conn.execute(text(query), {"name": "uq_trunks_sip_username_ci"}).scalar_one_or_none()
    return None if found is None else str(found)


async def test_migrated_schema_has_the_case_insensitive_username_index(
    empty_database_url: str,
) -> None:
    """``uq_trunks_sip_username_ci`` (on ``lower(sip_username)``) is there by name after the
    migrations: the schema comparison above cannot see an expression index on SQLite."""
    engine = make_engine(empty_database_url)
    try:
        await migrate(engine)
        async with engine.connect() as conn:
            index = await conn.run_sync(_username_index)
        assert index is not None
        assert "UNIQUE" in index.upper()
        assert "lower(" in index
        assert "sip_username" in index
    finally:
        await engine.dispose()


async def test_a_rebuilt_trunks_table_keeps_its_children_and_username_index(
    tmp_path: Path,
) -> None:
    """SQLite rebuilds ``trunks`` to drop a column (0012's downgrade, and 0010, 0008, 0007,
    0006, 0003's): a copy, ``DROP TABLE trunks``, a rename. With foreign keys on, that DROP ran
    the ON DELETE CASCADE and emptied ``trunk_numbers`` and ``trunk_registrations``; and the
    copy lost the username index, an expression SQLAlchemy cannot reflect, so "ABC" could join
    "abc" once upgraded again."""
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'telepath.db'}")
    try:
        await migrate(engine)
        async with engine.begin() as conn:
            await conn.run_sync(_insert_trunk_with_children)
        await migrate(engine, "0011", down=True)
        async with engine.connect() as conn:
            assert await conn.run_sync(_children) == {
                "trunk_numbers": 1,
                "trunk_registrations": 1,
            }
            assert await conn.run_sync(_username_index) is not None
        await migrate(engine)
        async with engine.connect() as conn:
            assert await conn.run_sync(_revision) == _head()
            assert await conn.run_sync(_children) == {
                "trunk_numbers": 1,
                "trunk_registrations": 1,
            }
            assert await conn.run_sync(_username_index) is not None
            # foreign keys are on again for the pooled connection the migrations ran on
            assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar_one() == 1
        with pytest.raises(IntegrityError, match="UNIQUE"):
            async with engine.begin() as conn:
                await conn.run_sync(_insert_trunk, "conn_n", "ABC")
    finally:
        await engine.dispose()


async def test_migrations_refuse_an_sqlite_connection_with_foreign_keys_on(
    tmp_path: Path,
) -> None:
    """A table rebuild on such a connection would cascade-delete the rows that reference the
    table: Alembic run on one directly (not through ``migrate``, which turns them off before
    its transaction) refuses before changing anything."""
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'telepath.db'}")
    try:
        await migrate(engine, "0011")
        with pytest.raises(RuntimeError, match="foreign keys"):
            async with engine.begin() as conn:
                await conn.run_sync(_upgrade_directly("head"))
        async with engine.connect() as conn:
            assert await conn.run_sync(_revision) == "0011"
    finally:
        await engine.dispose()


def _insert_orphan_number(conn: Connection) -> None:
    conn.execute(text("INSERT INTO trunk_numbers VALUES ('+14155550199', 'conn_gone')"))


async def test_migrations_that_leave_a_broken_foreign_key_fail(tmp_path: Path) -> None:
    """Foreign keys are off while the migrations run (SQLite's procedure for schema changes,
    https://www.sqlite.org/lang_altertable.html#otheralter): ``PRAGMA foreign_key_check``
    after them finds a row whose parent is gone, and the migration fails and is rolled back
    rather than committing it."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'telepath.db'}"
    engine = make_engine(url)
    plain = create_async_engine(url)  # no pragmas: foreign keys off, as SQLite's default
    try:
        await migrate(engine, "0011")
        async with plain.begin() as conn:
            await conn.run_sync(_insert_orphan_number)
        with pytest.raises(RuntimeError, match="trunk_numbers"):
            await migrate(engine)
        async with engine.connect() as conn:
            assert await conn.run_sync(_revision) == "0011"
    finally:
        await plain.dispose()
        await engine.dispose()
