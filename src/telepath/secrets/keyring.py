"""Secrets at rest: AES-256-GCM under a master keyring, with key ids for rotation.

A *keyring* is an ordered list of 32-byte master keys; the first one encrypts, all of them decrypt.
Each ciphertext names the key that sealed it (``v1:<kid>:<base64(nonce || ciphertext || tag)>``),
so ``telepath secrets rotate`` can put a new key first, re-encrypt every stored secret, and drop
the old key afterwards. The associated data binds a ciphertext to its row and column, so a value
copied into another trunk's row does not decrypt.

The keyring comes from ``TELEPATH_SECRET_KEY`` (comma-separated base64 keys, newest first) or, when
that is unset, from ``<data_dir>/secret.key`` (one base64 key per line), generated with mode 0600
on first start.

Why hand-written: the ``cryptography`` AEAD primitive does the cryptography; this module is only
the small envelope format and keyring file handling, which no library provides in this shape.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from telepath.errors import ConfigurationError, TelepathError

KEY_LENGTH = 32
NONCE_LENGTH = 12
ENVELOPE_VERSION = "v1"
KEY_FILE_NAME = "secret.key"


class SecretDecryptionError(TelepathError):
    """A stored secret could not be decrypted (unknown key id, tampering, wrong row)."""


def key_id(key: bytes) -> str:
    """Return the short public identifier of a master key (not secret: a hash prefix)."""
    return hashlib.sha256(b"telepath-kid:" + key).hexdigest()[:8]


def _decode_key(text: str) -> bytes:
    text = text.strip()
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ConfigurationError("a master key is not valid base64") from None
    if len(raw) != KEY_LENGTH:
        raise ConfigurationError(f"a master key must decode to {KEY_LENGTH} bytes")
    return raw


def encode_key(key: bytes) -> str:
    """Return the text form of a master key (urlsafe base64)."""
    return base64.urlsafe_b64encode(key).decode("ascii")


def new_key() -> bytes:
    """Return a fresh random 256-bit master key."""
    return secrets.token_bytes(KEY_LENGTH)


@dataclass(frozen=True)
class Keyring:
    """Ordered master keys: ``keys[0]`` encrypts, every key decrypts."""

    keys: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise ConfigurationError("the keyring is empty")

    @property
    def active_kid(self) -> str:
        """The key id new ciphertexts are sealed with."""
        return key_id(self.keys[0])

    def encrypt(self, plaintext: str, context: str) -> str:
        """Seal ``plaintext``, binding ``context`` (e.g. ``"trunk:conn_x:openai_api_key"``)."""
        nonce = secrets.token_bytes(NONCE_LENGTH)
        sealed = AESGCM(self.keys[0]).encrypt(nonce, plaintext.encode("utf-8"), context.encode())
        body = base64.b64encode(nonce + sealed).decode("ascii")
        return f"{ENVELOPE_VERSION}:{self.active_kid}:{body}"

    def decrypt(self, envelope: str, context: str) -> str:
        """Open an envelope sealed by any key of the ring, for the same ``context``."""
        try:
            version, kid, body = envelope.split(":", 2)
        except ValueError:
            raise SecretDecryptionError("malformed secret envelope") from None
        if version != ENVELOPE_VERSION:
            raise SecretDecryptionError("unknown secret envelope version")
        for key in self.keys:
            if key_id(key) == kid:
                break
        else:
            raise SecretDecryptionError("secret sealed with a key that is not in the keyring")
        try:
            raw = base64.b64decode(body, validate=True)
            plain = AESGCM(key).decrypt(raw[:NONCE_LENGTH], raw[NONCE_LENGTH:], context.encode())
        except (binascii.Error, ValueError, InvalidTag):
            raise SecretDecryptionError("secret failed authentication") from None
        return plain.decode("utf-8")

    def needs_reencryption(self, envelope: str) -> bool:
        """Whether ``envelope`` was sealed with a key other than the active one."""
        parts = envelope.split(":", 2)
        return len(parts) != 3 or parts[1] != self.active_kid


def parse_keyring(text: str) -> Keyring:
    """Parse comma- or newline-separated base64 keys, newest first."""
    items = [t for t in text.replace(",", "\n").splitlines() if t.strip()]
    return Keyring(tuple(_decode_key(t) for t in items))


def key_file(data_dir: Path) -> Path:
    """Where the generated keyring lives when ``TELEPATH_SECRET_KEY`` is unset."""
    return data_dir / KEY_FILE_NAME


def load_keyring(secret_key_setting: str, data_dir: Path) -> tuple[Keyring, bool]:
    """Load the keyring from the setting or the key file, generating the file if needed.

    Returns:
        The keyring, and whether a new key file was just generated (the caller says so).
    """
    if secret_key_setting.strip():
        return parse_keyring(secret_key_setting), False
    path = key_file(data_dir)
    if path.exists():
        return parse_keyring(path.read_text(encoding="ascii")), False
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_key_file(path, (new_key(),))
    return parse_keyring(path.read_text(encoding="ascii")), True


def write_key_file(path: Path, keys: tuple[bytes, ...]) -> None:
    """Write ``keys`` (newest first) to ``path`` atomically and durably, mode 0600.

    The keys go to a new file of the same directory, created exclusively (``mkstemp``: never a
    file or link already there, 0600 from its creation), synced, renamed over ``path``; the
    directory is synced after, so a power loss leaves the old file or the new one, whole.
    """
    fd, tmp = tempfile.mkstemp(prefix=".secret-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write("".join(encode_key(k) + "\n" for k in keys))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _sync_directory(path.parent)


def _sync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
