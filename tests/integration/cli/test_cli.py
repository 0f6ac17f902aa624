"""The ``telepath`` CLI: API keys and master-key rotation, on a real SQLite database."""

from __future__ import annotations

import asyncio
import base64
import inspect
import os
import re
import socket
import subprocess
import sys
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from sqlalchemy import text
from typer.testing import CliRunner

import telepath
from telepath.calls.config import CallControlConfig
from telepath.cli.call_audio import caller_audio
from telepath.cli.main import app, call
from telepath.config import Settings
from telepath.db.engine import make_engine
from telepath.db.models import REGISTRATION_PASSWORD, trunk_secret_context
from telepath.rtp.resample import RESAMPLED_RATES
from telepath.secrets.keyfile import load_keyring
from telepath.secrets.keyring import Keyring, encode_key, key_id, new_key, parse_keyring
from tests.certs import self_signed

pytestmark = pytest.mark.integration


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data = tmp_path / "data"
    monkeypatch.setenv("TELEPATH_DATA_DIR", str(data))
    monkeypatch.delenv("TELEPATH_DATABASE_URL", raising=False)
    monkeypatch.delenv("TELEPATH_SECRET_KEY", raising=False)
    return data


def run(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_keys_create_list_revoke(env: Path) -> None:
    out = run("keys", "create", "--name", "production", "--account", "acme")
    key = re.search(r"sk_live_\S+", out)
    assert key
    key_id = re.search(r"key_[0-9a-z]{26}", out)
    assert key_id
    listing = run("keys", "list")
    assert key_id.group(0) in listing and "acme" in listing and "production" in listing
    assert key.group(0) not in listing
    assert "active" in listing
    run("keys", "revoke", key_id.group(0))
    assert "revoked" in run("keys", "list")
    again = CliRunner().invoke(app, ["keys", "revoke", key_id.group(0)])
    assert again.exit_code == 1


async def _seed_secret(settings: Settings) -> tuple[str, str]:
    """Insert one trunk row with an encrypted key, and its outbound registration with an
    encrypted password, under the current keyring."""
    ring, _ = load_keyring(settings.secret_key, settings.data_dir)
    engine = make_engine(settings.effective_database_url)
    env = ring.encrypt("sk-rotate-me", trunk_secret_context("conn_x", "openai_api_key"))
    password = ring.encrypt("reg-rotate-me", trunk_secret_context("conn_x", REGISTRATION_PASSWORD))
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO accounts VALUES ('acct_x', 'x', '2026-01-01')"))
        await conn.execute(
            text(
                "INSERT INTO trunks (id, account_id, name, status, ai_provider, sip_username,"
                " sip_realm, ha1_md5, ha1_sha256, openai_api_key_enc, created_at, updated_at)"
                " VALUES ('conn_x', 'acct_x', 'n', 'active', 'openai', 'user-x', 'r', 'a', 'b',"
                " :env, '2026-01-01', '2026-01-01')"
            ),
            {"env": env},
        )
        await conn.execute(
            text(
                "INSERT INTO trunk_registrations (trunk_id, registrar, username, expires,"
                " password_enc, contact_user, updated_at) VALUES ('conn_x', 'sip:192.0.2.1',"
                " 'u', 300, :password, 'tpr-x', '2026-01-01')"
            ),
            {"password": password},
        )
    await engine.dispose()
    return env, ring.active_kid


async def _stored(settings: Settings, column: str = "openai_api_key_enc") -> str:
    table = "trunk_registrations" if column == "password_enc" else "trunks"
    engine = make_engine(settings.effective_database_url)
    async with engine.connect() as conn:
        value = (await conn.execute(text(f"SELECT {column} FROM {table}"))).scalar_one()
    await engine.dispose()
    return str(value)


def _registration_password(ring: Keyring, settings: Settings) -> str:
    stored = asyncio.run(_stored(settings, "password_enc"))
    return ring.decrypt(stored, trunk_secret_context("conn_x", REGISTRATION_PASSWORD))


def test_secrets_rotate_with_key_file(env: Path) -> None:
    run("keys", "list")  # creates the database and the key file
    settings = Settings()
    before, old_kid = asyncio.run(_seed_secret(settings))
    out = run("secrets", "rotate")
    assert "Re-encrypted 2 secret(s)" in out and "telepath secrets prune" in out
    ring = parse_keyring((env / "secret.key").read_text())
    # The new key first; the old one kept, decrypt-only, until pruned.
    assert len(ring.keys) == 2 and ring.active_kid != old_kid
    assert key_id(ring.keys[1]) == old_kid
    after = asyncio.run(_stored(settings))
    assert after != before and after.startswith(f"v1:{ring.active_kid}:")
    assert ring.decrypt(after, trunk_secret_context("conn_x", "openai_api_key")) == "sk-rotate-me"
    # The registration password, in a table of its own, is re-sealed too.
    assert asyncio.run(_stored(settings, "password_enc")).startswith(f"v1:{ring.active_kid}:")
    assert _registration_password(ring, settings) == "reg-rotate-me"

    assert "removed 1 older key(s)" in run("secrets", "prune")
    pruned = parse_keyring((env / "secret.key").read_text())
    assert pruned.keys == ring.keys[:1]
    assert pruned.decrypt(after, trunk_secret_context("conn_x", "openai_api_key")) == (
        "sk-rotate-me"
    )
    assert _registration_password(pruned, settings) == "reg-rotate-me"
    assert "Nothing to prune" in run("secrets", "prune")


def test_secrets_prune_refuses_while_a_secret_cannot_be_reencrypted(env: Path) -> None:
    run("keys", "list")
    settings = Settings()
    asyncio.run(_seed_secret(settings))
    run("secrets", "rotate")
    keys = (env / "secret.key").read_text()
    lost = Keyring((new_key(),)).encrypt("x", trunk_secret_context("conn_x", "openai_api_key"))
    asyncio.run(_store(settings, lost))
    result = CliRunner().invoke(app, ["secrets", "prune"])
    assert result.exit_code == 1
    assert "trunk:conn_x:openai_api_key" in result.output and "no key was removed" in result.output
    assert (env / "secret.key").read_text() == keys


async def _store(settings: Settings, envelope: str) -> None:
    engine = make_engine(settings.effective_database_url)
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE trunks SET openai_api_key_enc = :e"), {"e": envelope})
    await engine.dispose()


def test_secrets_rotate_with_env_keys(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = encode_key(new_key())
    monkeypatch.setenv("TELEPATH_SECRET_KEY", old)
    run("keys", "list")
    asyncio.run(_seed_secret(Settings()))
    new = encode_key(new_key())
    monkeypatch.setenv("TELEPATH_SECRET_KEY", f"{new},{old}")
    assert "Re-encrypted 2 secret(s)" in run("secrets", "rotate")
    assert "can be removed from TELEPATH_SECRET_KEY" in run("secrets", "prune")
    monkeypatch.setenv("TELEPATH_SECRET_KEY", new)
    stored = asyncio.run(_stored(Settings()))
    assert (
        parse_keyring(new).decrypt(stored, trunk_secret_context("conn_x", "openai_api_key"))
        == "sk-rotate-me"
    )
    assert _registration_password(parse_keyring(new), Settings()) == "reg-rotate-me"
    assert not (env / "secret.key").exists()


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("sip:bob@127.0.0.1:1;transport=tcp", "cannot reach the gateway"),
        ("sips:bob@127.0.0.1:1", "cannot reach the gateway"),
        ("sip:bob@[not an address", "bad SIP URI"),
        ("http://x", "bad SIP URI"),  # parsed as an opaque URI: it ended as 'cannot resolve '
        ("tel:+14155550100", "bad SIP URI"),  # a number, no host to send it to
    ],
)
def test_call_says_why_it_could_not_dial(target: str, message: str) -> None:
    result = CliRunner().invoke(app, ["call", target, "--password", "any-pass-1"])
    assert result.exit_code == (2 if message == "bad SIP URI" else 1), result.output
    assert message in result.output
    assert "Traceback" not in result.output


def _wav(
    path: Path, *, rate: int = 8000, channels: int = 1, width: int = 2, seconds: float = 1
) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(b"\x00" * int(rate * seconds) * channels * width)
    return path


def _cut(path: Path, size: int) -> Path:
    """``path`` without its last ``size`` bytes: a file whose copy or download stopped short."""
    path.write_bytes(path.read_bytes()[:-size])
    return path


def _data_size(path: Path, size: int) -> Path:
    """``path`` with ``size`` as its data chunk's (and, for 0xFFFFFFFF, the RIFF chunk's) size:
    0xFFFFFFFF is what a recorder writing to a pipe puts there, not knowing the length."""
    data = bytearray(path.read_bytes())
    at = data.index(b"data") + 4
    data[at : at + 4] = size.to_bytes(4, "little")
    if size == 0xFFFFFFFF:
        data[4:8] = size.to_bytes(4, "little")
    path.write_bytes(bytes(data))
    return path


@pytest.fixture
def silent_gateway() -> Iterator[tuple[socket.socket, str]]:
    """A UDP socket that never answers, and a target URI for it: whatever the CLI sends to
    the gateway is left in its buffer."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        yield sock, f"sip:bob@127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--duration", "121"], "--duration"),  # more than the 120 s the playout queue holds
        (["--duration", "-1"], "--duration"),
        (["--duration", "0"], "--duration"),
        (["--ring-timeout", "nan"], "--ring-timeout"),  # passed min=0.1: no ring timeout at all
        (["--ring-timeout", "inf"], "--ring-timeout"),
        (["--play", "missing.wav"], "cannot read"),
        (["--play", "stereo.wav"], "mono 16-bit"),
        (["--play", "8bit.wav"], "mono 16-bit"),
        (["--play", "11025.wav"], "11025 Hz"),
        (["--play", "long.wav"], "longer than 120 s"),
        (["--play", "text.wav"], "not a WAV file"),
        (["--play", "cut.wav"], "cut short"),  # a byte short: not whole samples
        (["--play", "short.wav"], "cut short"),  # whole samples, fewer than the header's
        (["--play", "empty.wav"], "holds no audio"),
        (["--play", "streamed-cut.wav"], "cut short"),
        (["--play", "streamed-long.wav"], "longer than 120 s"),
    ],
)
def test_call_checks_what_it_plays_before_dialling(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    silent_gateway: tuple[socket.socket, str],
    options: list[str],
    message: str,
) -> None:
    """An option that would fail once the call is answered (the tone or file cannot be
    queued, a negative duration) is refused before the INVITE goes: exit 2, a message, no
    traceback, and no call left up at the gateway."""
    monkeypatch.chdir(tmp_path)
    _wav(tmp_path / "stereo.wav", channels=2)
    _wav(tmp_path / "8bit.wav", width=1)
    _wav(tmp_path / "11025.wav", rate=11025)
    _wav(tmp_path / "long.wav", seconds=121)
    (tmp_path / "text.wav").write_text("not audio")
    _cut(_wav(tmp_path / "cut.wav"), 1)
    _cut(_wav(tmp_path / "short.wav"), 2)
    _data_size(_wav(tmp_path / "empty.wav"), 0)
    _cut(_data_size(_wav(tmp_path / "streamed-cut.wav"), 0xFFFFFFFF), 1)
    _data_size(_wav(tmp_path / "streamed-long.wav", seconds=121), 0xFFFFFFFF)
    sock, target = silent_gateway
    result = CliRunner().invoke(app, ["call", target, "--password", "any-pass-1", *options])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    with pytest.raises(BlockingIOError):  # nothing was sent: no INVITE
        sock.recv(65535)


def test_call_plays_the_rates_the_resampler_takes(tmp_path: Path) -> None:
    """44.1 and 48 kHz files play (resampled to the call's 8 kHz), as 8, 16 and 24 kHz do."""
    for rate in (8000, 16000, 22050, 24000, 44100, 48000):
        played = caller_audio(1.0, None, _wav(tmp_path / f"{rate}.wav", rate=rate))
        assert played == (b"\x00" * rate * 2, rate)


def test_call_help_names_the_rates_play_takes() -> None:
    """``--play``'s help lists the rates the check takes (not "8 to 48 kHz": 11025 and 32000
    are refused), written out so that the CLI starts without numpy — this keeps them in step."""
    rates = [f"{rate / 1000:g}" for rate in sorted(RESAMPLED_RATES)]
    listed = f"{', '.join(rates[:-1])} or {rates[-1]} kHz"
    option = inspect.signature(call).parameters["play"].default
    assert listed in option.help


def test_call_plays_a_streamed_wav_as_far_as_it_goes(tmp_path: Path) -> None:
    """A WAV file written to a pipe gives 0xFFFFFFFF as its data size: what it holds is
    played (it was refused as longer than 120 s)."""
    played = caller_audio(1.0, None, _data_size(_wav(tmp_path / "s.wav"), 0xFFFFFFFF))
    assert played == (b"\x00" * 8000 * 2, 8000)


@pytest.mark.parametrize("where", ["missing/agent.wav", "."])
def test_call_checks_the_record_path_before_dialling(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    silent_gateway: tuple[socket.socket, str],
    where: str,
) -> None:
    """--record to a path that cannot be written (no such directory, a directory) is refused
    before the call — not found when saving, after the call, its audio lost."""
    monkeypatch.chdir(tmp_path)
    sock, target = silent_gateway
    options = ["--password", "any-pass-1", "--record", where]
    result = CliRunner().invoke(app, ["call", target, *options])
    assert result.exit_code == 2, result.output
    assert f"cannot write {where}" in result.output and "Traceback" not in result.output
    with pytest.raises(BlockingIOError):  # nothing was sent: no INVITE
        sock.recv(65535)


def test_a_call_that_fails_leaves_the_record_path_as_it_was(tmp_path: Path) -> None:
    """Checking the path creates nothing that stays and truncates nothing: a call that fails
    leaves no empty file behind, and an earlier recording intact."""
    kept = tmp_path / "kept.wav"
    kept.write_bytes(b"an earlier recording")
    for path in (kept, tmp_path / "new.wav"):
        options = ["--password", "any-pass-1", "--record", str(path)]
        result = CliRunner().invoke(app, ["call", "sip:bob@127.0.0.1:1;transport=tcp", *options])
        assert result.exit_code == 1 and "cannot reach the gateway" in result.output
    assert kept.read_bytes() == b"an earlier recording"
    assert not (tmp_path / "new.wav").exists()


@pytest.fixture
def bare_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No TELEPATH_* variable set, run in an empty directory: the default data directory,
    ``./data``, is returned (it must not exist after a refused start)."""
    for name in list(os.environ):
        if name.startswith("TELEPATH_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "data"


GOOD_KEY = encode_key(new_key())
SHORT_KEY = encode_key(new_key()[:16])  # valid base64, 16 bytes


@pytest.mark.parametrize(
    ("secret", "variables", "refused"),
    [
        # a refusal that pydantic reports with the whole input (a model-level check) printed
        # the start of TELEPATH_SECRET_KEY to stderr, i.e. to the journal
        (GOOD_KEY, {"TELEPATH_STUN_SERVER": "a b"}, "TELEPATH_STUN_SERVER"),
        # a master key that does not decode to 32 bytes was a traceback (exit 1) once the
        # keyring was loaded — for 'telepath serve' after the settings were all accepted
        ("abc", {}, "TELEPATH_SECRET_KEY"),
        (SHORT_KEY, {}, "TELEPATH_SECRET_KEY"),
        (f"{GOOD_KEY},{SHORT_KEY}", {}, "TELEPATH_SECRET_KEY"),
    ],
    ids=["another variable", "abc", "16 bytes", "the older key of two"],
)
@pytest.mark.parametrize("command", [["serve"], ["keys", "list"], ["calls", "list"]])
def test_a_configuration_error_names_the_variable_never_the_secret_key(
    bare_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    command: list[str],
    secret: str,
    variables: dict[str, str],
    refused: str,
) -> None:
    monkeypatch.setenv("TELEPATH_SECRET_KEY", secret)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 2, result.output
    for key in secret.split(","):
        assert key[:6] not in result.output
    assert result.stderr.startswith(f"configuration error: {refused}: "), result.stderr
    assert "Traceback" not in result.output
    assert not bare_env.exists()


KEY_FILE_REFUSED = "secret.key: a master key must decode to 32 bytes"


@pytest.mark.parametrize(
    "command", [["keys", "list"], ["keys", "create", "--name", "x"], ["secrets", "rotate"]]
)
def test_a_master_key_file_that_does_not_read_is_a_configuration_error(
    env: Path, command: list[str]
) -> None:
    """``<data dir>/secret.key`` edited by hand into something that is no key: a traceback
    (exit 1) from the keyring's ConfigurationError, naming neither the file nor a variable."""
    env.mkdir()
    (env / "secret.key").write_text("abc\n")
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("configuration error: "), result.stderr
    assert f"{env / KEY_FILE_REFUSED}\n" in result.stderr, result.stderr
    assert "Traceback" not in result.output
    assert not (env / "telepath.db").exists()  # no database opened


def test_a_master_key_file_that_is_not_ascii_is_a_configuration_error(env: Path) -> None:
    """A key file saved with a UTF-8 byte-order mark (or any byte past ASCII): a configuration
    error naming the file, not a UnicodeDecodeError traceback; its content never shown."""
    env.mkdir()
    key = base64.b64encode(bytes(range(32))).decode()
    (env / "secret.key").write_bytes(b"\xef\xbb\xbf" + key.encode() + b"\n")
    result = CliRunner().invoke(app, ["keys", "list"])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"configuration error: {env / 'secret.key'}: "), result.stderr
    assert "not ASCII text" in result.stderr, result.stderr
    assert key[:6] not in result.output and "\ufeff" not in result.output
    assert "Traceback" not in result.output
    assert not (env / "telepath.db").exists()  # no database opened


def test_serve_says_the_master_key_file_does_not_read(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "secret.key").write_text("abc\n")
    done = _serve_process(tmp_path, {"DATA_DIR": str(data)})
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"configuration error: {data / KEY_FILE_REFUSED}\n" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    assert [p.name for p in data.iterdir()] == ["secret.key"]


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """``run_serve`` replaced: the settings ``telepath serve`` got as far as starting with."""
    runs: list[Settings] = []
    monkeypatch.setattr("telepath.cli.serve.run_serve", runs.append)
    return runs


SUPPORTED_CODECS = "(supported: G722, PCMU, PCMA)"


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        # the README's prose spelling; G722 is the SDP name (RFC 3551), as the trunk API has it
        ({"SIP_CODECS": "G.722,PCMU"}, f"SIP_CODECS: unsupported codec 'G.722' {SUPPORTED_CODECS}"),
        ({"SIP_CODECS": "PCMU,OPUS"}, f"SIP_CODECS: unsupported codec 'OPUS' {SUPPORTED_CODECS}"),
        ({"SIP_CODECS": "G729"}, f"SIP_CODECS: unsupported codec 'G729' {SUPPORTED_CODECS}"),
        ({"SIP_CODECS": " , "}, f"SIP_CODECS: no codec listed {SUPPORTED_CODECS}"),
        (
            {"RTP_JITTER_MIN_MS": "100", "RTP_JITTER_MAX_MS": "60"},
            "RTP_JITTER_MIN_MS: must not be above TELEPATH_RTP_JITTER_MAX_MS",
        ),
        (
            {"PUBLIC_ADDRESS": "203.0.113.5:5060"},
            "PUBLIC_ADDRESS: must be the IP address callers reach this gateway at, such as "
            "203.0.113.5 or 2001:db8::5 (no port, brackets, name or wildcard: it is written "
            "into SDP c= lines and SIP Contact headers)",
        ),
    ],
)
def test_serve_refuses_what_every_call_would_fail_on(
    bare_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    started: list[Settings],
    variables: dict[str, str],
    message: str,
) -> None:
    """Accepted, these failed each call instead: an unknown codec name raised in the SDP
    code on every INVITE (500), jitter bounds the wrong way round once the agent had
    connected. Now ``telepath serve`` exits 2 saying so, before it opens anything."""
    for name, value in variables.items():
        monkeypatch.setenv(f"TELEPATH_{name}", value)
    result = CliRunner().invoke(app, ["serve"])
    assert result.exit_code == 2, result.output
    assert f"configuration error: TELEPATH_{message}\n" in result.stderr, result.stderr
    assert "Traceback" not in result.output
    assert started == []
    assert not bare_env.exists()


def test_serve_takes_codec_names_in_any_case(
    bare_env: Path, monkeypatch: pytest.MonkeyPatch, started: list[Settings]
) -> None:
    monkeypatch.setenv("TELEPATH_SIP_CODECS", "pcma, PCMU")
    monkeypatch.setenv("TELEPATH_RTP_JITTER_MIN_MS", "60")
    monkeypatch.setenv("TELEPATH_RTP_JITTER_MAX_MS", "60")
    result = CliRunner().invoke(app, ["serve"])
    assert result.exit_code == 0, result.output
    (settings,) = started
    assert CallControlConfig.from_settings(settings, "127.0.0.1").codecs == ("PCMA", "PCMU")


def _serve_process(cwd: Path, variables: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``telepath serve`` as its own process (a start that got further would set up logging
    and the event loop policy: not in this one), with only ``variables`` set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEPATH_")}
    env["PYTHONPATH"] = str(Path(telepath.__file__).resolve().parents[1])
    env |= {"TELEPATH_HTTP_PORT": "0", "TELEPATH_SIP_PORT": "0", "TELEPATH_SIP_TLS_PORT": "0"}
    env |= {f"TELEPATH_{name}": value for name, value in variables.items()}
    code = "from telepath.cli.main import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, "serve"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("variables", "messages"),
    [
        # 0 contradicted sip/defence.py, which refuses it: a ban lasts a while
        ({"SIP_BAN_SECONDS": "0"}, ["SIP_BAN_SECONDS: Input should be greater than 0"]),
        (
            {"SIP_ALLOWLIST": "192.0.2.7, 10.0.0.0/33"},
            ["SIP_ALLOWLIST: allowlist entry '10.0.0.0/33' is not an IP or network"],
        ),
        (
            {"SIP_DIGEST_ALGORITHMS": "SHA256,MD5"},
            ["SIP_DIGEST_ALGORITHMS: algorithms must be a non-empty subset of ('SHA-256', 'MD5')"],
        ),
        (
            {"DATABASE_URL": "postgresql://telepath:pw-not-shown@db.example/telepath"},
            [
                "DATABASE_URL: 'postgresql' is not a driver Telepath has; write "
                "postgresql+asyncpg://user:password@host/database (asyncpg's parameters, not "
                "libpq's: ?ssl=require) or sqlite+aiosqlite:///path"
            ],
        ),
        (
            {"DATABASE_URL": "sqlite:///telepath.db"},
            ["DATABASE_URL: 'sqlite' is not a driver Telepath has; write"],
        ),
        ({"DATABASE_URL": "not a url"}, ["DATABASE_URL: not a database URL; write"]),
        (
            {"SIP_TLS_CERT": "missing/sip.crt", "SIP_TLS_KEY": "missing/sip.key"},
            [
                "SIP_TLS_CERT: missing/sip.crt is not a file",
                "SIP_TLS_KEY: missing/sip.key is not a file",
            ],
        ),
        (
            {"RTP_PORT_MIN": "20001", "RTP_PORT_MAX": "20002"},
            ["RTP_PORT_MIN..MAX: 20001..20002 holds no even port with the odd one above it"],
        ),
        (
            {"RTP_PORT_MIN": "20001", "RTP_PORT_MAX": "20004", "SIP_WORKERS": "2"},
            [
                "RTP_PORT_MIN..MAX: 20001..20002 (SIP worker 1 of 2's share) holds no even "
                "port with the odd one above it"
            ],
        ),
    ],
)
def test_serve_refuses_what_the_gateway_refuses_before_it_opens_the_database(
    tmp_path: Path, variables: dict[str, str], messages: list[str]
) -> None:
    """These passed Settings, and the gateway's own parts refused them only as it started:
    a traceback (exit 1) after the database was migrated and the first API key printed —
    or, for the database URL, after a master key was generated."""
    done = _serve_process(tmp_path, variables)
    assert done.returncode == 2, done.stdout + done.stderr
    for message in messages:
        assert f"configuration error: TELEPATH_{message}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert "pw-not-shown" not in done.stderr
    assert done.stdout == ""  # no API key printed
    assert list(tmp_path.iterdir()) == []  # no data directory, database or key


NOT_HERE = "192.0.2.55"  # TEST-NET-1 (RFC 5737): an address of no host


@pytest.mark.parametrize("variable", ["SIP_HOST", "HTTP_HOST"])
def test_serve_refuses_a_host_that_is_not_an_address_of_this_host(
    tmp_path: Path, variable: str
) -> None:
    """A valid IP address that is not this host's was a traceback (exit 1) from the SIP
    listener's bind — after the database was migrated, a master key generated and the first
    API key printed; for the HTTP API, uvicorn's bind error once the SIP listeners were up,
    then a drain and exit 3."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((NOT_HERE, 0))
        except OSError:
            pass
        else:  # net.ipv4.ip_nonlocal_bind: the gateway would start on it
            pytest.skip(f"this host binds {NOT_HERE}")
    done = _serve_process(tmp_path, {variable: NOT_HERE})
    assert done.returncode == 2, done.stdout + done.stderr
    prefix = f"configuration error: TELEPATH_{variable}: {NOT_HERE} is not an address of this host"
    assert done.stderr.startswith(prefix), done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""  # no API key printed
    assert list(tmp_path.iterdir()) == []  # no data directory, database or key


def test_serve_refuses_a_certificate_that_does_not_load(
    bare_env: Path, monkeypatch: pytest.MonkeyPatch, started: list[Settings]
) -> None:
    (bare_env.parent / "one").mkdir()
    (bare_env.parent / "other").mkdir()
    cert, _ = self_signed(bare_env.parent / "one")
    _, key = self_signed(bare_env.parent / "other")
    monkeypatch.setenv("TELEPATH_SIP_TLS_CERT", str(cert))
    monkeypatch.setenv("TELEPATH_SIP_TLS_KEY", str(key))
    result = CliRunner().invoke(app, ["serve"])
    assert result.exit_code == 2, result.output
    prefix = "configuration error: TELEPATH_SIP_TLS_CERT, TELEPATH_SIP_TLS_KEY: not a "
    assert result.stderr.startswith(prefix + "certificate chain and its private key ("), (
        result.stderr
    )
    assert started == []


def test_serve_takes_what_the_gateway_takes(
    bare_env: Path, monkeypatch: pytest.MonkeyPatch, started: list[Settings]
) -> None:
    cert, key = self_signed(bare_env.parent)
    for name, value in {
        "SIP_TLS_CERT": str(cert),
        "SIP_TLS_KEY": str(key),
        "SIP_ALLOWLIST": "192.0.2.7, 10.0.0.0/8, 2001:db8::/32",
        "SIP_DIGEST_ALGORITHMS": "md5, sha-256",
        "DATABASE_URL": "postgresql+asyncpg://telepath@127.0.0.1:1/telepath",
        "RTP_PORT_MIN": "20001",
        "RTP_PORT_MAX": "20008",  # odd: each of the 2 shares holds one pair
        "SIP_WORKERS": "2",
    }.items():
        monkeypatch.setenv(f"TELEPATH_{name}", value)
    result = CliRunner().invoke(app, ["serve"])
    assert result.exit_code == 0, result.output
    assert len(started) == 1


UNREACHABLE = "postgresql+asyncpg://u:s3cr3t-pw@127.0.0.1:1/db"  # nothing listens on port 1


@pytest.mark.parametrize(
    "command",
    [
        ["serve"],
        ["keys", "create", "--name", "ci"],
        ["keys", "list"],
        ["keys", "revoke", "key_x"],
        ["secrets", "rotate"],
        ["secrets", "prune"],
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_a_database_that_cannot_be_reached_is_said_in_one_line(
    env: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    """It was a Typer traceback (exit 1), the URL's password a frame away; ``keys list``
    generated a master key first. Now one line, exit 1, as ``telepath calls`` does."""
    monkeypatch.setenv("TELEPATH_DATABASE_URL", UNREACHABLE)
    monkeypatch.setenv("TELEPATH_SECRET_KEY", GOOD_KEY if "secrets" in command else "")
    # serve as it runs, but on this test's loop policy and logging
    monkeypatch.setattr("telepath.cli.serve.install_event_loop", lambda: "asyncio")
    monkeypatch.setattr("telepath.cli.serve.configure_logging", lambda *_: None)
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("cannot open the database: "), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert isinstance(result.exception, SystemExit)  # typer.Exit: no error escaped
    assert "s3cr3t-pw" not in result.output
    if command[0] != "secrets":
        assert not (env / "secret.key").exists()  # no master key made for nothing


def test_a_rotation_that_cannot_reach_the_database_leaves_the_key_file_as_it_was(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``secrets rotate`` on the key file wrote the new key into it before it found the
    database down: each retry added a key, which running services then sealed with."""
    monkeypatch.setenv("TELEPATH_DATABASE_URL", UNREACHABLE)
    monkeypatch.setenv("TELEPATH_SECRET_KEY", "")
    load_keyring("", env)  # the key file, with its one key
    before = (env / "secret.key").read_bytes()
    result = CliRunner().invoke(app, ["secrets", "rotate"])
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("cannot open the database: "), result.stderr
    assert (env / "secret.key").read_bytes() == before


def test_a_password_the_driver_quotes_is_blanked_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reason that quotes the URL's password (a driver may) never shows it."""
    from telepath.db import engine as db_engine
    from telepath.errors import DatabaseUnavailable

    async def refuses(_: object) -> None:
        raise ConnectionRefusedError(f"no route to {UNREACHABLE}")

    monkeypatch.setattr(db_engine, "migrate", refuses)
    engine = make_engine(UNREACHABLE)
    with pytest.raises(DatabaseUnavailable) as refused:
        asyncio.run(db_engine.migrate_or_refuse(engine))
    asyncio.run(engine.dispose())
    assert "s3cr3t-pw" not in str(refused.value) and "u:***@" in str(refused.value)


@pytest.mark.parametrize("tty", [True, False])
def test_a_challenge_without_a_password_asks_only_at_a_terminal(
    tty: bool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """README: without --password or TELEPATH_CALL_PASSWORD the password is asked for when the
    gateway challenges and stdin is a terminal; otherwise the call fails with the 401."""
    from telepath.cli.dialer import DialResult
    from telepath.cli.main import _placed, _report

    placed: list[str | None] = []

    def place(password: str | None) -> DialResult:
        placed.append(password)
        return DialResult(status=401, reason="Unauthorized") if password is None else DialResult()

    monkeypatch.setattr(sys.stdin, "isatty", lambda: tty)
    monkeypatch.setattr("typer.prompt", lambda *a, **kw: "typed-pass-1")
    result = _placed(place, None)
    if tty:
        assert placed == [None, "typed-pass-1"]
        return
    assert placed == [None]
    with pytest.raises(typer.Exit) as ended:
        _report(result, 60.0)
    assert ended.value.exit_code == 1
    assert "call failed: 401 Unauthorized" in capsys.readouterr().err
