"""A call's final status from how it ended (``calls/model.final_status``): the API's
``connected`` / ``disconnected`` / ``failed``, the dashboard's Completed / Dropped / Failed
(``reference/telepath-product.md`` §1.6-1.7, §7 row 12)."""

from __future__ import annotations

import pytest

from telepath.calls.model import DROPPED_REASONS, CallStatus, DisconnectReason, final_status

pytestmark = pytest.mark.unit

# Written out here, not taken from the module: the decision itself is what is tested.
COMPLETED = {
    "caller_hangup",
    "agent_hangup",
    "transferred",
    "media_timeout",
    "session_limit",
    "max_duration",
    "shutdown",
    "trunk_deleted",
}
DROPPED = {"ai_provider_error", "carrier_error", "lost", "unknown", "connection_failed"}


def test_every_reason_is_either_a_completion_or_a_drop() -> None:
    assert COMPLETED | DROPPED == {r.value for r in DisconnectReason}
    assert {r.value for r in DROPPED_REASONS} == DROPPED


@pytest.mark.parametrize("reason", sorted(COMPLETED))
def test_an_answered_call_that_ended_normally_is_connected(reason: str) -> None:
    assert final_status(DisconnectReason(reason), answered=True) is CallStatus.CONNECTED


@pytest.mark.parametrize("reason", sorted(DROPPED))
def test_an_answered_call_that_ended_abnormally_is_disconnected(reason: str) -> None:
    assert final_status(DisconnectReason(reason), answered=True) is CallStatus.DISCONNECTED


@pytest.mark.parametrize("reason", list(DisconnectReason))
def test_a_call_never_answered_failed_whatever_its_reason(reason: DisconnectReason) -> None:
    assert final_status(reason, answered=False) is CallStatus.FAILED
