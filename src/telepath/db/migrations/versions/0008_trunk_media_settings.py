"""Per-trunk media settings: SRTP allowed, required or disabled, and the codecs offered and
accepted, for one trunk's calls.

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
    """Add ``trunks.media_encryption`` and ``trunks.codecs`` (NULL: the installation's
    TELEPATH_SIP_SRTP and TELEPATH_SIP_CODECS)."""
    with op.batch_alter_table("trunks") as batch:
        batch.add_column(sa.Column("media_encryption", sa.String(16), nullable=True))
        batch.add_column(sa.Column("codecs", sa.String(32), nullable=True))


def downgrade() -> None:
    """Drop the columns."""
    with op.batch_alter_table("trunks") as batch:
        batch.drop_column("codecs")
        batch.drop_column("media_encryption")
