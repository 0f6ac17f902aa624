"""Per-trunk SIP digest algorithms.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa

from telepath.db.migrations.batch import batch_alter_table

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``trunks.sip_digest_algorithms`` (NULL: the installation default)."""
    with batch_alter_table("trunks") as batch:
        batch.add_column(sa.Column("sip_digest_algorithms", sa.String(32), nullable=True))


def downgrade() -> None:
    """Drop the column."""
    with batch_alter_table("trunks") as batch:
        batch.drop_column("sip_digest_algorithms")
