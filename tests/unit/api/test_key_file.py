"""The master key file: written never through a planted file or link, durable once written;
followed by the keyring loaded from it."""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path

import pytest

from telepath.secrets import keyfile
from telepath.secrets.keyfile import key_file_lock, load_keyring, write_key_file
from telepath.secrets.keyring import (
    Keyring,
    SecretDecryptionError,
    encode_key,
    key_id,
    new_key,
    parse_keyring,
)

pytestmark = pytest.mark.unit


def test_a_world_readable_temp_file_already_there_never_receives_the_key(tmp_path: Path) -> None:
    """Someone who could create ``secret.tmp`` (0644) and keep it open must not read the key
    through it: the key goes to a file that is 0600 from its creation, never that one."""
    planted = tmp_path / "secret.tmp"
    planted.write_text("junk\n")
    planted.chmod(0o644)
    key = new_key()
    with planted.open("rb") as spy:
        write_key_file(tmp_path / "secret.key", (key,))
        spy.seek(0)
        seen = spy.read()
    assert encode_key(key).encode() not in seen
    if planted.exists():
        assert encode_key(key) not in planted.read_text()
    written = tmp_path / "secret.key"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert parse_keyring(written.read_text()).keys == (key,)


def test_a_symlink_named_like_the_temp_file_is_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere / "victim"
    target.write_text("victim\n")
    target.chmod(0o644)
    data = tmp_path / "data"
    data.mkdir()
    (data / "secret.tmp").symlink_to(target)
    key = new_key()
    write_key_file(data / "secret.key", (key,))
    assert target.read_text() == "victim\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    written = data / "secret.key"
    assert not written.is_symlink()
    assert stat.S_IMODE(written.lstat().st_mode) == 0o600
    assert parse_keyring(written.read_text()).keys == (key,)


def test_the_file_and_its_directory_are_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a power loss the file holds the new keys whole (synced before the rename) and the
    rename itself survives (the directory synced after it)."""
    path = tmp_path / "secret.key"
    path.write_text(encode_key(new_key()) + "\n")  # an older key file, replaced
    synced: list[tuple[bool, int, int]] = []  # (is a directory, its inode, secret.key's inode)
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        info = os.fstat(fd)
        synced.append((stat.S_ISDIR(info.st_mode), info.st_ino, path.stat().st_ino))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    key = new_key()
    write_key_file(path, (key,))
    final = path.stat().st_ino
    files = [s for s in synced if not s[0]]
    directories = [s for s in synced if s[0]]
    # The file: synced while it was not yet secret.key (before the rename) and became it.
    assert [ino for _, ino, _ in files] == [final]
    assert files[0][2] != final
    # The directory: synced after the rename.
    assert [(ino, current) for _, ino, current in directories] == [(tmp_path.stat().st_ino, final)]
    assert parse_keyring(path.read_text()).keys == (key,)


# --- a keyring loaded from the file follows it --------------------------------------------------


def test_a_keyring_from_the_key_file_follows_a_rotation(tmp_path: Path) -> None:
    """What ``telepath secrets rotate`` writes is used at the next encryption, and a value
    sealed with a key the keyring does not know yet is opened after one look at the file."""
    ring, _ = load_keyring("", tmp_path)
    old = ring.keys[0]
    new = new_key()
    sealed_elsewhere = Keyring((new,)).encrypt("v", "c")
    write_key_file(tmp_path / "secret.key", (new, old))
    assert ring.decrypt(sealed_elsewhere, "c") == "v"  # unknown key id: the file read again
    assert ring.keys == (new, old)
    write_key_file(tmp_path / "secret.key", (new,))
    assert ring.encrypt("w", "c").startswith(f"v1:{key_id(new)}:")
    assert list(ring.keys) == [new]


def test_the_file_is_read_again_only_when_rewritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ring, _ = load_keyring("", tmp_path)
    reads: list[Path] = []
    real = keyfile.read_key_file

    def counting(path: Path) -> tuple[bytes, ...]:
        reads.append(path)
        return real(path)

    monkeypatch.setattr(keyfile, "read_key_file", counting)
    for _ in range(3):
        ring.decrypt(ring.encrypt("v", "c"), "c")
    assert reads == []
    write_key_file(tmp_path / "secret.key", (new_key(), *ring.keys))
    ring.encrypt("v", "c")
    ring.encrypt("v", "c")
    assert len(reads) == 1


def test_keys_from_the_setting_never_follow_the_file(tmp_path: Path) -> None:
    setting = new_key()
    write_key_file(tmp_path / "secret.key", (new_key(),))
    ring, generated = load_keyring(encode_key(setting), tmp_path)
    assert not generated
    write_key_file(tmp_path / "secret.key", (new_key(),))
    assert ring.encrypt("v", "c").startswith(f"v1:{key_id(setting)}:")
    with pytest.raises(SecretDecryptionError):
        ring.decrypt(Keyring((new_key(),)).encrypt("v", "c"), "c")
    assert ring.keys == (setting,)


def test_an_unreadable_file_keeps_the_keys_in_use(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file being edited by hand (not valid) or gone: the keys in use stay, said once."""
    ring, _ = load_keyring("", tmp_path)
    key = ring.keys[0]
    path = tmp_path / "secret.key"
    path.write_text("not a key\n")
    with caplog.at_level(logging.WARNING, logger="telepath"):
        for _ in range(3):
            assert ring.encrypt("v", "c").startswith(f"v1:{key_id(key)}:")
        path.unlink()
        ring.encrypt("v", "c")
    assert len([r for r in caplog.records if "keeping the master keys" in r.getMessage()]) == 1
    newer = new_key()
    write_key_file(path, (newer, key))
    assert ring.encrypt("v", "c").startswith(f"v1:{key_id(newer)}:")


def test_a_key_file_another_process_created_meanwhile_is_kept_and_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes starting on a new data dir both find no key file: the second to write
    must not replace the first's (whose key may already seal secrets) but load it."""
    theirs = new_key()
    real_new_key = keyfile.new_key

    def racing_new_key() -> bytes:
        write_key_file(tmp_path / "secret.key", (theirs,))  # the other process, meanwhile
        return real_new_key()

    monkeypatch.setattr(keyfile, "new_key", racing_new_key)  # the name load_keyring calls
    ring, generated = load_keyring("", tmp_path)
    assert ring.keys == (theirs,)
    assert generated is False
    assert parse_keyring((tmp_path / "secret.key").read_text()).keys == (theirs,)
    assert [p.name for p in tmp_path.iterdir()] == ["secret.key"]  # no temporary file left


def test_a_new_key_file_is_created_whole_and_private(tmp_path: Path) -> None:
    ring, generated = load_keyring("", tmp_path / "data")
    written = tmp_path / "data" / "secret.key"
    assert generated is True
    assert parse_keyring(written.read_text()).keys == ring.keys
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert [p.name for p in written.parent.iterdir()] == ["secret.key"]
    again, generated_again = load_keyring("", tmp_path / "data")
    assert (again.keys, generated_again) == (ring.keys, False)


def test_the_key_file_lock_admits_one_holder_at_a_time(tmp_path: Path) -> None:
    with keyfile.key_file_lock(tmp_path):
        with pytest.raises(keyfile.KeyFileBusy, match="another `telepath secrets rotate`"):
            with keyfile.key_file_lock(tmp_path):
                pass  # pragma: no cover - never entered
    with keyfile.key_file_lock(tmp_path):  # released
        pass


@pytest.mark.parametrize("code", [errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS])
def test_a_data_dir_without_hard_links_still_gets_its_key_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """Some volumes refuse hard links (vfat, some FUSE and network file systems): the first
    start there must still create the key file (renamed into place, as before links were
    used), not fail."""

    def no_links(src: object, dst: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "link", no_links)
    ring, generated = load_keyring("", tmp_path)
    assert generated is True
    assert parse_keyring((tmp_path / "secret.key").read_text()).keys == ring.keys
    assert stat.S_IMODE((tmp_path / "secret.key").stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret.key"]


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user takes root")
def test_a_rotation_run_as_root_leaves_the_key_file_to_its_owner(tmp_path: Path) -> None:
    """``sudo telepath secrets rotate`` next to a service running as its own user: the new
    file was root's (0600), which the service could no longer read — it went on encrypting
    with the old key while everything had been re-encrypted under the new one. The file and
    the lock keep the key file's owner."""
    service = (4242, 4343)
    path = tmp_path / "secret.key"
    path.write_text(encode_key(new_key()) + "\n")
    os.chown(path, *service)
    key = new_key()
    write_key_file(path, (key,))
    assert (path.stat().st_uid, path.stat().st_gid) == service
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with key_file_lock(tmp_path):
        pass
    lock = tmp_path / "secret.key.lock"
    assert (lock.stat().st_uid, lock.stat().st_gid) == service
