"""``/v1/trunks``: create, list, read, update, delete, rotate the SIP password."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel

from telepath.api import schemas
from telepath.api.deps import PrincipalDep, SessionDep, StateDep
from telepath.api.errors import LIMIT_MAX, OFFSET_MAX, documented_errors
from telepath.api.trunk_input import parse_create, parse_update, read_body
from telepath.api.trunk_service import TrunkService, iso

router = APIRouter(prefix="/v1/trunks", tags=["trunks"])


def _errors(*codes: int, conflict: str | None = None) -> dict[int | str, dict[str, Any]]:
    """``codes`` documented; ``conflict``: this route's own wording of its 409."""
    descriptions = {
        400: "Invalid request (see error.code)",
        401: "Missing or invalid API key, or provider credentials rejected",
        404: "Trunk not found in this account",
        408: "The request body was not received in time (request_timeout)",
        409: "sip_username already exists, or an inbound number is another trunk's",
        413: "Request body too large",
        429: "Rate limit exceeded",
        502: "The AI provider could not be reached to validate credentials",
    }
    if conflict is not None:
        descriptions[409] = conflict
    return documented_errors(descriptions, *codes)


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """``node`` with every ``{"$ref": "#/$defs/X"}`` replaced by ``X``'s schema."""
    if isinstance(node, dict):
        ref = node.get("$ref", "")
        if ref.startswith("#/$defs/"):
            return _inline(defs[ref.removeprefix("#/$defs/")], defs)
        return {key: _inline(value, defs) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    return node


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    # The nested models' schemas inline: a "#/$defs/..." reference would point at the root of
    # the OpenAPI document, not of this schema.
    schema = model.model_json_schema()
    schema = _inline(schema, schema.pop("$defs", {}))
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
    }


@router.post(
    "",
    status_code=201,
    response_model=schemas.TrunkCreated,
    responses=_errors(400, 401, 408, 409, 413, 429, 502),
    openapi_extra=_body_doc(schemas.TrunkCreate),
    summary="Create a trunk",
)
async def create_trunk(
    request: Request, principal: PrincipalDep, state: StateDep, session: SessionDep
) -> schemas.TrunkCreated:
    """Create a SIP trunk linking a SIP identity to an AI agent."""
    raw = await read_body(request, timeout_s=state.body_timeout_s)
    data = parse_create(raw, allow_insecure=state.settings.allow_insecure_agent_urls)
    service = TrunkService(state, session, principal.account_id)
    return service.created_view(await service.create(data))


@router.get(
    "",
    response_model=schemas.TrunkList,
    responses=_errors(400, 401, 429),
    summary="List trunks",
)
async def list_trunks(
    principal: PrincipalDep,
    state: StateDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=LIMIT_MAX)] = 20,
    offset: Annotated[int, Query(ge=0, le=OFFSET_MAX)] = 0,
    status: Annotated[Literal["active", "inactive", "error"] | None, Query()] = None,
) -> schemas.TrunkList:
    """Trunks of the caller's account, newest first, each with today's call ``metrics``
    (since 00:00 UTC: calls, success rate, mean agent latency; see ``TrunkMetrics``)."""
    service = TrunkService(state, session, principal.account_id)
    rows, total = await service.repo.list(
        principal.account_id, status=status, limit=limit, offset=offset
    )
    return schemas.TrunkList(
        trunks=await service.views(rows),
        pagination=schemas.Pagination(limit=limit, offset=offset, total=total),
    )


@router.get(
    "/{trunk_id}",
    response_model=schemas.Trunk,
    responses=_errors(401, 404, 429),
    summary="Get a trunk",
)
async def get_trunk(
    trunk_id: str, principal: PrincipalDep, state: StateDep, session: SessionDep
) -> schemas.Trunk:
    """One trunk of the caller's account."""
    service = TrunkService(state, session, principal.account_id)
    [view] = await service.views([await service.get(trunk_id)])
    return view


@router.patch(
    "/{trunk_id}",
    response_model=schemas.Trunk,
    responses=_errors(400, 401, 404, 408, 409, 413, 429, 502),
    openapi_extra=_body_doc(schemas.TrunkUpdate),
    summary="Update a trunk",
)
async def update_trunk(
    trunk_id: str,
    request: Request,
    principal: PrincipalDep,
    state: StateDep,
    session: SessionDep,
) -> schemas.Trunk:
    """Change only the fields present in the body; changed provider keys are re-validated."""
    # The body first: reading it after the trunk kept that query's database connection for as
    # long as the client took to send it (found by review).
    raw = await read_body(request, timeout_s=state.body_timeout_s)
    service = TrunkService(state, session, principal.account_id)
    trunk = await service.get(trunk_id)
    fields = parse_update(
        raw,
        provider=trunk.ai_provider,
        allow_insecure=state.settings.allow_insecure_agent_urls,
    )
    [view] = await service.views([await service.update(trunk_id, fields)])
    return view


@router.delete(
    "/{trunk_id}",
    status_code=204,
    response_class=Response,
    responses=_errors(401, 404, 429),
    summary="Delete a trunk",
)
async def delete_trunk(
    trunk_id: str, principal: PrincipalDep, state: StateDep, session: SessionDep
) -> Response:
    """Delete a trunk; its SIP identity stops working at once."""
    await TrunkService(state, session, principal.account_id).delete(trunk_id)
    return Response(status_code=204)


async def _rotate(
    trunk_id: str, principal: PrincipalDep, state: StateDep, session: SessionDep
) -> schemas.PasswordRotated:
    trunk, password = await TrunkService(state, session, principal.account_id).rotate_password(
        trunk_id
    )
    return schemas.PasswordRotated(
        id=trunk.id,
        sip_username=trunk.sip_username,
        sip_password=password,
        rotated_at=iso(trunk.password_rotated_at) or "",
    )


for _path in ("/{trunk_id}/rotate-password", "/{trunk_id}/rotate-sip-password"):
    router.add_api_route(
        _path,
        _rotate,
        methods=["POST"],
        response_model=schemas.PasswordRotated,
        responses=_errors(
            401,
            404,
            409,
            429,
            conflict="The SIP password was rotated by another request at the same time",
        ),
        summary="Rotate the SIP password",
        description="Generate a new SIP password, returned only in this response. "
        "The old password stops working immediately.",
    )
