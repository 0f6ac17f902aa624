"""Fixtures shared by the webhook tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from telepath.webhooks.dispatcher import WebhookDispatcher
from tests.integration.conftest import Api


@pytest.fixture
async def make_dispatcher(api: Api) -> AsyncIterator[Callable[..., WebhookDispatcher]]:
    """Dispatchers on the test's database (5 s request timeout, 10 s first back-off, http://
    allowed, unless given), closed after the test."""
    made: list[WebhookDispatcher] = []

    def make(**kwargs: Any) -> WebhookDispatcher:
        # the receivers are http:// on loopback (TELEPATH_ALLOW_INSECURE_WEBHOOK_URLS on)
        options: dict[str, Any] = {"timeout_s": 5.0, "backoff_base_s": 10.0, "allow_insecure": True}
        options.update(kwargs)
        dispatcher = WebhookDispatcher(api.state.sessions, api.state.keyring, **options)
        made.append(dispatcher)
        return dispatcher

    yield make
    for dispatcher in made:
        await dispatcher.aclose()
