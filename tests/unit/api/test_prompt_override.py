"""How an ElevenLabs agent's answer is read for the prompt override: refused only when it
shows the override not enabled; an answer that does not say is not held against the trunk."""

from __future__ import annotations

import json
from typing import Any

import pytest

from telepath.api.provider_checks import _prompt_override

pytestmark = pytest.mark.unit


def agent(overrides: Any) -> bytes:
    return json.dumps({"agent_id": "a", "platform_settings": {"overrides": overrides}}).encode()


PROMPT_ON = {"conversation_config_override": {"agent": {"prompt": {"prompt": True}}}}


@pytest.mark.parametrize(
    ("raw", "enabled"),
    [
        (agent(PROMPT_ON), True),
        (agent({"conversation_config_override": {"agent": {"prompt": {"prompt": False}}}}), False),
        # within an overrides object a field left out is not enabled (each must be turned on)
        (agent({"conversation_config_override": {"agent": {"first_message": True}}}), False),
        (agent({"conversation_config_override": None}), False),
        (agent({}), False),
        (agent({"conversation_config_override": {"agent": {"prompt": {"prompt": "yes"}}}}), False),
        # no overrides object to read: unknown
        (agent(None), None),
        (json.dumps({"agent_id": "a"}).encode(), None),
        (json.dumps({"platform_settings": []}).encode(), None),
        (b"[]", None),
        (b"", None),
        (b"not json", None),
        (b"\xff\xfe", None),
        (b"[" * 100_000, None),  # nested past the parser's recursion limit
    ],
)
def test_prompt_override_is_read_from_the_agent(raw: bytes, enabled: bool | None) -> None:
    assert _prompt_override(raw) is enabled
