"""Per-trunk media encryption: SRTP allowed, required or disabled for one trunk's calls.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``trunks.media_encryption`` (NULL: the installation's TELEPATH_SIP_SRTP)."""
    with op.batch_alter_table("trunks") as batch:
        batch.add_column(sa.Column("media_encryption", sa.String(16), nullable=True))


def downgrade() -> None:
    """Drop the column."""
    with op.batch_alter_table("trunks") as batch:
        batch.drop_column("media_encryption")
