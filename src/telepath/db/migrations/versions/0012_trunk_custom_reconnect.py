"""Custom agents: whether a dropped agent connection is dialled again mid-call.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa

from telepath.db.migrations.batch import batch_alter_table

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``trunks.custom_reconnect`` (NULL: no, as for every existing trunk)."""
    with batch_alter_table("trunks") as batch:
        batch.add_column(sa.Column("custom_reconnect", sa.Boolean(), nullable=True))


def downgrade() -> None:
    """Drop the column."""
    with batch_alter_table("trunks") as batch:
        batch.drop_column("custom_reconnect")
