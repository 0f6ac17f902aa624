"""Requests on one trunk that overlap (found by review): a change racing a delete, two
password rotations at once, two changes of its inbound numbers at once, two changes valid
alone but not together, on SQLite and PostgreSQL.

The overlap is made deterministic: the other request runs, to completion, right after this
request has read the trunk and before it writes (``between_read_and_write``), or starts while
this one's writes are not committed yet (``while_uncommitted``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from tests.integration.api.seed import CUSTOM
from tests.integration.api.test_trunk_create import err
from tests.integration.api.test_trunk_registration import REGISTRATION
from tests.integration.conftest import Api

from telepath.db.models import Trunk
from telepath.db.repository import TrunkRepository
from telepath.secrets.digest import compute_ha1

pytestmark = pytest.mark.integration


def between_read_and_write(
    monkeypatch: pytest.MonkeyPatch, reads: int, action: Callable[[], Awaitable[None]]
) -> None:
    """Run ``action`` once, right after the ``reads``-th read of a trunk from now on."""
    original = TrunkRepository.get
    remaining = [reads]

    async def get(self: TrunkRepository, account_id: str, trunk_id: str) -> Trunk | None:
        found = await original(self, account_id, trunk_id)
        remaining[0] -= 1
        if remaining[0] == 0:
            await action()
        return found

    monkeypatch.setattr(TrunkRepository, "get", get)


#: How long the other request is given to finish before this one commits: it finishes within
#: it unless it waits for a lock this one holds (then this one commits, and it goes on).
BLOCKED_S = 1.0


def while_uncommitted(
    monkeypatch: pytest.MonkeyPatch, action: Callable[[], Coroutine[Any, Any, Any]]
) -> list[asyncio.Task[Any]]:
    """Start ``action`` once, right after the next ``set_numbers`` (its writes done, not yet
    committed), and let it run until it ends or ``BLOCKED_S`` passes; returns its task."""
    original = TrunkRepository.set_numbers
    started: list[asyncio.Task[Any]] = []

    async def set_numbers(self: TrunkRepository, trunk: Trunk, numbers: Sequence[str]) -> None:
        await original(self, trunk, numbers)
        if not started:
            started.append(asyncio.create_task(action()))
            await asyncio.wait(started, timeout=BLOCKED_S)

    monkeypatch.setattr(TrunkRepository, "set_numbers", set_numbers)
    return started


async def _trunk(api: Api, body: dict[str, Any] = CUSTOM) -> str:
    created = await api.post("/v1/trunks", body)
    assert created.status_code == 201, created.text
    return f"/v1/trunks/{created.json()['id']}"


async def _stored_ha1(api: Api, trunk_id: str) -> tuple[str, str, str]:
    async with api.state.engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT sip_username, sip_realm, ha1_sha256 FROM trunks WHERE id = :id"),
                {"id": trunk_id},
            )
        ).one()
    return row[0], row[1], row[2]


async def test_patch_racing_a_delete_is_not_found(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The UPDATE matched no row: SQLAlchemy's StaleDataError was a 500."""
    trunk = await _trunk(api)

    async def delete() -> None:
        assert (await api.delete(trunk)).status_code == 204

    between_read_and_write(monkeypatch, 2, delete)  # the route's read, then the service's
    err(await api.patch(trunk, {"name": "Renamed"}), 404, "not_found")
    err(await api.get(trunk), 404, "not_found")


@pytest.mark.parametrize("path", ["rotate-password", "rotate-sip-password"])
async def test_rotation_racing_a_delete_is_not_found(
    api: Api, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    trunk = await _trunk(api)

    async def delete() -> None:
        assert (await api.delete(trunk)).status_code == 204

    between_read_and_write(monkeypatch, 1, delete)
    err(await api.post(f"{trunk}/{path}"), 404, "not_found")
    err(await api.get(trunk), 404, "not_found")


async def test_two_rotations_at_once_never_both_succeed(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both were answered 200 with a new password, and only one of them worked."""
    trunk = await _trunk(api)
    passwords: list[str] = []

    async def rotate() -> None:
        resp = await api.post(f"{trunk}/rotate-password")
        assert resp.status_code == 200, resp.text
        passwords.append(resp.json()["sip_password"])

    between_read_and_write(monkeypatch, 1, rotate)
    err(await api.post(f"{trunk}/rotate-password"), 409, "conflict")
    [password] = passwords
    username, realm, ha1 = await _stored_ha1(api, trunk.rsplit("/", 1)[1])
    assert ha1 == compute_ha1("SHA-256", username, realm, password)
    # Once the other rotation is over, rotating again works.
    again = await api.post(f"{trunk}/rotate-password")
    assert again.status_code == 200, again.text
    username, realm, ha1 = await _stored_ha1(api, trunk.rsplit("/", 1)[1])
    assert ha1 == compute_ha1("SHA-256", username, realm, again.json()["sip_password"])


@pytest.mark.parametrize("path", ["rotate-password", "rotate-sip-password"])
async def test_a_rotation_s_conflict_is_documented(api: Api, path: str) -> None:
    """The 409 above was missing from the rotate routes' OpenAPI responses (401/404/429)."""
    spec = (await api.client.get("/openapi.json")).json()
    responses = spec["paths"][f"/v1/trunks/{{trunk_id}}/{path}"]["post"]["responses"]
    assert "rotated by another request" in responses["409"]["description"]


async def _numbers(api: Api, trunk_id: str) -> tuple[list[str], str | None]:
    """The trunk's routing rows and its ``inbound_numbers`` column."""
    async with api.state.engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT number FROM trunk_numbers WHERE trunk_id = :id ORDER BY number"),
            {"id": trunk_id},
        )
        column = await conn.scalar(
            text("SELECT inbound_numbers FROM trunks WHERE id = :id"), {"id": trunk_id}
        )
    return list(rows.scalars()), column


async def test_two_number_changes_at_once_leave_no_stray_routing_row(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PATCH [B] and PATCH [C] at once left trunk_numbers {B, C} with the column C: each
    deleted only the rows it had read (A), so B stayed routed to the trunk (unchallenged, with
    sip_auth address) though no longer listed. The PATCH's own UPDATE of updated_at happened
    to lock the row first, except within the same millisecond: the clock is frozen here."""
    frozen = datetime(2026, 3, 5, 10, 30, tzinfo=UTC)
    monkeypatch.setattr("telepath.api.trunk_service.utcnow", lambda: frozen)
    trunk = await _trunk(api, {**CUSTOM, "inbound_numbers": ["+14155550100"]})
    trunk_id = trunk.rsplit("/", 1)[1]
    answers: list[int] = []

    async def patch_c() -> None:
        answers.append((await api.patch(trunk, {"inbound_numbers": ["+14155550102"]})).status_code)

    other = while_uncommitted(monkeypatch, patch_c)
    first = await api.patch(trunk, {"inbound_numbers": ["+14155550101"]})
    assert first.status_code == 200, first.text
    await asyncio.gather(*other)
    assert answers == [200]
    rows, column = await _numbers(api, trunk_id)
    assert column is not None
    assert rows == column.split(",")  # the routing index is what the trunk lists
    assert rows == ["+14155550102"]  # the change committed last


async def test_delete_racing_a_delete_is_not_found(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loser's DELETE matched no row: both answered 204, and SQLAlchemy warned."""
    trunk = await _trunk(api, {**CUSTOM, "inbound_numbers": ["+14155550100"]})

    async def delete() -> None:
        assert (await api.delete(trunk)).status_code == 204

    between_read_and_write(monkeypatch, 1, delete)
    err(await api.delete(trunk), 404, "not_found")
    err(await api.get(trunk), 404, "not_found")
    assert await _numbers(api, trunk.rsplit("/", 1)[1]) == ([], None)


async def test_two_trunks_claiming_one_number_at_once_is_a_conflict(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both PATCHes found the number free; the loser's commit broke the number's unique key,
    and its IntegrityError branch read the trunk expired by the rollback: MissingGreenlet, a
    500. (The clock is frozen so that the PATCH writes nothing before its check, as within one
    millisecond; else SQLite's write lock orders them and the check answers.)"""
    frozen = datetime(2026, 3, 5, 10, 30, tzinfo=UTC)
    monkeypatch.setattr("telepath.api.trunk_service.utcnow", lambda: frozen)
    first = await _trunk(api, {**CUSTOM, "sip_username": "claim-first"})
    second = await _trunk(api, {**CUSTOM, "sip_username": "claim-second"})
    original = TrunkRepository.numbers_taken
    ran: list[int] = []

    async def numbers_taken(
        self: TrunkRepository, numbers: Collection[str], trunk_id: str
    ) -> list[str]:
        taken = await original(self, numbers, trunk_id)
        if not ran:
            ran.append(0)  # once: the other PATCH's own check runs this too
            resp = await api.patch(second, {"inbound_numbers": ["+14155550100"]})
            ran[0] = resp.status_code
        return taken

    monkeypatch.setattr(TrunkRepository, "numbers_taken", numbers_taken)
    err(await api.patch(first, {"inbound_numbers": ["+14155550100"]}), 409, "conflict")
    assert ran == [200]
    assert await _numbers(api, first.rsplit("/", 1)[1]) == ([], None)
    assert await _numbers(api, second.rsplit("/", 1)[1]) == (["+14155550100"], "+14155550100")


def _refused_combination(trunk: dict[str, Any]) -> str | None:
    """What a single request is refused (400) for, if ``trunk`` as read holds it."""
    if trunk["custom_reconnect"] and trunk["custom_protocol"] == "twilio":
        return "custom_reconnect with custom_protocol twilio"
    if trunk["sip_auth"] == "address" and not (
        trunk["allowed_addresses"] and trunk["inbound_numbers"]
    ):
        return "sip_auth address without allowed_addresses and inbound_numbers"
    if trunk["registration"] is not None and trunk["registration"]["username"] == "changed":
        return "a registration without a password"
    return None


ROUTED = {**CUSTOM, "allowed_addresses": ["192.0.2.1"], "inbound_numbers": ["+14155550100"]}
REGISTERED = {**CUSTOM, "registration": REGISTRATION}
NO_PASSWORD = {"registration": {k: v for k, v in REGISTRATION.items() if k != "password"}}

# (the trunk, the change checked against a stale read, the change made meanwhile, the code)
CROSS_FIELD_RACES = [
    (CUSTOM, {"custom_reconnect": True}, {"custom_protocol": "twilio"}, "invalid_field"),
    (CUSTOM, {"custom_protocol": "twilio"}, {"custom_reconnect": True}, "invalid_field"),
    (ROUTED, {"sip_auth": "address"}, {"allowed_addresses": None}, "invalid_field"),
    (ROUTED, {"sip_auth": "address"}, {"inbound_numbers": None}, "invalid_field"),
    (
        {**ROUTED, "allowed_addresses": None},
        {"allowed_addresses": None},
        {"allowed_addresses": ["192.0.2.1"], "sip_auth": "address"},
        "invalid_field",
    ),
    (
        {**ROUTED, "inbound_numbers": None},
        {"inbound_numbers": None},
        {"inbound_numbers": ["+14155550100"], "sip_auth": "address"},
        "invalid_field",
    ),
    (
        REGISTERED,
        {"registration": {**NO_PASSWORD["registration"], "username": "changed"}},
        {"registration": None},
        "missing_required_field",
    ),
]


@pytest.mark.parametrize(("created", "change", "meanwhile", "code"), CROSS_FIELD_RACES)
async def test_a_change_checked_against_a_stale_read_is_refused(
    api: Api,
    monkeypatch: pytest.MonkeyPatch,
    created: dict[str, Any],
    change: dict[str, Any],
    meanwhile: dict[str, Any],
    code: str,
) -> None:
    """Two PATCHes at once, each valid alone, e.g. ``{"custom_reconnect": true}`` and
    ``{"custom_protocol": "twilio"}``: each checked its change against the trunk it had read,
    both passed, and together they stored a trunk a single request is refused (found by
    review). The other change commits right after this one's read of the trunk: this one is
    checked against it now, under the trunk's lock, and refused."""
    trunk = await _trunk(api, created)
    answers: list[httpx.Response] = []

    async def other() -> None:
        answers.append(await api.patch(trunk, meanwhile))

    between_read_and_write(monkeypatch, 2, other)  # the route's read, then the service's
    err(await api.patch(trunk, change), 400, code)
    assert [a.status_code for a in answers] == [200], answers[0].text
    stored = (await api.get(trunk)).json()
    assert _refused_combination(stored) is None, stored
    assert stored == {**answers[0].json(), "metrics": stored["metrics"]}


@pytest.mark.parametrize(
    ("created", "one", "other"),
    [
        (CUSTOM, {"custom_reconnect": True}, {"custom_protocol": "twilio"}),
        (ROUTED, {"sip_auth": "address"}, {"allowed_addresses": None}),
    ],
)
async def test_two_changes_at_once_never_store_a_refused_combination(
    api: Api, created: dict[str, Any], one: dict[str, Any], other: dict[str, Any]
) -> None:
    """The same two changes sent at once, as a client would, interleaved as they happen to
    be: one of them is refused, and the trunk is one a single request may make."""
    for _ in range(5):
        trunk = await _trunk(api, created)
        answers = await asyncio.gather(api.patch(trunk, one), api.patch(trunk, other))
        assert sorted(a.status_code for a in answers) == [200, 400], [a.text for a in answers]
        stored = (await api.get(trunk)).json()
        assert _refused_combination(stored) is None, stored
        assert (await api.delete(trunk)).status_code == 204
