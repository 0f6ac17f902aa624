"""Heartbeats of the running gateway processes.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``gateway_instances``."""
    op.create_table(
        "gateway_instances",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(), nullable=False),
        sa.Column("beats", sa.Integer(), nullable=False),
    )


def downgrade() -> None:
    """Drop ``gateway_instances``."""
    op.drop_table("gateway_instances")
