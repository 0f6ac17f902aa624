"""The Alembic migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect
from sqlalchemy.exc import SAWarning

from telepath.config import Settings
from telepath.db.base import Base
from telepath.db.engine import make_engine, migrate

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
