"""Inbound numbers and address authentication: the called numbers a trunk serves (unique across
the installation: an INVITE for one is routed by it) and how its INVITEs authenticate.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from telepath.db.migrations.batch import batch_alter_table

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``trunks.sip_auth`` and ``trunks.inbound_numbers``, and the ``trunk_numbers`` index."""
    with batch_alter_table("trunks") as batch:
        batch.add_column(sa.Column("sip_auth", sa.String(16), nullable=True))
        batch.add_column(sa.Column("inbound_numbers", sa.Text(), nullable=True))
    op.create_table(
        "trunk_numbers",
        sa.Column("number", sa.String(16), primary_key=True),
        sa.Column(
            "trunk_id",
            sa.String(40),
            sa.ForeignKey("trunks.id", ondelete="CASCADE"),
            nullable=False,
        ),
    )
    op.create_index("ix_trunk_numbers_trunk_id", "trunk_numbers", ["trunk_id"])


def downgrade() -> None:
    """Drop them."""
    op.drop_index("ix_trunk_numbers_trunk_id", "trunk_numbers")
    op.drop_table("trunk_numbers")
    with batch_alter_table("trunks") as batch:
        batch.drop_column("inbound_numbers")
        batch.drop_column("sip_auth")
