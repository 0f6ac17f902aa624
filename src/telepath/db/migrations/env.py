"""Alembic environment: migrations run on the connection the service hands over."""

from __future__ import annotations

from alembic import context

from telepath.db import models  # noqa: F401  (registers the tables on Base.metadata)
from telepath.db.base import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through telepath.db.engine.migrate()")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
