"""Outbound registration: an outbound proxy every REGISTER goes through.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa

from telepath.db.migrations.batch import batch_alter_table

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``trunk_registrations.outbound_proxy`` (a SIP URI; NULL: the registrar itself)."""
    with batch_alter_table("trunk_registrations") as batch:
        batch.add_column(sa.Column("outbound_proxy", sa.String(255), nullable=True))


def downgrade() -> None:
    """Drop the column."""
    with batch_alter_table("trunk_registrations") as batch:
        batch.drop_column("outbound_proxy")
