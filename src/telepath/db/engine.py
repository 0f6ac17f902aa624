"""Engine creation and automatic Alembic migrations."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, event, make_url, text
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from telepath.errors import DatabaseUnavailable

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

# SQLite reports a missing schema as an OperationalError too: that one will not pass by itself.
_PERMANENT = ("no such table", "no such column", "has no column")


def transient_error(exc: BaseException) -> bool:
    """Whether a failed write may succeed later as it is: the server unreachable, restarting or
    failing over (a refused or reset connection, ``OperationalError``), a connection lost
    mid-transaction, a lock held past SQLite's busy timeout, no connection free in the pool
    within its timeout (SQLAlchemy's ``TimeoutError``: every connection busy, the database or
    its clients slow — found by review, the API answered it 500). Constraint, data and SQL
    errors (``IntegrityError``, ``DataError``, ``ProgrammingError``) are not."""
    if isinstance(exc, OSError):  # refused, reset, TimeoutError: asyncpg raises them as they are
        return True
    if isinstance(exc, PoolTimeout):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, OperationalError | InterfaceError):
        return not any(text in str(exc.orig).lower() for text in _PERMANENT)
    if isinstance(exc, DBAPIError):
        # asyncpg's own error behind the dialect's generic one: its SQLSTATE says
        return any(_transient_sqlstate(cause) for cause in _causes(exc))
    return False


# SQLSTATE (PostgreSQL appendix A) of failures that are the server's state, not the statement's:
# class 08 (connection exception, asyncpg's "connection was closed in the middle of operation"
# included), the server shutting down or starting up (57P01-57P03), too many connections, and a
# serialization failure or deadlock (the same write goes through when tried again).
_TRANSIENT_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300", "40001", "40P01"})


def _transient_sqlstate(exc: BaseException) -> bool:
    state = getattr(exc, "sqlstate", None)
    return isinstance(state, str) and (state.startswith("08") or state in _TRANSIENT_SQLSTATES)


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc``, the DBAPI error it wraps and what caused them, a few levels down."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(seen) < 6 and current not in seen:
        seen.append(current)
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return seen


def _owner_only(path: Path) -> None:
    """Create the SQLite file ``path`` readable by its owner only, or make it so: it holds every
    trunk's HA1, enough to answer its digest challenges. ``mkdir``'s 0700 does nothing to a
    data directory that exists (a volume, typically 0755), and SQLite creates files by the
    umask (0644). Its ``-wal`` and ``-shm`` files take the database file's mode; those left
    by an older run are made owner-only too."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    except OSError:
        return  # not ours to create (read-only, a bad path): SQLite says what is wrong
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(OSError):  # gone, or not ours to change
            if file.stat().st_mode & 0o077:
                file.chmod(0o600)


# Tries at switching a new SQLite file to WAL while other processes open it too (below).
WAL_TRIES = 100
WAL_RETRY_S = 0.05


def _wal(cur: Any) -> None:
    """``PRAGMA journal_mode=WAL`` on a connection's cursor: once a file is in WAL mode it stays
    so (the mode is kept in the file), so only a new file switches. Processes opening a new file
    together (instances started at once) race for that switch, and SQLite answers the losers
    "database is locked" at once, busy timeout or not (seen in
    ``test_processes_starting_together_migrate_once``, about one run in six): they try again,
    briefly — a file in WAL mode answers at once, so this waits only at a new file's first
    opening."""
    for attempt in range(WAL_TRIES):
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except Exception as exc:  # sqlite3.OperationalError, through the aiosqlite adapter
            if "database is locked" not in str(exc) or attempt == WAL_TRIES - 1:
                raise
            time.sleep(WAL_RETRY_S)


def make_engine(url: str, *, timeout_s: float = 0.0, pool_size: int = 5) -> AsyncEngine:
    """Create the async engine; SQLite gets foreign keys, WAL and a busy timeout. Errors never
    show their statements' parameters (``hide_parameters``: phone numbers would reach logs).

    ``timeout_s`` (PostgreSQL): asyncpg's connection and statement timeouts, enforced by the
    client, so a server or network that goes silent (no refusal, no reset) fails a lookup or a
    write within that time (a ``TimeoutError``: ``transient_error``) instead of hanging until
    TCP gives up; 0 for none (migrations, the retention sweep).
    """
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _owner_only(Path(path.split("?", 1)[0]))
        engine = create_async_engine(url, connect_args={"timeout": 30}, hide_parameters=True)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: DBAPIConnection, _rec: ConnectionPoolEntry) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            _wal(cur)
            # WAL + NORMAL: no fsync per commit, still never corrupt (a power cut may lose the
            # last transactions). Call records are written twice per call: this halves setup cost.
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    connect_args: dict[str, float] = {}
    if timeout_s > 0 and make_url(url).get_driver_name() == "asyncpg":
        connect_args = {"timeout": timeout_s, "command_timeout": timeout_s}
    # hide_parameters: a database error's text is logged (a failing trunk lookup, on every
    # INVITE), and its parameters are called numbers and SIP usernames — never in the logs.
    return create_async_engine(
        url,
        pool_pre_ping=True,
        pool_size=pool_size,
        connect_args=connect_args,
        hide_parameters=True,
    )


def sessionmaker_for(engine: AsyncEngine) -> async_sessionmaker:  # type: ignore[type-arg]
    """Return the session factory used everywhere (no expiry on commit)."""
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config() -> Config:
    """An Alembic config pointing at the migrations shipped inside the package."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def _to_revision(revision: str, *, down: bool) -> Callable[[Connection], None]:
    def run(conn: Connection) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, revision)

    return run


# The key of the PostgreSQL advisory lock the migrations run under: any fixed number, the same in
# every version ("telepath" in ASCII).
MIGRATION_LOCK = 0x74656C6570617468


async def migrate(engine: AsyncEngine, revision: str = "head", *, down: bool = False) -> None:
    """Apply every pending migration (idempotent; runs at service start), or those up to
    ``revision``, or (``down``) undo those after it.

    Processes starting together on one database (hosts sharing a PostgreSQL, or processes on one
    SQLite file) take turns: each holds a lock for its whole transaction, taken before Alembic
    reads the revision, so the next one finds the schema up to date. Without it they all read
    the same revision and ran its migration, and all but the first failed to start (a table
    that already exists). PostgreSQL: a transaction-level advisory lock, released at commit or
    when the connection drops. SQLite: ``BEGIN IMMEDIATE`` (the write lock; the others wait in
    the busy timeout), which also makes the migrations' DDL one transaction — the driver
    otherwise runs each DDL statement on its own.
    """
    async with engine.connect() as conn:
        foreign_keys = False
        if conn.dialect.name == "sqlite":
            # Off for the migrations, as SQLite's procedure for schema changes says
            # (https://www.sqlite.org/lang_altertable.html#otheralter): batch mode rebuilds a
            # table (copy, DROP, rename), and with foreign keys on, that DROP runs the ON DELETE
            # CASCADE of the rows that reference it (rebuilding ``trunks`` emptied
            # ``trunk_numbers`` and ``trunk_registrations``). Before the transaction: in one, the
            # pragma does nothing. migrations/env.py runs ``PRAGMA foreign_key_check`` after.
            found = await conn.exec_driver_sql("PRAGMA foreign_keys")
            foreign_keys = bool(found.scalar_one())
            await conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        try:
            if conn.dialect.name == "postgresql":
                await conn.execute(text(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
            elif conn.dialect.name == "sqlite":
                await conn.exec_driver_sql("BEGIN IMMEDIATE")
            await conn.run_sync(_to_revision(revision, down=down))
            await conn.commit()
        finally:
            if foreign_keys:  # on again for whoever takes this connection from the pool next
                await conn.rollback()  # a failed migration's transaction; none after the commit
                await conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                await conn.commit()


async def migrate_or_refuse(engine: AsyncEngine) -> None:
    """``migrate``, as a command's first use of the database: one that cannot be reached or
    opened (refused, unknown host, wrong credentials) raises ``DatabaseUnavailable`` with the
    driver's reason, the URL's password blanked out if the reason quotes it."""
    try:
        await migrate(engine)
    except (OSError, DBAPIError) as exc:
        reason = str(exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc)
        password = engine.url.password
        if password:
            reason = reason.replace(str(password), "***")
        raise DatabaseUnavailable(f"cannot open the database: {reason}") from None
