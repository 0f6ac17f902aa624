"""The provider benchmark's rows (bench/providers.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

import pytest
from bench import providers
from bench.procs import Worker

pytestmark = pytest.mark.unit

ECHO = cast(Worker, SimpleNamespace(pid=1))  # the custom echo agent
FAKE = cast(Worker, SimpleNamespace(pid=2))  # the row's provider fake


@pytest.mark.parametrize("kind", ["openai", "elevenlabs"])
def test_a_provider_rows_agent_cpu_is_its_fakes(kind: str) -> None:
    # the OpenAI and ElevenLabs calls talk to the provider fake; the echo agent sits idle
    assert providers.agent_process(kind, ECHO, FAKE) is FAKE


def test_the_custom_rows_agent_is_the_echo_agent() -> None:
    assert providers.agent_process("custom", ECHO, FAKE) is ECHO
