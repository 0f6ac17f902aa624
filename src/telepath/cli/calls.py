"""``telepath calls``: read call records straight from the database, printed as JSON."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import typer
from pydantic import ValidationError

from telepath.cli.runtime import open_state
from telepath.config import Settings
from telepath.db.calls_repository import CallRepository, call_detail, call_summary

calls_app = typer.Typer(no_args_is_help=True, help="Inspect call records")


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        typer.echo(f"configuration error: {exc}", err=True)
        raise typer.Exit(2) from None


def _echo_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, ensure_ascii=False))


@calls_app.command("list")
def calls_list(
    trunk_id: str | None = typer.Option(None, "--trunk-id", help="Only calls of this trunk"),
    limit: int = typer.Option(20, "--limit", min=1, max=1000, help="How many, newest first"),
) -> None:
    """List the newest call records of every account as JSON."""

    async def run() -> dict[str, Any]:
        async with open_state(_settings()) as state, state.sessions() as session:
            rows, total = await CallRepository(session).list(
                None, trunk_id=trunk_id, limit=limit, offset=0
            )
            calls = [{**call_summary(r), "account_id": r.account_id} for r in rows]
            return {"calls": calls, "total": total}

    _echo_json(asyncio.run(run()))


@calls_app.command("show")
def calls_show(call_id: str = typer.Argument(..., help="The call id (call_...)")) -> None:
    """Print one call record with metrics, turns and SIP trace as JSON."""

    async def run() -> dict[str, Any] | None:
        async with open_state(_settings()) as state, state.sessions() as session:
            row = await CallRepository(session).get(None, call_id)
            return None if row is None else {**call_detail(row), "account_id": row.account_id}

    detail = asyncio.run(run())
    if detail is None:
        typer.echo(f"no call with id {call_id}", err=True)
        raise typer.Exit(1)
    _echo_json(detail)
