"""Requests on one trunk that overlap (found by review): a change racing a delete, and two
password rotations at once, on SQLite and PostgreSQL.

The overlap is made deterministic: the other request runs, to completion, right after this
request has read the trunk and before it writes (``between_read_and_write``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy import text
from tests.integration.api.seed import CUSTOM
from tests.integration.api.test_trunk_create import err
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


async def _trunk(api: Api) -> str:
    created = await api.post("/v1/trunks", CUSTOM)
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
