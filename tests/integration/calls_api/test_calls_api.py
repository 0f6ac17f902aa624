"""``GET /v1/calls`` and ``GET /v1/calls/{id}`` over records written by ``DbCallRecorder``."""

from __future__ import annotations

from datetime import timedelta

import pytest

from telepath.calls.model import CallStatus, DisconnectReason
from telepath.db.call_recorder import DbCallRecorder
from tests.integration.api.seed import CUSTOM, ISO_UTC
from tests.integration.api.test_trunk_create import err
from tests.integration.calls_api.records import T0, account_of, ended, started
from tests.integration.conftest import Api

pytestmark = pytest.mark.integration


async def test_empty_list(api: Api) -> None:
    resp = await api.get("/v1/calls")
    assert resp.status_code == 200
    assert resp.json() == {"calls": [], "pagination": {"limit": 20, "offset": 0, "total": 0}}


async def test_record_appears_in_list_and_details(api: Api) -> None:
    account = await account_of(api)
    recorder = DbCallRecorder(api.state.sessions)
    record = started(account)
    await recorder.call_started(record)

    live = (await api.get(f"/v1/calls/{record.id}")).json()
    assert live["status"] == "connected"
    assert live["end_time"] is None and live["duration_seconds"] == 0

    await recorder.call_ended(ended(record))
    listed = (await api.get("/v1/calls")).json()
    assert listed["pagination"]["total"] == 1
    item = listed["calls"][0]
    assert set(item) == {
        "id",
        "trunk_id",
        "from",
        "to",
        "status",
        "duration_seconds",
        "start_time",
        "end_time",
        "disconnect_reason",
        "carrier_lag_ms",
        "ai_latency_ms",
        "gateway_processing_ms",
        "gateway_processing_us",
    }
    assert item["id"] == record.id and item["trunk_id"] == "conn_a"
    assert item["from"] == "+14155550100" and item["to"] == "+18005551234"
    # ended normally (caller_hangup): connected, the final status (reference §1.6)
    assert item["status"] == "connected" and item["duration_seconds"] == 342
    assert item["end_time"] is not None and item["disconnect_reason"] == "caller_hangup"
    assert item["start_time"] == "2026-03-05T10:30:00Z"
    assert item["carrier_lag_ms"] == 85 and item["ai_latency_ms"] == 215
    # the documented int (found by review: 0.042, which a Go or Java int cannot decode), and
    # the mean in whole microseconds beside it
    assert item["gateway_processing_ms"] == 0 and item["gateway_processing_us"] == 42

    resp = await api.get(f"/v1/calls/{record.id}")
    assert resp.status_code == 200
    detail = resp.json()
    for key in ("id", "trunk_id", "from", "to", "status", "start_time", "end_time"):
        assert detail[key] == item[key]
    assert detail["disconnect_reason"] == "caller_hangup"
    assert detail["duration_seconds"] == 342
    assert detail["end_time"] is not None
    assert detail["metrics"] == {
        "carrier_lag_ms": 85,
        "ai_latency_ms": 215,
        "gateway_processing_ms": 0,
        "gateway_processing_us": 42,
        "gateway_processing_p99_ms": 0.31,
        "packet_loss_percent": 0.2,
        "jitter_ms": 13,
        "jitter_us": 12500,
        "codec_used": "G722",
        "setup_ms": 250,
    }
    assert all(
        type(detail["metrics"][name]) is int
        for name in ("gateway_processing_ms", "gateway_processing_us", "jitter_ms", "jitter_us")
    )
    assert detail["turns"] == [
        {"turn_number": 1, "speaker": "caller", "duration_ms": 2340, "processing_time_ms": 0},
        {"turn_number": 2, "speaker": "agent", "duration_ms": 3210, "processing_time_ms": 285},
    ]
    assert detail["sip_trace"].startswith("INVITE sip:agent@example.test")
    assert detail["detail_purged_at"] is None
    assert detail["ai_provider"] == "openai"


async def test_newest_first_and_pagination(api: Api) -> None:
    account = await account_of(api)
    recorder = DbCallRecorder(api.state.sessions)
    ids = []
    for i in range(5):
        record = started(account, start=T0 + timedelta(minutes=i))
        await recorder.call_ended(ended(record))
        ids.append(record.id)
    newest_first = list(reversed(ids))
    page = (await api.get("/v1/calls", limit=2, offset=1)).json()
    assert [c["id"] for c in page["calls"]] == newest_first[1:3]
    assert page["pagination"] == {"limit": 2, "offset": 1, "total": 5}
    tail = (await api.get("/v1/calls", limit=100, offset=4)).json()
    assert [c["id"] for c in tail["calls"]] == newest_first[4:]
    past = (await api.get("/v1/calls", offset=10)).json()
    assert past["calls"] == [] and past["pagination"]["total"] == 5


async def test_filters(api: Api) -> None:
    account = await account_of(api)
    recorder = DbCallRecorder(api.state.sessions)
    a1 = started(account, trunk_id="conn_a", start=T0)
    a2 = started(account, trunk_id="conn_a", start=T0 + timedelta(days=1))
    b1 = started(account, trunk_id="conn_b", start=T0 + timedelta(days=2))
    c1 = started(account, trunk_id="conn_c", start=T0 - timedelta(days=1))
    await recorder.call_ended(ended(a1))  # completed
    await recorder.call_ended(
        ended(a2, status=CallStatus.FAILED, reason=DisconnectReason.CONNECTION_FAILED)
    )
    await recorder.call_started(b1)  # up
    await recorder.call_ended(
        ended(c1, status=CallStatus.DISCONNECTED, reason=DisconnectReason.AI_PROVIDER_ERROR)
    )  # dropped

    async def ids(**params: str) -> set[str]:
        resp = await api.get("/v1/calls", **params)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["pagination"]["total"] == len(body["calls"])
        return {c["id"] for c in body["calls"]}

    assert await ids(trunk_id="conn_a") == {a1.id, a2.id}
    assert await ids(trunk_id="conn_zzz") == set()
    assert await ids(status="failed") == {a2.id}
    assert await ids(status="connected") == {a1.id, b1.id}  # completed, and still up
    assert await ids(status="disconnected") == {c1.id}
    assert await ids(trunk_id="conn_a", status="failed") == {a2.id}
    # Inclusive bounds, date-times with any offset, bare dates covering the whole day.
    assert await ids(start_date="2026-03-06T10:30:00Z") == {a2.id, b1.id}
    assert await ids(end_date="2026-03-06T10:30:00Z") == {c1.id, a1.id, a2.id}
    assert await ids(start_date="2026-03-06", end_date="2026-03-06") == {a2.id}
    assert await ids(start_date="2026-03-06T12:30:00+02:00", end_date="2026-03-07") == {
        a2.id,
        b1.id,
    }
    assert await ids(start_date="2026-03-06T10:30:01") == {b1.id}  # naive means UTC


async def test_end_date_covers_the_whole_second_it_names(api: Api) -> None:
    """Found by review: the API shows whole seconds but stores microseconds, so a call shown
    as ``...T10:30:00Z`` was left out by ``end_date=...T10:30:00Z`` ("on or before")."""
    record = started(await account_of(api), start=T0 + timedelta(microseconds=500_000))
    await DbCallRecorder(api.state.sessions).call_ended(ended(record))
    shown = (await api.get(f"/v1/calls/{record.id}")).json()["start_time"]
    assert shown == "2026-03-05T10:30:00Z"

    async def total(**params: str) -> int:
        resp = await api.get("/v1/calls", **params)
        assert resp.status_code == 200, resp.text
        count: int = resp.json()["pagination"]["total"]
        return count

    assert await total(end_date=shown) == 1
    assert await total(start_date=shown, end_date=shown) == 1
    assert await total(end_date="2026-03-05T11:30:00+01:00") == 1
    assert await total(end_date="2026-03-05T10:30:00") == 1  # naive: UTC
    assert await total(end_date="2026-03-05T10:29:59Z") == 0
    # A fraction given is taken as written.
    assert await total(end_date="2026-03-05T10:30:00.4Z") == 0
    assert await total(end_date="2026-03-05T10:30:00.5Z") == 1
    assert await total(start_date="0001-01-01", end_date="9999-12-31") == 1  # no overflow
    # A minute or an hour named covers the whole minute or hour (it was their first second).
    later = started(await account_of(api), start=T0 + timedelta(minutes=5, seconds=30))
    await DbCallRecorder(api.state.sessions).call_ended(ended(later))  # 10:35:30
    assert await total(end_date="2026-03-05T10:35Z") == 2
    assert await total(end_date="2026-03-05T1035Z") == 2
    assert await total(end_date="2026-03-05T10Z") == 2
    assert await total(start_date="2026-03-05T10:35", end_date="2026-03-05T10:35") == 1
    assert await total(end_date="2026-03-05T10:34Z") == 1


@pytest.mark.parametrize(
    ("day", "week"),
    [
        ("2026-03-05", "2026-W10"),
        ("20260305", "2026W10"),
        ("2026-W10-4", "2026-W10"),
        ("2026W104", "2026W10"),
    ],
)
async def test_a_date_covers_the_whole_day_in_any_iso_form(api: Api, day: str, week: str) -> None:
    """Found by review: compact dates (``20260305``, ``2026W104``) were midnight, so as an
    end_date they left out that day's calls; a week without a day covers the whole week."""
    account = await account_of(api)
    recorder = DbCallRecorder(api.state.sessions)
    thursday = started(account, start=T0)  # 2026-03-05 10:30, ISO week 10 day 4
    sunday = started(account, start=T0 + timedelta(days=3, hours=13))  # 2026-03-08 23:30
    monday = started(account, start=T0 + timedelta(days=4))  # week 11
    for record in (thursday, sunday, monday):
        await recorder.call_ended(ended(record))

    async def ids(**params: str) -> set[str]:
        resp = await api.get("/v1/calls", **params)
        assert resp.status_code == 200, resp.text
        return {c["id"] for c in resp.json()["calls"]}

    assert await ids(start_date=day, end_date=day) == {thursday.id}
    assert await ids(end_date=day) == {thursday.id}
    assert await ids(start_date=day) == {thursday.id, sunday.id, monday.id}
    assert await ids(end_date=week) == {thursday.id, sunday.id}
    assert await ids(start_date=week, end_date=week) == {thursday.id, sunday.id}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"limit": "0"}, "limit must be an integer between 1 and 100"),
        ({"limit": "101"}, "limit must be an integer between 1 and 100"),
        ({"limit": "ten"}, "limit must be an integer between 1 and 100"),
        ({"offset": "-1"}, "offset must be an integer between 0 and 2147483647"),
        ({"status": "active"}, "status must be one of: connected, disconnected, failed"),
        ({"start_date": "yesterday"}, "start_date must be an ISO 8601 date or date-time"),
        ({"end_date": "2026-13-01"}, "end_date must be an ISO 8601 date or date-time"),
        (
            {"start_date": "2026-03-07", "end_date": "2026-03-06"},
            "start_date must not be after end_date",
        ),
        ({"trunk_id": "x" * 65}, "Invalid trunk_id parameter"),
        # Found by review: in range as written, out of range in UTC (astimezone overflowed: 500).
        (
            {"start_date": "0001-01-01T00:30:00+01:00"},
            "start_date must be an ISO 8601 date or date-time",
        ),
        (
            {"end_date": "9999-12-31T23:59:59-01:00"},
            "end_date must be an ISO 8601 date or date-time",
        ),
    ],
)
async def test_invalid_parameters(api: Api, params: dict[str, str], message: str) -> None:
    err(await api.get("/v1/calls", **params), 400, "invalid_parameter", message)


async def test_not_found_and_tenancy(api: Api) -> None:
    other_key = await api.new_account_key("other")
    other = await account_of(api, other_key)
    mine = await account_of(api)
    recorder = DbCallRecorder(api.state.sessions)
    theirs = started(other)
    await recorder.call_ended(ended(theirs))
    own = started(mine)
    await recorder.call_ended(ended(own))

    resp = await api.get(f"/v1/calls/{theirs.id}")
    err(resp, 404, "not_found", f"Call '{theirs.id}' not found")
    err(await api.get("/v1/calls/call_missing"), 404, "not_found")
    assert [c["id"] for c in (await api.get("/v1/calls")).json()["calls"]] == [own.id]
    assert (await api.get(f"/v1/calls/{theirs.id}", key=other_key)).status_code == 200
    listed = (await api.get("/v1/calls", key=other_key)).json()
    assert [c["id"] for c in listed["calls"]] == [theirs.id]


async def test_calls_require_a_key(api: Api) -> None:
    err(await api.client.get("/v1/calls"), 401, "missing_api_key")
    err(await api.client.get("/v1/calls/call_x"), 401, "missing_api_key")


async def test_records_outlive_their_trunk(api: Api) -> None:
    resp = await api.post("/v1/trunks", CUSTOM)
    assert resp.status_code == 201, resp.text
    trunk_id = resp.json()["id"]
    record = started(await account_of(api), trunk_id=trunk_id)
    await DbCallRecorder(api.state.sessions).call_ended(ended(record))
    assert (await api.delete(f"/v1/trunks/{trunk_id}")).status_code == 204
    detail = (await api.get(f"/v1/calls/{record.id}")).json()
    assert detail["trunk_id"] == trunk_id
    assert (await api.get("/v1/calls", trunk_id=trunk_id)).json()["pagination"]["total"] == 1


async def test_timestamps_are_iso_utc(api: Api) -> None:
    import re

    record = started(await account_of(api))
    await DbCallRecorder(api.state.sessions).call_ended(ended(record))
    detail = (await api.get(f"/v1/calls/{record.id}")).json()
    for key in ("start_time", "answer_time", "end_time"):
        assert re.match(ISO_UTC, detail[key]), detail[key]
