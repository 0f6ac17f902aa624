"""Custom agents (telepath and Twilio Media Streams protocols) against the local fakes."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any, Literal

import pytest
import websockets
from websockets.asyncio.server import ServerConnection

from telepath.bridges import ws as ws_module
from telepath.bridges.base import (
    AgentBridge,
    AgentClear,
    AgentConnected,
    AgentDisconnected,
    AgentError,
    AgentEvent,
    AgentHangup,
    AgentMark,
    AgentReconnected,
    AgentTransfer,
    BridgeAuthError,
    BridgeConnectError,
    BridgeReason,
    Codec,
    CustomConfig,
)
from telepath.bridges.custom.bridge import TwilioStreamBridge
from telepath.bridges.custom.events import MediaFormat
from telepath.bridges.registry import create_bridge
from telepath.testing.fake_custom import GREETING_MARK, FakeTelepathAgent, FakeTwilioAgent
from telepath.testing.tones import dominant_frequency, g711_to_pcm16, sine_g711

from .helpers import META, audio_of, collect_until, log_everything, wait_for

HEADERS = {"Authorization": "Bearer agent-token", "X-Tenant": "acme"}


def bridge_for(fake: FakeTelepathAgent | FakeTwilioAgent, timeout_s: float = 2.0) -> AgentBridge:
    protocol: Literal["telepath", "twilio"] = (
        "twilio" if isinstance(fake, FakeTwilioAgent) else "telepath"
    )
    # the fakes listen on loopback ws:// (TELEPATH_ALLOW_INSECURE_AGENT_URLS on)
    config = CustomConfig(
        endpoint=fake.url, protocol=protocol, headers=HEADERS, allow_insecure=True
    )
    return create_bridge("custom", config, connect_timeout_s=timeout_s)


@pytest.mark.parametrize("upper", [False, True])
async def test_a_ws_endpoint_is_not_dialled_unless_insecure_urls_are_allowed(upper: bool) -> None:
    """TELEPATH_ALLOW_INSECURE_AGENT_URLS holds at every dial, not only when the trunk was
    saved: off, a ws:// endpoint (the scheme in any case, RFC 3986 §3.1) fails as an
    unreachable agent (``connection_failed``, not retried) without a connection."""
    async with FakeTelepathAgent(agent="silent") as fake:
        url = fake.url.replace("ws://", "WS://") if upper else fake.url
        bridge = create_bridge("custom", CustomConfig(endpoint=url, headers=HEADERS))
        with pytest.raises(BridgeConnectError) as info:
            await bridge.start(META)
        assert (info.value.reason, info.value.retryable) == (BridgeReason.CONNECTION_FAILED, False)
        assert info.value.code == "insecure_url"
        assert await collect_until(bridge) == [info.value.to_event()]
        assert fake.handshakes == []


async def test_the_agent_s_headers_and_url_token_are_not_logged_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # websockets' own client logger prints the request line and every header at DEBUG
    log_everything(caplog)
    async with FakeTelepathAgent() as fake:
        config = CustomConfig(
            endpoint=f"{fake.url}?token=url-secret",
            protocol="telepath",
            headers=HEADERS,
            allow_insecure=True,
        )
        bridge = create_bridge("custom", config, connect_timeout_s=2.0)
        await bridge.start(META)
        await collect_until(bridge, AgentMark)
        await bridge.close()
        await collect_until(bridge)
        assert fake.handshakes[0].headers["authorization"] == "Bearer agent-token"
        assert fake.handshakes[0].path.endswith("?token=url-secret")
    assert "agent-token" not in caplog.text
    assert "url-secret" not in caplog.text


@pytest.mark.parametrize(
    ("fmt", "rate"),
    [(None, 8000), (MediaFormat(encoding="pcm16", sample_rate=16000), 16000)],
)
async def test_telepath_audio_both_ways_marks_dtmf_stop(fmt: MediaFormat | None, rate: int) -> None:
    async with FakeTelepathAgent(media_format=fmt) as fake:
        bridge = bridge_for(fake)
        await bridge.start(META)
        events = await collect_until(bridge, AgentMark)
        assert isinstance(events[0], AgentConnected)
        assert events[-1] == AgentMark(GREETING_MARK)
        audio = audio_of(events)
        assert dominant_frequency(g711_to_pcm16(audio)) == pytest.approx(440, abs=8)
        for n in range(10):
            await bridge.send_audio(sine_g711(1000, 20, phase=n * 160))
        await bridge.send_dtmf("7")
        await bridge.notify_mark(GREETING_MARK)
        await wait_for(lambda: fake.digits == ["7"] and fake.mark_echoes == [GREETING_MARK])
        received = bytes(fake.caller_audio)
        if rate == 8000:
            assert received == b"".join(sine_g711(1000, 20, phase=n * 160) for n in range(10))
        else:
            assert dominant_frequency(received, 16000) == pytest.approx(1000, abs=16)
        await bridge.close()
        assert (await collect_until(bridge))[-1] == AgentDisconnected(
            BridgeReason.CALLER_HANGUP, 1000
        )
        await wait_for(lambda: fake.stops == [{"type": "stop", "reason": "caller_hangup"}])
        assert fake.protocol_errors == []
        start = fake.received[0]
        assert start["call"]["caller"] == "+14155550123"
        assert start["system_prompt"] == "You are a test agent."
        assert fake.handshakes[0].headers["authorization"] == "Bearer agent-token"
        assert fake.handshakes[0].headers["x-tenant"] == "acme"
        audio_msgs = [m for m in fake.received if m["type"] == "audio"]
        assert [m["seq"] for m in audio_msgs] == list(range(1, 11))
        assert [m["timestamp_ms"] for m in audio_msgs] == list(range(0, 200, 20))


async def test_a_trunk_without_a_prompt_sends_a_null_one() -> None:
    async with FakeTelepathAgent(agent="silent") as fake:
        bridge = bridge_for(fake)
        await bridge.start(replace(META, system_prompt=None))
        await bridge.close()
        await wait_for(lambda: fake.stops)
        assert "system_prompt" in fake.received[0] and fake.received[0]["system_prompt"] is None
        assert fake.protocol_errors == []


async def test_telepath_pcma_call_offers_alaw_first() -> None:
    async with FakeTelepathAgent(agent="echo") as fake:
        bridge = bridge_for(fake)
        await bridge.start(replace(META, codec="pcma"))
        frame = sine_g711(500, 20, "pcma")
        await bridge.send_audio(frame)
        events = await collect_until(bridge, audio_ms=20)
        assert audio_of(events) == frame
        assert fake.received[0]["media_formats"][0] == {"encoding": "alaw", "sample_rate": 8000}
        await bridge.close()


@pytest.mark.parametrize(
    ("codec", "wideband", "offered"),
    [
        ("pcmu", False, [("ulaw", 8000), ("pcm16", 8000), ("pcm16", 16000), ("alaw", 8000)]),
        ("pcma", False, [("alaw", 8000), ("pcm16", 8000), ("pcm16", 16000), ("ulaw", 8000)]),
        # G.722: the call's audio is 16 kHz PCM16 (no G.711 law of its own); pcm16/16k needs no
        # conversion and keeps 50-7,000 Hz, pcm16/8k a resample, a law a resample and coding
        ("pcmu", True, [("pcm16", 16000), ("pcm16", 8000), ("ulaw", 8000), ("alaw", 8000)]),
    ],
)
async def test_telepath_media_formats_are_offered_best_first(
    codec: Codec, wideband: bool, offered: list[tuple[str, int]]
) -> None:
    """docs/custom-agent-protocol.md: ``media_formats`` lists the formats best first."""
    async with FakeTelepathAgent(agent="silent") as fake:
        bridge = bridge_for(fake)
        await bridge.start(replace(META, codec=codec, wideband=wideband))
        formats = fake.received[0]["media_formats"]
        assert [(f["encoding"], f["sample_rate"]) for f in formats] == offered
        await bridge.close()
    assert fake.protocol_errors == []


async def test_telepath_clear_hangup_transfer() -> None:
    async with FakeTelepathAgent(clear_after_ms=300) as fake:
        bridge = bridge_for(fake)
        await bridge.start(META)
        events = await collect_until(bridge, AgentClear)
        assert len(audio_of(events)) == 300 * 8
        await bridge.close()
    async with FakeTelepathAgent(transfer_to="sip:sales@example.com", hangup=True) as fake:
        bridge = bridge_for(fake)
        await bridge.start(META)
        events = await collect_until(bridge, AgentTransfer)
        assert events[-1] == AgentTransfer("sip:sales@example.com", "xfer-1")
        await bridge.send_transfer_result("xfer-1", ok=True)
        assert (await collect_until(bridge))[-1] == AgentHangup(BridgeReason.AGENT_HANGUP)
        await wait_for(
            lambda: (
                fake.transfer_results
                == [{"type": "transfer_result", "request_id": "xfer-1", "ok": True}]
            )
        )
        await bridge.close()
        assert fake.protocol_errors == []


class SpelledTransfers(FakeTelepathAgent):
    """After ``ready``, a ``transfer`` to each of ``targets`` (as JSON of its own: the fake's
    model is not the judge of a target), then the greeting's mark."""

    def __init__(self, targets: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.targets = targets

    async def _greet(self, ws: ServerConnection) -> bool:
        for n, target in enumerate(self.targets, 1):
            await ws.send(json.dumps({"type": "transfer", "target": target, "request_id": f"x{n}"}))
        await self.send_mark(ws, GREETING_MARK)
        return True


async def test_a_transfer_target_reaches_call_control_as_the_agent_spelled_it() -> None:
    """Upper-case schemes (case-insensitive: RFC 3986 §3.1, RFC 3261 §19.1.4) and a bare
    number used to be "malformed agent message": the call ended as ai_provider_error. They
    reach call control, whose URI check decides (a bare number: "invalid transfer target")."""
    targets = ["TEL:+14155550123", "Sip:alice@example.com", "+14155550123"]
    async with SpelledTransfers(targets) as fake:
        bridge = bridge_for(fake)
        await bridge.start(META)
        events = await collect_until(bridge, AgentMark)
        assert not any(isinstance(e, AgentError) for e in events)
        transfers = [e for e in events if isinstance(e, AgentTransfer)]
        assert transfers == [AgentTransfer(t, f"x{n}") for n, t in enumerate(targets, 1)]
        await bridge.close()
        assert fake.protocol_errors == []


class OddChunkThenClear(FakeTelepathAgent):
    """A sample and a half of audio, ``clear`` (a barge-in), then the usual tone: the next
    turn's audio starts on a whole sample of its own (docs: agent ``audio`` of any length)."""

    async def _greet(self, ws: ServerConnection) -> bool:
        await self.send_audio(ws, b"\x10\x20\x30")
        await self.send_clear(ws)
        return await super()._greet(ws)


@pytest.mark.parametrize("rate", [8000, 16000])
async def test_a_pcm16_agent_s_next_turn_after_clear_is_not_shifted_by_a_byte(rate: int) -> None:
    pcm16 = MediaFormat(encoding="pcm16", sample_rate=rate)
    async with OddChunkThenClear(media_format=pcm16) as fake:
        bridge = bridge_for(fake)
        await bridge.start(META)
        events = await collect_until(bridge, AgentMark)
        after = events[events.index(AgentClear()) :]
        audio = g711_to_pcm16(audio_of(after))
        assert len(audio) == 1000 * 16  # the whole second of tone, as 8 kHz PCM16
        assert dominant_frequency(audio) == pytest.approx(440, abs=8)  # not 840 Hz (a byte off)
        await bridge.close()
        assert fake.protocol_errors == []


@pytest.mark.parametrize(
    ("after_start", "code", "retryable"),
    [
        ("error", "quota", False),
        ("drop", "1006", True),
        ("malformed", None, False),
        ("invalid-utf8", "1007", False),
        ("close", "1011", True),
    ],
)
async def test_telepath_failures(after_start: str, code: str | None, retryable: bool) -> None:
    async with FakeTelepathAgent(agent="silent", after_start=after_start) as fake:
        bridge = bridge_for(fake)
        await bridge.start(META)
        terminal = (await collect_until(bridge))[-1]
        assert isinstance(terminal, AgentError)
        assert (terminal.reason, terminal.code, terminal.retryable) == (
            BridgeReason.AI_PROVIDER_ERROR,
            code,
            retryable,
        )
        await bridge.close()


async def test_connect_failures() -> None:
    async with FakeTelepathAgent(reject_status=401) as fake:
        with pytest.raises(BridgeAuthError):
            await bridge_for(fake).start(META)
    async with FakeTelepathAgent(no_ready=True) as fake:
        with pytest.raises(BridgeConnectError) as info:
            await bridge_for(fake, timeout_s=0.3).start(META)
        assert info.value.code == "timeout"
    async with FakeTwilioAgent(handshake_delay_s=5) as fake:
        bridge = bridge_for(fake, timeout_s=0.3)
        with pytest.raises(BridgeConnectError) as info:
            await bridge.start(META)
        assert (info.value.reason, info.value.code) == (BridgeReason.CONNECTION_FAILED, "timeout")
        assert isinstance((await collect_until(bridge))[-1], AgentError)


async def test_twilio_agent_works_unchanged() -> None:
    async with FakeTwilioAgent() as fake:
        bridge = bridge_for(fake)
        assert isinstance(bridge, TwilioStreamBridge)
        bridge.clock = lambda: 0.0  # time stands still: the timestamps count the audio
        await bridge.start(META)
        events = await collect_until(bridge, AgentMark)
        assert dominant_frequency(g711_to_pcm16(audio_of(events))) == pytest.approx(440, abs=8)
        frames = [sine_g711(1000, 20, phase=n * 160) for n in range(5)]
        for frame in frames:
            await bridge.send_audio(frame)
        await bridge.send_dtmf("1")
        await bridge.notify_mark(GREETING_MARK)
        await wait_for(lambda: fake.digits == ["1"] and fake.mark_echoes == [GREETING_MARK])
        assert bytes(fake.caller_audio) == b"".join(frames)
        await bridge.close()
        await wait_for(lambda: len(fake.stops) == 1)
        assert fake.protocol_errors == []
        assert fake.custom_parameters["From"] == "+14155550123"
        assert fake.custom_parameters["To"] == "+18005551212"
        assert fake.custom_parameters["SystemPrompt"] == "You are a test agent."
        media = [m for m in fake.received if m["event"] == "media"]
        assert [m["media"]["chunk"] for m in media] == ["1", "2", "3", "4", "5"]
        assert [m["media"]["timestamp"] for m in media] == ["0", "20", "40", "60", "80"]
        assert all(m["media"]["track"] == "inbound" for m in media)
        start = fake.received[1]["start"]
        assert start["streamSid"].startswith("MZ") and len(start["streamSid"]) == 34


async def test_twilio_media_timestamps_are_ms_since_the_stream_started() -> None:
    """providers.md §4.2: ``media.timestamp`` is the presentation time, ms since the stream
    started, not the audio sent so far: after a 30 s hold (no RTP) it is 30 s on. Within
    ``MEDIA_CLOCK_SLACK_MS`` of the clock it counts the audio, so frames stay 20 ms apart
    whatever their jitter; a burst after a stall runs at most that far ahead; it never goes
    back."""
    now = [0.0]
    arrivals = [0.0, 0.02, 0.045, 0.058, 0.08]  # jitter: the audio is counted
    arrivals += [30.1, 30.12, 30.14]  # after a 30 s hold: back on the clock
    arrivals += [30.4] * 7 + [30.42]  # a 240 ms stall, then its frames at once
    async with FakeTwilioAgent(agent="silent") as fake:
        bridge = bridge_for(fake)
        assert isinstance(bridge, TwilioStreamBridge)
        bridge.clock = lambda: now[0]
        await bridge.start(META)
        frame = sine_g711(1000, 20)
        for at in arrivals:
            now[0] = at
            await bridge.send_audio(frame)
        await wait_for(lambda: fake.chunks == len(arrivals))
        await bridge.close()
    stamps = [int(m["media"]["timestamp"]) for m in fake.received if m["event"] == "media"]
    assert stamps[:5] == [0, 20, 40, 60, 80]
    assert stamps[5:8] == [30100, 30120, 30140]
    assert stamps[8:] == [30400, 30420, 30440, 30460, 30480, 30500, 30500, 30520]
    assert fake.protocol_errors == []


async def test_twilio_clear_hangup_and_alaw_conversion() -> None:
    async with FakeTwilioAgent(clear_after_ms=200) as fake:
        bridge = bridge_for(fake)
        await bridge.start(META)
        events = await collect_until(bridge, AgentClear)
        assert len(audio_of(events)) == 1600
        await bridge.close()
    async with FakeTwilioAgent(hangup=True) as fake:
        bridge = bridge_for(fake)
        await bridge.start(replace(META, codec="pcma"))
        events = await collect_until(bridge)
        assert events[-1] == AgentHangup(BridgeReason.AGENT_HANGUP)
        pcm = g711_to_pcm16(audio_of(events), "pcma")
        assert dominant_frequency(pcm) == pytest.approx(440, abs=8)
        await bridge.close()


@pytest.mark.parametrize(("after_start", "code"), [("drop", "1006"), ("close", "1011")])
async def test_twilio_failures(after_start: str, code: str) -> None:
    async with FakeTwilioAgent(agent="silent", after_start=after_start) as fake:
        bridge = bridge_for(fake)
        await bridge.start(META)
        terminal = (await collect_until(bridge))[-1]
        assert isinstance(terminal, AgentError) and terminal.code == code
        await bridge.close()


async def test_the_fake_checks_start_per_call() -> None:
    """Each WebSocket session of the fake is one call with its own start: two calls in a row to
    one fake are no violation (the fake once kept the first call's start, so every later call
    on the same fake logged one); a session that does not start first still is."""
    async with FakeTelepathAgent(agent="silent") as fake:
        for _ in range(2):
            bridge = bridge_for(fake)
            await bridge.start(META)
            await collect_until(bridge, AgentConnected)
            await bridge.close()
        await wait_for(lambda: len(fake.stops) == 2)
        assert fake.protocol_errors == []
        async with websockets.connect(fake.url) as ws:  # audio before any start
            await ws.send('{"type": "audio", "seq": 1, "timestamp_ms": 0, "payload": ""}')
            await wait_for(lambda: fake.protocol_errors != [])
        assert fake.protocol_errors == ["start must come first, once"]


async def test_forwarded_sip_headers_reach_both_protocols() -> None:
    forwarded = {"X-Customer-Id": "cust-42", "From": "spoof"}  # a header named like a parameter
    meta = replace(META, sip_headers=forwarded)
    async with (
        FakeTelepathAgent(agent="silent") as telepath,
        FakeTwilioAgent(agent="silent") as twilio,
    ):
        for fake in (telepath, twilio):
            bridge = bridge_for(fake)
            await bridge.start(meta)
            await collect_until(bridge, AgentConnected)
            await bridge.close()
        await wait_for(lambda: len(telepath.stops) == 1 and len(twilio.stops) == 1)
    start = next(m for m in telepath.received if m["type"] == "start")
    assert start["call"]["sip_headers"] == forwarded
    # Twilio's customParameters carry them beside the call's own, which they never replace.
    assert twilio.custom_parameters["X-Customer-Id"] == "cust-42"
    assert twilio.custom_parameters["From"] == META.caller
    assert telepath.protocol_errors == [] and twilio.protocol_errors == []


async def test_no_forwarded_headers_no_field() -> None:
    async with FakeTelepathAgent(agent="silent") as fake:
        bridge = bridge_for(fake)
        await bridge.start(META)
        await collect_until(bridge, AgentConnected)
        await bridge.close()
        await wait_for(lambda: len(fake.stops) == 1)
    start = next(m for m in fake.received if m["type"] == "start")
    assert "sip_headers" not in start["call"]  # agents written before the field see nothing new


# --- reconnect (custom_reconnect) ---------------------------------------------------------


def reconnecting(fake: FakeTelepathAgent, within_s: float) -> AgentBridge:
    config = CustomConfig(
        endpoint=fake.url, headers=HEADERS, reconnect_s=within_s, allow_insecure=True
    )
    return create_bridge("custom", config, connect_timeout_s=2.0)


async def test_a_dropped_agent_is_reconnected_and_nothing_sent_meanwhile_is_lost() -> None:
    async with FakeTelepathAgent(agent="echo", drop_after_ms=200) as fake:
        bridge = reconnecting(fake, 5.0)
        await bridge.start(META)
        fake.handshake_delay_s = 0.3  # the new connection takes a while: frames wait for it
        frame = sine_g711(1000, 20, "pcmu")
        events: list[AgentEvent] = []

        async def read() -> None:
            async for event in bridge.events():
                events.append(event)

        reader = asyncio.create_task(read())
        for _ in range(50):  # 1 s of caller audio, paced; the drop comes after 0.2 s
            assert bridge.send_audio_nowait(frame)
            await asyncio.sleep(0.02)
        await wait_for(lambda: any(m.get("seq") == 50 for m in fake.received))
        await bridge.close()
        await reader
    reconnected = [e for e in events if isinstance(e, AgentReconnected)]
    assert reconnected == [AgentReconnected("custom", 1, 0)]
    # the second start is the first one again, with reconnect
    first, second = fake.starts
    assert first.reconnect is None and second.reconnect == 1
    assert second.model_copy(update={"reconnect": None}) == first
    # Every caller frame reached the agent once, in order, across both connections — but for
    # frames written to the first one after the agent aborted it and before the abort reached
    # us, which TCP loses (a loaded host, 1 run in ~10): a few at most, one run of them.
    seqs = [m["seq"] for m in fake.received if m["type"] == "audio"]
    assert seqs == sorted(set(seqs)) and (seqs[0], seqs[-1]) == (1, 50)
    missing = sorted(set(range(1, 51)) - set(seqs))
    assert len(missing) <= 3
    assert not missing or missing == list(range(missing[0], missing[0] + len(missing)))
    assert len(fake.handshakes) == 2 and fake.handshakes[1].headers["x-tenant"] == "acme"
    # the echo came back on the new connection too, and the call ended as we closed it
    after = events[events.index(reconnected[0]) :]
    assert (
        audio_of(after)
        and abs(dominant_frequency(g711_to_pcm16(audio_of(after), "pcmu")) - 1000) < 15
    )
    assert isinstance(events[-1], AgentDisconnected) and fake.protocol_errors == []


class OddChunkThenDrop(FakeTelepathAgent):
    """On its first connection a sample and a half of audio, then (``drop_after_ms``) the
    drop; on the next one the tone: the new connection's audio starts on a whole sample."""

    async def _greet(self, ws: ServerConnection) -> bool:
        if len(self.starts) == 1:
            await self.send_audio(ws, b"\x10\x20\x30")
            return True  # no mark, no hangup: the drop comes next
        return await super()._greet(ws)


async def test_a_reconnected_pcm16_agent_s_audio_is_not_shifted_by_a_byte() -> None:
    pcm16 = MediaFormat(encoding="pcm16", sample_rate=8000)
    async with OddChunkThenDrop(media_format=pcm16, drop_after_ms=100) as fake:
        bridge = reconnecting(fake, 5.0)
        await bridge.start(META)
        events = await collect_until(bridge, AgentMark)
        after = events[[type(e) for e in events].index(AgentReconnected) :]
        audio = g711_to_pcm16(audio_of(after))
        assert len(audio) == 1000 * 16
        assert dominant_frequency(audio) == pytest.approx(440, abs=8)
        await bridge.close()
        assert fake.protocol_errors == []


async def test_no_reconnect_within_the_budget_ends_the_session() -> None:
    async with FakeTelepathAgent(agent="silent", drop_after_ms=100, max_sessions=1) as fake:
        bridge = reconnecting(fake, 0.5)
        await bridge.start(META)
        terminal = (await collect_until(bridge))[-1]
        assert isinstance(terminal, AgentError)
        assert (terminal.reason, terminal.code) == (BridgeReason.AI_PROVIDER_ERROR, "1006")
        assert "no reconnect within 0.5 s" in terminal.message
        assert len(fake.handshakes) > 2  # it kept trying, each refused (503)
        await bridge.close()


@pytest.mark.parametrize("after_start", ["error", "malformed"])
async def test_an_agents_error_is_not_a_reason_to_reconnect(after_start: str) -> None:
    async with FakeTelepathAgent(agent="silent", after_start=after_start) as fake:
        bridge = reconnecting(fake, 5.0)
        await bridge.start(META)
        assert isinstance((await collect_until(bridge))[-1], AgentError)
        assert len(fake.handshakes) == 1
        await bridge.close()


async def test_a_frame_the_websocket_layer_refuses_is_not_a_reason_to_reconnect() -> None:
    """A text frame that is no UTF-8 fails the connection with 1007 (RFC 6455 §8.1); it used
    to look like a drop (no close frame received), so the bridge dialled again and resumed. A
    malformed frame ends the call (docs/custom-agent-protocol.md, "Reconnect policy")."""
    async with FakeTelepathAgent(agent="silent", after_start="invalid-utf8") as fake:
        bridge = reconnecting(fake, 5.0)
        await bridge.start(META)
        terminal = (await collect_until(bridge))[-1]
        assert isinstance(terminal, AgentError)
        assert (terminal.reason, terminal.code, terminal.retryable) == (
            BridgeReason.AI_PROVIDER_ERROR,
            "1007",
            False,
        )
        assert len(fake.handshakes) == 1
        await bridge.close()


async def test_a_normal_close_still_hangs_up() -> None:
    async with FakeTelepathAgent(agent="silent", after_start="close-normal") as fake:
        bridge = reconnecting(fake, 5.0)
        await bridge.start(META)
        assert isinstance((await collect_until(bridge))[-1], AgentHangup)
        assert len(fake.handshakes) == 1
        await bridge.close()


async def test_a_full_backlog_keeps_the_newest_and_counts_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ws_module, "MAX_BACKLOG", 5)
    async with FakeTelepathAgent(agent="silent", drop_after_ms=100) as fake:
        bridge = reconnecting(fake, 5.0)
        await bridge.start(META)
        fake.handshake_delay_s = 0.4
        frame = sine_g711(1000, 20, "pcmu")
        for _ in range(40):
            bridge.send_audio_nowait(frame)
            await asyncio.sleep(0.02)
        reconnected = await collect_until(bridge, AgentReconnected)
        await wait_for(lambda: len(fake.starts) == 2 and fake.received[-1].get("seq") == 40)
        await bridge.close()
    event = reconnected[-1]
    assert isinstance(event, AgentReconnected) and event.dropped > 0
    seqs = [m["seq"] for m in fake.received if m["type"] == "audio"]
    assert seqs == sorted(set(seqs))  # a gap, never a reorder or a repeat
    # Every frame is delivered or counted dropped, except frames written to the first
    # connection after the agent aborted it and before the abort reached us: TCP loses those
    # and nothing in the protocol acknowledges frames (seen once in CI under load: 25 of 40
    # arrived, 14 were counted). At 20 ms a frame, a few at most.
    assert 40 - event.dropped - 3 <= len(seqs) <= 40 - event.dropped
    assert seqs[-1] == 40
