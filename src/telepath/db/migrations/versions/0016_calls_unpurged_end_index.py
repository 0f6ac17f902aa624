"""Call records: index the records whose detail is not purged yet by end, for the retention
sweep.

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``ix_calls_unpurged_end`` (end_time, only where ``detail_purged_at IS NULL``): the
    sweep looked records up by ``ix_calls_end_time`` and tested each for ``detail_purged_at``,
    and a purged record stays past the cutoff for good, so every round read every past call.
    ``ix_calls_end_time`` stays: lost calls are found through it (``end_time IS NULL``)."""
    op.create_index(
        "ix_calls_unpurged_end",
        "calls",
        ["end_time"],
        sqlite_where=sa.text("detail_purged_at IS NULL"),
        postgresql_where=sa.text("detail_purged_at IS NULL"),
    )


def downgrade() -> None:
    """Drop the index."""
    op.drop_index("ix_calls_unpurged_end", table_name="calls")
