"""Per-trunk call settings: SRTP allowed, required or disabled, the codecs offered and
accepted, and the SIP headers of its INVITEs passed on to its agent.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa

from telepath.db.migrations.batch import batch_alter_table

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``trunks.media_encryption`` and ``trunks.codecs`` (NULL: the installation's
    TELEPATH_SIP_SRTP and TELEPATH_SIP_CODECS) and ``trunks.forward_sip_headers`` (header
    names, comma-separated; NULL: none)."""
    with batch_alter_table("trunks") as batch:
        batch.add_column(sa.Column("media_encryption", sa.String(16), nullable=True))
        batch.add_column(sa.Column("codecs", sa.String(32), nullable=True))
        batch.add_column(sa.Column("forward_sip_headers", sa.Text(), nullable=True))


def downgrade() -> None:
    """Drop the columns."""
    with batch_alter_table("trunks") as batch:
        batch.drop_column("forward_sip_headers")
        batch.drop_column("codecs")
        batch.drop_column("media_encryption")
