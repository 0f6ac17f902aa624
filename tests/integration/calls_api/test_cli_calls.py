"""``telepath calls list|show`` and master-key rotation of webhook secrets, on real SQLite."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text
from typer.testing import CliRunner

from telepath.cli.main import app
from telepath.config import Settings
from telepath.db.call_recorder import DbCallRecorder
from telepath.db.engine import make_engine, sessionmaker_for
from telepath.db.models import WebhookEndpoint, webhook_secret_context
from telepath.secrets.keyfile import load_keyring
from telepath.secrets.keyring import parse_keyring
from tests.integration.calls_api.records import T0, ended, started

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


async def _seed_calls(settings: Settings) -> list[str]:
    engine = make_engine(settings.effective_database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO accounts VALUES ('acct_x', 'x', '2026-01-01')"))
        recorder = DbCallRecorder(sessionmaker_for(engine))
        ids = []
        for i, trunk in enumerate(["conn_a", "conn_b", "conn_a"]):
            record = ended(started("acct_x", trunk_id=trunk, start=T0 + timedelta(minutes=i)))
            await recorder.call_ended(record)
            ids.append(record.id)
        return ids
    finally:
        await engine.dispose()


def test_calls_list_and_show(env: Path) -> None:
    run("keys", "list")  # creates and migrates the database
    ids = asyncio.run(_seed_calls(Settings()))

    listed = json.loads(run("calls", "list"))
    assert [c["id"] for c in listed["calls"]] == list(reversed(ids))
    assert listed["total"] == 3 and listed["calls"][0]["account_id"] == "acct_x"
    only_a = json.loads(run("calls", "list", "--trunk-id", "conn_a", "--limit", "1"))
    assert [c["id"] for c in only_a["calls"]] == [ids[2]] and only_a["total"] == 2

    shown = json.loads(run("calls", "show", ids[0]))
    assert shown["id"] == ids[0] and shown["metrics"]["codec_used"] == "G722"
    assert len(shown["turns"]) == 2 and shown["sip_trace"].startswith("INVITE")

    missing = CliRunner().invoke(app, ["calls", "show", "call_nope"])
    assert missing.exit_code == 1


async def _seed_webhook(settings: Settings) -> str:
    ring, _ = load_keyring(settings.secret_key, settings.data_dir)
    engine = make_engine(settings.effective_database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO accounts VALUES ('acct_w', 'w', '2026-01-01')"))
        async with sessionmaker_for(engine)() as session:
            session.add(
                WebhookEndpoint(
                    id="wh_x",
                    account_id="acct_w",
                    url="https://h.example.com/",
                    events=["*"],
                    secret_enc=ring.encrypt("whsec_keep_me", webhook_secret_context("wh_x")),
                    active=True,
                    created_at=T0,
                )
            )
            await session.commit()
        return ring.active_kid
    finally:
        await engine.dispose()


async def _stored_webhook_secret(settings: Settings) -> str:
    engine = make_engine(settings.effective_database_url)
    try:
        async with sessionmaker_for(engine)() as session:
            return str(await session.scalar(select(WebhookEndpoint.secret_enc)))
    finally:
        await engine.dispose()


def test_secrets_rotate_reencrypts_webhook_secrets(env: Path) -> None:
    run("keys", "list")
    old_kid = asyncio.run(_seed_webhook(Settings()))
    assert "Re-encrypted 1 secret(s)" in run("secrets", "rotate")
    ring = parse_keyring((env / "secret.key").read_text())
    assert ring.active_kid != old_kid
    stored = asyncio.run(_stored_webhook_secret(Settings()))
    assert ring.decrypt(stored, webhook_secret_context("wh_x")) == "whsec_keep_me"


@pytest.mark.parametrize("command", [["calls", "list"], ["calls", "show", "call_x"]])
def test_calls_without_a_database_create_nothing(
    env: Path, tmp_path: Path, command: list[str]
) -> None:
    """Reading records where there is no database says so (exit 1, no traceback) and leaves
    nothing behind: no data directory, no empty database, no master key."""
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 1, result.output
    assert "no database" in result.output and "Traceback" not in result.output
    assert not env.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [["calls", "list"], ["calls", "show", "call_x"]])
def test_calls_on_an_unreachable_database_say_so(
    env: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    """A database server that refuses the connection: a message and exit 1, no traceback, no
    master key generated."""
    monkeypatch.setenv("TELEPATH_DATABASE_URL", "postgresql+asyncpg://telepath:x@127.0.0.1:1/t")
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 1, result.output
    assert "cannot read the call records" in result.output
    assert "Traceback" not in result.output
    assert not env.exists()


def test_calls_read_without_migrating_or_a_master_key(env: Path) -> None:
    """The commands only read: a database of an older schema is not migrated by them (a
    message, exit 1), and no master key is generated — call records have nothing encrypted."""
    env.mkdir()
    asyncio.run(_create_old_schema(env / "telepath.db"))
    result = CliRunner().invoke(app, ["calls", "list"])
    assert result.exit_code == 1, result.output
    assert "cannot read the call records" in result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in env.iterdir()) == ["telepath.db"]  # no secret.key, no -wal


async def _create_old_schema(path: Path) -> None:
    engine = make_engine(f"sqlite+aiosqlite:///{path}")
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE accounts (id TEXT PRIMARY KEY)"))
    finally:
        await engine.dispose()
