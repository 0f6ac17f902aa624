"""Master-key rotation: re-encrypt every stored secret under the keyring's active key."""

from __future__ import annotations

from telepath.config import Settings
from telepath.db.engine import make_engine, migrate
from telepath.db.reseal import reseal, stored_secrets
from telepath.secrets.keyring import (
    Keyring,
    key_file,
    load_keyring,
    new_key,
    write_key_file,
)


async def reencrypt_all(settings: Settings, keyring: Keyring) -> int:
    """Re-seal every trunk secret (registration passwords included) and webhook secret not
    under ``keyring``'s active key, each by compare-and-set (``telepath.db.reseal``); count
    those written."""
    engine = make_engine(settings.effective_database_url)
    try:
        await migrate(engine)
        count = 0
        for secret in await stored_secrets(engine):
            count += await reseal(engine, keyring, secret)
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
