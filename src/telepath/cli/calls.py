"""``telepath calls``: read call records straight from the database, printed as JSON.

Read only: the database is neither created nor migrated, and no master key is generated."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import typer
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from telepath.cli.runtime import open_records
from telepath.config import Settings, config_errors
from telepath.db.calls_repository import CallRepository, call_detail, call_summary

calls_app = typer.Typer(no_args_is_help=True, help="Inspect call records")


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        for line in config_errors(exc):  # never str(exc): it may show a secret
            typer.echo(f"configuration error: {line}", err=True)
        raise typer.Exit(2) from None


T = TypeVar("T")


def _read(query: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run ``query`` on the database, read only (see ``open_records``); a database that is
    missing, unreachable or unreadable is said so, exit 1, no traceback."""
    settings = _settings()

    async def run() -> T:
        async with open_records(settings) as sessions, sessions() as session:
            return await query(session)

    try:
        return asyncio.run(run())
    except FileNotFoundError as exc:
        typer.echo(
            f"no database at {exc.filename}: no call recorded yet, or TELEPATH_DATA_DIR / "
            "TELEPATH_DATABASE_URL name another place",
            err=True,
        )
        raise typer.Exit(1) from None
    except (OSError, DBAPIError) as exc:
        reason = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
        typer.echo(f"cannot read the call records: {reason}", err=True)
        raise typer.Exit(1) from None


def _echo_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, ensure_ascii=False))


@calls_app.command("list")
def calls_list(
    trunk_id: str | None = typer.Option(None, "--trunk-id", help="Only calls of this trunk"),
    limit: int = typer.Option(20, "--limit", min=1, max=1000, help="How many, newest first"),
) -> None:
    """List the newest call records of every account as JSON."""

    async def query(session: AsyncSession) -> dict[str, Any]:
        rows, total = await CallRepository(session).list(
            None, trunk_id=trunk_id, limit=limit, offset=0
        )
        calls = [{**call_summary(r), "account_id": r.account_id} for r in rows]
        return {"calls": calls, "total": total}

    _echo_json(_read(query))


@calls_app.command("show")
def calls_show(call_id: str = typer.Argument(..., help="The call id (call_...)")) -> None:
    """Print one call record with metrics, turns and SIP trace as JSON."""

    async def query(session: AsyncSession) -> dict[str, Any] | None:
        row = await CallRepository(session).get(None, call_id)
        return None if row is None else {**call_detail(row), "account_id": row.account_id}

    detail = _read(query)
    if detail is None:
        typer.echo(f"no call with id {call_id}", err=True)
        raise typer.Exit(1)
    _echo_json(detail)
