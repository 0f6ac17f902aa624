"""Request dependencies: a database session and the authenticated account."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from telepath.api.errors import ApiError
from telepath.api.state import ApiState
from telepath.db.base import utcnow
from telepath.db.engine import transient_error
from telepath.db.repository import AccountRepository

logger = logging.getLogger(__name__)

BEARER_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def get_state(request: Request) -> ApiState:
    """The ApiState attached to the application."""
    state: ApiState = request.app.state.telepath
    return state


async def get_session(
    state: Annotated[ApiState, Depends(get_state)],
) -> AsyncIterator[AsyncSession]:
    """One session per request; committed by the handler that writes.

    Used with ``scope="function"`` (``SessionDep``): the session is closed, and its pooled
    connection given back, as soon as the handler returns or raises — before the answer is
    sent, not after. Closed after, a client reading a large answer slowly (a call record with
    its SIP trace) held a connection of the pool the gateway shares for as long as it liked
    (found by review). A connection that dies just then (a failover) is logged, not raised:
    the handler's answer stands."""
    session = state.sessions()
    try:
        yield session
    finally:
        try:
            await session.close()
        except Exception as exc:
            if not transient_error(exc):
                raise
            logger.warning(
                "database connection lost closing a request's session: %s", type(exc).__name__
            )


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key and the account it belongs to."""

    key_id: str
    account_id: str


SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


async def authenticate(
    request: Request,
    state: Annotated[ApiState, Depends(get_state)],
    session: SessionDep,
) -> Principal:
    """Resolve ``Authorization: Bearer <key>`` to a principal and apply the rate limit.

    The key's transaction is ended here, always, giving its connection back to the pool: the
    handler may next read a request body, which a client can send as slowly as it likes (up
    to ``ApiState.body_timeout_s``), and the key's connection was held all that time — a
    handful of slow uploads with one valid key took the whole pool the gateway shares (found
    by review). The cost is one COMMIT per request, and the handler's first query takes a
    connection from the pool again."""
    header = request.headers.get("authorization")
    if not header or not header.strip():
        raise ApiError(
            401,
            "missing_api_key",
            "Missing API key: send 'Authorization: Bearer <key>'",
            BEARER_CHALLENGE,
        )
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    invalid = ApiError(401, "invalid_api_key", "The API key provided is invalid", BEARER_CHALLENGE)
    if scheme.lower() != "bearer" or not token or len(token) > 200:
        raise invalid
    # Failed lookups are limited per client address, checked before the lookup: each costs a
    # query from the pool the gateway shares (found by review). See AuthFailureLimiter.
    address = request.client.host if request.client else ""
    wait = state.auth_failures.retry_after(address, token)
    if wait is not None:
        raise ApiError(
            429,
            "rate_limited",
            "Too many failed authentications from this address; retry after the time in "
            "Retry-After",
            {"Retry-After": str(wait)},
        )
    repo = AccountRepository(session)
    key = await repo.authenticate(token)
    if key is None:
        state.auth_failures.failed(address, token)  # and a revoked key is no longer trusted
        raise invalid
    state.auth_failures.succeeded(token)
    decision = state.limiter.hit(key.id)
    request.state.rate_headers = decision.headers()
    if not decision.allowed:
        raise ApiError(
            429,
            "rate_limited",
            "Rate limit exceeded; retry after the time in X-RateLimit-Reset",
            decision.headers(),
        )
    minute = int(time.monotonic()) // 60
    if state.key_touch.get(key.id) != minute:
        state.key_touch[key.id] = minute
        await repo.touch(key.id, utcnow())
    await session.commit()
    return Principal(key_id=key.id, account_id=key.account_id)


PrincipalDep = Annotated[Principal, Depends(authenticate)]
StateDep = Annotated[ApiState, Depends(get_state)]
