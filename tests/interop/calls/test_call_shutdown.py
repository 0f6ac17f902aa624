"""Graceful shutdown: a real ``telepath serve`` process given SIGTERM with a call up, and the
in-process gateway's drain with calls still being set up.

New INVITEs get 503 while the gateway drains; the live call is ended with our BYE once the
drain time (2 s) runs out; the process exits 0; after a restart the record says ``shutdown``.
A set-up that completes while the gateway drains, or that the drain has to cancel, gets 503
too, and its agent connection is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from telepath.bridges.base import AgentBridge, BridgeReason, ProviderConfig
from telepath.bridges.ws import WebSocketBridge
from telepath.calls.model import CallRecord
from telepath.cli.gateway import Gateway
from telepath.sip.message import Request, Response
from telepath.sip.routing import owner_of
from telepath.testing.fake_custom import FakeTelepathAgent
from tests.integration.conftest import Api
from tests.integration.live.conftest import (
    custom_trunk,
    free_sip_port,
    live_json,
    start_server,
    stop_server,
)
from tests.integration.webhooks.receiver import Receiver
from tests.interop.calls.conftest import GATEWAY_SETTINGS, create_trunk, record, subscribe
from tests.interop.calls.harness import (
    Phone,
    authenticated_call,
    connected_call,
    events_of,
    refused_call,
    run_sipp,
    wait_until,
)
from tests.interop.media.sipp import require_sipp
from tests.interop.sip.uac import CallLeg, Uac, new_call_id

pytestmark = pytest.mark.interop

PASSWORD = "correct-horse-9"
DRAIN_S = 2


def _env(sip_port: int) -> dict[str, str]:
    return {
        "TELEPATH_SIP_HOST": "127.0.0.1",
        "TELEPATH_SIP_PORT": str(sip_port),
        "TELEPATH_SIP_DRAIN_TIMEOUT_S": str(DRAIN_S),
        "TELEPATH_ALLOW_INSECURE_AGENT_URLS": "true",
        "TELEPATH_SIP_DIGEST_ALGORITHMS": "MD5,SHA-256",
        "TELEPATH_VALIDATE_PROVIDER_KEYS": "false",
        "TELEPATH_RTP_PORT_MIN": "33000",
        "TELEPATH_RTP_PORT_MAX": "33998",
    }


async def _calls_after_restart(data_dir: Path, api_key: str) -> list[dict[str, Any]]:
    """The call records a new ``telepath serve`` on ``data_dir`` lists (it closes a stopped
    run's calls first), then stops it."""
    restarted = await asyncio.to_thread(start_server, data_dir, _env(free_sip_port()), api_key)
    try:
        calls: list[dict[str, Any]] = (await live_json(restarted, "GET", "/v1/calls"))["calls"]
    finally:
        await asyncio.to_thread(stop_server, restarted)
    return calls


async def test_sigterm_drains_then_ends_calls_with_bye(tmp_path: Path) -> None:
    require_sipp()
    data_dir = tmp_path / "data"
    sip_port = free_sip_port()
    server = await asyncio.to_thread(start_server, data_dir, _env(sip_port))
    phone = await Phone().open()
    try:
        async with FakeTelepathAgent(tone_hz=440, response_ms=500) as agent:
            await live_json(
                server, "POST", "/v1/trunks", custom_trunk("alice", PASSWORD, agent.url)
            )
            scenario = authenticated_call("alice", phone.port, caller_hangs_up=False)
            (tmp_path / "call").mkdir()
            sipp = asyncio.create_task(
                run_sipp(
                    scenario,
                    tmp_path / "call",
                    ("127.0.0.1", sip_port),
                    user="alice",
                    password=PASSWORD,
                )
            )
            # The gateway's RTP reaches the phone once the call is answered: answer from there.
            await wait_until(lambda: phone.source is not None, what="RTP from the gateway")
            assert phone.source is not None
            phone.start_tone(phone.source, 1000, 30)
            await wait_until(lambda: len(agent.caller_audio) > 1600, what="audio at the agent")

            server.process.send_signal(signal.SIGTERM)
            await wait_until(lambda: "draining calls" in server.log(), what="the drain to start")
            (tmp_path / "late").mkdir()
            late = await run_sipp(
                refused_call("bob", phone.port, 503),
                tmp_path / "late",
                ("127.0.0.1", sip_port),
                user="bob",
                password=PASSWORD,
                timeout_s=5,
            )
            assert late.returncode == 0, late.stdout + late.errors
            assert "Retry-After:" in late.messages
            assert not sipp.done()  # the live call outlasts the new INVITE

            result = await sipp  # ends when our BYE was answered
            assert result.returncode == 0, result.stdout + result.errors
            code = await asyncio.to_thread(server.process.wait, 20)
            assert code == 0, server.log()
            await phone.close()
            assert agent.stops  # the agent was told too
    finally:
        await phone.close()
        if server.process.poll() is None:
            await asyncio.to_thread(stop_server, server)

    calls = await _calls_after_restart(data_dir, server.api_key)
    assert len(calls) == 1  # the refused INVITE never became a call
    [call] = calls
    assert call["status"] == "connected"  # a shutdown ends a call normally (Completed)
    assert call["disconnect_reason"] == "shutdown"
    assert call["duration_seconds"] >= DRAIN_S


def _front_owned_call_id(tag: str) -> str:
    """A Call-ID the front process owns (of two SIP workers): its calls need no worker."""
    for i in range(1000):
        call_id = f"{tag}-{i}@127.0.0.1"
        if owner_of(call_id.encode(), 2) == 0:
            return call_id
    raise AssertionError("no call id")


def _sip_worker(pid: int) -> int | None:
    """The ``telepath sip-worker`` child of ``pid`` once it runs (not another short-lived child,
    nor the worker's fork before it execs)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            with contextlib.suppress(FileNotFoundError):
                if b"sip-worker" in Path(f"/proc/{child}/cmdline").read_bytes():
                    return int(child)
    return None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_stop_while_starting_drains_the_calls_already_up(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """The SIP listener takes calls while the start goes on: here it waits for a SIP worker
    that is slow to come up (held with SIGSTOP), the HTTP API not up yet. A signal then used to
    kill the process outright (SIGTERM) or cancel the start (SIGINT): the call got no BYE. Now
    the start stops there and the usual graceful stop follows: drain, BYE, a clean exit, the
    worker stopped too, the record ``shutdown``."""
    require_sipp()
    data_dir = tmp_path / "data"
    async with FakeTelepathAgent(tone_hz=440, response_ms=500) as agent:
        first = await asyncio.to_thread(start_server, data_dir, _env(free_sip_port()))
        try:
            await live_json(first, "POST", "/v1/trunks", custom_trunk("alice", PASSWORD, agent.url))
        finally:
            await asyncio.to_thread(stop_server, first)

        sip_port = free_sip_port()
        env = {**_env(sip_port), "TELEPATH_SIP_WORKERS": "2"}
        before = len(first.log())  # the same file: this run's lines come after
        server = await asyncio.to_thread(start_server, data_dir, env, first.api_key, wait=False)

        def log() -> str:
            return server.log()[before:]

        worker: int | None = None
        phone = await Phone().open()
        try:
            await wait_until(
                lambda: _sip_worker(server.process.pid) or server.process.poll() is not None,
                within_s=30,
                what="the SIP worker process",
            )
            worker = _sip_worker(server.process.pid)
            assert worker is not None, log()
            os.kill(worker, signal.SIGSTOP)  # it cannot say it serves: the start waits for it
            assert "SIP worker 1 started" not in log()  # caught in time
            assert "SIP listening on" in log()

            scenario = authenticated_call("alice", phone.port, caller_hangs_up=False)
            (tmp_path / "call").mkdir()
            sipp = asyncio.create_task(
                run_sipp(
                    scenario,
                    tmp_path / "call",
                    ("127.0.0.1", sip_port),
                    user="alice",
                    password=PASSWORD,
                    extra=("-cid_str", _front_owned_call_id("starting")),
                    timeout_s=30,
                )
            )
            await wait_until(lambda: phone.source is not None or sipp.done(), what="gateway RTP")
            assert phone.source is not None, (await sipp).stdout
            phone.start_tone(phone.source, 1000, 30)
            await wait_until(lambda: len(agent.caller_audio) > 1600, what="audio at the agent")
            with pytest.raises(httpx.ConnectError):  # still starting
                async with httpx.AsyncClient() as client:
                    await client.get(f"{server.base_url}/healthz", timeout=2)

            server.process.send_signal(sig)
            await wait_until(lambda: "draining calls" in log(), what="the drain to start")
            os.kill(worker, signal.SIGCONT)  # slow, not dead: it is told to stop, and does
            result = await sipp  # ends when our BYE was answered
            assert result.returncode == 0, result.stdout + result.errors + log()
            code = await asyncio.to_thread(server.process.wait, 30)
            assert code == 0, log()
            await wait_until(lambda: not _alive(worker or 0), what="the worker to exit")
            assert agent.stops  # the agent was told too
        finally:
            await phone.close()
            if worker is not None and _alive(worker):
                os.kill(worker, signal.SIGCONT)
            if server.process.poll() is None:
                await asyncio.to_thread(stop_server, server)

    calls = await _calls_after_restart(data_dir, first.api_key)
    [call] = calls
    assert call["disconnect_reason"] == "shutdown"


# --- set-ups in progress when the drain starts (in-process gateway) --------------------------


def _keep_bridges(gateway: Gateway) -> list[WebSocketBridge]:
    """Every agent bridge call control creates from now on."""
    made: list[WebSocketBridge] = []
    factory = gateway.manager.bridge_factory

    def keeping(provider: str, config: ProviderConfig, timeout: float) -> AgentBridge:
        bridge = factory(provider, config, timeout)
        assert isinstance(bridge, WebSocketBridge)
        made.append(bridge)
        return bridge

    gateway.manager.bridge_factory = keeping
    return made


@contextlib.asynccontextmanager
async def _drain_while_the_agent_answers(
    api: Api, gateway: Gateway, agent: FakeTelepathAgent, *, offer: bool = True
) -> AsyncIterator[list[Response]]:
    """An authenticated INVITE from a raw UAC (``offer``: with SDP, else a delayed offer); once
    the agent is being dialled, the gateway drains (drain time 0). Yields the INVITE's final
    responses."""
    await create_trunk(api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=agent.url)
    phone = await Phone().open()
    uac = await Uac.open("UDP", gateway.server.bound["UDP"])
    try:
        leg = CallLeg(uac, "alice")
        media_port = phone.port if offer else None
        await leg.challenge(media_port)
        start = len(uac.received)
        uac.send(leg.authenticated_invite(PASSWORD, media_port))
        await wait_until(lambda: len(agent.handshakes) == 1, what="the agent being dialled")
        await asyncio.wait_for(gateway.manager.drain(0), 30)
        assert not gateway.manager._tasks  # the drain returned once they were done
        await uac.wait_for(
            lambda m: isinstance(m, Response) and m.status >= 200 and m.cseq.method == "INVITE",
            after=start,
        )
        yield [
            r.message
            for r in uac.received[start:]
            if isinstance(r.message, Response)
            and r.message.status >= 200
            and r.message.cseq.method == "INVITE"
        ]
    finally:
        await uac.close()
        await phone.close()


async def test_options_gets_the_drains_503_as_an_invite_does(gateway: Gateway) -> None:
    """RFC 3261 §11.2: OPTIONS outside a dialog is answered as an INVITE would be — while the
    gateway drains, 503 with the same Retry-After, so that a carrier's or a dispatcher's
    OPTIONS probe marks it down instead of up."""
    uac = await Uac.open("UDP", gateway.server.bound["UDP"])
    try:
        before = new_call_id()
        uac.send(uac.request("OPTIONS", "alice", call_id=before, cseq=1))
        await uac.response(200, before)
        await asyncio.wait_for(gateway.manager.drain(0), 30)
        probe, invite = new_call_id(), new_call_id()
        uac.send(uac.request("OPTIONS", "alice", call_id=probe, cseq=1))
        uac.send(uac.request("INVITE", "alice", call_id=invite, cseq=1, body=b"v=0\r\n"))
        refused = await uac.response(503, probe)
        retry = (await uac.response(503, invite)).headers.get("Retry-After")
        assert retry and refused.headers.get("Retry-After") == retry
    finally:
        await uac.close()


async def _alices_call(gateway: Gateway, phone: Phone) -> CallLeg:
    """A call on ``alice``'s trunk over the gateway's UDP port, answered and ACKed."""
    sip_port = gateway.server.bound["UDP"][1]
    return await connected_call(sip_port, "alice", PASSWORD, new_call_id(), phone.port)


@pytest.mark.parametrize("settings_overrides", [{**GATEWAY_SETTINGS, "sip_max_calls": 1}])
async def test_options_gets_503_while_the_gateway_is_full(api: Api, gateway: Gateway) -> None:
    """The same at capacity (TELEPATH_SIP_MAX_CALLS): 503 with the INVITE's Retry-After."""
    async with FakeTelepathAgent(agent="silent") as agent:
        await create_trunk(api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=agent.url)
        phone = await Phone().open()
        leg: CallLeg | None = None
        try:
            leg = await _alices_call(gateway, phone)
            await wait_until(lambda: gateway.manager.active_calls == 1, what="the call")
            probe, invite = new_call_id(), new_call_id()
            leg.uac.send(leg.uac.request("OPTIONS", "alice", call_id=probe, cseq=1))
            leg.uac.send(
                leg.uac.request("INVITE", "alice", call_id=invite, cseq=1, body=b"v=0\r\n")
            )
            refused = await leg.uac.response(503, probe)
            retry = (await leg.uac.response(503, invite)).headers.get("Retry-After")
            assert retry and refused.headers.get("Retry-After") == retry
            await leg.bye()
            await wait_until(lambda: gateway.manager.active_calls == 0, what="the call's end")
            after = new_call_id()
            leg.uac.send(leg.uac.request("OPTIONS", "alice", call_id=after, cseq=1))
            await leg.uac.response(200, after)
        finally:
            if leg is not None:
                await leg.uac.close()
            await phone.close()


async def _options_in_dialog(leg: CallLeg) -> Response:
    """Send OPTIONS in ``leg``'s dialog (its Call-ID, tags, next CSeq); its final response."""
    leg.cseq += 1
    start = len(leg.uac.received)
    leg.uac.send(leg.build("OPTIONS"))
    item = await leg.uac.wait_for(
        lambda m: (
            isinstance(m, Response)
            and m.status >= 200
            and m.call_id == leg.call_id
            and m.cseq.method == "OPTIONS"
        ),
        after=start,
    )
    return cast(Response, item.message)


@pytest.mark.parametrize("settings_overrides", [{**GATEWAY_SETTINGS, "sip_max_calls": 1}])
async def test_options_in_a_dialog_gets_200_while_full_or_draining(
    api: Api, gateway: Gateway
) -> None:
    """RFC 3261 §11.2 is about OPTIONS outside a dialog: inside one it is what a re-INVITE
    would get, and a live call's re-INVITE is still served at capacity and while draining.
    An in-dialog OPTIONS keep-alive must stay 200 there — SBCs that take a non-2xx keep-alive
    for a dead session would tear the live calls down."""
    async with FakeTelepathAgent(agent="silent") as agent:
        await create_trunk(api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=agent.url)
        phone = await Phone().open()
        leg: CallLeg | None = None
        drain: asyncio.Task[None] | None = None
        try:
            leg = await _alices_call(gateway, phone)
            await wait_until(lambda: gateway.manager.active_calls == 1, what="the call")
            full = await _options_in_dialog(leg)  # at TELEPATH_SIP_MAX_CALLS
            assert full.status == 200
            drain = asyncio.create_task(gateway.manager.drain(60))
            await wait_until(lambda: gateway.manager.draining, what="the drain")
            draining = await _options_in_dialog(leg)
            assert draining.status == 200
            await leg.bye()
            await asyncio.wait_for(drain, 30)
        finally:
            if drain is not None and not drain.done():
                drain.cancel()
            if leg is not None:
                await leg.uac.close()
            await phone.close()


@pytest.mark.parametrize("offer", [True, False], ids=["offer", "delayed-offer"])
async def test_a_set_up_that_completes_while_draining_gets_503(
    api: Api, gateway: Gateway, offer: bool
) -> None:
    """The agent answers once the drain has begun (and ended the calls there were): no 200 —
    a call answered then would never be ended properly — but 503 with Retry-After (RFC 3261
    §21.5.4), the agent told (stop, reason shutdown) and let go."""
    bridges = _keep_bridges(gateway)
    async with FakeTelepathAgent(agent="silent", handshake_delay_s=1) as agent:
        async with _drain_while_the_agent_answers(api, gateway, agent, offer=offer) as finals:
            assert [r.status for r in finals] == [503]
            assert finals[0].headers.get("Retry-After")
        await wait_until(agent.sessions_ended.is_set, what="the agent's connection to close")
    assert [s["reason"] for s in agent.stops] == ["shutdown"]
    assert [b.finished for b in bridges] == [True]
    assert gateway.manager.ports.in_use == 0 and gateway.manager.active_calls == 0
    assert (await api.get("/v1/calls")).json()["calls"] == []  # never a call


@pytest.mark.parametrize(
    "settings_overrides",
    [{**GATEWAY_SETTINGS, "provider_timeout_s": 60.0, "sip_bye_wait_s": 0.0}],
    ids=["agent connect timeout 60 s"],
)
async def test_a_set_up_the_drain_cancels_gets_503_and_lets_the_agent_go(
    api: Api, gateway: Gateway, settings_overrides: dict[str, Any]
) -> None:
    """The agent is still being dialled when the drain gives up waiting and cancels what is
    left: the INVITE gets 503 (it used to get no final response), and the connect is cancelled
    with the set-up, not left to open a WebSocket nobody closes; the drain returns only once
    that is done."""
    bridges = _keep_bridges(gateway)
    async with FakeTelepathAgent(agent="silent", handshake_delay_s=60) as agent:
        async with _drain_while_the_agent_answers(api, gateway, agent) as finals:
            assert [r.status for r in finals] == [503]
            assert finals[0].headers.get("Retry-After")
            assert [b.finished for b in bridges] == [True]  # closed when the drain returned
    assert agent.starts == []  # no session ever opened
    assert gateway.manager.ports.in_use == 0 and not gateway.manager._tasks
    assert (await api.get("/v1/calls")).json()["calls"] == []


async def test_a_stuck_http_client_does_not_hold_up_the_drain(tmp_path: Path) -> None:
    """A request whose body never finishes arriving: on SIGTERM the HTTP server waits for it a
    few seconds (``HTTP_SHUTDOWN_GRACE_S``), not for ever — the gateway's drain, which came
    after, used to never start, and the process never exited. The drain begins at the signal,
    not once the HTTP server is done: new INVITEs get 503 (and the registrations go) at once,
    while the HTTP server still waits for that request."""
    sip_port = free_sip_port()
    server = await asyncio.to_thread(start_server, tmp_path / "data", _env(sip_port))
    host, port = server.base_url.removeprefix("http://").split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    uac = await Uac.open("UDP", ("127.0.0.1", sip_port))
    try:
        writer.write(
            b"POST /v1/trunks HTTP/1.1\r\nHost: telepath\r\n"
            + f"Authorization: Bearer {server.api_key}\r\n".encode()
            + b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"name": '
        )
        await writer.drain()
        await asyncio.sleep(0.5)  # the request is being read: its body never completes
        server.process.send_signal(signal.SIGTERM)
        await wait_until(
            lambda: "draining calls" in server.log(), within_s=15, what="the drain to start"
        )
        call_id = new_call_id()
        uac.send(uac.request("INVITE", "alice", call_id=call_id, cseq=1, body=b"v=0\r\n"))
        refused = await uac.response(503, call_id)
        assert refused.headers.get("Retry-After")
        code = await asyncio.to_thread(server.process.wait, 20)
        log = server.log()
        assert code == 0, log
        # in the server's own order: the drain began, and that INVITE was refused, before
        # the HTTP server gave up waiting for the stuck request
        gave_up = log.index("timeout graceful shutdown exceeded")
        assert log.index("draining calls") < gave_up, log
        assert log.index("INVITE refused with 503: draining") < gave_up, log
    finally:
        await uac.close()
        writer.close()
        if server.process.poll() is None:
            server.process.kill()
            await asyncio.to_thread(server.process.wait)


@pytest.mark.parametrize("slow", ["agent_close", "record_start"])
async def test_a_call_whose_close_outlasts_the_drain_still_ends_as_shutdown(
    api: Api,
    gateway: Gateway,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    slow: str,
) -> None:
    """A carrier that never answers our BYE, and an agent whose close hangs (the call gives it
    5 s: ``agent_close``) or a database that stalls on the call's first record write
    (``record_start``; the end waits for it). The call's close used to outlast the drain's wait
    for it (5 s plus the BYE wait), and the drain cancelled it before its record was written —
    left open, closed as ``lost`` with a critical ``call.error`` at the next start, no
    ``call.ended``. Now the agent's close and the BYE's wait overlap, so the first close fits
    the wait (nothing is cancelled); the second is cut short, but its record says
    ``shutdown`` with its end all the same, ``call.ended`` goes out and the media is released."""
    await subscribe(api, receiver.url)
    bridges = _keep_bridges(gateway)
    if slow == "record_start":
        recorder = gateway.manager.recorder
        assert recorder is not None

        async def stalled(record: CallRecord) -> None:
            await asyncio.Event().wait()

        monkeypatch.setattr(recorder, "call_started", stalled)
    async with FakeTelepathAgent(agent="silent") as agent:
        await create_trunk(api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=agent.url)
        phone = await Phone().open()
        uac: Uac | None = None
        try:
            leg = await _alices_call(gateway, phone)
            uac = leg.uac  # answers nothing: our BYE goes unanswered
            await wait_until(lambda: gateway.manager.active_calls == 1, what="the call")
            [bridge] = bridges
            close = bridge.close

            async def hung_close(reason: BridgeReason = BridgeReason.CALLER_HANGUP) -> None:
                await close(reason)  # the agent is sent its stop...
                await asyncio.Event().wait()  # ...but the close never returns

            if slow == "agent_close":
                monkeypatch.setattr(bridge, "close", hung_close)
            start = len(uac.received)
            await asyncio.wait_for(gateway.manager.drain(0), 60)
            assert any(
                isinstance(r.message, Request) and r.message.method == "BYE"
                for r in uac.received[start:]
            )
        finally:
            if uac is not None:
                await uac.close()
            await phone.close()
    cut_short = [r for r in caplog.records if "cancelled" in r.getMessage()]
    assert bool(cut_short) == (slow == "record_start"), cut_short
    assert [s["reason"] for s in agent.stops] == ["shutdown"]
    assert not gateway.manager.calls and gateway.manager.ports.in_use == 0
    [call] = (await api.get("/v1/calls")).json()["calls"]
    detail = await record(api, call["id"])
    assert (detail["status"], detail["disconnect_reason"]) == ("connected", "shutdown")
    assert detail["end_time"] is not None
    await wait_until(lambda: "call.ended" in events_of(receiver, call["id"]), what="call.ended")
    assert events_of(receiver, call["id"])["call.ended"]["disconnect_reason"] == "shutdown"
