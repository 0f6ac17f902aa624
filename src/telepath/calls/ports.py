"""The interfaces call control needs from the outer ring, implemented by ``db`` and ``webhooks``.

Call control never imports the database, the API or the webhook sender: ``telepath serve`` wires
these implementations in. Dependencies only point inward.
"""

from __future__ import annotations

from typing import Any, Protocol

from telepath.calls.model import CallRecord


class CallRecorder(Protocol):
    """Persists call records."""

    async def call_started(self, record: CallRecord) -> None:
        """Store a new record (status ``connected``)."""
        ...

    async def call_ended(self, record: CallRecord) -> None:
        """Store the final state of a record (end time, reason, metrics, turns, trace)."""
        ...


class EventSink(Protocol):
    """Receives account-level events (``call.started``, ``call.ended``, ``agent.connected``,
    ``agent.disconnected``, ``call.error``) for durable webhook delivery."""

    async def emit(self, account_id: str, event: str, payload: dict[str, Any]) -> None:
        """Queue ``event`` for the account's subscribed endpoints; must not block on delivery."""
        ...
