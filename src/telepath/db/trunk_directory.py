"""The database implementation of ``calls.ports.TrunkDirectory``.

Lookups are cached for a second (``CACHE_TTL_S``; a change made through this process applies at
once), so a rotated password, a deactivated or deleted trunk takes effect within a second.

While the database is unreachable (a restart, a failover), a trunk read in the last
``STALE_IF_ERROR_S`` is still served from the cache (the database tried again for it every
``RETRY_AFTER_ERROR_S``; a read that has not answered in ``STALE_WAIT_S`` is not waited for
either), so its calls are answered through the outage (their records and
webhooks wait for the database: ``db/group_commit.py``); any other lookup raises
``DirectoryUnavailable`` (call control answers ``503``). Decision: a trunk deleted through
*another* process just before an outage may take calls until it ends.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Collection
from ipaddress import ip_network

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from telepath.calls.ports import DirectoryUnavailable, TrunkConfig, may_be_sip_username
from telepath.db.engine import transient_error
from telepath.db.models import REGISTRATION_PASSWORD, Trunk, trunk_secret_context
from telepath.db.repository import TrunkRepository
from telepath.lookup_cache import LookupCache
from telepath.secrets.keyring import Keyring, SecretDecryptionError

logger = logging.getLogger(__name__)


CACHE_TTL_S = 1.0
STALE_IF_ERROR_S = 600.0  # how old a trunk may be that is served while the database is down
RETRY_AFTER_ERROR_S = 30.0  # meanwhile: one read attempt per trunk this often
# A database that stops answering (nothing refused) fails a read only at its timeout
# (TELEPATH_DATABASE_TIMEOUT_S, 10 s): a trunk read before is served after this long instead,
# so the carrier's INVITE is not held for the timeout — long enough that a healthy but busy
# database (an indexed read by key) is never taken for a silent one.
STALE_WAIT_S = 2.0
_generation = 0


_listeners: list[Callable[[], None]] = []


def trunks_changed() -> None:
    """Drop every cached trunk in this process (a trunk was created, changed or deleted), and
    tell the listeners (the outbound registrations look again at once)."""
    global _generation
    _generation += 1
    for listener in list(_listeners):
        listener()


def on_trunks_changed(listener: Callable[[], None]) -> Callable[[], None]:
    """Call ``listener`` on every :func:`trunks_changed`; returns the function that stops it."""
    _listeners.append(listener)
    return lambda: _listeners.remove(listener) if listener in _listeners else None


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
        # ("user", lower(username)), ("number", number) or ("contact", contact user) -> trunk or
        # None: key spaces apart, as a Request-URI user may well look like a number. A call
        # looks its trunk up twice within milliseconds (to choose the challenge, then to verify
        # the answer).
        self._cache: LookupCache[tuple[str, str], TrunkConfig | None] = LookupCache(
            cache_ttl_s,
            lambda: _generation,
            stale_if_error_s=STALE_IF_ERROR_S,
            stale_on=transient_error,
            retry_after_error_s=RETRY_AFTER_ERROR_S,
            stale_wait_s=STALE_WAIT_S,
        )

    @property
    def loads(self) -> int:
        """Database reads so far (the cache and single flight keep this low)."""
        return self._cache.loads

    @property
    def stale_reads_in_flight(self) -> int:
        """Reads of trunks served stale meanwhile, still running (a silent database)."""
        return self._cache.reads_in_flight

    def _open(self, trunk: Trunk, column: str, envelope: str | None) -> str | None:
        if not envelope:
            return None
        return self._keyring.decrypt(envelope, trunk_secret_context(trunk.id, column))

    async def find_by_sip_username(self, sip_username: str) -> TrunkConfig | None:
        """The trunk owning ``sip_username`` with its secrets decrypted, or None.

        Cached for ``cache_ttl_s`` (1 s): a change made through this process's API is seen at
        once (:func:`trunks_changed`); one made by another process within a second. A name no
        trunk can have (the API's rule) is not looked up: a Request-URI user is anyone's to
        write, and a NUL in it made PostgreSQL refuse the query (SIP 500, per packet).
        """
        if not may_be_sip_username(sip_username):
            return None
        return await self._cached(("user", sip_username.lower()), lambda: self._load(sip_username))

    async def find_by_number(self, number: str) -> TrunkConfig | None:
        """The trunk serving the called ``number`` (canonical E.164), cached like a username."""
        return await self._cached(("number", number), lambda: self._load_number(number))

    async def find_by_contact(self, contact_user: str) -> TrunkConfig | None:
        """The trunk whose outbound registration's contact user is ``contact_user``, cached like
        a username (a key space of its own)."""
        return await self._cached(
            ("contact", contact_user), lambda: self._load_contact(contact_user)
        )

    async def _cached(
        self, key: tuple[str, str], load: Callable[[], Awaitable[TrunkConfig | None]]
    ) -> TrunkConfig | None:
        if "\x00" in key[1]:  # no stored text has one (PostgreSQL refuses it in a query)
            return None
        try:
            return await self._cache.get(key, load)
        except Exception as exc:
            if transient_error(exc):
                raise DirectoryUnavailable(type(exc).__name__) from exc
            raise

    async def inactive_among(self, trunk_ids: Collection[str]) -> set[str]:
        """Those of ``trunk_ids`` deleted or not ``active``: one indexed query, never cached
        (the gateway asks every few seconds about the trunks of its live calls)."""
        wanted = set(trunk_ids)
        if not wanted:
            return set()
        async with self._sessions() as session:
            active = await TrunkRepository(session).active_ids(wanted)
        return wanted - active

    async def _load(self, sip_username: str) -> TrunkConfig | None:
        async with self._sessions() as session:
            trunk = await TrunkRepository(session).by_sip_username(sip_username)
        return None if trunk is None else self._config(trunk)

    async def _load_number(self, number: str) -> TrunkConfig | None:
        async with self._sessions() as session:
            trunk = await TrunkRepository(session).by_number(number)
        return None if trunk is None else self._config(trunk)

    async def _load_contact(self, contact_user: str) -> TrunkConfig | None:
        async with self._sessions() as session:
            trunk = await TrunkRepository(session).by_contact(contact_user)
        return None if trunk is None else self._config(trunk)

    def _config(self, trunk: Trunk) -> TrunkConfig | None:
        """What call control needs of ``trunk``, secrets decrypted (None if they cannot be)."""
        registration = trunk.registration
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
                custom_reconnect=bool(trunk.custom_reconnect),
                custom_headers=json.loads(headers_raw) if headers_raw else {},
                digest_algorithms=(
                    tuple(trunk.sip_digest_algorithms.split(","))
                    if trunk.sip_digest_algorithms
                    else None
                ),
                allowed_networks=tuple(
                    ip_network(n) for n in (trunk.allowed_addresses or "").split(",") if n
                ),
                inbound_numbers=frozenset(n for n in (trunk.inbound_numbers or "").split(",") if n),
                allowed_callers=frozenset(
                    n for n in (trunk.allowed_caller_numbers or "").split(",") if n
                ),
                sip_auth=trunk.sip_auth or "digest",
                media_encryption=trunk.media_encryption,
                codecs=tuple(trunk.codecs.split(",")) if trunk.codecs else None,
                forward_sip_headers=tuple(
                    n for n in (trunk.forward_sip_headers or "").split(",") if n
                ),
                registrar_host=registration.registrar_host if registration else None,
                registration_proxy_host=registration.proxy_host if registration else None,
                registration_streamed=registration.streamed if registration else False,
                registration_contact=registration.contact_user if registration else None,
                registration_credentials=(
                    None
                    if registration is None
                    else (
                        registration.auth_username or registration.username,
                        self._open(trunk, REGISTRATION_PASSWORD, registration.password_enc) or "",
                    )
                ),
            )
        except SecretDecryptionError:
            # Treated as unusable rather than crashing the SIP layer; the operator must fix keys.
            logger.error("trunk secrets cannot be decrypted with the current master key")
            return None
