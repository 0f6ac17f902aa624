"""What call control knows about a call, independent of storage: the record and its vocabulary.

The call-control layer fills a ``CallRecord`` as the call progresses and hands it to a
``CallRecorder`` (implemented by ``telepath.db``) when the call starts and when it ends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Final


class CallStatus(StrEnum):
    """The API's call status vocabulary (``reference/telepath-product.md`` §1.6-1.7): a
    call's *final* status once it ended — both documented examples are finished calls reading
    ``connected`` —, which the dashboard shows as Completed, Dropped and Failed (§7 row 12).
    ``final_status`` decides it from how the call ended."""

    CONNECTED = "connected"  # answered: in progress, or ended normally (Completed)
    DISCONNECTED = "disconnected"  # answered, then ended abnormally: DROPPED_REASONS (Dropped)
    FAILED = "failed"  # never got both legs up (agent unreachable, no media, ...)


class DisconnectReason(StrEnum):
    """Why a call ended: one vocabulary for call records, webhooks and metrics labels."""

    CALLER_HANGUP = "caller_hangup"  # BYE or CANCEL from the carrier side
    AGENT_HANGUP = "agent_hangup"  # the AI agent asked to end the call
    TRANSFERRED = "transferred"  # the agent transferred the call (REFER accepted)
    MEDIA_TIMEOUT = "media_timeout"  # no RTP from the caller for the inactivity timeout
    CONNECTION_FAILED = "connection_failed"  # the agent could not be reached at all
    AI_PROVIDER_ERROR = "ai_provider_error"  # the agent failed or dropped mid-call
    SESSION_LIMIT = "session_limit"  # the provider's maximum session length was reached
    CARRIER_ERROR = "carrier_error"  # SIP-level failure towards the carrier
    SHUTDOWN = "shutdown"  # the gateway was stopped and the drain time ran out
    MAX_DURATION = "max_duration"  # up longer than TELEPATH_CALL_MAX_DURATION_S
    TRUNK_DELETED = "trunk_deleted"  # the trunk was deleted or deactivated mid-call
    LOST = "lost"  # its process stopped without ending it (killed, crashed): found by a sweep
    UNKNOWN = "unknown"


#: The ends that make an answered call ``disconnected`` (the dashboard's "Dropped"): the call
#: was cut by a failure — the agent failed, or could not be reached again, mid-call; SIP failed
#: towards the carrier; the gateway process died with it; an internal error (``unknown``).
#: Every other end of an answered call is a normal one and leaves it ``connected``
#: ("Completed"): a hang-up of either side, a transfer, the inactivity, duration and session
#: limits, a shutdown, a deleted trunk. One set for every close of a record (a call's end, a
#: dead process's calls, a replayed journal) and so for the ``call.ended`` webhook built from it
#: and the trunks' ``success_rate``. Migration 0018 gave the records stored before it their
#: status with a copy of this set as it was then: changing it calls for a migration of its own.
DROPPED_REASONS: Final = frozenset(
    {
        DisconnectReason.CONNECTION_FAILED,
        DisconnectReason.AI_PROVIDER_ERROR,
        DisconnectReason.CARRIER_ERROR,
        DisconnectReason.LOST,
        DisconnectReason.UNKNOWN,
    }
)


def final_status(reason: DisconnectReason, *, answered: bool) -> CallStatus:
    """The status of a call that ended on ``reason``: ``failed`` if it was never answered,
    else ``disconnected`` for one of ``DROPPED_REASONS`` and ``connected`` for any other."""
    if not answered:
        return CallStatus.FAILED
    return CallStatus.DISCONNECTED if reason in DROPPED_REASONS else CallStatus.CONNECTED


@dataclass
class Turn:
    """One conversational turn, as measured at the gateway."""

    turn_number: int
    speaker: str  # "caller" | "agent"
    duration_ms: int
    processing_time_ms: int  # agent turns: caller end-of-speech to first agent audio


@dataclass
class CallMetrics:
    """Per-call measurements (all measured at the gateway, none estimated)."""

    carrier_lag_ms: int | None = None  # INVITE received -> first RTP packet from the carrier
    ai_latency_ms: int | None = None  # mean of agent turns' processing_time_ms
    gateway_processing_ms: float | None = None  # mean per-packet time inside the gateway
    packet_loss_percent: float | None = None
    jitter_ms: float | None = None  # mean of the RFC 3550 interarrival jitter over the call, ms
    codec_used: str | None = None  # "PCMU" | "PCMA" | "G722"
    gateway_processing_p99_ms: float | None = None
    setup_ms: int | None = None  # INVITE received -> 200 OK sent


def whole_ms(value_ms: float | None) -> int | None:
    """A measurement in whole milliseconds, rounded half up: the contract's ``int`` fields
    (``gateway_processing_ms``, ``jitter_ms``; a typed client cannot decode ``0.187``)."""
    return None if value_ms is None else math.floor(value_ms + 0.5)


def whole_us(value_ms: float | None) -> int | None:
    """The same measurement in whole microseconds, rounded half up: the ``_us`` field served
    beside each such ``_ms`` one, so that a sub-millisecond mean is not lost."""
    return None if value_ms is None else math.floor(value_ms * 1000 + 0.5)


@dataclass
class CallRecord:
    """A call as it will appear in ``GET /v1/calls/{id}``."""

    id: str
    account_id: str
    trunk_id: str
    from_number: str | None
    to_number: str | None
    start_time: datetime
    status: CallStatus = CallStatus.CONNECTED
    answer_time: datetime | None = None
    end_time: datetime | None = None
    disconnect_reason: DisconnectReason | None = None
    metrics: CallMetrics = field(default_factory=CallMetrics)
    turns: list[Turn] = field(default_factory=list)
    # where the call's RTP went and came from, what was dropped, one-way-audio warnings
    # (calls/diagnosis.py); None until the call ends
    media: dict[str, Any] | None = None
    sip_trace: str = ""  # credentials already redacted by the SIP layer
    ai_provider: str = ""
    error_message: str | None = None

    @property
    def duration_seconds(self) -> int:
        """Answered-to-end duration, whole seconds (0 if never answered)."""
        if self.answer_time is None or self.end_time is None:
            return 0
        return max(0, round((self.end_time - self.answer_time).total_seconds()))
