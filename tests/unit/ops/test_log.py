"""Every log line carries the call id of the task that logged it."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from telepath.log import CallIdFilter, JsonFormatter, Streak, call_id_var

pytestmark = pytest.mark.unit


def _record(message: str) -> logging.LogRecord:
    record = logging.LogRecord("telepath.test", logging.INFO, __file__, 1, message, None, None)
    CallIdFilter().filter(record)
    return record


async def test_call_id_follows_tasks() -> None:
    seen: list[str] = []

    async def call_task() -> None:
        seen.append(_record("inside").call_id)  # type: ignore[attr-defined]

    async def setup() -> None:
        call_id_var.set("call_abc")
        await asyncio.get_running_loop().create_task(call_task())

    await asyncio.get_running_loop().create_task(setup())
    seen.append(_record("outside").call_id)  # type: ignore[attr-defined]
    assert seen == ["call_abc", "-"]


def test_json_lines() -> None:
    token = call_id_var.set("call_xyz")
    try:
        line = JsonFormatter().format(_record("answered"))
    finally:
        call_id_var.reset(token)
    data = json.loads(line)
    assert data["call_id"] == "call_xyz"
    assert data["message"] == "answered"
    assert data["level"] == "INFO"


def test_a_recurring_failure_is_logged_once_per_streak(caplog: pytest.LogCaptureFixture) -> None:
    """A database outage fails a periodic task every few seconds: said once when it starts
    (the error's type, no trace), once when it ends — not once per round."""
    streak = Streak(logging.getLogger("telepath.test"), "checking things")
    with caplog.at_level(logging.INFO, logger="telepath.test"):
        streak.worked()  # nothing to say
        for _ in range(5):
            streak.failed(ConnectionRefusedError("refused"))
        streak.worked()
        streak.worked()
        streak.failed(TimeoutError())
    said = [(r.levelname, r.getMessage(), r.exc_info) for r in caplog.records]
    assert said == [
        (
            "WARNING",
            "checking things failed (ConnectionRefusedError); trying again until it works",
            None,
        ),
        ("INFO", "checking things works again", None),
        ("WARNING", "checking things failed (TimeoutError); trying again until it works", None),
    ]
