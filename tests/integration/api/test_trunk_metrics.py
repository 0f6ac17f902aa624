"""``metrics`` of ``GET /v1/trunks`` (``reference/telepath-product.md`` §1.2): today's calls of
each trunk, their success rate and mean agent latency, from the call records, on SQLite and
PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tests.integration.api.seed import CUSTOM
from tests.integration.calls_api.records import account_of, ended, started
from tests.integration.conftest import Api

from telepath.api import trunk_service
from telepath.calls.model import CallRecord, CallStatus, DisconnectReason
from telepath.db.call_recorder import DbCallRecorder

pytestmark = pytest.mark.integration

EMPTY = {"calls_today": 0, "success_rate": 100.0, "avg_latency_ms": 0}


NOW = datetime.now(UTC)  # the service's "now" in these tests: no day may change under them


@pytest.fixture(autouse=True)
def _frozen_day(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trunk_service, "utcnow", lambda: NOW)


def _midnight() -> datetime:
    return NOW.replace(hour=0, minute=0, second=0, microsecond=0)


async def _trunk(api: Api, username: str) -> str:
    created = await api.post("/v1/trunks", {**CUSTOM, "sip_username": username})
    assert created.status_code == 201, created.text
    trunk_id: str = created.json()["id"]
    return trunk_id


async def _call(
    recorder: DbCallRecorder,
    account: str,
    trunk_id: str,
    start: datetime,
    *,
    latency: int | None = None,
    reason: DisconnectReason | None = DisconnectReason.CALLER_HANGUP,
    status: CallStatus = CallStatus.CONNECTED,
) -> None:
    """A record of a call that started at ``start`` and, unless ``reason`` is None, ended
    (by default answered and completed: ``connected``)."""
    record: CallRecord = started(account, trunk_id=trunk_id, start=start)
    await recorder.call_started(record)
    if reason is None:
        return
    record = ended(record, seconds=30, reason=reason, status=status)
    record.metrics.ai_latency_ms = latency
    await recorder.call_ended(record)


def _by_id(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["id"]: t["metrics"] for t in body["trunks"]}


async def test_list_shows_todays_calls_success_rate_and_latency(api: Api) -> None:
    busy = await _trunk(api, "metrics-busy")
    other = await _trunk(api, "metrics-other")
    idle = await _trunk(api, "metrics-idle")
    account = await account_of(api)
    stranger = await account_of(api, await api.new_account_key("stranger"))
    recorder = DbCallRecorder(api.state.sessions)
    midnight = _midnight()
    today = max(midnight, NOW - timedelta(minutes=5))

    # busy, today: three successes (one at 00:00:00 exactly), two failures, one still up.
    await _call(recorder, account, busy, midnight, latency=200)
    await _call(recorder, account, busy, today, latency=300, reason=DisconnectReason.AGENT_HANGUP)
    await _call(recorder, account, busy, today, latency=None, reason=DisconnectReason.TRANSFERRED)
    await _call(
        recorder,
        account,
        busy,
        today,
        reason=DisconnectReason.CONNECTION_FAILED,
        status=CallStatus.FAILED,
    )
    await _call(
        recorder,
        account,
        busy,
        today,
        latency=402,
        reason=DisconnectReason.AI_PROVIDER_ERROR,
        status=CallStatus.DISCONNECTED,
    )
    await _call(recorder, account, busy, today, reason=None)  # in progress: no outcome yet
    # Not busy's today: yesterday's call, and another account's record naming busy's id.
    before = midnight - timedelta(milliseconds=1)
    await _call(recorder, account, busy, before, latency=9000, status=CallStatus.FAILED)
    await _call(recorder, stranger, busy, today, latency=9000, status=CallStatus.FAILED)
    # other: one failed call today.
    await _call(
        recorder,
        account,
        other,
        today,
        reason=DisconnectReason.CONNECTION_FAILED,
        status=CallStatus.FAILED,
    )

    resp = await api.get("/v1/trunks")
    assert resp.status_code == 200, resp.text
    metrics = _by_id(resp.json())
    # 6 calls today; 3 of the 5 that ended succeeded; latency: mean of 200, 300, 402 = 300.67
    assert metrics[busy] == {"calls_today": 6, "success_rate": 60.0, "avg_latency_ms": 301}
    assert metrics[other] == {"calls_today": 1, "success_rate": 0.0, "avg_latency_ms": 0}
    assert metrics[idle] == EMPTY

    # The single trunk's view carries the same metrics.
    single = await api.get(f"/v1/trunks/{busy}")
    assert single.status_code == 200, single.text
    assert single.json()["metrics"] == metrics[busy]


async def test_success_rate_is_rounded_to_one_decimal(api: Api) -> None:
    trunk = await _trunk(api, "metrics-third")
    account = await account_of(api)
    recorder = DbCallRecorder(api.state.sessions)
    today = max(_midnight(), NOW - timedelta(minutes=5))
    for reason in (DisconnectReason.CALLER_HANGUP, DisconnectReason.CALLER_HANGUP):
        await _call(recorder, account, trunk, today, latency=101, reason=reason)
    await _call(
        recorder,
        account,
        trunk,
        today,
        latency=100,
        reason=DisconnectReason.LOST,
        status=CallStatus.DISCONNECTED,
    )

    metrics = _by_id((await api.get("/v1/trunks")).json())[trunk]
    assert metrics == {"calls_today": 3, "success_rate": 66.7, "avg_latency_ms": 101}


async def test_a_dropped_call_failed_and_a_completed_one_did_not(api: Api) -> None:
    """The success rate reads the status as the call log does: a call failed when it is
    ``failed`` or ``disconnected`` (Dropped) — an answered call cut by an internal error
    (``unknown``) too, which used to count as a success —, while an answered call that ended
    normally is ``connected`` (Completed) and ended, unlike one still up."""
    trunk = await _trunk(api, "metrics-status")
    account = await account_of(api)
    recorder = DbCallRecorder(api.state.sessions)
    today = max(_midnight(), NOW - timedelta(minutes=5))
    await _call(recorder, account, trunk, today)  # completed: connected, caller_hangup
    await _call(recorder, account, trunk, today, reason=None)  # up: connected, no outcome yet
    for reason in (DisconnectReason.UNKNOWN, DisconnectReason.CARRIER_ERROR):
        await _call(recorder, account, trunk, today, reason=reason, status=CallStatus.DISCONNECTED)

    metrics = _by_id((await api.get("/v1/trunks")).json())[trunk]
    # 3 ended, 1 of them completed
    assert metrics == {"calls_today": 4, "success_rate": 33.3, "avg_latency_ms": 0}


async def test_a_trunk_without_calls(api: Api) -> None:
    trunk = await _trunk(api, "metrics-none")
    body = (await api.get("/v1/trunks")).json()
    assert _by_id(body) == {trunk: EMPTY}
    single = (await api.get(f"/v1/trunks/{trunk}")).json()
    assert single["metrics"] == EMPTY
    changed = await api.patch(f"/v1/trunks/{trunk}", {"name": "Renamed"})
    assert changed.status_code == 200, changed.text
    assert changed.json()["metrics"] == EMPTY
