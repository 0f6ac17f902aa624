"""The gateway process that carried each call.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from telepath.db.migrations.batch import batch_alter_table

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``calls.instance_id`` and a partial index of the open records by it."""
    with batch_alter_table("calls") as batch:
        batch.add_column(sa.Column("instance_id", sa.String(40), nullable=True))
    op.create_index(
        "ix_calls_open_instance",
        "calls",
        ["instance_id"],
        sqlite_where=sa.text("end_time IS NULL"),
        postgresql_where=sa.text("end_time IS NULL"),
    )


def downgrade() -> None:
    """Drop the index and the column."""
    op.drop_index("ix_calls_open_instance", table_name="calls")
    with batch_alter_table("calls") as batch:
        batch.drop_column("instance_id")
