"""Call records: the media report (addresses, drops, one-way-audio warnings), a detail purged
with the SIP trace.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa

from telepath.db.migrations.batch import batch_alter_table

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``calls.media`` (JSON; NULL while a call is up, for older records, and purged)."""
    with batch_alter_table("calls") as batch:
        batch.add_column(sa.Column("media", sa.JSON(), nullable=True))


def downgrade() -> None:
    """Drop the column."""
    with batch_alter_table("calls") as batch:
        batch.drop_column("media")
