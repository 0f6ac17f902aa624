"""``/v1/calls``: call records of the caller's account, with filters and pagination."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query

from telepath.api import schemas
from telepath.api.deps import PrincipalDep, SessionDep
from telepath.api.errors import LIMIT_MAX, OFFSET_MAX, ApiError, documented_errors, not_found
from telepath.db.calls_repository import CallRepository, call_detail, call_summary

router = APIRouter(prefix="/v1/calls", tags=["calls"])

CALL_STATUSES = ("connected", "disconnected", "failed")
_WEEK_ONLY = re.compile(r"\d{4}-?W\d{2}")  # ISO 8601 week date without a day
_FRACTION = re.compile(r"\d[.,]\d")  # a decimal fraction (of the seconds: dates have none)
# The time of a date-time, up to its fraction or offset: "10", "10:36", "1036", "10:36:42"...
_TIME = re.compile(r"[T ](\d{2}(?::?\d{2}){0,2})(?:[.,]\d+)?(?:Z|[+-]\d{2}(?::?\d{2})?)?$")
_TIME_SPANS = {2: timedelta(hours=1), 4: timedelta(minutes=1)}  # by digits named; else 1 s


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "Invalid query parameter (error.code invalid_parameter)",
        401: "Missing or invalid API key",
        404: "Call not found in this account",
        429: "Rate limit exceeded",
    }
    return documented_errors(descriptions, *codes)


def parse_date(name: str, value: str, *, inclusive_end: bool) -> datetime:
    """An ISO 8601 date or date-time as aware UTC (naive values are UTC).

    A bound covers the whole of what it names, so an inclusive upper bound (``inclusive_end``)
    is its last instant and a lower bound its first:

    - a date, in any form ``date.fromisoformat`` takes (``2024-03-05``, ``20240305``,
      ``2024-W10-2``, ``2024W102``), its whole day (in UTC);
    - an ISO week without a day (``2024-W10``, ``2024W10``), its whole week;
    - a date-time without a fraction of a second, its whole second — or minute, or hour, when
      it names no finer (``...T10:36``, ``...T10``): the API shows whole seconds while records
      keep microseconds, so a call shown as ``...T10:36:42Z`` is in ``end_date=...T10:36:42Z``
      ("on or before"). A fraction given is taken as written.

    A value outside the representable range once in UTC (``0001-01-01T00:30:00+01:00``) is
    a 400 like any invalid one.
    """
    text = value.strip()
    # An unencoded '+' in a query string arrives as a space: "10:30:00 00:00".
    if "T" in text and " " in text:
        text = text.replace(" ", "+")
    invalid = ApiError(400, "invalid_parameter", f"{name} must be an ISO 8601 date or date-time")
    if len(text) > 40:
        raise invalid
    try:
        try:
            day: date | None = date.fromisoformat(text)
        except ValueError:
            day = None
        if day is not None:
            first = datetime(day.year, day.month, day.day, tzinfo=UTC)
            span = timedelta(days=7 if _WEEK_ONLY.fullmatch(text) else 1)
        else:
            parsed = datetime.fromisoformat(text)
            first = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
            if _FRACTION.search(text):
                span = timedelta(microseconds=1)
            else:
                named = _TIME.search(text)
                digits = len(named.group(1).replace(":", "")) if named else 6
                span = _TIME_SPANS.get(digits, timedelta(seconds=1))
        # (first + span) could overflow where its last instant does not: 9999-12-31.
        return first + (span - timedelta(microseconds=1)) if inclusive_end else first
    except (ValueError, OverflowError):
        raise invalid from None


@router.get(
    "",
    response_model=schemas.CallList,
    responses=_errors(400, 401, 429),
    summary="List calls",
)
async def list_calls(
    principal: PrincipalDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=LIMIT_MAX)] = 20,
    offset: Annotated[int, Query(ge=0, le=OFFSET_MAX)] = 0,
    trunk_id: Annotated[str | None, Query(max_length=64)] = None,
    status: Annotated[
        str | None,
        Query(
            description="connected (answered: up, or ended normally), disconnected (answered, "
            "then cut by a failure) or failed (never answered)",
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
    start = parse_date("start_date", start_date, inclusive_end=False) if start_date else None
    end = parse_date("end_date", end_date, inclusive_end=True) if end_date else None
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
        raise not_found("Call", call_id)
    return schemas.CallDetail.model_validate(call_detail(row))
