"""The composition root: opens storage and secrets, builds the services, runs them together.

``telepath serve`` and the tests use the same functions, so what is tested is what runs.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from sqlalchemy import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from telepath.api.provider_checks import ProviderValidator
from telepath.api.ratelimit import AuthFailureLimiter, RateLimiter
from telepath.api.state import ApiState
from telepath.config import Settings
from telepath.db.engine import make_engine, migrate_or_refuse, sessionmaker_for
from telepath.db.repository import DEFAULT_ACCOUNT_NAME, AccountRepository, IssuedKey
from telepath.secrets.keyfile import key_file, load_keyring
from telepath.secrets.keyring import Keyring

logger = logging.getLogger("telepath")


@asynccontextmanager
async def open_state(settings: Settings, migrate: bool = True) -> AsyncIterator[ApiState]:
    """Open the database (migrated, unless ``migrate`` is off: a SIP worker, started after the
    front migrated), keyring and provider client; close them on exit.

    Raises:
        DatabaseUnavailable: the database cannot be reached or opened (no master key is
            generated then).
    """
    # A key that is there is read first: one that does not read is refused before the database
    # is opened. One still to generate is generated once the database has been reached.
    keyring = _keyring(settings) if _has_key(settings) else None
    url = settings.effective_database_url
    engine = make_engine(url, timeout_s=settings.database_timeout_s)
    # Migrations and the retention sweep may run long on a big database: without the timeout.
    maintenance = engine
    if engine.dialect.name == "postgresql" and settings.database_timeout_s > 0:
        maintenance = make_engine(url, pool_size=1)
    try:
        if migrate:
            await migrate_or_refuse(maintenance)
        if keyring is None:
            keyring = _keyring(settings)
        validator = ProviderValidator(
            openai_api_base=settings.openai_api_base,
            elevenlabs_api_base=settings.elevenlabs_api_base,
            timeout_s=settings.provider_timeout_s,
            enabled=settings.validate_provider_keys,
        )
        try:
            yield ApiState(
                settings=settings,
                engine=engine,
                sessions=sessionmaker_for(engine),
                keyring=keyring,
                validator=validator,
                limiter=RateLimiter(settings.api_rate_limit_per_minute),
                auth_failures=AuthFailureLimiter(settings.api_auth_failures_per_minute),
                maintenance_sessions=sessionmaker_for(maintenance),
            )
        finally:
            await validator.aclose()
    finally:
        await engine.dispose()
        if maintenance is not engine:
            await maintenance.dispose()


def _has_key(settings: Settings) -> bool:
    return bool(settings.secret_key.strip()) or key_file(settings.data_dir).exists()


def _keyring(settings: Settings) -> Keyring:
    keyring, generated = load_keyring(settings.secret_key, settings.data_dir)
    if generated:
        logger.warning(
            "generated a new master key in %s (mode 0600): back it up, or set "
            "TELEPATH_SECRET_KEY; without it stored provider keys cannot be decrypted",
            key_file(settings.data_dir),
        )
    return keyring


@asynccontextmanager
async def open_records(settings: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions to read what is stored (``telepath calls``) with no side effect: no migration
    (``telepath serve`` migrates as it starts), no master key (nothing read here is encrypted:
    none is generated), and no SQLite file or data directory created where there is none.

    Raises:
        FileNotFoundError: the SQLite database does not exist.
    """
    engine = _existing_database(settings)
    try:
        yield sessionmaker_for(engine)
    finally:
        await engine.dispose()


def _existing_database(settings: Settings) -> AsyncEngine:
    """An engine for the configured database; for SQLite only if its file exists (connecting
    would create it, ``make_engine`` its directory)."""
    url = settings.effective_database_url
    if url.startswith("sqlite"):
        path = make_url(url).database or ""
        if not Path(path).is_file():
            raise FileNotFoundError(errno.ENOENT, "no database", path)
    return make_engine(url, timeout_s=settings.database_timeout_s)


async def bootstrap_first_key(state: ApiState) -> IssuedKey | None:
    """On an empty installation, create the first account and key (returned once)."""
    async with state.sessions() as session:
        repo = AccountRepository(session)
        if await repo.count() > 0:
            return None
        issued = await repo.issue_key(DEFAULT_ACCOUNT_NAME, "bootstrap")
        await session.commit()
        return issued
