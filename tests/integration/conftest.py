"""Integration fixtures: an API client over a real database (SQLite, and PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from telepath.api.app import create_app
from telepath.api.state import ApiState
from telepath.cli.runtime import bootstrap_first_key, open_state
from telepath.config import Settings
from telepath.db.repository import AccountRepository
from tests.conftest import migrated_sqlite


@dataclass
class Api:
    """A client authenticated as the bootstrap account, plus the state behind it."""

    client: httpx.AsyncClient
    key: str
    state: ApiState

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    async def post(self, path: str, body: Any = None, *, key: str | None = None) -> httpx.Response:
        return await self.client.post(path, json=body, headers=self.auth(key))

    async def get(self, path: str, *, key: str | None = None, **params: Any) -> httpx.Response:
        return await self.client.get(path, headers=self.auth(key), params=params)

    async def patch(self, path: str, body: Any, *, key: str | None = None) -> httpx.Response:
        return await self.client.patch(path, json=body, headers=self.auth(key))

    async def delete(self, path: str, *, key: str | None = None) -> httpx.Response:
        return await self.client.delete(path, headers=self.auth(key))

    async def new_account_key(self, account: str) -> str:
        async with self.state.sessions() as session:
            issued = await AccountRepository(session).issue_key(account, "test")
            await session.commit()
            return issued.plaintext


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return migrated_sqlite(tmp_path)
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Tests override this to change settings (provider URLs, limits...)."""
    return {}


@pytest.fixture
def settings(database_url: str, tmp_path: Path, settings_overrides: dict[str, Any]) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "database_url": database_url,
        "sip_domain": "sip.example.test",
        "validate_provider_keys": False,
        "openai_api_base": "http://127.0.0.1:9/v1",
        "elevenlabs_api_base": "http://127.0.0.1:9",
    }
    values.update(settings_overrides)
    return Settings(**values)


async def _reset(state: ApiState) -> None:
    if state.engine.dialect.name == "postgresql":
        async with state.engine.begin() as conn:
            await conn.execute(text("TRUNCATE accounts, api_keys, trunks CASCADE"))


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Api]:
    async with open_state(settings) as state:
        await _reset(state)
        issued = await bootstrap_first_key(state)
        assert issued is not None
        transport = httpx.ASGITransport(app=create_app(state))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield Api(client=client, key=issued.plaintext, state=state)
