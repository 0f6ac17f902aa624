"""The master key file, ``<data dir>/secret.key``: one base64 key per line, newest first.

Used when ``TELEPATH_SECRET_KEY`` is unset: generated with mode 0600 on first start, rewritten
by ``telepath secrets rotate`` (a new key first, the older ones kept to decrypt) and ``telepath
secrets prune`` (the older ones dropped). A keyring loaded from it follows it (``KeyFile``):
a running service sees a rotation at its next encryption, or at the first value sealed with a
key it does not know, for the cost of a ``stat``. Keys from ``TELEPATH_SECRET_KEY`` never
change under a running service: it must be restarted with the new value.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from telepath.errors import ConfigurationError, TelepathError
from telepath.secrets.keyring import Keyring, encode_key, new_key, parse_keyring

__all__ = [
    "KEY_FILE_NAME",
    "LOCK_FILE_NAME",
    "KeyFile",
    "KeyFileBusy",
    "create_key_file",
    "key_file",
    "key_file_lock",
    "load_keyring",
    "new_key",
    "read_key_file",
    "write_key_file",
]

logger = logging.getLogger("telepath")

KEY_FILE_NAME = "secret.key"
LOCK_FILE_NAME = "secret.key.lock"


class KeyFileBusy(TelepathError):
    """Another rotation or pruning holds the key file's lock."""


# What tells a rewritten file apart: a rewrite is a new file (inode) renamed into place.
Stamp = tuple[int, int, int, int]


def _stamp(path: Path) -> Stamp:
    info = path.stat()
    return (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def read_key_file(path: Path) -> tuple[bytes, ...]:
    """The keys of the file at ``path``, newest first.

    Raises:
        ConfigurationError: the file is not ASCII text, holds no key, or one that is not one
            (the file named, never its content: the CLI prints it as a configuration error,
            not a traceback).
        OSError: it cannot be read.
    """
    try:
        text = path.read_text(encoding="ascii")
    except UnicodeDecodeError:
        # a byte-order mark or any non-ASCII byte; the error's text would show the content
        raise ConfigurationError(
            f"{path}: not ASCII text (a byte-order mark or a character past ASCII?)"
        ) from None
    try:
        return parse_keyring(text).keys
    except ConfigurationError as exc:
        raise ConfigurationError(f"{path}: {exc}") from None


class KeyFile:
    """The key file as a keyring's source: its keys again whenever it was rewritten."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: Stamp | None = None

    def load(self) -> tuple[bytes, ...]:
        """Read the keys now, remembering which version of the file they came from."""
        stamp = _stamp(self.path)  # before reading: a rewrite meanwhile is seen next time
        keys = read_key_file(self.path)
        self._stamp = stamp
        return keys

    def changed(self) -> tuple[bytes, ...] | None:
        """The keys, if the file was rewritten since they were last read; None otherwise, or
        if it cannot be read now (logged once, until it can be read again)."""
        try:
            stamp = _stamp(self.path)
            if stamp == self._stamp:
                return None
            keys = read_key_file(self.path)
        except (OSError, ConfigurationError) as exc:
            if self._stamp is not None:
                self._stamp = None
                logger.warning("cannot read %s, keeping the master keys in use: %s", self.path, exc)
            return None
        self._stamp = stamp
        logger.info("master key file %s changed: %d key(s) now", self.path, len(keys))
        return keys


def key_file(data_dir: Path) -> Path:
    """Where the generated keyring lives when ``TELEPATH_SECRET_KEY`` is unset."""
    return data_dir / KEY_FILE_NAME


def load_keyring(secret_key_setting: str, data_dir: Path) -> tuple[Keyring, bool]:
    """Load the keyring from the setting, or else the key file (followed: ``KeyFile``),
    generating the file if needed.

    Returns:
        The keyring, and whether a new key file was just generated (the caller says so).
    """
    if secret_key_setting.strip():
        return parse_keyring(secret_key_setting), False
    source = KeyFile(key_file(data_dir))
    generated = False
    if not source.path.exists():
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Two processes starting together on a new data dir both get here: one creates the
        # file, the other then loads that one (never overwriting a key already in use).
        generated = create_key_file(source.path, (new_key(),))
    return Keyring(source.load(), source), generated


def write_key_file(path: Path, keys: tuple[bytes, ...]) -> None:
    """Write ``keys`` (newest first) to ``path`` atomically and durably, mode 0600.

    The keys go to a new file of the same directory, created exclusively (``mkstemp``: never a
    file or link already there, 0600 from its creation), synced, renamed over ``path``; the
    directory is synced after, so a power loss leaves the old file or the new one, whole.
    """
    _put_key_file(path, keys, replace=True)


def create_key_file(path: Path, keys: tuple[bytes, ...]) -> bool:
    """Write ``keys`` to ``path`` as ``write_key_file`` does, but only if there is no file
    there yet (a hard link of the synced temporary file: it fails if the name exists).

    Returns:
        Whether this call created it (False: another process did first; its keys stand).
    """
    return _put_key_file(path, keys, replace=False)


# What os.link raises where the file system has no hard links.
_NO_HARD_LINKS = frozenset(
    {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EXDEV}
)


def _owner_of(path: Path) -> tuple[int, int] | None:
    """``path``'s (uid, gid) when it is another user's than ours, else None."""
    try:
        info = path.stat()
    except OSError:
        return None
    owner = (info.st_uid, info.st_gid)
    return None if owner == (os.geteuid(), os.getegid()) else owner


def _give(fd: int, owner: tuple[int, int] | None) -> None:
    """Give the file open as ``fd`` to ``owner`` — a rotation run as root (``sudo telepath
    secrets rotate``) beside a service running as its own user: the service must still read
    the key file (0600), or it goes on encrypting with the old key and, restarted, reads none.
    Only root may; anyone else keeps the file as before."""
    if owner is not None:
        with contextlib.suppress(PermissionError):
            os.fchown(fd, *owner)


def _put_key_file(path: Path, keys: tuple[bytes, ...], *, replace: bool) -> bool:
    fd, tmp = tempfile.mkstemp(prefix=".secret-", suffix=".tmp", dir=path.parent)
    try:
        _give(fd, _owner_of(path) if replace else None)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write("".join(encode_key(k) + "\n" for k in keys))
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in _NO_HARD_LINKS:
                    raise
                # A volume without hard links (vfat, some FUSE and network file systems):
                # renamed into place as before, exclusive only against a file already there.
                if path.exists():
                    return False
                os.replace(tmp, path)
            finally:
                Path(tmp).unlink(missing_ok=True)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _sync_directory(path.parent)
    return True


@contextmanager
def key_file_lock(data_dir: Path) -> Iterator[None]:
    """Hold the data dir's key-file lock (``secret.key.lock``, ``flock``) for a rotation or a
    pruning: a second one started meanwhile is refused instead of interleaving its reads and
    writes of the key file with the first's.

    Raises:
        KeyFileBusy: another process holds it.
    """
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK_FILE_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        _give(fd, _owner_of(data_dir / KEY_FILE_NAME))  # the next rotation may be the service's
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise KeyFileBusy(
                f"another `telepath secrets rotate` or `prune` is running on {data_dir}: "
                "wait for it to finish, then run this again"
            ) from None
        yield
    finally:
        os.close(fd)  # releases the lock


def _sync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
