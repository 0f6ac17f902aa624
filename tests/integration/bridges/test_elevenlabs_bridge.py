"""The ElevenLabs bridge against the local fake, over real loopback HTTP and WebSockets."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import typing
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from elevenlabs.types.client_event import ClientEvent
from elevenlabs.types.conversation_initiation_client_data_request_input import (
    ConversationInitiationClientDataRequestInput,
)
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from telepath.bridges.base import (
    AgentClear,
    AgentConnected,
    AgentDisconnected,
    AgentError,
    AgentHangup,
    AgentTranscript,
    AgentTransfer,
    BridgeAuthError,
    BridgeConnectError,
    BridgeError,
    BridgeReason,
    ElevenLabsConfig,
)
from telepath.bridges.elevenlabs.bridge import ElevenLabsBridge
from telepath.bridges.http_client import SharedHttpClient
from telepath.bridges.tls import client_context
from telepath.testing.fake_elevenlabs import FakeElevenLabs
from telepath.testing.fake_provider_http import PROMPT_OVERRIDE, FakeProviderHttp
from telepath.testing.tones import dominant_frequency, g711_to_pcm16, sine_g711, sine_pcm16
from tests.certs import self_signed

from .elevenlabs_spec import validate_client, validate_server
from .helpers import (
    META,
    a_second_of_a_call,
    assert_no_extra,
    audio_of,
    collect_until,
    log_everything,
    wait_for,
)

SERVER_TYPES = set(typing.get_args(typing.get_args(ClientEvent)[0])) | {"error"}


def bridge_for(
    fake: FakeElevenLabs, key: str | None = "sk-valid-el", **kw: Any
) -> ElevenLabsBridge:
    cfg = ElevenLabsConfig(
        api_key=key, agent_id="agent_1", api_base=fake.base_http, ws_url=fake.url, **kw
    )
    return ElevenLabsBridge(cfg, connect_timeout_s=2.0)


# META carries a system prompt, sent as the prompt override: the agent must enable it (a real
# agent's default is not to; test_an_agent_refuses_a_prompt_override_it_does_not_enable)
PROMPT_ENABLED = frozenset({PROMPT_OVERRIDE})


@pytest.fixture
async def fake(request: pytest.FixtureRequest) -> AsyncIterator[FakeElevenLabs]:
    params = {"allowed_overrides": PROMPT_ENABLED, **getattr(request, "param", {})}
    async with FakeElevenLabs(**params) as server:
        yield server


def assert_sdk_valid(fake: FakeElevenLabs) -> None:
    """Both directions match the official elevenlabs SDK's types and, message by message, the
    AsyncAPI contract (``elevenlabs_spec``): every message the fake sent and every one the
    bridge sent."""
    assert fake.protocol_errors == []
    init = dict(fake.received[0])
    assert init.pop("type") == "conversation_initiation_client_data"
    assert_no_extra(ConversationInitiationClientDataRequestInput.model_validate(init))
    for message in fake.sent:
        assert message["type"] in SERVER_TYPES
        validate_server(message)
    for message in fake.received:
        validate_client(message)


async def test_ulaw_agent_passes_audio_through_both_ways(fake: FakeElevenLabs) -> None:
    bridge = bridge_for(fake)
    await bridge.start(META)
    events = await collect_until(bridge, audio_ms=1000)
    assert events[0] == AgentConnected("elevenlabs", "conv_fake_1")
    assert AgentTranscript("agent", "Hello from the fake agent.") in events
    audio = audio_of(events)
    assert len(audio) == 8000
    assert dominant_frequency(g711_to_pcm16(audio)) == pytest.approx(440, abs=8)
    frames = [sine_g711(1000, 20, phase=n * 160) for n in range(5)]
    for frame in frames:
        await bridge.send_audio(frame)
    await wait_for(lambda: len(fake.caller_audio) == 800)
    assert bytes(fake.caller_audio) == b"".join(frames)  # untouched μ-law
    await wait_for(lambda: fake.pongs == [1])
    await bridge.close()
    assert (await collect_until(bridge))[-1] == AgentDisconnected(BridgeReason.CALLER_HANGUP, 1000)

    signed = [h for h in fake.handshakes if "conversation_signature" in h.path]
    assert len(signed) == 1 and "agent_id=agent_1" in signed[0].path
    init = fake.received[0]
    assert init["conversation_config_override"] == {
        "agent": {"prompt": {"prompt": "You are a test agent."}}
    }
    assert init["dynamic_variables"] == {
        "caller_number": "+14155550123",
        "called_number": "+18005551212",
        "call_id": "call_test1",
    }
    assert_sdk_valid(fake)


async def test_neither_the_key_nor_the_signed_url_is_logged_at_debug(
    fake: FakeElevenLabs, caplog: pytest.LogCaptureFixture
) -> None:
    # websockets' own client logger prints the request line (the signed URL's query) and
    # every header at DEBUG; the REST request carries the key as xi-api-key
    log_everything(caplog)
    bridge = bridge_for(fake)
    await a_second_of_a_call(bridge, META)
    (signed,) = [h.path for h in fake.handshakes if "conversation_signature" in h.path]
    signature = parse_qs(urlsplit(signed).query)["conversation_signature"][0]
    assert signature
    assert "sk-valid-el" not in caplog.text
    assert signature not in caplog.text


@pytest.mark.parametrize("fake", [{"formats": ("pcm_16000", "pcm_16000")}], indirect=True)
async def test_pcm16_agent_is_converted(fake: FakeElevenLabs) -> None:
    bridge = bridge_for(fake)
    await bridge.start(replace(META, system_prompt=None))
    audio = audio_of(await collect_until(bridge, audio_ms=900))
    assert dominant_frequency(g711_to_pcm16(audio)) == pytest.approx(440, abs=8)
    frames = [sine_g711(1000, 20, phase=n * 160) for n in range(10)]
    for frame in frames:
        await bridge.send_audio(frame)
    await wait_for(lambda: len(fake.caller_audio) >= 3000)
    assert dominant_frequency(bytes(fake.caller_audio), 16000) == pytest.approx(1000, abs=16)
    await bridge.close()
    assert "conversation_config_override" not in fake.received[0]
    assert_sdk_valid(fake)


@pytest.mark.parametrize("fake", [{"formats": ("pcm_16000", "ulaw_8000")}], indirect=True)
async def test_a_g722_caller_reaches_a_16_khz_agent_in_full(fake: FakeElevenLabs) -> None:
    """Caller frames of 16 kHz PCM (a G.722 call) pass to a pcm_16000 agent untouched: a 6 kHz
    tone, beyond 8 kHz audio, arrives; the agent's μ-law comes back as 16 kHz PCM (the call's
    side of a wideband call), its tone intact."""
    bridge = bridge_for(fake)
    await bridge.start(replace(META, wideband=True))
    frames = [sine_pcm16(6000, 20, 16000, 0.5, phase=n * 320) for n in range(10)]
    for frame in frames:
        await bridge.send_audio(frame)
    await wait_for(lambda: len(fake.caller_audio) >= 6400)
    assert bytes(fake.caller_audio) == b"".join(frames)
    assert dominant_frequency(bytes(fake.caller_audio), 16000) == pytest.approx(6000, abs=30)
    audio = audio_of(await collect_until(bridge, audio_ms=500, bytes_per_ms=32))
    assert len(audio) % 2 == 0 and len(audio) >= 500 * 32
    assert dominant_frequency(audio, 16000) == pytest.approx(440, abs=16)
    await bridge.close()
    assert_sdk_valid(fake)


@pytest.mark.parametrize(
    "fake", [{"formats": ("pcm_16000", "pcm_16000"), "tone_hz": 6000}], indirect=True
)
async def test_a_16_khz_agent_reaches_a_g722_caller_in_full(fake: FakeElevenLabs) -> None:
    """On a wideband call a pcm_16000 agent's audio passes untouched: its 6 kHz tone, beyond
    what G.711 carries, reaches call control as it was sent."""
    bridge = bridge_for(fake)
    await bridge.start(replace(META, wideband=True))
    audio = audio_of(await collect_until(bridge, audio_ms=500, bytes_per_ms=32))
    sent = b"".join(
        base64.b64decode(m["audio_event"]["audio_base_64"])
        for m in fake.sent
        if m.get("type") == "audio"
    )
    assert audio == sent[: len(audio)] and len(audio) >= 500 * 32
    assert dominant_frequency(audio, 16000) == pytest.approx(6000, abs=16)
    await bridge.close()
    assert_sdk_valid(fake)


@pytest.mark.parametrize("fake", [{"public": True}], indirect=True)
async def test_public_agent_without_key(fake: FakeElevenLabs) -> None:
    bridge = bridge_for(fake, key=None)
    await bridge.start(META)
    await collect_until(bridge, AgentConnected)
    await bridge.close()
    assert fake.handshakes[0].path == "/v1/convai/conversation?agent_id=agent_1"


@pytest.mark.parametrize("fake", [{"barge_in_after_ms": 500}], indirect=True)
async def test_interruption_clears_and_drops_late_audio(fake: FakeElevenLabs) -> None:
    bridge = bridge_for(fake)
    await bridge.start(META)
    before = await collect_until(bridge, AgentClear)
    assert len(audio_of(before)) == 500 * 8
    after = await collect_until(bridge, audio_ms=200)
    assert len(audio_of(after)) == 200 * 8  # only the new turn; the late chunks were dropped
    assert {e.segment for e in after if hasattr(e, "segment")} == {"2"}
    await bridge.close()
    assert_sdk_valid(fake)


class OddChunkThenInterruption(FakeElevenLabs):
    """A sample and a half of the turn's audio just before its ``interruption``."""

    async def _interrupt(self, ws: ServerConnection, turn: int) -> None:
        await self._audio(ws, b"\x10\x20\x30", turn)
        await super()._interrupt(ws, turn)


async def test_a_pcm16_agent_s_turn_after_an_interruption_is_not_shifted_by_a_byte() -> None:
    """The half sample the interrupted turn left is dropped with it: the new turn's 440 Hz
    stays 440 Hz (one byte off, every sample is misread)."""
    async with OddChunkThenInterruption(
        formats=("ulaw_8000", "pcm_16000"),
        tone_hz=1000,
        barge_in_after_ms=300,
        reply_hz=440,
        reply_ms=500,
        allowed_overrides=PROMPT_ENABLED,
    ) as fake:
        bridge = bridge_for(fake)
        await bridge.start(META)
        await collect_until(bridge, AgentClear)
        audio = g711_to_pcm16(audio_of(await collect_until(bridge, audio_ms=500)))
        assert len(audio) == 500 * 16
        assert dominant_frequency(audio) == pytest.approx(440, abs=8)
        await bridge.close()
        assert_sdk_valid(fake)


@pytest.mark.parametrize("fake", [{"agent": "silent"}], indirect=True)
async def test_dtmf_is_a_contextual_update(fake: FakeElevenLabs) -> None:
    bridge = bridge_for(fake)
    await bridge.start(META)
    await bridge.send_dtmf("#")
    await wait_for(lambda: any(m.get("type") == "contextual_update" for m in fake.received))
    update = next(m for m in fake.received if m.get("type") == "contextual_update")
    assert "#" in update["text"]
    await bridge.close()
    assert_sdk_valid(fake)


@pytest.mark.parametrize("fake", [{"end_call": True}], indirect=True)
async def test_system_end_call_closes_with_1000_and_hangs_up(fake: FakeElevenLabs) -> None:
    bridge = bridge_for(fake)
    await bridge.start(META)
    events = await collect_until(bridge)
    assert len(audio_of(events)) == 8000
    assert events[-1] == AgentHangup(BridgeReason.AGENT_HANGUP)
    await bridge.close()
    assert_sdk_valid(fake)


@pytest.mark.parametrize("goodbye_ms", [500, 0])
async def test_max_duration_ends_as_session_limit_after_the_goodbye(goodbye_ms: int) -> None:
    """At ``max_duration_seconds`` ElevenLabs sends ``error`` ``max_duration_exceeded`` (code
    1000), maybe after the agent's ``max_conversation_duration_message``, then closes 1000
    (providers.md §3.6). That is the provider's session limit, not a failure: its goodbye is
    delivered and the session ends ``AgentHangup(SESSION_LIMIT)``, which call control drains
    (as an ``ai_provider_error`` it ended at once, cutting the goodbye)."""
    async with FakeElevenLabs(
        response_ms=300,
        max_duration=True,
        goodbye_ms=goodbye_ms,
        reply_hz=1000,
        allowed_overrides=PROMPT_ENABLED,
    ) as fake:
        bridge = bridge_for(fake)
        await bridge.start(META)
        events = await collect_until(bridge)
        assert events[-1] == AgentHangup(BridgeReason.SESSION_LIMIT)
        audio = audio_of(events)
        assert len(audio) == (300 + goodbye_ms) * 8
        if goodbye_ms:
            assert dominant_frequency(g711_to_pcm16(audio[300 * 8 :])) == pytest.approx(1000, abs=8)
        await bridge.close()
        assert [m["type"] for m in fake.sent][-1] == "error"
        assert_sdk_valid(fake)


@pytest.mark.parametrize("fake", [{"hangup_tool": True}], indirect=True)
async def test_client_end_call_tool_hangs_up(fake: FakeElevenLabs) -> None:
    bridge = bridge_for(fake)
    await bridge.start(META)
    events = await collect_until(bridge)
    assert events[-1] == AgentHangup(BridgeReason.AGENT_HANGUP)
    await wait_for(lambda: len(fake.tool_results) == 1)
    await bridge.close()
    assert_sdk_valid(fake)


@pytest.mark.parametrize("fake", [{"transfer_to": "sip:desk@example.com"}], indirect=True)
async def test_transfer_client_tool_and_result(fake: FakeElevenLabs) -> None:
    bridge = bridge_for(fake)
    await bridge.start(META)
    events = await collect_until(bridge, AgentTransfer)
    transfer = events[-1]
    assert transfer == AgentTransfer("sip:desk@example.com", "tool_call_1")
    await bridge.send_transfer_result("tool_call_1", ok=True)
    await wait_for(lambda: len(fake.tool_results) == 1)
    assert fake.tool_results[0] == {
        "type": "client_tool_result",
        "tool_call_id": "tool_call_1",
        "result": "transferred",
        "is_error": False,
    }
    await bridge.close()
    assert_sdk_valid(fake)


# URI schemes are case-insensitive (RFC 3986 §3.1, RFC 3261 §19.1.4): "TEL:" and "Sip:" are
# transfer targets as call control's sip.uri.transfer_target takes them, and whether a target
# is such a URI at all is that check's (it answers "invalid transfer target"), as with the
# custom bridge (custom/events.py Transfer) — the bridge passes any string target on.
@pytest.mark.parametrize(
    "fake",
    [{"transfer_to": t} for t in ("TEL:+15550100", "Sip:desk@example.com", "SIPS:d@x", "desk")],
    indirect=True,
)
async def test_transfer_target_is_call_controls_to_check(fake: FakeElevenLabs) -> None:
    bridge = bridge_for(fake)
    await bridge.start(META)
    events = await collect_until(bridge, AgentTransfer)
    assert events[-1] == AgentTransfer(typing.cast(str, fake.transfer_to), "tool_call_1")
    assert fake.tool_results == []  # no failed result from the bridge
    await bridge.close()
    assert_sdk_valid(fake)


@pytest.mark.parametrize(
    ("key", "agent_id", "retryable"),
    [("bad-key", "agent_1", False), ("sk-valid", "agent_missing", False), ("sk-outage", "a", True)],
)
async def test_signed_url_failures(key: str, agent_id: str, retryable: bool) -> None:
    async with FakeElevenLabs() as fake:
        cfg = ElevenLabsConfig(api_key=key, agent_id=agent_id, api_base=fake.base_http)
        bridge = ElevenLabsBridge(cfg, connect_timeout_s=2.0)
        with pytest.raises(BridgeConnectError) as info:
            await bridge.start(META)
        assert info.value.reason == BridgeReason.CONNECTION_FAILED
        assert info.value.retryable is retryable
        assert isinstance(info.value, BridgeAuthError) is (not retryable)
        assert await collect_until(bridge) == [info.value.to_event()]
        assert fake.handshakes == []


async def test_unreachable_api_is_retryable_connection_failure() -> None:
    async with FakeElevenLabs() as fake:
        base = fake.base_http
    bridge = ElevenLabsBridge(ElevenLabsConfig(api_key="sk-valid", agent_id="a", api_base=base))
    with pytest.raises(BridgeConnectError) as info:
        await bridge.start(META)
    assert info.value.retryable


@pytest.mark.parametrize("status", [401, 403])
async def test_websocket_rejection(status: int) -> None:
    async with FakeElevenLabs(reject_status=status) as fake:
        with pytest.raises(BridgeAuthError):
            await bridge_for(fake).start(META)


@pytest.mark.parametrize(
    ("setup", "code"), [("override_error", "override_error"), ("silent", "timeout")]
)
async def test_setup_failures(setup: str, code: str) -> None:
    async with FakeElevenLabs(setup=setup, allowed_overrides=PROMPT_ENABLED) as fake:
        bridge = ElevenLabsBridge(
            ElevenLabsConfig(api_key="sk-valid", agent_id="a", api_base=fake.base_http),
            connect_timeout_s=0.5,
        )
        with pytest.raises(BridgeError) as info:
            await bridge.start(META)
        assert info.value.code == code
        assert isinstance((await collect_until(bridge))[-1], AgentError)
        assert_sdk_valid(fake)


@pytest.mark.parametrize(
    ("after_setup", "retryable", "code"),
    [
        ("error", False, "llm_error"),
        ("drop", True, "1006"),
        ("malformed", False, None),
        ("close", True, "1011"),
    ],
)
async def test_mid_call_failures(after_setup: str, retryable: bool, code: str | None) -> None:
    async with FakeElevenLabs(
        agent="silent", after_setup=after_setup, allowed_overrides=PROMPT_ENABLED
    ) as fake:
        bridge = bridge_for(fake)
        await bridge.start(META)
        terminal = (await collect_until(bridge))[-1]
        assert isinstance(terminal, AgentError)
        assert (terminal.reason, terminal.retryable, terminal.code) == (
            BridgeReason.AI_PROVIDER_ERROR,
            retryable,
            code,
        )
        await bridge.close()
        assert_sdk_valid(fake)


async def test_the_signed_url_request_builds_no_tls_context(
    fake: FakeElevenLabs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new HTTP client builds its TLS context (the CA bundle parsed, ~20 ms measured) on the
    event loop; every call with an API key did that for the signed-URL request."""
    client_context()  # the gateway builds the shared one at start
    built: list[object] = []
    create = ssl.create_default_context

    def counting(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        built.append(args or kwargs)
        return create(*args, **kwargs)

    monkeypatch.setattr(ssl, "create_default_context", counting)
    bridge = bridge_for(fake)
    await bridge.start(META)
    assert (await collect_until(bridge, audio_ms=20))[0] == AgentConnected(
        "elevenlabs", "conv_fake_1"
    )
    await bridge.close()
    assert len([h for h in fake.handshakes if "conversation_signature" in h.path]) == 1
    assert built == []


@pytest.mark.parametrize("https", [False, True])
async def test_calls_share_one_kept_open_connection_for_the_signed_url(
    fake: FakeElevenLabs, https: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the gateway's client, the second call's signed-URL request reuses the first's
    connection: no TCP or TLS handshake, two round trips less before the caller hears the agent.
    Without it, each call opens its own."""
    tls = None
    if https:
        cert, key = self_signed(tmp_path)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert, key)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    shared = SharedHttpClient()
    try:
        with FakeProviderHttp(elevenlabs_ws_url=fake.url, tls=tls) as api:
            assert api.elevenlabs_api_base.startswith("https://" if https else "http://")
            for http in (shared, shared, shared, None, None):
                cfg = ElevenLabsConfig(
                    api_key="sk-valid-el",
                    agent_id="agent_1",
                    api_base=api.elevenlabs_api_base,
                    http=http,
                )
                bridge = ElevenLabsBridge(cfg, connect_timeout_s=2.0)
                await bridge.start(META)
                assert (await collect_until(bridge, audio_ms=20))[0] == AgentConnected(
                    "elevenlabs", "conv_fake_1"
                )
                await bridge.close()
            peers = [r.peer for r in api.requests if r.path.endswith("/get-signed-url")]
    finally:
        await shared.aclose()
    assert len(peers) == 5
    assert len(set(peers[:3])) == 1  # one connection for the three calls of the shared client
    assert len({*peers[3:], peers[0]}) == 3  # a new one each without it
    assert len([h for h in fake.handshakes if "conversation_signature" in h.path]) == 5


async def test_forwarded_sip_headers_are_dynamic_variables(fake: FakeElevenLabs) -> None:
    bridge = bridge_for(fake)
    await bridge.start(replace(META, sip_headers={"X-Customer-Id": "cust-42"}))
    await collect_until(bridge, audio_ms=20)
    await bridge.close()
    variables = fake.received[0]["dynamic_variables"]
    assert variables["sip_x_customer_id"] == "cust-42"
    assert variables["caller_number"] == META.caller
    assert_sdk_valid(fake)


async def test_a_caller_who_sends_no_audio_is_kept_active(fake: FakeElevenLabs) -> None:
    """ElevenLabs closes a conversation after 60 s without user input (1002): a caller on hold,
    or one whose RTP stopped, sends no frames — the bridge says ``user_activity`` meanwhile
    (providers.md §3.6); the held call was torn down as an agent error."""
    bridge = bridge_for(fake)
    bridge.user_activity_s = 0.1
    await bridge.start(META)

    def said() -> int:
        return sum(m.get("type") == "user_activity" for m in fake.received)

    await wait_for(lambda: said() >= 2)
    await bridge.close()
    after = said()
    await asyncio.sleep(0.3)
    assert said() == after  # not after the call
    assert_sdk_valid(fake)


async def test_an_agent_refuses_a_prompt_override_it_does_not_enable() -> None:
    """ElevenLabs takes an override only for fields enabled in the agent's Security settings
    (none is by default): otherwise an ``error`` event (``override_error``, code 1008) and close
    1008 (providers.md §3.3). The fake accepted any; a trunk's system prompt then worked in
    every test and failed every real call. The bridge reports a provider error, not retryable
    (every new session is refused alike)."""
    async with FakeElevenLabs() as fake:
        async with httpx.AsyncClient() as client:  # the fake serves on this loop
            answer = await client.get(
                f"{fake.base_http}/v1/convai/agents/agent_1", headers={"xi-api-key": "sk-valid"}
            )
        agent = answer.json()
        overrides = agent["platform_settings"]["overrides"]["conversation_config_override"]
        assert overrides["agent"]["prompt"] == {"prompt": False}
        bridge = bridge_for(fake)
        with pytest.raises(BridgeError) as info:
            await bridge.start(META)
        assert (info.value.reason, info.value.retryable, info.value.code) == (
            BridgeReason.AI_PROVIDER_ERROR,
            False,
            "override_error",
        )
        terminal = (await collect_until(bridge))[-1]
        assert isinstance(terminal, AgentError)
        assert terminal.reason == BridgeReason.AI_PROVIDER_ERROR
        await bridge.close()
        assert [m["type"] for m in fake.sent] == ["error"]  # no metadata, no audio


async def test_the_fake_refuses_an_override_not_enabled_on_the_wire() -> None:
    """The refusal as ElevenLabs sends it: the error event's documented keys, then close 1008;
    the same override on an agent that enables it starts the conversation."""
    init = {
        "type": "conversation_initiation_client_data",
        "conversation_config_override": {"agent": {"prompt": {"prompt": "Be brief."}}},
    }
    async with FakeElevenLabs(public=True) as fake:
        async with connect(f"{fake.url}?agent_id=agent_1") as ws:
            await ws.send(json.dumps(init))
            error = json.loads(await ws.recv())
            with pytest.raises(ConnectionClosed):
                await ws.recv()
        assert ws.close_code == 1008
    assert error["type"] == "error"
    detail = error["error_event"]
    assert (detail["code"], detail["error_type"]) == (1008, "override_error")
    assert {"message", "reason", "debug_message", "details"} <= set(detail)
    assert "agent.prompt.prompt" in detail["message"]
    async with FakeElevenLabs(public=True, allowed_overrides={PROMPT_OVERRIDE}) as fake:
        async with connect(f"{fake.url}?agent_id=agent_1") as ws:
            await ws.send(json.dumps(init))
            first = json.loads(await ws.recv())
    assert first["type"] == "conversation_initiation_metadata"


@pytest.mark.parametrize(
    ("params", "error_type"),
    [
        ({"after_setup": "error", "agent": "silent"}, "llm_error"),
        ({"setup": "override_error"}, "override_error"),
        ({"max_duration": True, "response_ms": 100}, "max_duration_exceeded"),
        ({"allowed_overrides": ()}, "override_error"),  # the prompt override not enabled
    ],
)
async def test_the_fake_closes_with_its_error_s_code(
    params: dict[str, Any], error_type: str
) -> None:
    """[EL-SPEC] ``ErrorData.code`` is the ``WebSocketCloseCode`` the conversation closes with:
    the fake's ``llm_error`` (code 1002) was followed by a close 1008."""
    init = {
        "type": "conversation_initiation_client_data",
        "conversation_config_override": {"agent": {"prompt": {"prompt": "Be brief."}}},
    }
    async with FakeElevenLabs(
        **{"public": True, "allowed_overrides": PROMPT_ENABLED, **params}
    ) as fake:
        async with connect(f"{fake.url}?agent_id=agent_1") as ws:
            await ws.send(json.dumps(init))
            with pytest.raises(ConnectionClosed):
                while True:
                    await ws.recv()
    errors = [m["error_event"] for m in fake.sent if m["type"] == "error"]
    assert [e["error_type"] for e in errors] == [error_type]
    assert ws.close_code == errors[0]["code"]


@pytest.mark.parametrize("https", [False, True])
async def test_a_signed_url_answer_in_two_parts_is_read_whole(
    fake: FakeElevenLabs, https: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiohttp's ``content.read(n)`` returns what has arrived, not ``n`` bytes: a signed-URL
    answer whose body came in two TCP segments or TLS records (through a proxy, on a slow link)
    was read in part, "malformed", and the call failed (480). It is read to its end now."""
    tls = None
    if https:
        cert, key = self_signed(tmp_path)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert, key)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    with FakeProviderHttp(elevenlabs_ws_url=fake.url, tls=tls, split_body_pause_s=0.05) as api:
        cfg = ElevenLabsConfig(
            api_key="sk-valid-el", agent_id="agent_1", api_base=api.elevenlabs_api_base
        )
        bridge = ElevenLabsBridge(cfg, connect_timeout_s=2.0)
        await bridge.start(META)
        events = await collect_until(bridge, audio_ms=20)
        await bridge.close()
    assert events[0] == AgentConnected("elevenlabs", "conv_fake_1")
    assert len([h for h in fake.handshakes if "conversation_signature" in h.path]) == 1


async def test_a_signed_url_answer_over_the_cap_is_refused(
    fake: FakeElevenLabs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer is read to its end, but no further than a bound: one longer is refused, not
    cut short and parsed."""
    monkeypatch.setattr("telepath.bridges.elevenlabs.bridge.MAX_ANSWER_BYTES", 40)
    bridge = bridge_for(fake)
    with pytest.raises(BridgeConnectError) as info:
        await bridge.start(META)
    assert not info.value.retryable
    assert "too long" in str(info.value)
    assert fake.handshakes == []
