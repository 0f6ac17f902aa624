"""Failed authentications are rate-limited per client address (found by review: every bogus
bearer token cost a database lookup, from the pool the gateway's trunk lookups share, and
a client could send them without end). Past ``TELEPATH_API_AUTH_FAILURES_PER_MINUTE`` an
address's requests are answered 429 before the lookup, except with a key that authenticated
recently (clients behind one NAT or proxy share an address)."""

from __future__ import annotations

from typing import Any

import pytest
from tests.integration.api.test_trunk_create import err
from tests.integration.conftest import Api

from telepath.db.repository import AccountRepository

pytestmark = pytest.mark.integration

LIMIT = 3
BOGUS = {"Authorization": "Bearer sk_live_not_a_key"}


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"api_auth_failures_per_minute": LIMIT}


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tokens looked up in the database, in order."""
    seen: list[str] = []
    real = AccountRepository.authenticate

    async def spy(self: AccountRepository, plaintext: str) -> Any:
        seen.append(plaintext)
        return await real(self, plaintext)

    monkeypatch.setattr(AccountRepository, "authenticate", spy)
    return seen


async def test_bogus_keys_are_limited_before_the_lookup(api: Api, lookups: list[str]) -> None:
    assert (await api.get("/v1/trunks")).status_code == 200  # the key authenticates: trusted
    for _ in range(LIMIT):
        err(await api.client.get("/v1/trunks", headers=BOGUS), 401, "invalid_api_key")
    assert len(lookups) == 1 + LIMIT
    limited = await api.client.get("/v1/trunks", headers=BOGUS)
    err(
        limited,
        429,
        "rate_limited",
        "Too many failed authentications from this address; retry after the time in Retry-After",
    )
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert "x-ratelimit-limit" not in limited.headers  # those are a key's, and none is known
    assert len(lookups) == 1 + LIMIT  # refused without a database query
    # a key that authenticated recently still gets in from the same address
    assert (await api.get("/v1/trunks")).status_code == 200
    # one that has not is refused with the rest (it cannot be told from a guess unlooked-up)
    fresh = await api.new_account_key("other")
    err(await api.get("/v1/trunks", key=fresh), 429, "rate_limited")
    assert lookups.count(fresh) == 0


async def test_successes_are_not_counted(api: Api, lookups: list[str]) -> None:
    for _ in range(LIMIT + 2):
        assert (await api.get("/v1/trunks")).status_code == 200
    err(await api.client.get("/v1/trunks", headers=BOGUS), 401, "invalid_api_key")


async def test_a_missing_or_malformed_key_is_not_looked_up(api: Api, lookups: list[str]) -> None:
    """No lookup, so nothing to limit: these stay 401 however many arrive."""
    for _ in range(LIMIT + 2):
        err(await api.client.get("/v1/trunks"), 401, "missing_api_key")
        err(
            await api.client.get("/v1/trunks", headers={"Authorization": "Basic eDp5"}),
            401,
            "invalid_api_key",
        )
    assert lookups == []


async def test_a_revoked_key_is_limited_with_the_guesses(api: Api, lookups: list[str]) -> None:
    """A key that authenticated, then was revoked (leaked): its first failed lookup forgets it,
    so from a limited address it is refused before the lookup like any guess — not looked up
    for ever on the strength of having once been good."""
    leaked = await api.new_account_key("leaky")
    assert (await api.get("/v1/trunks", key=leaked)).status_code == 200  # trusted now
    async with api.state.sessions() as session:
        repo = AccountRepository(session)
        live = await repo.authenticate(leaked)
        assert live is not None
        assert await repo.revoke(live.id)
        await session.commit()
    for _ in range(LIMIT - 1):
        err(await api.client.get("/v1/trunks", headers=BOGUS), 401, "invalid_api_key")
    err(await api.get("/v1/trunks", key=leaked), 401, "invalid_api_key")  # the LIMITth failure
    looked_up = lookups.count(leaked)
    err(await api.get("/v1/trunks", key=leaked), 429, "rate_limited")
    assert lookups.count(leaked) == looked_up  # refused without a database query
