"""Call records: the final status of a call answered and ended normally is ``connected``.

Revision ID: 0018
Revises: 0017
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

# ``calls.model.DROPPED_REASONS`` as it is at this revision, written out: a migration must do
# the same thing whatever later versions make of the set.
_DROPPED = ("connection_failed", "ai_provider_error", "carrier_error", "lost", "unknown")

_calls = sa.table(
    "calls",
    sa.column("status", sa.String),
    sa.column("disconnect_reason", sa.String),
    sa.column("end_time", sa.DateTime),
)


def upgrade() -> None:
    """Earlier versions closed every answered call ``disconnected``; the status is the call's
    final one (``reference/telepath-product.md`` §1.6-1.7): ``connected`` (Completed) unless a
    failure cut it (Dropped). A record ``disconnected`` whose reason is not one of the
    dropping ones becomes ``connected``; one without a reason (none is written so) is left."""
    op.execute(
        _calls.update()
        .where(
            _calls.c.status == "disconnected",
            _calls.c.disconnect_reason.is_not(None),
            _calls.c.disconnect_reason.not_in(_DROPPED),
        )
        .values(status="connected")
    )


def downgrade() -> None:
    """Back to the earlier vocabulary, where ``connected`` meant in progress: every
    ``connected`` record with an end time is ``disconnected`` again (the earlier versions
    never wrote a ``connected`` one with a reason and no end)."""
    op.execute(
        _calls.update()
        .where(_calls.c.status == "connected", _calls.c.end_time.is_not(None))
        .values(status="disconnected")
    )
