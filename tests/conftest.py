"""Fixtures shared by every test: real databases, loudly skipped when a server is absent."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

POSTGRES_ADMIN_URL = os.environ.get(
    "TELEPATH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
_skipped_services: set[str] = set()


def free_udp_port() -> int:
    """A UDP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def skip_loudly(service: str, reason: str) -> None:
    """Skip the current test and remember to print a banner at the end of the run."""
    _skipped_services.add(f"{service}: {reason}")
    pytest.skip(f"{service} unavailable: {reason}")


async def _pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=3)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


_sqlite_template: Path | None = None


def migrated_sqlite(directory: Path) -> str:
    """The URL of a SQLite database in ``directory`` with every migration applied: a copy of
    one migrated once per test process. Each test's gateway or API still runs the migrations
    at start, which then find nothing to do — a full run from an empty file costs ~85 ms and
    over a thousand tests start on one."""
    global _sqlite_template
    if _sqlite_template is None:
        from sqlalchemy.ext.asyncio import create_async_engine

        from telepath.db.engine import migrate

        template = Path(tempfile.mkdtemp(prefix="telepath-template-")) / "telepath.db"

        async def build() -> None:
            engine = create_async_engine(f"sqlite+aiosqlite:///{template}")
            try:
                await migrate(engine)
            finally:
                await engine.dispose()

        asyncio.run(build())
        _sqlite_template = template
    target = directory / "telepath.db"
    shutil.copyfile(_sqlite_template, target)
    return f"sqlite+aiosqlite:///{target}"


@contextlib.contextmanager
def _fresh_postgres() -> Iterator[str]:
    """A fresh, empty PostgreSQL database (dropped afterwards); skipped loudly if absent."""
    name = f"telepath_test_{secrets.token_hex(4)}"
    try:
        asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # any failure to reach the server means "absent"
        skip_loudly("PostgreSQL", f"{POSTGRES_ADMIN_URL}: {type(exc).__name__}: {exc}")
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base.replace('postgresql://', 'postgresql+asyncpg://', 1)}/{name}"
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test session (dropped afterwards)."""
    with _fresh_postgres() as url:
        yield url


@pytest.fixture
def own_postgres() -> Iterator[str]:
    """A PostgreSQL database of this test's own: a ``telepath serve`` creates its first account
    and key only on an empty one."""
    with _fresh_postgres() as url:
        yield url


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say plainly which real services were missing, so a skip is never mistaken for a pass.

    Read from the skip reports, not from this process's memory: with ``-n`` (pytest-xdist)
    the tests skip in worker processes and only their reports reach this one."""
    missing = set(_skipped_services)
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = getattr(report, "longrepr", None)
        message = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else ""
        service, marker, reason = str(message).removeprefix("Skipped: ").partition(" unavailable: ")
        if marker:
            missing.add(f"{service}: {reason}")
    if missing:
        terminalreporter.section("SERVICES MISSING: these tests were SKIPPED, not passed", red=True)
        for line in sorted(missing):
            terminalreporter.line(line, red=True)
