"""The webhook event vocabulary and the JSON bodies built for ``call.*`` events."""

from __future__ import annotations

from typing import Final

from telepath.calls.events import call_ended_payload, call_started_payload, iso_ms

CALL_STARTED: Final = "call.started"
CALL_ENDED: Final = "call.ended"
AGENT_CONNECTED: Final = "agent.connected"
AGENT_DISCONNECTED: Final = "agent.disconnected"
CALL_ERROR: Final = "call.error"
EVENT_TYPES: Final = (CALL_STARTED, CALL_ENDED, AGENT_CONNECTED, AGENT_DISCONNECTED, CALL_ERROR)
ALL_EVENTS: Final = "*"


def subscribed(events: list[str], event: str) -> bool:
    """Whether an endpoint subscribed to ``events`` receives ``event``."""
    return ALL_EVENTS in events or event in events


__all__ = [
    "AGENT_CONNECTED",
    "AGENT_DISCONNECTED",
    "ALL_EVENTS",
    "CALL_ENDED",
    "CALL_ERROR",
    "CALL_STARTED",
    "EVENT_TYPES",
    "call_ended_payload",
    "call_started_payload",
    "iso_ms",
    "subscribed",
]
