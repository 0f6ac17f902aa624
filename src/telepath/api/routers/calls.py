"""``/v1/calls``: call records of the caller's account, with filters and pagination."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query

from telepath.api import schemas
from telepath.api.deps import PrincipalDep, SessionDep
from telepath.api.errors import ApiError, documented_errors, not_found
from telepath.db.calls_repository import CallRepository, call_detail, call_summary

router = APIRouter(prefix="/v1/calls", tags=["calls"])

CALL_STATUSES = ("connected", "disconnected", "failed")
_DATE_ONLY_LEN = len("2024-03-05")


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "Invalid query parameter (error.code invalid_parameter)",
        401: "Missing or invalid API key",
        404: "Call not found in this account",
        429: "Rate limit exceeded",
    }
    return documented_errors(descriptions, *codes)


def parse_date(name: str, value: str, *, end_of_day: bool) -> datetime:
    """An ISO 8601 date or date-time as aware UTC (naive values are UTC).

    A bare date means the start of that day, or its last instant for an inclusive upper bound.
    """
    text = value.strip()
    # An unencoded '+' in a query string arrives as a space: "10:30:00 00:00".
    if "T" in text and " " in text:
        text = text.replace(" ", "+")
    invalid = ApiError(400, "invalid_parameter", f"{name} must be an ISO 8601 date or date-time")
    if len(text) > 40:
        raise invalid
    try:
        if len(text) == _DATE_ONLY_LEN:
            day = date.fromisoformat(text)
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return start + timedelta(days=1, microseconds=-1) if end_of_day else start
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise invalid from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


@router.get(
    "",
    response_model=schemas.CallList,
    responses=_errors(400, 401, 429),
    summary="List calls",
)
async def list_calls(
    principal: PrincipalDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    trunk_id: Annotated[str | None, Query(max_length=64)] = None,
    status: Annotated[
        str | None,
        Query(
            description="connected, disconnected or failed",
            json_schema_extra={"enum": list(CALL_STATUSES)},
        ),
    ] = None,
    start_date: Annotated[
        str | None, Query(description="ISO 8601; calls that started on or after")
    ] = None,
    end_date: Annotated[
        str | None, Query(description="ISO 8601; calls that started on or before")
    ] = None,
) -> schemas.CallList:
    """Call records of the caller's account, newest first."""
    if status is not None and status not in CALL_STATUSES:
        raise ApiError(
            400, "invalid_parameter", "status must be one of: connected, disconnected, failed"
        )
    start = parse_date("start_date", start_date, end_of_day=False) if start_date else None
    end = parse_date("end_date", end_date, end_of_day=True) if end_date else None
    if start is not None and end is not None and start > end:
        raise ApiError(400, "invalid_parameter", "start_date must not be after end_date")
    rows, total = await CallRepository(session).list(
        principal.account_id,
        trunk_id=trunk_id,
        status=status,
        start_date=start,
        end_date=end,
        limit=limit,
        offset=offset,
    )
    return schemas.CallList(
        calls=[schemas.CallSummary.model_validate(call_summary(r)) for r in rows],
        pagination=schemas.Pagination(limit=limit, offset=offset, total=total),
    )


@router.get(
    "/{call_id}",
    response_model=schemas.CallDetail,
    responses=_errors(401, 404, 429),
    summary="Get call details",
)
async def get_call(
    call_id: str, principal: PrincipalDep, session: SessionDep
) -> schemas.CallDetail:
    """One call of the caller's account, with metrics, turns and the SIP trace."""
    row = await CallRepository(session).get(principal.account_id, call_id)
    if row is None:
        raise not_found("Call", call_id[:64])
    return schemas.CallDetail.model_validate(call_detail(row))
