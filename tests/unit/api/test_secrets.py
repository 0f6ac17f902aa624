"""Keyring (AES-256-GCM envelopes), digest HA1, tokens."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from telepath.errors import ConfigurationError
from telepath.secrets.digest import compute_ha1
from telepath.secrets.keyfile import load_keyring
from telepath.secrets.keyring import (
    Keyring,
    SecretDecryptionError,
    encode_key,
    new_key,
    parse_keyring,
)
from telepath.secrets.tokens import (
    hash_api_key,
    mask_secret,
    new_api_key,
    new_id,
    new_sip_password,
)

pytestmark = pytest.mark.unit


def test_roundtrip_and_context_binding() -> None:
    ring = Keyring((new_key(),))
    env = ring.encrypt("sk-secret", "trunk:a:openai_api_key")
    assert "sk-secret" not in env
    assert env.startswith(f"v1:{ring.active_kid}:")
    assert ring.decrypt(env, "trunk:a:openai_api_key") == "sk-secret"
    with pytest.raises(SecretDecryptionError):
        ring.decrypt(env, "trunk:b:openai_api_key")


def test_nonce_is_fresh_each_time() -> None:
    ring = Keyring((new_key(),))
    assert ring.encrypt("x", "c") != ring.encrypt("x", "c")


def test_tampering_detected() -> None:
    ring = Keyring((new_key(),))
    env = ring.encrypt("value", "c")
    head, body = env.rsplit(":", 1)
    flipped = body[:-3] + ("A" if body[-3] != "A" else "B") + body[-2:]
    for bad in (f"{head}:{flipped}", "garbage", "v2:x:y", f"v1:deadbeef:{body}"):
        with pytest.raises(SecretDecryptionError):
            ring.decrypt(bad, "c")


def test_old_keys_still_decrypt_after_rotation() -> None:
    old = Keyring((new_key(),))
    env = old.encrypt("v", "c")
    rotated = Keyring((new_key(), *old.keys))
    assert rotated.needs_reencryption(env)
    assert rotated.decrypt(env, "c") == "v"
    assert not rotated.needs_reencryption(rotated.encrypt("v", "c"))


def test_parse_keyring_and_bad_keys() -> None:
    a, b = new_key(), new_key()
    ring = parse_keyring(f"{encode_key(a)}, {encode_key(b)}")
    assert ring.keys == (a, b)
    with pytest.raises(ConfigurationError):
        parse_keyring("c2hvcnQ=")
    with pytest.raises(ConfigurationError):
        parse_keyring("%%%")
    with pytest.raises(ConfigurationError):
        parse_keyring(" , ")


def test_key_file_generated_0600(tmp_path: Path) -> None:
    ring, generated = load_keyring("", tmp_path / "d")
    assert generated
    path = tmp_path / "d" / "secret.key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again, generated_again = load_keyring("", tmp_path / "d")
    assert not generated_again and again.keys == ring.keys


def test_ha1_matches_rfc_definition() -> None:
    # RFC 7616 §3.9.1 example user, realm and password.
    user, realm, pw = "Mufasa", "http-auth@example.org", "Circle of Life"
    assert (
        compute_ha1("MD5", user, realm, pw)
        == hashlib.md5(b"Mufasa:http-auth@example.org:Circle of Life").hexdigest()
    )
    assert (
        compute_ha1("SHA-256", user, realm, pw)
        == hashlib.sha256(b"Mufasa:http-auth@example.org:Circle of Life").hexdigest()
    )
    assert compute_ha1("MD5", user, "other", pw) != compute_ha1("MD5", user, realm, pw)


def test_tokens() -> None:
    ids = [new_id("conn") for _ in range(200)]
    assert len(set(ids)) == 200
    assert all(len(i) == 31 and i.startswith("conn_") for i in ids)
    key = new_api_key()
    assert key.startswith("sk_live_") and len(key) > 40
    assert hash_api_key(key) == hashlib.sha256(key.encode()).hexdigest()
    pw = new_sip_password()
    assert len(pw) == 24
    assert any(c.isupper() for c in pw) and any(c.isdigit() for c in pw)
    assert mask_secret("sk-proj-" + "x" * 40 + "c123") == "sk-...c123"
    assert mask_secret("short") == "****"


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("", "****"),
        ("sk-abc1234", "****"),  # was sk-...1234: 7 of its 10 characters (found by review)
        ("sk-openai-abc12", "****"),
        ("sk-openai-abc123", "...c123"),
        ("sk-openai-abc12345678", "...5678"),
        ("sk-" + "a" * 23 + "9", "...aaa9"),
        ("sk-" + "a" * 24 + "9", "sk-...aaa9"),
        ("sk-" + "a" * 44 + "wxyz", "sk-...wxyz"),  # a classic OpenAI key, as before
    ],
)
def test_key_hint_by_length(key: str, hint: str) -> None:
    assert mask_secret(key) == hint


def test_key_hint_shows_at_most_a_quarter() -> None:
    for length in range(200):
        key = "".join(chr(ord("A") + i % 26) for i in range(length))
        shown = mask_secret(key).replace("...", "").replace("****", "")
        assert len(shown) * 4 <= length, (length, mask_secret(key))
