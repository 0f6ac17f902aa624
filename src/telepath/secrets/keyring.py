"""Secrets at rest: AES-256-GCM under a master keyring, with key ids for rotation.

A *keyring* is an ordered list of 32-byte master keys; the first one encrypts, all of them decrypt.
Each ciphertext names the key that sealed it (``v1:<kid>:<base64(nonce || ciphertext || tag)>``),
so ``telepath secrets rotate`` can put a new key first and re-encrypt every stored secret, and
``telepath secrets prune`` drop the older keys afterwards. The associated data binds a
ciphertext to its row and column, so a value copied into another trunk's row does not decrypt.

A keyring may follow a *source* (the key file, ``telepath.secrets.keyfile``): before it
encrypts, and before it gives up on a key id it does not know, it takes the source's keys if
they changed, so a running service picks up a rotation without a restart.

Why hand-written: the ``cryptography`` AEAD primitive does the cryptography; this module is only
the small envelope format, which no library provides in this shape.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from telepath.errors import ConfigurationError, TelepathError

KEY_LENGTH = 32
NONCE_LENGTH = 12
ENVELOPE_VERSION = "v1"


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


class KeySource(Protocol):
    """Where a keyring's keys come from when they may change while it is in use."""

    def changed(self) -> tuple[bytes, ...] | None:
        """The keys, if they changed since the last call; None if they did not (or cannot be
        read now: the keys in use stay)."""


class Keyring:
    """Ordered master keys: ``keys[0]`` encrypts, every key decrypts; following ``source``
    (see the module's description) when there is one."""

    def __init__(self, keys: tuple[bytes, ...], source: KeySource | None = None) -> None:
        if not keys:
            raise ConfigurationError("the keyring is empty")
        self._keys = keys
        self._source = source

    def __repr__(self) -> str:  # never the keys themselves
        return f"Keyring(active_kid={self.active_kid!r}, keys={len(self._keys)})"

    @property
    def keys(self) -> tuple[bytes, ...]:
        """The keys now, newest first."""
        return self._keys

    @property
    def active_kid(self) -> str:
        """The key id new ciphertexts are sealed with."""
        return key_id(self._keys[0])

    def refresh(self) -> bool:
        """Take the source's keys if they changed; whether they did."""
        keys = self._source.changed() if self._source is not None else None
        if not keys or keys == self._keys:
            return False
        self._keys = keys
        return True

    def encrypt(self, plaintext: str, context: str) -> str:
        """Seal ``plaintext``, binding ``context`` (e.g. ``"trunk:conn_x:openai_api_key"``)."""
        self.refresh()
        key = self._keys[0]
        nonce = secrets.token_bytes(NONCE_LENGTH)
        sealed = AESGCM(key).encrypt(nonce, plaintext.encode("utf-8"), context.encode())
        body = base64.b64encode(nonce + sealed).decode("ascii")
        return f"{ENVELOPE_VERSION}:{key_id(key)}:{body}"

    def decrypt(self, envelope: str, context: str) -> str:
        """Open an envelope sealed by any key of the ring, for the same ``context``."""
        try:
            version, kid, body = envelope.split(":", 2)
        except ValueError:
            raise SecretDecryptionError("malformed secret envelope") from None
        if version != ENVELOPE_VERSION:
            raise SecretDecryptionError("unknown secret envelope version")
        key = self._key(kid)
        if key is None and self.refresh():
            key = self._key(kid)
        if key is None:
            raise SecretDecryptionError("secret sealed with a key that is not in the keyring")
        try:
            raw = base64.b64decode(body, validate=True)
            plain = AESGCM(key).decrypt(raw[:NONCE_LENGTH], raw[NONCE_LENGTH:], context.encode())
        except (binascii.Error, ValueError, InvalidTag):
            raise SecretDecryptionError("secret failed authentication") from None
        return plain.decode("utf-8")

    def _key(self, kid: str) -> bytes | None:
        return next((k for k in self._keys if key_id(k) == kid), None)

    def needs_reencryption(self, envelope: str) -> bool:
        """Whether ``envelope`` was sealed with a key other than the active one."""
        parts = envelope.split(":", 2)
        return len(parts) != 3 or parts[1] != self.active_kid


def parse_keyring(text: str) -> Keyring:
    """Parse comma- or newline-separated base64 keys, newest first."""
    items = [t for t in text.replace(",", "\n").splitlines() if t.strip()]
    return Keyring(tuple(_decode_key(t) for t in items))
