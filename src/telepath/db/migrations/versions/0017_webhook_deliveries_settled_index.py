"""Webhook deliveries: index the outbox by status and last attempt, for the retention sweep.

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``ix_webhook_deliveries_settled`` (status, last_attempt_at): the prune of delivered
    and failed rows past the retention found them by ``ix_webhook_deliveries_due`` (status,
    next_attempt_at) and tested each one's last attempt, so the last batch of every sweep (the
    only one when there is nothing to prune) read every settled row still within the retention:
    most of the outbox, every 5 minutes. The claim's index stays: it orders due rows."""
    op.create_index(
        "ix_webhook_deliveries_settled", "webhook_deliveries", ["status", "last_attempt_at"]
    )


def downgrade() -> None:
    """Drop the index."""
    op.drop_index("ix_webhook_deliveries_settled", table_name="webhook_deliveries")
