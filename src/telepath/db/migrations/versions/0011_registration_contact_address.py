"""Outbound registration: the address registered in the contact (behind a NAT, the one the
registrar saw).

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa

from telepath.db.migrations.batch import batch_alter_table

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``trunk_registrations.contact_address`` (``host:port``; NULL unless registered)."""
    with batch_alter_table("trunk_registrations") as batch:
        batch.add_column(sa.Column("contact_address", sa.String(64), nullable=True))


def downgrade() -> None:
    """Drop the column."""
    with batch_alter_table("trunk_registrations") as batch:
        batch.drop_column("contact_address")
