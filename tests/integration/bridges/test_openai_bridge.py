"""The OpenAI Realtime bridge against the local fake, over real loopback WebSockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent
from pydantic import TypeAdapter
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection

from telepath.bridges.base import (
    AgentAudio,
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
    OpenAIConfig,
)
from telepath.bridges.openai import events as ev
from telepath.bridges.openai.bridge import OpenAIRealtimeBridge
from telepath.testing.fake_openai import FakeOpenAIRealtime
from telepath.testing.tones import dominant_frequency, g711_to_pcm16, sine_g711, sine_pcm16

from .helpers import (
    META,
    a_second_of_a_call,
    assert_no_extra,
    audio_of,
    collect_until,
    log_everything,
    wait_for,
)

CLIENT = TypeAdapter[Any](RealtimeClientEvent)
SERVER = TypeAdapter[Any](RealtimeServerEvent)
#: What the real service sends that the SDK's models lack: the session object's own id and
#: ``object: "realtime.session"`` in ``session.created`` (the SDK types the session as the
#: create *request*).
SERVER_EXTRA = {".session": frozenset({"id", "object"})}


def bridge_for(fake: FakeOpenAIRealtime, **config: Any) -> OpenAIRealtimeBridge:
    cfg = OpenAIConfig(api_key="sk-valid-test", realtime_url=fake.url, **config)
    return OpenAIRealtimeBridge(cfg, connect_timeout_s=2.0)


@pytest.fixture
async def fake(request: pytest.FixtureRequest) -> AsyncIterator[FakeOpenAIRealtime]:
    kwargs = getattr(request, "param", {})
    async with FakeOpenAIRealtime(**kwargs) as server:
        yield server


def assert_sdk_valid(fake: FakeOpenAIRealtime) -> None:
    """Both directions validate against the official openai SDK's realtime types."""
    assert fake.protocol_errors == []
    for raw in fake.received:
        assert_no_extra(CLIENT.validate_python(raw))
    for raw in fake.sent:
        assert_no_extra(SERVER.validate_python(raw), allow=SERVER_EXTRA)


async def test_tone_agent_audio_both_ways_and_session_shape(fake: FakeOpenAIRealtime) -> None:
    bridge = bridge_for(fake)
    await bridge.start(META)
    events = await collect_until(bridge, audio_ms=1000)
    assert isinstance(events[0], AgentConnected)
    audio = audio_of(events)
    assert len(audio) == 8000
    assert dominant_frequency(g711_to_pcm16(audio)) == pytest.approx(440, abs=8)

    frames = [sine_g711(1000, 20, phase=n * 160) for n in range(5)]
    for frame in frames:
        await bridge.send_audio(frame)
    await wait_for(lambda: len(fake.caller_audio) == 800)
    assert bytes(fake.caller_audio) == b"".join(frames)

    await bridge.close()
    rest = await collect_until(bridge)
    assert rest[-1] == AgentDisconnected(BridgeReason.CALLER_HANGUP, 1000)

    handshake = fake.handshakes[0]
    assert handshake.path == "/v1/realtime?model=gpt-realtime-2.1"  # a current GA model
    assert handshake.headers["authorization"] == "Bearer sk-valid-test"
    update = fake.received[0]
    assert update["type"] == "session.update"
    session = update["session"]
    assert session["type"] == "realtime"
    assert session["instructions"] == "You are a test agent."
    assert session["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert session["audio"]["output"]["format"] == {"type": "audio/pcmu"}
    assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert [t["name"] for t in session["tools"]] == ["end_call", "transfer_call"]
    assert fake.received[1]["type"] == "response.create"
    assert_sdk_valid(fake)


async def test_the_api_key_is_not_logged_at_debug(
    fake: FakeOpenAIRealtime, caplog: pytest.LogCaptureFixture
) -> None:
    # websockets' own client logger prints every handshake header at DEBUG, Authorization too
    log_everything(caplog)
    bridge = bridge_for(fake)
    await a_second_of_a_call(bridge, META)
    assert fake.handshakes[0].headers["authorization"] == "Bearer sk-valid-test"
    assert "sk-valid-test" not in caplog.text


async def test_pcma_call_uses_pcma_both_ways(fake: FakeOpenAIRealtime) -> None:
    bridge = bridge_for(fake, model="gpt-realtime-2.1", voice="cedar")
    await bridge.start(replace(META, codec="pcma", system_prompt=None))
    audio = audio_of(await collect_until(bridge, audio_ms=500))
    assert dominant_frequency(g711_to_pcm16(audio, "pcma")) == pytest.approx(440, abs=8)
    await bridge.close()
    session = fake.received[0]["session"]
    assert session["audio"]["input"]["format"] == {"type": "audio/pcma"}
    assert session["audio"]["output"]["voice"] == "cedar"
    assert "instructions" not in session
    assert fake.handshakes[0].path.endswith("model=gpt-realtime-2.1")
    assert_sdk_valid(fake)


@pytest.mark.parametrize("fake", [{"tone_hz": 6000}], indirect=True)
async def test_a_wideband_call_speaks_24_khz_pcm_both_ways(fake: FakeOpenAIRealtime) -> None:
    """A G.722 call: the session is audio/pcm at 24 kHz both ways; a 6 kHz tone — beyond what
    G.711 carries — from the caller reaches the model, and the model's reaches the caller as
    16 kHz PCM (resampled, not aliased: the tone stays at 6 kHz both ways)."""
    bridge = bridge_for(fake)
    await bridge.start(replace(META, wideband=True))
    events = await collect_until(bridge, audio_ms=1000, bytes_per_ms=32)
    audio = audio_of(events)
    assert abs(len(audio) - 1000 * 32) <= 100 * 32  # a 100 ms delta at most past the second
    assert dominant_frequency(audio, 16000) == pytest.approx(6000, abs=16)

    frames = [sine_pcm16(6000, 20, 16000, phase=n * 320) for n in range(10)]
    for frame in frames:
        await bridge.send_audio(frame)
    await wait_for(lambda: len(fake.caller_audio) >= 10 * 20 * 48 - 48)
    assert dominant_frequency(bytes(fake.caller_audio), 24000) == pytest.approx(6000, abs=24)
    await bridge.close()
    session = fake.received[0]["session"]
    assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert session["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert_sdk_valid(fake)


@pytest.mark.parametrize(
    ("wideband", "rate", "connects"),
    [(False, 8000, True), (True, 8000, False), (True, 16000, False), (True, 24000, True)],
)
async def test_only_audio_pcm_must_echo_24_khz(wideband: bool, rate: int, connects: bool) -> None:
    """G.711 formats have no rate in the GA types (providers.md §2.3): an 8 kHz ``rate`` echoed
    for ``audio/pcmu`` is the format the call wants; ``audio/pcm`` at anything but 24 kHz is
    not."""
    async with FakeOpenAIRealtime(echo_rate=rate) as fake:
        bridge = bridge_for(fake)
        if connects:
            await bridge.start(replace(META, wideband=wideband))
            events = await collect_until(bridge, audio_ms=100, bytes_per_ms=32 if wideband else 8)
            assert isinstance(events[0], AgentConnected)
        else:
            with pytest.raises(BridgeError):
                await bridge.start(replace(META, wideband=wideband))
        await bridge.close()
        assert fake.protocol_errors == []


@pytest.mark.parametrize("fake", [{"agent": "echo"}], indirect=True)
async def test_echo_agent_returns_caller_audio(fake: FakeOpenAIRealtime) -> None:
    bridge = bridge_for(fake)
    await bridge.start(META)
    frames = [sine_g711(700, 20, phase=n * 160) for n in range(10)]
    for frame in frames:
        await bridge.send_audio(frame)
    events = await collect_until(bridge, audio_ms=200)
    assert audio_of(events) == b"".join(frames)
    await bridge.close()
    assert_sdk_valid(fake)


@pytest.mark.parametrize("wideband", [False, True])
@pytest.mark.parametrize(
    ("played_ms", "expected"),
    [(300, ("truncate", 300)), (10_000, ("truncate", 500)), (0, ("delete", None))],
)
async def test_barge_in_clears_and_truncates_at_played_audio(
    played_ms: int, expected: tuple[str, int | None], wideband: bool
) -> None:
    """The cut is in milliseconds of the item's audio whatever its format (24 kHz PCM carries
    48 bytes per ms, G.711 8): never past what the model sent (the fake refuses that)."""
    async with FakeOpenAIRealtime(response_ms=2000, barge_in_after_ms=500) as fake:
        bridge = bridge_for(fake)
        await bridge.start(replace(META, wideband=wideband), playout=lambda: played_ms)
        events = await collect_until(bridge, AgentClear)
        # exactly the audio sent before speech_started; the late deltas are dropped
        if wideband:  # 500 ms as 16 kHz PCM16, give or take the resampler's last sample
            assert abs(len(audio_of(events)) - 500 * 32) <= 2
        else:
            assert len(audio_of(events)) == 500 * 8
        kind, end_ms = expected
        if kind == "truncate":
            await wait_for(
                lambda: any(e["type"] == "conversation.item.truncate" for e in fake.received)
            )
            truncate = next(e for e in fake.received if e["type"] == "conversation.item.truncate")
            assert truncate["audio_end_ms"] == end_ms
            assert truncate["content_index"] == 0
            assert truncate["item_id"] in fake.item_audio_ms
        else:
            await wait_for(
                lambda: any(e["type"] == "conversation.item.delete" for e in fake.received)
            )
        await asyncio.sleep(0.05)  # let the late deltas arrive: they must not surface
        await bridge.close()
        rest = await collect_until(bridge)
        assert audio_of(rest) == b""
        assert_sdk_valid(fake)


class BargeInDuringTheSecondResponse(FakeOpenAIRealtime):
    """The greeting plays out; the second response's first 500 ms, then the caller speaks."""

    async def _respond(self, ws: ServerConnection, metadata: dict[str, str] | None) -> None:
        self.barge_in_after_ms = 500 if self._responses == 1 else None
        await super()._respond(ws, metadata)


def cuts(fake: FakeOpenAIRealtime) -> list[tuple[str, str, int | None]]:
    """Every truncate and delete the bridge sent: (type, item, audio_end_ms)."""
    return [
        (e["type"], e["item_id"], e.get("audio_end_ms"))
        for e in fake.received
        if e["type"] in ("conversation.item.truncate", "conversation.item.delete")
    ]


async def test_barge_in_cuts_the_item_still_playing_not_only_the_newest() -> None:
    """A digit's answer (item B) arrives while the greeting (item A, fully received) is still
    being played: the caller who speaks 300 ms into A cuts A there (providers.md §2.7: clamp
    to what was played of *that* item) and B, of which nothing was heard, goes."""
    async with BargeInDuringTheSecondResponse(response_ms=1000) as fake:
        bridge = bridge_for(fake)
        await bridge.start(META, playout=lambda: 300)
        await collect_until(bridge, audio_ms=1000)  # A, queued for playout
        await bridge.send_dtmf("5")
        await collect_until(bridge, AgentClear)
        await wait_for(lambda: any(cut[0] == "conversation.item.delete" for cut in cuts(fake)))
        items = list(fake.item_audio_ms)
        assert cuts(fake) == [
            ("conversation.item.truncate", items[0], 300),
            ("conversation.item.delete", items[1], None),
        ]
        assert fake.item_audio_ms[items[0]] == 1000
        await bridge.close()
        assert_sdk_valid(fake)


class SpeechBeforeTheGreetingsFirstDelta(FakeOpenAIRealtime):
    """The caller speaks between the greeting's ``response.created`` and its first delta: the
    service cancels it (interrupt_response) but the deltas it had made still come, then
    ``response.done`` (cancelled). Later responses play normally."""

    async def _respond(self, ws: ServerConnection, metadata: dict[str, str] | None) -> None:
        self.barge_in_after_ms = 0 if self._responses == 0 else None
        await super()._respond(ws, metadata)


async def test_audio_of_the_response_active_at_barge_in_is_dropped_even_its_first() -> None:
    """Its item, never played, goes from the model's conversation too (once, at its first
    dropped delta): else the model remembers saying what the caller never heard."""
    async with SpeechBeforeTheGreetingsFirstDelta(response_ms=500) as fake:
        bridge = bridge_for(fake)
        await bridge.start(META)
        events = await collect_until(bridge, AgentClear)
        assert audio_of(events) == b""
        await wait_for(lambda: any(e["type"] == "response.done" for e in fake.sent))
        greeting_item = next(
            e["item_id"] for e in fake.sent if e["type"] == "response.output_audio.delta"
        )
        await wait_for(lambda: bool(cuts(fake)))
        await bridge.send_dtmf("5")  # the next response is heard
        events = await collect_until(bridge, audio_ms=500)
        items = {
            e["response_id"]: e["item_id"]
            for e in fake.sent
            if e["type"] == "response.output_audio.delta"
        }
        _, answer = created_responses(fake)
        assert len(items) == 2  # the cancelled greeting's late audio, and the answer
        assert {e.segment for e in events if isinstance(e, AgentAudio)} == {items[answer["id"]]}
        assert len(audio_of(events)) == 500 * 8
        await bridge.close()
        assert audio_of(await collect_until(bridge)) == b""
        assert cuts(fake) == [("conversation.item.delete", greeting_item, None)]
        assert_sdk_valid(fake)


class OddDeltaThenBargeIn(FakeOpenAIRealtime):
    """A sample and a half of audio just before ``speech_started``; once the interrupted
    response is done, the answer to the caller's turn — a new response, as server VAD starts
    one — with 500 ms of tone at 440 Hz."""

    async def _barge_in(
        self, ws: ServerConnection, response_id: str, item: str, sent_ms: int
    ) -> None:
        await self._delta(ws, response_id, item, b"\x10\x20\x30")
        await super()._barge_in(ws, response_id, item, sent_ms)

    async def _respond(self, ws: ServerConnection, metadata: dict[str, str] | None) -> None:
        await super()._respond(ws, metadata)
        if self._responses == 1:
            self.barge_in_after_ms, self.tone_hz, self.response_ms = None, 440, 500
            await super()._respond(ws, None)


async def test_the_turn_after_a_barge_in_is_not_shifted_by_a_byte() -> None:
    """On a wideband call (24 kHz PCM from the model) the half sample and the filter history
    the cut item left go with it: the next item's 440 Hz stays 440 Hz."""
    async with OddDeltaThenBargeIn(response_ms=2000, barge_in_after_ms=300, tone_hz=1000) as fake:
        bridge = bridge_for(fake)
        await bridge.start(replace(META, wideband=True))
        await collect_until(bridge, AgentClear)
        events = await collect_until(bridge, audio_ms=500, bytes_per_ms=32)
        audio = audio_of(events)
        assert abs(len(audio) - 500 * 32) <= 2
        assert dominant_frequency(audio, 16000) == pytest.approx(440, abs=16)
        await bridge.close()


async def test_barge_in_without_playout_callback_uses_real_time_estimate() -> None:
    async with FakeOpenAIRealtime(response_ms=2000, barge_in_after_ms=500) as fake:
        bridge = bridge_for(fake)
        await bridge.start(META)
        await collect_until(bridge, AgentClear)
        await wait_for(
            lambda: any(
                e["type"] in ("conversation.item.truncate", "conversation.item.delete")
                for e in fake.received
            )
        )
        await bridge.close()
        assert fake.protocol_errors == []  # never truncates beyond the audio received


async def test_dtmf_reaches_agent_as_text_item(fake: FakeOpenAIRealtime) -> None:
    bridge = bridge_for(fake)
    await bridge.start(META)
    await bridge.send_dtmf("5")
    await wait_for(lambda: any(e["type"] == "conversation.item.create" for e in fake.received))
    item = next(e for e in fake.received if e["type"] == "conversation.item.create")["item"]
    assert item["role"] == "user"
    assert "5" in item["content"][0]["text"]
    await bridge.close()
    assert_sdk_valid(fake)


@pytest.mark.parametrize("fake", [{"end_call": True}], indirect=True)
async def test_end_call_tool_hangs_up_after_the_goodbye_audio(fake: FakeOpenAIRealtime) -> None:
    bridge = bridge_for(fake)
    await bridge.start(META)
    events = await collect_until(bridge)
    assert events[-1] == AgentHangup(BridgeReason.AGENT_HANGUP)
    assert len(audio_of(events)) == 8000
    assert AgentTranscript("agent", "Hello from the fake agent.") in events
    await bridge.close()
    assert_sdk_valid(fake)


# URI schemes are case-insensitive (RFC 3986 §3.1, RFC 3261 §19.1.4), as call control's
# sip.uri.transfer_target has them: "TEL:" and "Sip:" are transfer targets too
@pytest.mark.parametrize(
    "fake",
    [{"transfer_to": t} for t in ("tel:+14155550199", "TEL:+14155550199", "Sip:d@example.com")],
    indirect=True,
)
async def test_transfer_request_and_result(fake: FakeOpenAIRealtime) -> None:
    bridge = bridge_for(fake)
    await bridge.start(META)
    events = await collect_until(bridge, AgentTransfer)
    transfer = events[-1]
    assert isinstance(transfer, AgentTransfer)
    assert transfer.target == fake.transfer_to
    await bridge.send_transfer_result(transfer.request_id, ok=False, detail="486 Busy Here")
    await wait_for(
        lambda: any(e.get("item", {}).get("type") == "function_call_output" for e in fake.received)
    )
    output = next(
        e["item"] for e in fake.received if e.get("item", {}).get("type") == "function_call_output"
    )
    assert output["call_id"] == transfer.request_id
    assert json.loads(output["output"]) == {"ok": False, "detail": "486 Busy Here"}
    await bridge.close()
    assert_sdk_valid(fake)


@pytest.mark.parametrize(
    ("status", "retryable"), [(401, False), (403, False), (404, False), (503, True)]
)
async def test_handshake_rejection_is_connection_failed(status: int, retryable: bool) -> None:
    async with FakeOpenAIRealtime(reject_status=status) as fake:
        bridge = bridge_for(fake)
        with pytest.raises(BridgeConnectError) as info:
            await bridge.start(META)
        assert info.value.reason == BridgeReason.CONNECTION_FAILED
        assert info.value.retryable is retryable
        assert isinstance(info.value, BridgeAuthError) is (not retryable)
        events = await collect_until(bridge)
        assert events == [info.value.to_event()]
        await bridge.close()  # still safe


async def test_slow_handshake_times_out() -> None:
    async with FakeOpenAIRealtime(handshake_delay_s=5) as fake:
        bridge = OpenAIRealtimeBridge(
            OpenAIConfig(api_key="sk-valid", realtime_url=fake.url), connect_timeout_s=0.3
        )
        with pytest.raises(BridgeConnectError) as info:
            await bridge.start(META)
        assert (info.value.code, info.value.retryable) == ("timeout", True)


async def test_unreachable_agent_is_connection_failed() -> None:
    async with FakeOpenAIRealtime() as fake:
        url = fake.url
    bridge = OpenAIRealtimeBridge(OpenAIConfig(api_key="sk-valid", realtime_url=url))
    with pytest.raises(BridgeConnectError) as info:
        await bridge.start(META)
    assert info.value.retryable


@pytest.mark.parametrize(
    ("setup", "reason", "code"),
    [
        ("silent", BridgeReason.CONNECTION_FAILED, "timeout"),
        ("reject_session", BridgeReason.AI_PROVIDER_ERROR, "invalid_value"),
    ],
)
async def test_session_setup_failures(setup: str, reason: BridgeReason, code: str) -> None:
    async with FakeOpenAIRealtime(setup=setup) as fake:
        bridge = OpenAIRealtimeBridge(
            OpenAIConfig(api_key="sk-valid", realtime_url=fake.url), connect_timeout_s=0.5
        )
        with pytest.raises(BridgeError) as info:
            await bridge.start(META)
        assert (info.value.reason, info.value.code) == (reason, code)
        events = await collect_until(bridge)
        assert isinstance(events[-1], AgentError)
        assert events[-1].reason == reason


@pytest.mark.parametrize(
    ("after_setup", "expected"),
    [
        ("error", AgentError(BridgeReason.AI_PROVIDER_ERROR, "", False, "invalid_api_key")),
        ("failed_response", AgentError(BridgeReason.AI_PROVIDER_ERROR, "", True, "server_error")),
        ("drop", AgentError(BridgeReason.AI_PROVIDER_ERROR, "", True, "1006")),
        ("malformed", AgentError(BridgeReason.AI_PROVIDER_ERROR, "", False, None)),
        ("close", AgentError(BridgeReason.AI_PROVIDER_ERROR, "", True, "1011")),
        ("session_expired", AgentHangup(BridgeReason.SESSION_LIMIT)),
    ],
)
async def test_mid_call_failures_end_with_one_terminal_event(
    after_setup: str, expected: AgentError | AgentHangup
) -> None:
    async with FakeOpenAIRealtime(agent="silent", after_setup=after_setup) as fake:
        bridge = bridge_for(fake)
        await bridge.start(META)
        events = await collect_until(bridge)
        terminal = events[-1]
        if isinstance(expected, AgentError):
            assert isinstance(terminal, AgentError)
            assert (terminal.reason, terminal.retryable, terminal.code) == (
                expected.reason,
                expected.retryable,
                expected.code,
            )
            assert terminal.message
        else:
            assert terminal == expected
        await bridge.send_audio(b"\xff" * 160)  # no-op after the end, never raises
        await bridge.close()


async def test_session_limit_ends_politely(fake: FakeOpenAIRealtime) -> None:
    bridge = bridge_for(fake, session_limit_s=0.2, goodbye_timeout_s=5)
    await bridge.start(META)
    events = await collect_until(bridge)
    assert events[-1] == AgentHangup(BridgeReason.SESSION_LIMIT)
    goodbye = [e for e in fake.received if e["type"] == "response.create" and "response" in e]
    assert goodbye and "goodbye" in goodbye[0]["response"]["instructions"]
    assert len(audio_of(events)) == 2 * 8000  # greeting and goodbye both delivered
    await bridge.close()
    assert_sdk_valid(fake)


def created_responses(fake: FakeOpenAIRealtime) -> list[dict[str, Any]]:
    """The ``response`` of every ``response.created`` the fake sent."""
    return [e["response"] for e in fake.sent if e["type"] == "response.created"]


def function_outputs(fake: FakeOpenAIRealtime) -> list[dict[str, Any]]:
    """Every ``function_call_output`` item the bridge created."""
    return [
        e["item"] for e in fake.received if e.get("item", {}).get("type") == "function_call_output"
    ]


@pytest.mark.parametrize(
    "fake",
    [
        {"function": ("lookup_order", '{"order": 7}')},
        {"transfer_to": "+14155550199"},  # not a sip:/tel: URI: refused without a transfer
    ],
    indirect=True,
)
async def test_a_refused_function_call_is_answered_once_its_response_is_done(
    fake: FakeOpenAIRealtime,
) -> None:
    # providers.md §2.8: the output, then response.create so the model speaks about it — a
    # response.create while the call's response is still active is refused by the service
    # (conversation_already_has_active_response), and the model would say nothing.
    bridge = bridge_for(fake)
    await bridge.start(META)
    events = await collect_until(bridge, audio_ms=2000)
    assert not any(isinstance(e, AgentTransfer | AgentHangup) for e in events)
    assert len(audio_of(events)) == 2 * 8000  # the greeting, then the answer to the output
    (output,) = function_outputs(fake)
    assert json.loads(output["output"]) in (
        {"error": "unknown function lookup_order"},
        {"ok": False, "detail": "target must be a sip: or tel: URI"},
    )
    assert fake.overlapping_creates == 0
    assert len(created_responses(fake)) == 2
    await bridge.close()
    assert_sdk_valid(fake)


@pytest.mark.parametrize(
    "fake",
    [
        {"end_call": True, "cancel_after_function": True},
        {"transfer_to": "tel:+14155550199", "cancel_after_function": True},
    ],
    indirect=True,
)
async def test_a_tool_call_of_an_interrupted_response_is_not_acted_on(
    fake: FakeOpenAIRealtime,
) -> None:
    # providers.md §2.8: function_call_arguments.done also comes for a response the caller
    # interrupted; check response.done's status before a side-effecting tool.
    bridge = bridge_for(fake)
    await bridge.start(META)
    events = await collect_until(bridge, AgentClear)
    await wait_for(lambda: any(e["type"] == "response.done" for e in fake.sent))
    await bridge.send_audio(b"\xff" * 160)  # the bridge has read everything before this
    await bridge.close()
    events += await collect_until(bridge)
    assert not any(isinstance(e, AgentTransfer | AgentHangup) for e in events)
    assert events[-1] == AgentDisconnected(BridgeReason.CALLER_HANGUP, 1000)
    assert_sdk_valid(fake)


@pytest.mark.parametrize("fake", [{"chunk_delay_s": 0.03}], indirect=True)
async def test_dtmf_while_the_agent_speaks_is_answered_after_its_response(
    fake: FakeOpenAIRealtime,
) -> None:
    bridge = bridge_for(fake)
    await bridge.start(META)
    await collect_until(bridge, audio_ms=100)  # the greeting is playing
    await bridge.send_dtmf("7")
    events = await collect_until(bridge, audio_ms=1900)
    assert len(audio_of(events)) == 1900 * 8  # the rest of the greeting, then the answer
    assert fake.overlapping_creates == 0
    assert len(created_responses(fake)) == 2
    await bridge.close()
    assert_sdk_valid(fake)


@pytest.mark.parametrize("fake", [{"chunk_delay_s": 0.05}], indirect=True)
async def test_session_limit_goodbye_waits_for_the_answer_in_progress(
    fake: FakeOpenAIRealtime,
) -> None:
    # The limit strikes while the greeting is still being generated: the goodbye follows it
    # and the call ends after the goodbye, not after the greeting.
    bridge = bridge_for(fake, session_limit_s=0.1, goodbye_timeout_s=5)
    await bridge.start(META)
    events = await collect_until(bridge)
    assert events[-1] == AgentHangup(BridgeReason.SESSION_LIMIT)
    assert len(audio_of(events)) == 2 * 8000  # greeting and goodbye both delivered
    assert fake.overlapping_creates == 0
    goodbye = created_responses(fake)[1]
    assert goodbye["metadata"]  # the bridge recognises its goodbye by its metadata
    await bridge.close()
    assert_sdk_valid(fake)


async def test_a_custom_voice_is_sent_as_a_voice_object(fake: FakeOpenAIRealtime) -> None:
    bridge = bridge_for(fake, voice="voice_1234")
    await bridge.start(META)
    assert fake.session is not None
    assert fake.session["audio"]["output"]["voice"] == {"id": "voice_1234"}
    await bridge.close()
    assert_sdk_valid(fake)


@pytest.mark.parametrize("fake", [{"own_response_on_item": True}], indirect=True)
async def test_a_response_create_refused_in_a_race_is_sent_after_the_other_response(
    fake: FakeOpenAIRealtime,
) -> None:
    # The service started a response of its own (server VAD) as the digit's item arrived:
    # the bridge's response.create is refused and goes again once that response is done.
    bridge = bridge_for(fake)
    await bridge.start(META)
    await collect_until(bridge, audio_ms=1000)  # the greeting
    await bridge.send_dtmf("3")
    events = await collect_until(bridge, audio_ms=2000)
    assert len(audio_of(events)) == 2 * 8000  # the service's response, then ours
    assert fake.overlapping_creates == 1
    assert len(created_responses(fake)) == 3
    await bridge.close()
    assert_sdk_valid(fake)


async def fake_session(fake: FakeOpenAIRealtime) -> ClientConnection:
    """A raw client of ``fake``: connected, its G.711 session configured."""
    ws = await connect(f"{fake.url}?model=m", additional_headers={"Authorization": "Bearer k"})
    fmt = ev.PcmuFormat()
    audio = ev.SessionAudio(input=ev.AudioInput(format=fmt), output=ev.AudioOutput(format=fmt))
    await ws.send(ev.SessionUpdate(session=ev.Session(audio=audio)).to_json())
    await next_event(ws, "session.updated")
    return ws


async def next_event(ws: ClientConnection, kind: str) -> dict[str, Any]:
    """Read server events until one of type ``kind``; an ``error`` on the way fails."""
    async with asyncio.timeout(5):
        while True:
            event: dict[str, Any] = json.loads(await ws.recv())
            assert event["type"] != "error" or kind == "error", event
            if event["type"] == kind:
                return event


@pytest.mark.parametrize("fake", [{"chunk_delay_s": 0.05, "response_ms": 5000}], indirect=True)
async def test_fake_cancels_an_active_response_on_response_cancel(
    fake: FakeOpenAIRealtime,
) -> None:
    """providers.md §2.5: response.cancel stops the active response, which ends with
    response.done ``cancelled`` (client_cancelled); with none active it is
    ``response_cancel_not_active``."""
    async with await fake_session(fake) as ws:
        await ws.send(json.dumps({"type": "response.create"}))
        created = await next_event(ws, "response.created")
        await ws.send(json.dumps({"type": "response.cancel"}))
        done = (await next_event(ws, "response.done"))["response"]
        assert done["id"] == created["response"]["id"]
        assert done["status"] == "cancelled"
        assert done["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
        assert fake.item_audio_ms[next(iter(fake.item_audio_ms))] < 5000
        await ws.send(json.dumps({"type": "response.cancel"}))
        error = (await next_event(ws, "error"))["error"]
        assert error["code"] == "response_cancel_not_active"
    assert_sdk_valid(fake)


def kinds(fake: FakeOpenAIRealtime) -> list[str]:
    """The types of the events the fake sent, a run of one type as one."""
    out: list[str] = []
    for event in fake.sent:
        if not out or out[-1] != event["type"]:
            out.append(event["type"])
    return out


RESPONSE_EVENTS = [
    "response.created",
    "rate_limits.updated",
    "response.output_item.added",
    "conversation.item.added",
    "response.content_part.added",
    "response.output_audio.delta",
    "response.output_audio_transcript.delta",
    "response.output_audio.done",
    "response.output_audio_transcript.done",
    "response.content_part.done",
    "response.output_item.done",
    "conversation.item.done",
    "response.done",
]


async def test_the_fake_sends_a_response_as_the_service_does(fake: FakeOpenAIRealtime) -> None:
    """providers.md §2.4: the events around a response's audio, and its usage at the end."""
    bridge = bridge_for(fake)
    await bridge.start(META)
    await collect_until(bridge, audio_ms=1000)
    await wait_for(lambda: any(e["type"] == "response.done" for e in fake.sent))
    await bridge.close()
    assert kinds(fake) == ["session.created", "session.updated", *RESPONSE_EVENTS]
    done = next(e for e in fake.sent if e["type"] == "response.done")["response"]
    (item,) = done["output"]
    assert (item["type"], item["role"], item["status"]) == ("message", "assistant", "completed")
    assert done["usage"]["total_tokens"] > 0
    assert_sdk_valid(fake)


@pytest.mark.parametrize(
    "fake", [{"barge_in_after_ms": 500, "vad_turn": True, "chunk_delay_s": 0.01}], indirect=True
)
async def test_the_answer_server_vad_starts_after_a_barge_in_is_played(
    fake: FakeOpenAIRealtime,
) -> None:
    """Server VAD (create_response) answers the caller's turn with a response of its own:
    it is played, the cut one stays dropped, and the bridge asks for no response itself."""
    bridge = bridge_for(fake)
    await bridge.start(META, playout=lambda: 300)
    events = await collect_until(bridge, AgentClear)
    greeting = {e.segment for e in events if isinstance(e, AgentAudio)}
    events = await collect_until(bridge, audio_ms=1000)
    await wait_for(lambda: len([e for e in fake.sent if e["type"] == "response.done"]) == 2)
    await bridge.send_audio(b"\xff" * 160)  # the bridge has read everything before this
    await bridge.close()
    events += await collect_until(bridge)
    cut, answer = created_responses(fake)
    answer_items = {
        e["item_id"]
        for e in fake.sent
        if e["type"] == "response.output_audio.delta" and e["response_id"] == answer["id"]
    }
    assert {e.segment for e in events if isinstance(e, AgentAudio)} == answer_items
    assert not greeting & answer_items
    assert len(audio_of(events)) == 1000 * 8
    assert not any(isinstance(e, AgentError) for e in events)
    assert events[-1] == AgentDisconnected(BridgeReason.CALLER_HANGUP, 1000)
    assert [e["type"] for e in fake.received].count("response.create") == 1  # the greeting's
    assert fake.overlapping_creates == 0
    replies = ("conversation.item.truncated", "conversation.item.deleted")  # to the cut
    sent = [e["type"] for e in fake.sent if e["type"] not in replies]
    turn = sent[sent.index("response.done") :]
    assert turn[:6] == [
        "response.done",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
        "response.created",
    ]
    assert_sdk_valid(fake)
