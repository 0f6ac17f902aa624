"""API input limits against the widths of the columns they are stored in (found by review:
openai_voice and openai_model allowed 200 characters into VARCHAR(50) and VARCHAR(100), which
PostgreSQL refuses — a 500)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import String
from sqlalchemy.orm import InstrumentedAttribute

from telepath.api import registration_input, trunk_input
from telepath.calls.ports import SIP_USERNAME_MAX
from telepath.db.models import Trunk, TrunkRegistration

IDENT_MAX = 200  # trunk_input.IDENT: 1 + 199 characters


@pytest.mark.parametrize(
    ("column", "limit"),
    [
        (Trunk.name, trunk_input.NAME_MAX),
        (Trunk.sip_username, SIP_USERNAME_MAX),
        (Trunk.openai_model, trunk_input.OPENAI_MODEL_MAX),
        (Trunk.openai_voice, trunk_input.OPENAI_VOICE_MAX),
        (Trunk.elevenlabs_agent_id, IDENT_MAX),
        (TrunkRegistration.registrar, registration_input.REGISTRAR_MAX),
        (TrunkRegistration.outbound_proxy, registration_input.REGISTRAR_MAX),
        (TrunkRegistration.domain, registration_input.DOMAIN_MAX),
        (TrunkRegistration.username, registration_input.USERNAME_MAX),
        (TrunkRegistration.auth_username, registration_input.USERNAME_MAX),
    ],
)
def test_input_limits_fit_their_columns(column: InstrumentedAttribute[Any], limit: int) -> None:
    kind = column.type
    assert isinstance(kind, String) and kind.length is not None
    assert limit <= kind.length


def test_ident_allows_200_characters() -> None:
    assert trunk_input.IDENT.fullmatch("a" * IDENT_MAX)
    assert not trunk_input.IDENT.fullmatch("a" * (IDENT_MAX + 1))
