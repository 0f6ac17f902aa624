"""JSON nested deeper than the interpreter's recursion limit (json's scanner recurses once per
level) from a provider or an agent: a protocol error like any other malformed frame.

It raised RecursionError: the read loop logged a traceback at ERROR and ended the call as
"internal bridge error"; an OpenAI tool call's arguments did the same, and an ElevenLabs
signed-URL answer failed the call's set-up the same way.
"""

from __future__ import annotations

from typing import Any

import pytest

from telepath.bridges.base import BridgeConnectError, BridgeProtocolError, ElevenLabsConfig
from telepath.bridges.custom import events as custom
from telepath.bridges.elevenlabs import bridge as el_bridge
from telepath.bridges.elevenlabs import events as el
from telepath.bridges.openai import bridge as oai_bridge
from telepath.bridges.openai import events as oai

pytestmark = pytest.mark.unit

DEEP = "[" * 200_000


@pytest.mark.parametrize(
    "parse",
    [
        custom.parse_agent_message,
        custom.parse_gateway_message,
        custom.parse_twilio_agent_event,
        el.parse_server_message,
        el.parse_client_message,
        oai.parse_server_event,
        oai.parse_client_event,
    ],
)
@pytest.mark.parametrize("text", [DEEP, '{"type":"audio","x":' + DEEP + "}"])
def test_json_nested_too_deep_is_a_malformed_frame(parse: Any, text: str) -> None:
    with pytest.raises(BridgeProtocolError):
        parse(text)


def test_the_per_frame_shortcuts_decline_it() -> None:
    assert custom.agent_audio_payload(DEEP) is None
    assert custom.twilio_media_payload(DEEP) is None


def test_an_openai_transfer_s_arguments_nested_too_deep_are_no_target() -> None:
    assert oai_bridge._transfer_target(DEEP) is None  # answered "target must be …", call goes on


async def test_an_elevenlabs_signed_url_answer_nested_too_deep_is_malformed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def answer(*args: object) -> tuple[int, bytes]:
        return 200, b"[" * (el_bridge.MAX_ANSWER_BYTES - 1)

    monkeypatch.setattr(el_bridge, "_get", answer)
    config = ElevenLabsConfig(api_key="sk-test", agent_id="agent_1", api_base="http://127.0.0.1:9")
    bridge = el_bridge.ElevenLabsBridge(config)
    with pytest.raises(BridgeConnectError, match="malformed"):
        await bridge._conversation_url()
