"""Per-trunk source allowlist: the addresses a trunk's calls and registrations may come from.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa

from telepath.db.migrations.batch import batch_alter_table

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``trunks.allowed_addresses`` (comma-separated networks; NULL: any source)."""
    with batch_alter_table("trunks") as batch:
        batch.add_column(sa.Column("allowed_addresses", sa.Text(), nullable=True))


def downgrade() -> None:
    """Drop the column."""
    with batch_alter_table("trunks") as batch:
        batch.drop_column("allowed_addresses")
