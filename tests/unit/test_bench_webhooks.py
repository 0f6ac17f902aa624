"""The webhook benchmark's own settings (bench/webhooks.py ``bench_settings``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench import webhooks

from telepath.config import Settings

pytestmark = pytest.mark.unit


def test_the_shells_telepath_settings_never_reach_the_webhook_bench(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # an exported database URL would have the bench migrate that database, add a '*'
    # endpoint to its account and deliver its fake events to that account's real endpoints
    monkeypatch.setenv("TELEPATH_DATABASE_URL", "postgresql+asyncpg://prod@db.example.net/tp")
    monkeypatch.setenv("telepath_stun_server", "stun.example.net:3478")  # any case
    monkeypatch.setenv("TELEPATH_WEBHOOK_TIMEOUT_S", "1")
    settings = webhooks.bench_settings(tmp_path)
    assert settings.data_dir == tmp_path
    assert settings.database_url == ""  # the bench's own SQLite file in data_dir
    defaults = Settings.model_fields
    assert settings.stun_server == defaults["stun_server"].default
    assert settings.webhook_timeout_s == defaults["webhook_timeout_s"].default
