"""Master-key rotation: re-encrypt every stored secret under the keyring's active key."""

from __future__ import annotations

from sqlalchemy import select

from telepath.config import Settings
from telepath.db.engine import make_engine, migrate, sessionmaker_for
from telepath.db.models import (
    REGISTRATION_PASSWORD,
    TRUNK_SECRET_COLUMNS,
    WebhookEndpoint,
    trunk_secret_context,
    webhook_secret_context,
)
from telepath.db.repository import TrunkRepository
from telepath.secrets.keyring import (
    Keyring,
    key_file,
    load_keyring,
    new_key,
    write_key_file,
)


async def reencrypt_all(settings: Settings, keyring: Keyring) -> int:
    """Re-seal every trunk secret (registration passwords included) and webhook secret not
    under ``keyring``'s active key; count them."""
    engine = make_engine(settings.effective_database_url)
    try:
        await migrate(engine)
        async with sessionmaker_for(engine)() as session:
            count = 0
            for trunk in await TrunkRepository(session).all_trunks():
                for column, attr in TRUNK_SECRET_COLUMNS.items():
                    envelope = getattr(trunk, attr)
                    if envelope and keyring.needs_reencryption(envelope):
                        context = trunk_secret_context(trunk.id, column)
                        setattr(
                            trunk,
                            attr,
                            keyring.encrypt(keyring.decrypt(envelope, context), context),
                        )
                        count += 1
                registration = trunk.registration  # loaded with the trunk
                if registration and keyring.needs_reencryption(registration.password_enc):
                    context = trunk_secret_context(trunk.id, REGISTRATION_PASSWORD)
                    registration.password_enc = keyring.encrypt(
                        keyring.decrypt(registration.password_enc, context), context
                    )
                    count += 1
            for endpoint in (await session.scalars(select(WebhookEndpoint))).all():
                if keyring.needs_reencryption(endpoint.secret_enc):
                    context = webhook_secret_context(endpoint.id)
                    endpoint.secret_enc = keyring.encrypt(
                        keyring.decrypt(endpoint.secret_enc, context), context
                    )
                    count += 1
            await session.commit()
            return count
    finally:
        await engine.dispose()


async def rotate_master_key(settings: Settings) -> str:
    """Rotate the master key and return a human-readable summary."""
    if settings.secret_key.strip():
        keyring, _ = load_keyring(settings.secret_key, settings.data_dir)
        count = await reencrypt_all(settings, keyring)
        return (
            f"Re-encrypted {count} secret(s) under key {keyring.active_kid}. "
            "Older keys can now be removed from TELEPATH_SECRET_KEY."
        )
    old, _ = load_keyring("", settings.data_dir)
    path = key_file(settings.data_dir)
    rotated = Keyring((new_key(), *old.keys))
    # Write both keys first: a crash mid-way leaves every secret decryptable.
    write_key_file(path, rotated.keys)
    count = await reencrypt_all(settings, rotated)
    write_key_file(path, rotated.keys[:1])
    return f"Re-encrypted {count} secret(s) under new key {rotated.active_kid}; old key removed."
