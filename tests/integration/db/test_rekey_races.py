"""Master-key re-encryption racing the API: a credential changed meanwhile is never undone."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
from sqlalchemy import text

from telepath.db.models import REGISTRATION_PASSWORD, Trunk, trunk_secret_context
from telepath.db.rekey import rotate_master_key
from telepath.db.repository import TrunkRepository
from telepath.secrets.keyring import Keyring, encode_key, key_id, new_key
from tests.integration.api.seed import ELEVENLABS, OPENAI_EXAMPLE
from tests.integration.conftest import Api

pytestmark = pytest.mark.integration

OLD, NEW = new_key(), new_key()
REGISTRATION: dict[str, Any] = {"registrar": "sip:192.0.2.1", "username": "u", "password": "p1"}


ROTATED = {"secret_key": f"{encode_key(NEW)},{encode_key(OLD)}"}


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """The service runs with the old key (``TELEPATH_SECRET_KEY``); the rotation with
    ``new,old``."""
    return {"secret_key": encode_key(OLD)}


async def stored(api: Api, sql: str, **params: Any) -> Any:
    async with api.state.engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar_one_or_none()


def after_reading_trunks(
    monkeypatch: pytest.MonkeyPatch, action: Callable[[], Awaitable[None]]
) -> None:
    """Run ``action`` once, right after the rotation has read the trunks (before it writes)."""
    original = TrunkRepository.all_trunks
    raced: list[bool] = []

    async def all_trunks(self: TrunkRepository) -> Sequence[Trunk]:
        found = await original(self)
        if not raced:
            raced.append(True)
            await action()
        return found

    monkeypatch.setattr(TrunkRepository, "all_trunks", all_trunks)


@pytest.mark.parametrize("service", ["old", "new,old"])
async def test_a_key_changed_between_read_and_write_survives_the_rotation(
    api: Api, monkeypatch: pytest.MonkeyPatch, service: str
) -> None:
    """A leaked provider key replaced (and a registration password changed) after the
    rotation read the rows, before it wrote them — by a service still on the old key, or one
    restarted with ``new,old`` — stays: under the new key, never the re-encrypted old value."""
    body = {**OPENAI_EXAMPLE, "registration": REGISTRATION}
    trunk = (await api.post("/v1/trunks", body)).json()["id"]
    changes = {"openai_api_key": "sk-replaced", "registration": {**REGISTRATION, "password": "p2"}}

    async def replace() -> None:
        if service == "new,old":
            monkeypatch.setattr(api.state, "keyring", Keyring((NEW, OLD)))
        assert (await api.patch(f"/v1/trunks/{trunk}", changes)).status_code == 200

    after_reading_trunks(monkeypatch, replace)
    await rotate_master_key(api.state.settings.model_copy(update=ROTATED))

    new = Keyring((NEW,))
    key = await stored(api, "SELECT openai_api_key_enc FROM trunks WHERE id = :id", id=trunk)
    assert key.startswith(f"v1:{key_id(NEW)}:")
    assert new.decrypt(key, trunk_secret_context(trunk, "openai_api_key")) == "sk-replaced"
    password = await stored(
        api, "SELECT password_enc FROM trunk_registrations WHERE trunk_id = :id", id=trunk
    )
    assert password.startswith(f"v1:{key_id(NEW)}:")
    assert new.decrypt(password, trunk_secret_context(trunk, REGISTRATION_PASSWORD)) == "p2"


async def test_a_trunk_deleted_between_read_and_write_is_skipped(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not an error that ends the rotation: everything else is re-encrypted."""
    deleted = (await api.post("/v1/trunks", ELEVENLABS)).json()["id"]
    kept = (await api.post("/v1/trunks", OPENAI_EXAMPLE)).json()["id"]
    hook = await api.post("/v1/webhooks", {"url": "https://h.example.com/", "events": ["*"]})
    assert hook.status_code == 201, hook.text

    async def delete() -> None:
        assert (await api.delete(f"/v1/trunks/{deleted}")).status_code == 204

    after_reading_trunks(monkeypatch, delete)
    message = await rotate_master_key(api.state.settings.model_copy(update=ROTATED))
    assert "Re-encrypted 2 secret(s)" in message
    assert await stored(api, "SELECT id FROM trunks WHERE id = :id", id=deleted) is None
    key = await stored(api, "SELECT openai_api_key_enc FROM trunks WHERE id = :id", id=kept)
    assert key.startswith(f"v1:{key_id(NEW)}:")
    secret = await stored(api, "SELECT secret_enc FROM webhook_endpoints")
    assert secret.startswith(f"v1:{key_id(NEW)}:")
