"""Call records: index a trunk's calls by start time, for its metrics of today.

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Replace ``ix_calls_account_trunk`` (account_id, trunk_id) with
    ``ix_calls_account_trunk_start`` (account_id, trunk_id, start_time): ``GET /v1/trunks``
    counts each listed trunk's calls since 00:00 UTC, which the old index could only answer by
    reading all of the trunk's calls ever. The old one is a prefix of the new: nothing it
    served is lost. The new one is built first, so a trunk's calls are never unindexed."""
    op.create_index(
        "ix_calls_account_trunk_start", "calls", ["account_id", "trunk_id", "start_time"]
    )
    op.drop_index("ix_calls_account_trunk", table_name="calls")


def downgrade() -> None:
    """Back to the (account_id, trunk_id) index."""
    op.create_index("ix_calls_account_trunk", "calls", ["account_id", "trunk_id"])
    op.drop_index("ix_calls_account_trunk_start", table_name="calls")
