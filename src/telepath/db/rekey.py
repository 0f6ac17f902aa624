"""Master-key rotation: re-encrypt every stored secret under a new key, then drop the old ones.

With the key file (``TELEPATH_SECRET_KEY`` unset), ``rotate`` writes the new key first and
keeps the older ones in the file, decrypt-only: running services follow the file (see
``telepath.secrets.keyfile``), so what they seal from then on uses the new key, and what one
sealed with an older key meanwhile still decrypts. ``prune`` re-encrypts whatever is still
under an older key and only then removes those keys from the file.

With ``TELEPATH_SECRET_KEY`` nothing is written: the variable is the operator's to change.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from telepath.config import Settings
from telepath.db.engine import make_engine, migrate_or_refuse
from telepath.db.reseal import Resealed, reseal_all
from telepath.errors import TelepathError
from telepath.secrets.keyfile import (
    KeyFileBusy,
    key_file,
    key_file_lock,
    load_keyring,
    read_key_file,
    write_key_file,
)
from telepath.secrets.keyring import Keyring, new_key, parse_keyring


class RekeyError(TelepathError):
    """Rotation or pruning could not finish; the message says what is left and what to do."""


async def reencrypt_all(settings: Settings, keyring: Keyring) -> Resealed:
    """Re-encrypt every stored secret not under ``keyring``'s active key (compare-and-set per
    value: ``telepath.db.reseal``)."""
    engine = make_engine(settings.effective_database_url)
    try:
        await migrate_or_refuse(engine)
        return await reseal_all(engine, keyring)
    finally:
        await engine.dispose()


@contextmanager
def _locked(settings: Settings) -> Iterator[None]:
    """One rotation or pruning of a key file at a time (``key_file_lock``)."""
    try:
        with key_file_lock(settings.data_dir):
            yield
    except KeyFileBusy as exc:
        raise RekeyError(str(exc)) from None


def _refuse(done: str, result: Resealed, then: str) -> RekeyError:
    listed = "\n  ".join(result.failed)
    return RekeyError(
        f"{done}, but {len(result.failed)} secret(s) could not be decrypted with any of the keys:"
        f"\n  {listed}\nSet them again through the API; {then}"
    )


async def _reencrypt_under_setting(settings: Settings, done: str, next_step: str) -> str:
    """Re-encrypt under ``TELEPATH_SECRET_KEY``'s first key; ``done`` and ``next_step`` name
    ``{count}`` and ``{kid}``. Raises RekeyError when some secrets could not be."""
    keyring = parse_keyring(settings.secret_key)
    result = await reencrypt_all(settings, keyring)
    said = done.format(count=result.count, kid=keyring.active_kid)
    if result.failed:
        raise _refuse(said, result, "keep every key in TELEPATH_SECRET_KEY meanwhile.")
    return f"{said}. {next_step.format(count=result.count, kid=keyring.active_kid)}"


async def rotate_master_key(settings: Settings) -> str:
    """Rotate the master key and return a human-readable summary.

    Raises:
        RekeyError: some secrets could not be re-encrypted (every key kept).
    """
    if settings.secret_key.strip():
        return await _reencrypt_under_setting(
            settings,
            "Re-encrypted {count} secret(s) under key {kid}",
            "Run `telepath secrets prune` (same TELEPATH_SECRET_KEY) to check nothing is left "
            "under the older keys, then remove them from TELEPATH_SECRET_KEY.",
        )
    with _locked(settings):
        return await _rotate_key_file(settings)


async def _reachable(settings: Settings) -> None:
    """The database answers (and is migrated), or :class:`DatabaseUnavailable` is raised."""
    engine = make_engine(settings.effective_database_url)
    try:
        await migrate_or_refuse(engine)
    finally:
        await engine.dispose()


async def _rotate_key_file(settings: Settings) -> str:
    path = key_file(settings.data_dir)
    old, _ = load_keyring("", settings.data_dir)
    # Before the key file changes: a database that cannot be reached left a new key in it at
    # every try, which running services then sealed with.
    await _reachable(settings)
    rotated = Keyring((new_key(), *old.keys))
    # From now on running services seal with the new key; the older ones stay to decrypt.
    write_key_file(path, rotated.keys)
    result = await reencrypt_all(settings, rotated)
    done = f"Re-encrypted {result.count} secret(s) under new key {rotated.active_kid}"
    if result.failed:
        raise _refuse(done, result, f"the older keys stay in {path}.")
    return (
        f"{done}. The older key(s) stay in {path} to decrypt what a running service may still "
        "have sealed with them: `telepath secrets prune` re-encrypts that and removes them."
    )


async def prune_master_keys(settings: Settings) -> str:
    """Re-encrypt what is still under an older key, then drop the older keys from the key file
    (with ``TELEPATH_SECRET_KEY``: say whether they can be dropped from it).

    Raises:
        RekeyError: some secrets could not be re-encrypted (no key removed), or there is no
            key file.
    """
    if settings.secret_key.strip():
        return await _reencrypt_under_setting(
            settings,
            "Re-encrypted {count} secret(s) still under older keys",
            "Every secret is under key {kid}: the other keys can be removed from "
            "TELEPATH_SECRET_KEY (then restart the services with it).",
        )
    with _locked(settings):
        return await _prune_key_file(settings)


async def _prune_key_file(settings: Settings) -> str:
    path = key_file(settings.data_dir)
    if not path.exists():
        raise RekeyError(f"no key file at {path}: nothing to prune")
    keyring = Keyring(read_key_file(path))
    if len(keyring.keys) == 1:
        return f"Nothing to prune: {path} holds one key ({keyring.active_kid})."
    result = await reencrypt_all(settings, keyring)
    done = f"Re-encrypted {result.count} secret(s) still under older keys"
    if result.failed:
        raise _refuse(done, result, f"no key was removed from {path}.")
    count = result.count + await _drop_older_keys(settings, path, keyring)
    return (
        f"Re-encrypted {count} secret(s) still under older keys; removed "
        f"{len(keyring.keys) - 1} older key(s) from {path}."
    )


async def _drop_older_keys(settings: Settings, path: Path, keyring: Keyring) -> int:
    """Leave only the active key in the file, then re-encrypt once more what a service that
    had not yet seen the rotation may have sealed with an older key meanwhile (``keyring``
    still has it); put the older keys back if that fails, or raises (the database gone,
    Ctrl-C): such a value could otherwise be opened by no one once this process exits."""
    if read_key_file(path) != keyring.keys:
        raise RekeyError(f"{path} changed meanwhile (another rotation?): run prune again")
    write_key_file(path, keyring.keys[:1])
    try:
        late = await reencrypt_all(settings, keyring)
    except BaseException:
        write_key_file(path, keyring.keys)
        raise
    if late.failed:
        write_key_file(path, keyring.keys)
        raise _refuse("Re-encrypted what was left", late, f"the older keys are back in {path}.")
    return late.count
