"""Per-trunk challenge: with the installation default (SHA-256 first, then MD5; RFC 8760 §2.4) a
trunk whose carrier only does MD5 can be set to ``sip_digest_algorithms=MD5``. Its INVITEs are
then challenged with MD5 only, so UACs that abort on a SHA-256 challenge (baresip 1.0) or read
only the first one (SIPp 3.6) can authenticate; other trunks and unknown users keep both."""

from __future__ import annotations

from typing import Any

import pytest

from telepath.cli.gateway import Gateway
from telepath.testing.fake_custom import FakeTelepathAgent
from tests.integration.conftest import Api
from tests.interop.calls.conftest import create_trunk
from tests.interop.sip.uac import CallLeg, Uac, challenge_params

pytestmark = pytest.mark.interop

MEDIA_PORT = 40002


@pytest.fixture
def settings_overrides(settings_overrides: dict[str, Any]) -> dict[str, Any]:
    return {**settings_overrides, "sip_digest_algorithms": "SHA-256,MD5"}  # the default


def algorithms(leg: CallLeg) -> list[str]:
    return [challenge_params(c).get("algorithm", "MD5").upper() for c in leg.challenges]


async def test_md5_trunk_is_challenged_with_md5_only(api: Api, gateway: Gateway, uac: Uac) -> None:
    async with FakeTelepathAgent(agent="silent") as agent:
        await create_trunk(
            api,
            "legacy",
            "legacy-pass-1",
            ai_provider="custom",
            custom_endpoint=agent.url,
            sip_digest_algorithms="MD5",
        )
        await create_trunk(
            api, "modern", "modern-pass-1", ai_provider="custom", custom_endpoint=agent.url
        )
        legacy, modern, unknown = (
            CallLeg(uac, "legacy"),
            CallLeg(uac, "modern"),
            CallLeg(uac, "nobody"),
        )
        for leg in (legacy, modern, unknown):
            await leg.challenge(MEDIA_PORT)
        assert algorithms(legacy) == ["MD5"]
        assert algorithms(modern) == ["SHA-256", "MD5"]
        assert algorithms(unknown) == ["SHA-256", "MD5"]
        ok = await legacy.answered(legacy.authenticated_invite("legacy-pass-1", MEDIA_PORT))
        assert ok.status == 200
        uac.send(legacy.ack())
