"""Database errors carry no bound parameters in their text: they are logged (a trunk lookup
that fails on every INVITE logs its error), and the parameters are called numbers, SIP
usernames — phone numbers at ERROR, against the rule that none reach the logs."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from telepath.db.engine import make_engine

pytestmark = pytest.mark.integration


async def test_a_failed_statement_s_error_does_not_show_its_parameters() -> None:
    engine = make_engine("sqlite+aiosqlite:///:memory:")
    try:
        async with engine.connect() as conn:
            with pytest.raises(DBAPIError) as failed:
                await conn.execute(
                    text("SELECT * FROM no_such_table WHERE number = :n"), {"n": "+4930123456"}
                )
        assert "+4930123456" not in str(failed.value)
        assert "no_such_table" in str(failed.value)  # the statement itself is still said
    finally:
        await engine.dispose()
