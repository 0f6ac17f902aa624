"""``telepath secrets rotate`` (key file) while the service runs: nothing lost, nothing refused."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from tests.integration.api.seed import CUSTOM, OPENAI_EXAMPLE
from tests.integration.conftest import Api

from telepath.api.app import create_app
from telepath.api.state import ApiState
from telepath.cli.runtime import open_state
from telepath.config import Settings
from telepath.db import rekey
from telepath.db.models import REGISTRATION_PASSWORD, trunk_secret_context, webhook_secret_context
from telepath.db.registration_store import DbRegistrationStore
from telepath.db.rekey import RekeyError, prune_master_keys, rotate_master_key
from telepath.db.reseal import Resealed
from telepath.db.trunk_directory import DbTrunkDirectory
from telepath.secrets.keyfile import write_key_file
from telepath.secrets.keyring import Keyring, new_key, parse_keyring

pytestmark = pytest.mark.integration

REGISTRATION: dict[str, Any] = {"registrar": "sip:192.0.2.1", "username": "u", "password": "rp"}
HEADERS = {"X-Tenant": "acme"}


@asynccontextmanager
async def restarted(settings: Settings, key: str) -> AsyncIterator[tuple[Api, ApiState]]:
    """The service started again (the key file read afresh), with the same API key."""
    async with open_state(settings) as state:
        transport = httpx.ASGITransport(app=create_app(state))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield Api(client=client, key=key, state=state), state


async def envelopes(api: Api) -> dict[str, str]:
    """Every stored envelope, by its context."""
    found: dict[str, str] = {}
    async with api.state.engine.connect() as conn:
        trunks = await conn.execute(
            text("SELECT id, openai_api_key_enc, custom_headers_enc FROM trunks")
        )
        for trunk_id, key, headers in trunks:
            if key:
                found[trunk_secret_context(trunk_id, "openai_api_key")] = key
            if headers:
                found[trunk_secret_context(trunk_id, "custom_headers")] = headers
        registrations = await conn.execute(
            text("SELECT trunk_id, password_enc FROM trunk_registrations")
        )
        for trunk_id, password in registrations:
            found[trunk_secret_context(trunk_id, REGISTRATION_PASSWORD)] = password
        for endpoint_id, secret in await conn.execute(
            text("SELECT id, secret_enc FROM webhook_endpoints")
        ):
            found[webhook_secret_context(endpoint_id)] = secret
    return found


async def create(api: Api, body: dict[str, Any]) -> str:
    resp = await api.post("/v1/trunks", body)
    assert resp.status_code == 201, resp.text
    trunk_id: str = resp.json()["id"]
    return trunk_id


async def test_rotating_the_key_file_under_a_running_service_loses_and_refuses_nothing(
    api: Api,
) -> None:
    before = await create(api, {**OPENAI_EXAMPLE, "registration": REGISTRATION})
    custom = await create(api, {**CUSTOM, "custom_headers": HEADERS})
    hook = await api.post("/v1/webhooks", {"url": "https://h.example.com/", "events": ["*"]})
    assert hook.status_code == 201, hook.text
    settings = api.state.settings
    old_kid = api.state.keyring.active_kid

    await rotate_master_key(settings)
    new_kid = parse_keyring((settings.data_dir / "secret.key").read_text()).active_kid
    assert new_kid != old_kid
    assert all(e.startswith(f"v1:{new_kid}:") for e in (await envelopes(api)).values())

    # The service opened before the rotation reads what was re-encrypted, seals new values
    # with the new key, and its gateway still takes the trunks' calls and registers.
    got = await api.get(f"/v1/trunks/{custom}")
    assert got.status_code == 200, got.text
    assert got.json()["custom_header_names"] == ["X-Tenant"]
    assert (await api.get("/v1/trunks")).status_code == 200
    after = await create(
        api, {**OPENAI_EXAMPLE, "sip_username": "after-rotation", "openai_api_key": "sk-after"}
    )
    patched = await api.patch(f"/v1/trunks/{before}", {"openai_api_key": "sk-patched"})
    assert patched.status_code == 200, patched.text
    directory = DbTrunkDirectory(api.state.sessions, api.state.keyring)
    config = await directory.find_by_sip_username(CUSTOM["sip_username"])
    assert config is not None and config.custom_headers == HEADERS
    [registration] = await DbRegistrationStore(
        api.state.sessions, api.state.keyring
    ).registrations()
    assert registration.password == "rp"

    # Started again: everything, from before the rotation and after, still decrypts.
    async with restarted(settings, api.key) as (again, state):
        for trunk_id in (before, custom, after):
            resp = await again.get(f"/v1/trunks/{trunk_id}")
            assert resp.status_code == 200, resp.text
        stored = await envelopes(again)
        assert {state.keyring.decrypt(e, c) for c, e in stored.items() if "openai" in c} == {
            "sk-patched",
            "sk-after",
        }
        for context, envelope in stored.items():
            state.keyring.decrypt(envelope, context)
        assert state.keyring.active_kid == new_kid


async def test_prune_reencrypts_what_was_sealed_late_with_the_old_key_then_drops_it(
    api: Api,
) -> None:
    """A value sealed with the old key after the rotation's pass (a service that read the file
    just before it was rewritten) is re-encrypted by ``prune``, which then leaves one key."""
    trunk = await create(api, {**OPENAI_EXAMPLE, "registration": REGISTRATION})
    settings = api.state.settings
    old = Keyring(api.state.keyring.keys)
    await rotate_master_key(settings)
    context = trunk_secret_context(trunk, "openai_api_key")
    async with api.state.engine.begin() as conn:
        await conn.execute(
            text("UPDATE trunks SET openai_api_key_enc = :e"),
            {"e": old.encrypt("sk-late", context)},
        )

    message = await prune_master_keys(settings)
    assert "Re-encrypted 1 secret(s)" in message and "removed 1 older key(s)" in message
    [key] = parse_keyring((settings.data_dir / "secret.key").read_text()).keys
    pruned = Keyring((key,))
    stored = await envelopes(api)
    assert pruned.decrypt(stored[context], context) == "sk-late"
    for where, envelope in stored.items():
        pruned.decrypt(envelope, where)
    # The service opened before all this goes on.
    assert (await api.get(f"/v1/trunks/{trunk}")).status_code == 200
    patched = await api.patch(f"/v1/trunks/{trunk}", {"openai_api_key": "sk-after-prune"})
    assert patched.status_code == 200, patched.text
    async with restarted(settings, api.key) as (again, state):
        assert state.keyring.keys == (key,)
        assert (await again.get(f"/v1/trunks/{trunk}")).status_code == 200
        [envelope] = [e for c, e in (await envelopes(again)).items() if c == context]
        assert state.keyring.decrypt(envelope, context) == "sk-after-prune"


async def test_prune_keeps_every_key_while_a_secret_cannot_be_reencrypted(api: Api) -> None:
    trunk = await create(api, OPENAI_EXAMPLE)
    settings = api.state.settings
    await rotate_master_key(settings)
    path = settings.data_dir / "secret.key"
    keys = path.read_text()
    context = trunk_secret_context(trunk, "openai_api_key")
    async with api.state.engine.begin() as conn:
        await conn.execute(
            text("UPDATE trunks SET openai_api_key_enc = :e"),
            {"e": Keyring((new_key(),)).encrypt("sk-lost", context)},
        )
    with pytest.raises(RekeyError, match=f"(?s){context}.*no key was removed"):
        await prune_master_keys(settings)
    assert path.read_text() == keys


def after_prunes_first_pass(monkeypatch: pytest.MonkeyPatch, api: Api, envelope: str) -> list[int]:
    """Store ``envelope`` as the trunk's provider key once prune's first pass is done (before
    it rewrites the file); returns the count of each pass."""
    original = rekey.reencrypt_all
    passes: list[int] = []

    async def reencrypt_all(settings: Settings, keyring: Keyring) -> Resealed:
        result = await original(settings, keyring)
        passes.append(result.count)
        if len(passes) == 1:
            async with api.state.engine.begin() as conn:
                await conn.execute(
                    text("UPDATE trunks SET openai_api_key_enc = :e"), {"e": envelope}
                )
        return result

    monkeypatch.setattr(rekey, "reencrypt_all", reencrypt_all)
    return passes


async def test_prune_reencrypts_what_was_sealed_with_the_old_key_while_it_ran(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sealed with the old key after prune's first pass, before the file lost that key: the
    pass after the file was rewritten re-encrypts it (prune still holds the old key)."""
    trunk = await create(api, OPENAI_EXAMPLE)
    settings = api.state.settings
    old = Keyring(api.state.keyring.keys)
    await rotate_master_key(settings)
    context = trunk_secret_context(trunk, "openai_api_key")
    passes = after_prunes_first_pass(monkeypatch, api, old.encrypt("sk-late", context))
    await prune_master_keys(settings)
    assert passes == [0, 1]
    [key] = parse_keyring((settings.data_dir / "secret.key").read_text()).keys
    assert Keyring((key,)).decrypt((await envelopes(api))[context], context) == "sk-late"


async def test_prune_puts_the_keys_back_when_its_last_pass_fails(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    trunk = await create(api, OPENAI_EXAMPLE)
    settings = api.state.settings
    await rotate_master_key(settings)
    path = settings.data_dir / "secret.key"
    keys = path.read_text()
    context = trunk_secret_context(trunk, "openai_api_key")
    after_prunes_first_pass(monkeypatch, api, Keyring((new_key(),)).encrypt("sk-x", context))
    with pytest.raises(RekeyError, match="the older keys are back"):
        await prune_master_keys(settings)
    assert parse_keyring(path.read_text()).keys == parse_keyring(keys).keys


async def test_prune_puts_the_keys_back_when_its_last_pass_raises(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database gone (or Ctrl-C) during the pass after the file lost the older keys: a
    value sealed late with one of them could be opened by no one once prune had exited."""
    await create(api, OPENAI_EXAMPLE)
    settings = api.state.settings
    await rotate_master_key(settings)
    path = settings.data_dir / "secret.key"
    keys = path.read_text()
    original = rekey.reencrypt_all
    passes: list[int] = []

    async def fails_the_second_time(settings: Settings, keyring: Keyring) -> Resealed:
        passes.append(len(passes))
        if len(passes) == 2:
            raise ConnectionRefusedError("the database went away")
        return await original(settings, keyring)

    monkeypatch.setattr(rekey, "reencrypt_all", fails_the_second_time)
    with pytest.raises(ConnectionRefusedError):
        await prune_master_keys(settings)
    assert passes == [0, 1]
    assert parse_keyring(path.read_text()).keys == parse_keyring(keys).keys


async def test_prune_leaves_a_key_file_rewritten_meanwhile_alone(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another rotation while prune runs: prune writes nothing (it would drop the newest key)."""
    await create(api, OPENAI_EXAMPLE)
    settings = api.state.settings
    await rotate_master_key(settings)
    path = settings.data_dir / "secret.key"
    original = rekey.reencrypt_all

    async def rotated_meanwhile(settings: Settings, keyring: Keyring) -> Resealed:
        result = await original(settings, keyring)
        write_key_file(path, (new_key(), *keyring.keys))
        return result

    monkeypatch.setattr(rekey, "reencrypt_all", rotated_meanwhile)
    with pytest.raises(RekeyError, match="changed meanwhile"):
        await prune_master_keys(settings)
    assert len(parse_keyring(path.read_text()).keys) == 3


async def test_a_rotation_or_prune_started_while_a_rotation_runs_is_refused(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two rotations interleaving their reads and writes of the key file could each put their
    own new key first and drop the other's (what the other re-encrypted under it then lost):
    the second is refused with a message, the key file untouched, the first completes."""
    await create(api, OPENAI_EXAMPLE)
    settings = api.state.settings
    path = settings.data_dir / "secret.key"
    original = rekey.reencrypt_all
    refused: list[str] = []

    async def reencrypt_all(settings: Settings, keyring: Keyring) -> Resealed:
        before = path.read_text()
        for step in (rotate_master_key, prune_master_keys):
            with pytest.raises(RekeyError, match="another `telepath secrets rotate` or `prune`"):
                await step(settings)
            refused.append(step.__name__)
        assert path.read_text() == before
        return await original(settings, keyring)

    monkeypatch.setattr(rekey, "reencrypt_all", reencrypt_all)
    await rotate_master_key(settings)
    assert refused == ["rotate_master_key", "prune_master_keys"]
    assert len(parse_keyring(path.read_text()).keys) == 2
    monkeypatch.setattr(rekey, "reencrypt_all", original)
    assert "removed 1 older key(s)" in await prune_master_keys(settings)  # the lock was let go


async def test_a_secret_no_key_opens_leaves_the_trunks_readable(api: Api) -> None:
    """A database restored without its key file, a wrong TELEPATH_SECRET_KEY, tampering: one
    trunk's custom headers that no key opens made ``GET /v1/trunks`` answer 500 for the whole
    account, and a PATCH of that trunk 500 after committing. Read, its header names are
    unknown (null); the rest of the account reads as ever."""
    custom = await create(api, {**CUSTOM, "custom_headers": HEADERS})
    other = await create(api, OPENAI_EXAMPLE)
    context = trunk_secret_context(custom, "custom_headers")
    async with api.state.engine.begin() as conn:
        await conn.execute(
            text("UPDATE trunks SET custom_headers_enc = :e WHERE id = :id"),
            {"e": Keyring((new_key(),)).encrypt("{}", context), "id": custom},
        )
    listed = await api.get("/v1/trunks")
    assert listed.status_code == 200, listed.text
    names = {t["id"]: t["custom_header_names"] for t in listed.json()["trunks"]}
    assert names == {custom: None, other: None}
    got = await api.get(f"/v1/trunks/{custom}")
    assert got.status_code == 200 and got.json()["custom_header_names"] is None
    patched = await api.patch(f"/v1/trunks/{custom}", {"system_prompt": "Be brief."})
    assert patched.status_code == 200, patched.text
    # set again, they read as ever
    patched = await api.patch(f"/v1/trunks/{custom}", {"custom_headers": HEADERS})
    assert patched.status_code == 200 and patched.json()["custom_header_names"] == ["X-Tenant"]


async def test_a_change_checked_against_a_stored_key_no_key_opens_is_refused(api: Api) -> None:
    """A new model is checked with the stored provider key: one no key opens made the PATCH
    a 500. It is refused saying so (409), and accepted with the key sent again."""
    trunk = await create(api, OPENAI_EXAMPLE)
    context = trunk_secret_context(trunk, "openai_api_key")
    async with api.state.engine.begin() as conn:
        await conn.execute(
            text("UPDATE trunks SET openai_api_key_enc = :e WHERE id = :id"),
            {"e": Keyring((new_key(),)).encrypt("sk-lost", context), "id": trunk},
        )
    refused = await api.patch(f"/v1/trunks/{trunk}", {"openai_model": "gpt-realtime-2.1"})
    assert refused.status_code == 409, refused.text
    error = refused.json()["error"]
    assert error["code"] == "stored_secret_unreadable" and error["status"] == 409
    assert "openai_api_key" in error["message"]
    taken = await api.patch(
        f"/v1/trunks/{trunk}", {"openai_model": "gpt-realtime-2.1", "openai_api_key": "sk-new"}
    )
    assert taken.status_code == 200, taken.text
