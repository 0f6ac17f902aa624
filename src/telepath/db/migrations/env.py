"""Alembic environment: migrations run on the connection the service hands over."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from telepath.db import models  # noqa: F401  (registers the tables on Base.metadata)
from telepath.db.base import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through telepath.db.engine.migrate()")

sqlite = connection.dialect.name == "sqlite"
# SQLite's batch mode rebuilds a table (copy, DROP, rename): with foreign keys on, the DROP runs
# the ON DELETE CASCADE of every row referencing it. migrate() turns them off before its
# transaction (https://www.sqlite.org/lang_altertable.html#otheralter); this connection may not.
if sqlite and connection.exec_driver_sql("PRAGMA foreign_keys").scalar_one():
    raise RuntimeError(
        "SQLite foreign keys are on: rebuilding a table would delete the rows referencing it;"
        " run migrations through telepath.db.engine.migrate()"
    )


def _check_foreign_keys(connection: Connection) -> None:
    """Fail (the transaction is rolled back) if a row references a parent that is not there,
    as SQLite's procedure says to check once the schema has changed with foreign keys off."""
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
    if broken:
        rows = ", ".join(f"{row[0]} row {row[1]} (no {row[2]})" for row in broken[:10])
        raise RuntimeError(
            f"{len(broken)} rows reference a missing parent after the migrations: {rows}"
        )


context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=sqlite,
)
with context.begin_transaction():
    before = context.get_context().get_current_revision()
    context.run_migrations()
    # only when the schema changed: on every start, it would read every call record
    if sqlite and context.get_context().get_current_revision() != before:
        _check_foreign_keys(connection)
