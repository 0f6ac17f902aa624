"""The database implementation of ``calls.ports.RegistrationStore``: the outbound registrations
call control keeps up (Telepath as a SIP client of the carrier, RFC 3261 §10.2), and the state
it reports, which ``GET /v1/trunks`` shows.

Never cached: call control reads the list when it starts and when trunks change, not per call.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import cast

from sqlalchemy import Table, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from telepath.calls.ports import DirectoryUnavailable, RegistrationConfig
from telepath.db.base import fit_row, utcnow
from telepath.db.engine import transient_error
from telepath.db.models import REGISTRATION_PASSWORD, Trunk, TrunkRegistration, trunk_secret_context
from telepath.secrets.keyring import Keyring, SecretDecryptionError

logger = logging.getLogger(__name__)

#: The states call control reports (``pending`` is the API's, for a new or changed one).
REPORTED_STATUSES = frozenset({"registered", "failed", "unregistered"})
REGISTRATIONS = cast(Table, TrunkRegistration.__table__)


class DbRegistrationStore:
    """Outbound registrations for call control, passwords decrypted in memory only."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], keyring: Keyring) -> None:
        self._sessions = sessions
        self._keyring = keyring

    async def registrations(self) -> list[RegistrationConfig]:
        """Every registration of an active trunk, by trunk id. One whose password cannot be
        decrypted (a master key removed too soon) is left out, and logged without secrets.

        Raises:
            DirectoryUnavailable: the database cannot be read now.
        """
        try:
            async with self._sessions() as session:
                rows = (
                    await session.scalars(
                        select(TrunkRegistration)
                        .join(Trunk, Trunk.id == TrunkRegistration.trunk_id)
                        .where(Trunk.status == "active")
                        .order_by(TrunkRegistration.trunk_id)
                    )
                ).all()
        except Exception as exc:
            if transient_error(exc):
                raise DirectoryUnavailable(type(exc).__name__) from exc
            raise
        configs = []
        for row in rows:
            context = trunk_secret_context(row.trunk_id, REGISTRATION_PASSWORD)
            try:
                password = self._keyring.decrypt(row.password_enc, context)
            except SecretDecryptionError:
                logger.error(
                    "registration of trunk %s skipped: its password cannot be decrypted with "
                    "the current master key",
                    row.trunk_id,
                )
                continue
            configs.append(
                RegistrationConfig(
                    trunk_id=row.trunk_id,
                    registrar=row.registrar,
                    username=row.username,
                    password=password,
                    auth_username=row.auth_username,
                    domain=row.domain,
                    expires=row.expires,
                    outbound_proxy=row.outbound_proxy,
                    contact_user=row.contact_user,
                )
            )
        return configs

    async def set_registration_status(
        self,
        trunk_id: str,
        status: str,
        detail: str | None,
        registered_until: datetime | None,
        contact_address: str | None = None,
    ) -> None:
        """Record what call control last saw of a registration (``detail`` cut to its column,
        200 characters, a NUL in it replaced); nothing when the trunk or its registration is
        gone. ``unregistered`` or ``failed`` with a ``contact_address`` (the binding removed,
        or the one that failed) is stored only while the row shows that address, none, or a
        registration expired: every instance of a multi-instance installation (hosts sharing
        the database) registers the trunk at its own address and shares this one row, so one
        stopping or refused must not hide another's live binding (a compare-and-set, no row
        per instance).

        Raises:
            ValueError: ``status`` is not ``registered``, ``failed`` or ``unregistered``.
            DirectoryUnavailable: the database cannot be written now.
        """
        if status not in REPORTED_STATUSES:
            raise ValueError(f"not a registration status: {status!r}")
        statement = update(TrunkRegistration).where(TrunkRegistration.trunk_id == trunk_id)
        if status != "registered" and contact_address is not None:
            shown, until = TrunkRegistration.contact_address, TrunkRegistration.registered_until
            statement = statement.where(
                or_(shown.is_(None), shown == contact_address, until.is_(None), until < utcnow())
            )
        try:
            async with self._sessions() as session:
                await session.execute(
                    statement.values(
                        # the registrar's reason phrase as it sent it: made to fit its column
                        **fit_row(
                            REGISTRATIONS,
                            {
                                "status": status,
                                "status_detail": detail,
                                "registered_until": registered_until,
                                "contact_address": (
                                    contact_address if status == "registered" else None
                                ),
                                "updated_at": utcnow(),
                            },
                        )
                    )
                )
                await session.commit()
        except Exception as exc:
            if transient_error(exc):
                raise DirectoryUnavailable(type(exc).__name__) from exc
            raise
