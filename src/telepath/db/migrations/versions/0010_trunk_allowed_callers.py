"""Per-trunk caller allowlist: the caller numbers that may call a trunk.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa

from telepath.db.migrations.batch import batch_alter_table

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``trunks.allowed_caller_numbers`` (E.164, comma-separated; NULL: any caller)."""
    with batch_alter_table("trunks") as batch:
        batch.add_column(sa.Column("allowed_caller_numbers", sa.Text(), nullable=True))


def downgrade() -> None:
    """Drop the column."""
    with batch_alter_table("trunks") as batch:
        batch.drop_column("allowed_caller_numbers")
