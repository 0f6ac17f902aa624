"""The database implementation of ``calls.ports.TrunkDirectory``.

Each lookup reads the row afresh (one indexed query), so a rotated password, a deactivated or
deleted trunk takes effect on the very next INVITE.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from telepath.calls.ports import TrunkConfig
from telepath.db.models import Trunk, trunk_secret_context
from telepath.db.repository import TrunkRepository
from telepath.secrets.keyring import Keyring, SecretDecryptionError

logger = logging.getLogger(__name__)


CACHE_TTL_S = 1.0
_generation = 0


def trunks_changed() -> None:
    """Drop every cached trunk in this process (a trunk was created, changed or deleted)."""
    global _generation
    _generation += 1


class DbTrunkDirectory:
    """Trunk lookups for the SIP layer and call control."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        keyring: Keyring,
        *,
        cache_ttl_s: float = CACHE_TTL_S,
    ) -> None:
        self._sessions = sessions
        self._keyring = keyring
        self._ttl = cache_ttl_s
        # lower(username) -> (generation, expiry, trunk or None). A call looks its trunk up
        # twice within milliseconds (to choose the challenge, then to verify the answer).
        self._cache: dict[str, tuple[int, float, TrunkConfig | None]] = {}
        # Single flight: when an entry expires under load, the INVITEs that arrive while it is
        # being read again wait for that one read instead of each starting their own.
        self._loading: dict[str, asyncio.Future[TrunkConfig | None]] = {}
        self.loads = 0  # database reads (the cache and single flight keep this low)

    def _open(self, trunk: Trunk, column: str, envelope: str | None) -> str | None:
        if not envelope:
            return None
        return self._keyring.decrypt(envelope, trunk_secret_context(trunk.id, column))

    async def find_by_sip_username(self, sip_username: str) -> TrunkConfig | None:
        """The trunk owning ``sip_username`` with its secrets decrypted, or None.

        Cached for ``cache_ttl_s`` (1 s): a change made through this process's API is seen at
        once (:func:`trunks_changed`); one made by another process within a second.
        """
        key = sip_username.lower()
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[0] == _generation and hit[1] > now:
            return hit[2]
        generation = _generation
        flight = f"{generation}:{key}"  # a lookup after a change never joins one from before
        pending = self._loading.get(flight)
        if pending is not None:
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not pending.cancelled() or task is None or task.cancelling():
                    raise  # we were cancelled ourselves
                return await self._load(sip_username)  # the loader was cancelled, not us
        pending = asyncio.get_running_loop().create_future()
        self._loading[flight] = pending
        try:
            self.loads += 1
            found = await self._load(sip_username)
        except asyncio.CancelledError:
            pending.cancel()
            raise
        except Exception as exc:
            pending.set_exception(exc)
            pending.exception()  # nobody may be waiting
            raise
        else:
            pending.set_result(found)
        finally:
            del self._loading[flight]
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = (generation, now + self._ttl, found)
        return found

    async def _load(self, sip_username: str) -> TrunkConfig | None:
        async with self._sessions() as session:
            trunk = await TrunkRepository(session).by_sip_username(sip_username)
        if trunk is None:
            return None
        try:
            headers_raw = self._open(trunk, "custom_headers", trunk.custom_headers_enc)
            return TrunkConfig(
                trunk_id=trunk.id,
                account_id=trunk.account_id,
                sip_username=trunk.sip_username,
                active=trunk.status == "active",
                realm=trunk.sip_realm,
                ha1_md5=trunk.ha1_md5,
                ha1_sha256=trunk.ha1_sha256,
                ai_provider=trunk.ai_provider,
                system_prompt=trunk.system_prompt,
                openai_api_key=self._open(trunk, "openai_api_key", trunk.openai_api_key_enc),
                openai_model=trunk.openai_model,
                openai_voice=trunk.openai_voice,
                elevenlabs_api_key=self._open(
                    trunk, "elevenlabs_api_key", trunk.elevenlabs_api_key_enc
                ),
                elevenlabs_agent_id=trunk.elevenlabs_agent_id,
                custom_endpoint=trunk.custom_endpoint,
                custom_protocol=trunk.custom_protocol,
                custom_headers=json.loads(headers_raw) if headers_raw else {},
                digest_algorithms=(
                    tuple(trunk.sip_digest_algorithms.split(","))
                    if trunk.sip_digest_algorithms
                    else None
                ),
            )
        except SecretDecryptionError:
            # Treated as unusable rather than crashing the SIP layer; the operator must fix keys.
            logger.error("trunk secrets cannot be decrypted with the current master key")
            return None
