"""Re-encrypting stored secrets under a keyring's active key, one compare-and-set per value.

Each value is written back only if it is still the one read (``UPDATE … WHERE id = :id AND
col = :old``), in a short transaction of its own. A credential the API changed meanwhile (a
leaked provider key replaced) is never overwritten by the re-encrypted old one: it is read
again and re-encrypted if it still needs it; a row deleted meanwhile is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import InstrumentedAttribute

from telepath.db.engine import sessionmaker_for
from telepath.db.models import (
    REGISTRATION_PASSWORD,
    TRUNK_SECRET_COLUMNS,
    Trunk,
    TrunkRegistration,
    WebhookEndpoint,
    trunk_secret_context,
    webhook_secret_context,
)
from telepath.db.repository import TrunkRepository
from telepath.errors import TelepathError
from telepath.secrets.keyring import Keyring

#: Compare-and-set attempts for one value before giving up: each retry needs another writer to
#: have changed that very value meanwhile.
MAX_ATTEMPTS = 5


@dataclass
class Resealed:
    """What a pass over every stored secret did."""

    count: int = 0  # values re-encrypted
    failed: list[str] = field(default_factory=list)  # "<context>: <why>", never a secret


@dataclass(frozen=True)
class StoredSecret:
    """One encrypted value as read: where it is, what it is bound to."""

    column: InstrumentedAttribute[Any]  # e.g. Trunk.openai_api_key_enc
    key: InstrumentedAttribute[str]  # the row's primary key column
    row_id: str
    context: str
    envelope: str


async def stored_secrets(engine: AsyncEngine) -> list[StoredSecret]:
    """Every encrypted value: trunk secrets, registration passwords, webhook signing secrets."""
    found: list[StoredSecret] = []
    async with sessionmaker_for(engine)() as session:
        for trunk in await TrunkRepository(session).all_trunks():
            for column, attr in TRUNK_SECRET_COLUMNS.items():
                envelope = getattr(trunk, attr)
                if envelope:
                    context = trunk_secret_context(trunk.id, column)
                    found.append(
                        StoredSecret(getattr(Trunk, attr), Trunk.id, trunk.id, context, envelope)
                    )
            if trunk.registration is not None:  # loaded with the trunk
                found.append(
                    StoredSecret(
                        TrunkRegistration.password_enc,
                        TrunkRegistration.trunk_id,
                        trunk.id,
                        trunk_secret_context(trunk.id, REGISTRATION_PASSWORD),
                        trunk.registration.password_enc,
                    )
                )
        for endpoint in (await session.scalars(select(WebhookEndpoint))).all():
            found.append(
                StoredSecret(
                    WebhookEndpoint.secret_enc,
                    WebhookEndpoint.id,
                    endpoint.id,
                    webhook_secret_context(endpoint.id),
                    endpoint.secret_enc,
                )
            )
    return found


async def reseal(engine: AsyncEngine, keyring: Keyring, secret: StoredSecret) -> bool:
    """Re-encrypt one value under ``keyring``'s active key unless it already is (or is gone);
    whether it was written.

    Raises:
        SecretDecryptionError: the value cannot be decrypted with ``keyring``.
        TelepathError: the value kept changing under every attempt.
    """
    envelope: str | None = secret.envelope
    for _ in range(MAX_ATTEMPTS):
        if not envelope or not keyring.needs_reencryption(envelope):
            return False
        sealed = keyring.encrypt(keyring.decrypt(envelope, secret.context), secret.context)
        async with engine.begin() as conn:
            result = await conn.execute(
                update(secret.column.class_)
                .where(secret.key == secret.row_id, secret.column == envelope)
                .values({secret.column: sealed})
            )
            if result.rowcount == 1:
                return True
            envelope = await conn.scalar(select(secret.column).where(secret.key == secret.row_id))
    raise TelepathError(f"{secret.context} kept changing during re-encryption: run it again")


async def reseal_all(engine: AsyncEngine, keyring: Keyring) -> Resealed:
    """Re-encrypt every stored value not under ``keyring``'s active key; one that cannot be
    (not decryptable with ``keyring``, or changing all the time) is listed, not fatal."""
    result = Resealed()
    for secret in await stored_secrets(engine):
        try:
            result.count += await reseal(engine, keyring, secret)
        except TelepathError as exc:  # SecretDecryptionError included
            result.failed.append(f"{secret.context}: {exc}")
    return result
