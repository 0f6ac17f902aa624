"""The SQLite database holds every trunk's HA1 (enough to answer its digest challenges) and
the call records: owner-only, as the README says, whatever the umask or the data directory's
own mode (an existing ``./data`` or volume is typically 0755, which ``mkdir`` leaves alone)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from telepath.db.engine import make_engine

pytestmark = pytest.mark.integration


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


async def _write(path: Path) -> None:
    engine = make_engine(f"sqlite+aiosqlite:///{path}")
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE IF NOT EXISTS t (x INTEGER)"))
            await conn.execute(text("INSERT INTO t VALUES (1)"))
        for suffix in ("", "-wal", "-shm"):  # WAL files: while a connection is open
            mode = (path.parent / (path.name + suffix)).stat().st_mode
            assert mode & 0o077 == 0, f"{path.name}{suffix}: {oct(mode)}"
    finally:
        await engine.dispose()


async def test_a_new_database_is_owner_only(tmp_path: Path, open_umask: None) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    await _write(data / "telepath.db")


async def test_an_existing_database_readable_by_others_is_made_owner_only(
    tmp_path: Path, open_umask: None
) -> None:
    path = tmp_path / "telepath.db"
    path.touch(mode=0o644)
    os.chmod(path, 0o644)
    await _write(path)
