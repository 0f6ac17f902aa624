"""``/v1/webhooks``: the account's webhook endpoints (create, list, read, delete).

The signing secret (``whsec_...``) is returned once, by create; it is stored encrypted with the
master keyring, bound to the endpoint id.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from telepath.api import schemas
from telepath.api.deps import PrincipalDep, SessionDep, StateDep
from telepath.api.errors import LIMIT_MAX, OFFSET_MAX, ApiError, documented_errors, not_found
from telepath.api.trunk_input import check_url as check_absolute_url
from telepath.api.trunk_input import parse_json_object, read_body
from telepath.db.base import utcnow
from telepath.db.calls_repository import iso
from telepath.db.models import WebhookEndpoint, webhook_secret_context
from telepath.db.repository import AccountRepository
from telepath.db.webhook_store import PRUNE_BATCH, WebhookRepository, delete_endpoint_deliveries
from telepath.secrets.tokens import new_id
from telepath.webhooks.events import ALL_EVENTS, EVENT_TYPES
from telepath.webhooks.signing import new_secret
from telepath.webhooks.sink import endpoints_changed

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

MAX_ENDPOINTS_PER_ACCOUNT = 20
MAX_EVENTS_LISTED = 50  # duplicates allowed, then removed
DELETE_BATCH = PRUNE_BATCH  # outbox rows deleted per transaction when an endpoint is deleted
_FIELDS = ("url", "events")
_EVENTS_MESSAGE = "events must be a non-empty list of: " + ", ".join((*EVENT_TYPES, ALL_EVENTS))


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "Invalid request (see error.code)",
        401: "Missing or invalid API key",
        404: "Webhook not found in this account",
        408: "The request body was not received in time (request_timeout)",
        413: "Request body too large",
        429: "Rate limit exceeded",
    }
    return documented_errors(descriptions, *codes)


def _bad(code: str, message: str) -> ApiError:
    return ApiError(400, code, message)


def check_url(value: str, *, allow_insecure: bool) -> str:
    """An absolute https:// URL (http:// too when insecure URLs are allowed), no credentials."""
    return check_absolute_url(
        value,
        field="url",
        code="invalid_url",
        schemes=("https", "http"),
        allow_insecure=allow_insecure,
    )


def check_events(value: list[Any]) -> list[str]:
    """The subscribed event types, de-duplicated in order (``*`` alone means all)."""
    if not value or len(value) > MAX_EVENTS_LISTED:
        raise _bad("invalid_events", _EVENTS_MESSAGE)
    events: list[str] = []
    for item in value:
        if not isinstance(item, str) or item not in (*EVENT_TYPES, ALL_EVENTS):
            raise _bad("invalid_events", _EVENTS_MESSAGE)
        if item not in events:
            events.append(item)
    return [ALL_EVENTS] if ALL_EVENTS in events else events


def parse_create(raw: bytes, *, allow_insecure: bool) -> tuple[str, list[str]]:
    """Validate a ``POST /v1/webhooks`` body; raise the first problem as an ApiError."""
    body = parse_json_object(raw)
    for key in body:
        if key not in _FIELDS:
            raise _bad("unknown_field", f"Unknown field: {key[:64]}")
    for key in _FIELDS:
        if body.get(key) is None or body.get(key) == "":
            raise _bad("missing_required_field", f"{key} is required")
    if not isinstance(body["url"], str):
        raise _bad("invalid_field_type", "url must be a string")
    if not isinstance(body["events"], list):
        raise _bad("invalid_field_type", "events must be a list of strings")
    url = check_url(body["url"].strip(), allow_insecure=allow_insecure)
    return url, check_events(body["events"])


def _view(endpoint: WebhookEndpoint) -> schemas.Webhook:
    return schemas.Webhook(
        id=endpoint.id,
        url=endpoint.url,
        events=list(endpoint.events),
        active=endpoint.active,
        created_at=iso(endpoint.created_at) or "",
    )


@router.post(
    "",
    status_code=201,
    response_model=schemas.WebhookCreated,
    responses=_errors(400, 401, 408, 413, 429),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schemas.WebhookCreate.model_json_schema()}},
        }
    },
    summary="Create a webhook endpoint",
)
async def create_webhook(
    request: Request, principal: PrincipalDep, state: StateDep, session: SessionDep
) -> schemas.WebhookCreated:
    """Subscribe a URL to events; the response holds the signing secret, shown only once."""
    raw = await read_body(request, timeout_s=state.body_timeout_s)
    url, events = parse_create(raw, allow_insecure=state.settings.allow_insecure_webhook_urls)
    repo = WebhookRepository(session)
    # Count and insert as the account's only writer: concurrent creates must not all count
    # below the limit and all insert (found by review).
    await AccountRepository(session).lock(principal.account_id)
    if await repo.count_endpoints(principal.account_id) >= MAX_ENDPOINTS_PER_ACCOUNT:
        raise _bad(
            "too_many_webhooks",
            f"An account may have at most {MAX_ENDPOINTS_PER_ACCOUNT} webhook endpoints",
        )
    endpoint_id = new_id("wh")
    secret = new_secret()
    endpoint = WebhookEndpoint(
        id=endpoint_id,
        account_id=principal.account_id,
        url=url,
        events=events,
        secret_enc=state.keyring.encrypt(secret, webhook_secret_context(endpoint_id)),
        active=True,
        created_at=utcnow(),
    )
    repo.add_endpoint(endpoint)
    await session.commit()
    endpoints_changed()
    return schemas.WebhookCreated(**_view(endpoint).model_dump(), secret=secret)


@router.get(
    "",
    response_model=schemas.WebhookList,
    responses=_errors(400, 401, 429),
    summary="List webhook endpoints",
)
async def list_webhooks(
    principal: PrincipalDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=LIMIT_MAX)] = 20,
    offset: Annotated[int, Query(ge=0, le=OFFSET_MAX)] = 0,
) -> schemas.WebhookList:
    """The account's webhook endpoints, newest first (secrets are never listed)."""
    rows, total = await WebhookRepository(session).list_endpoints(
        principal.account_id, limit=limit, offset=offset
    )
    return schemas.WebhookList(
        webhooks=[_view(r) for r in rows],
        pagination=schemas.Pagination(limit=limit, offset=offset, total=total),
    )


@router.get(
    "/{webhook_id}",
    response_model=schemas.Webhook,
    responses=_errors(401, 404, 429),
    summary="Get a webhook endpoint",
)
async def get_webhook(
    webhook_id: str, principal: PrincipalDep, session: SessionDep
) -> schemas.Webhook:
    """One webhook endpoint of the caller's account."""
    endpoint = await WebhookRepository(session).get_endpoint(principal.account_id, webhook_id)
    if endpoint is None:
        raise not_found("Webhook", webhook_id)
    return _view(endpoint)


@router.delete(
    "/{webhook_id}",
    status_code=204,
    response_class=Response,
    responses=_errors(401, 404, 429),
    summary="Delete a webhook endpoint",
)
async def delete_webhook(
    webhook_id: str, principal: PrincipalDep, session: SessionDep, state: StateDep
) -> Response:
    """Delete an endpoint; its undelivered events are dropped, a batch at a time first
    (``delete_endpoint_deliveries``). When two requests delete it at once, the one whose
    DELETE finds it gone answers the documented 404."""
    repo = WebhookRepository(session)
    if await repo.get_endpoint(principal.account_id, webhook_id) is None:
        raise not_found("Webhook", webhook_id)
    await session.rollback()  # nothing of this request's own is open while the batches run
    await delete_endpoint_deliveries(
        state.sessions, principal.account_id, webhook_id, batch_size=DELETE_BATCH
    )
    if not await repo.delete_endpoint(principal.account_id, webhook_id):
        await session.rollback()
        raise not_found("Webhook", webhook_id)
    await session.commit()
    endpoints_changed()
    return Response(status_code=204)
