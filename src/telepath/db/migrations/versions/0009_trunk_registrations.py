"""Outbound registration: a trunk's registration with its carrier as a SIP client (RFC 3261
§10.2), its password sealed like the provider keys, and its last reported state.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``trunk_registrations``: one row per trunk at most, deleted with the trunk."""
    op.create_table(
        "trunk_registrations",
        sa.Column("trunk_id", sa.String(40), nullable=False),
        sa.Column("registrar", sa.String(255), nullable=False),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("auth_username", sa.String(64), nullable=True),
        sa.Column("domain", sa.String(255), nullable=True),
        sa.Column("expires", sa.Integer(), nullable=False),
        sa.Column("password_enc", sa.Text(), nullable=False),
        sa.Column("contact_user", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("status_detail", sa.String(200), nullable=True),
        sa.Column("registered_until", sa.DateTime(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["trunk_id"],
            ["trunks.id"],
            name=op.f("fk_trunk_registrations_trunk_id_trunks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("trunk_id", name=op.f("pk_trunk_registrations")),
        sa.UniqueConstraint("contact_user", name=op.f("uq_trunk_registrations_contact_user")),
    )


def downgrade() -> None:
    """Drop it."""
    op.drop_table("trunk_registrations")
