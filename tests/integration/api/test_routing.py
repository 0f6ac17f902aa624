"""Paths no route serves (found by review): a path with a trailing slash was Starlette's bare
``307`` redirect — an empty body, a ``Location`` built from the request's Host header, sent
before authentication; a client following it to ``http://`` sent its body (SIP password,
provider keys) again. Now such a path is what any other unknown path is: the ``404`` envelope."""

from __future__ import annotations

import pytest
from tests.integration.api.test_trunk_create import err
from tests.integration.conftest import Api

pytestmark = pytest.mark.integration

SLASHED = [
    ("GET", "/v1/trunks/"),
    ("POST", "/v1/trunks/"),
    ("GET", "/v1/trunks/conn_x/"),
    ("PATCH", "/v1/trunks/conn_x/"),
    ("DELETE", "/v1/trunks/conn_x/"),
    ("POST", "/v1/trunks/conn_x/rotate-password/"),
    ("GET", "/v1/calls/"),
    ("GET", "/v1/calls/call_x/"),
    ("GET", "/v1/webhooks/"),
    ("POST", "/v1/webhooks/"),
    ("DELETE", "/v1/webhooks/wh_x/"),
]


@pytest.mark.parametrize("authenticated", [True, False])
@pytest.mark.parametrize(("method", "path"), SLASHED)
async def test_a_trailing_slash_is_not_found_not_redirected(
    api: Api, method: str, path: str, authenticated: bool
) -> None:
    headers = {"Host": "attacker.example", **(api.auth() if authenticated else {})}
    resp = await api.client.request(
        method, path, json={"sip_password": "s3cur3P@ssw0rd!"}, headers=headers
    )
    assert "location" not in resp.headers
    err(resp, 404, "not_found", "No such endpoint")
