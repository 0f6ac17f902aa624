"""``TELEPATH_SIP_WORKERS=2``: a real ``telepath serve`` with a second SIP worker process.

Calls whose Call-ID the front owns and calls the worker owns both connect, carry a tone each
way and leave a record; ``/metrics`` adds the two processes up; the worker's log lines say
``w1``; the worker's webhook events wake the front's dispatcher; a nonce one process issued is
``stale`` in the other; a worker killed is started again and takes its calls, and the calls it
had up are recorded as ``lost`` at once, with their events; SIGTERM stops both processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sqlite3
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from telepath.sdp import create_offer
from telepath.sip.message import Request, Response, make_response
from telepath.sip.parser import StreamFramer, parse_message
from telepath.sip.routing import owner_of
from telepath.testing.fake_custom import FakeTelepathAgent
from telepath.testing.tones import dominant_frequency, g711_to_pcm16
from tests.certs import self_signed
from tests.integration.db.tcp_proxy import TcpProxy
from tests.integration.live.conftest import (
    LiveServer,
    custom_trunk,
    free_sip_port,
    live_api,
    live_calls,
    live_json,
    start_server,
    stop_server,
)
from tests.integration.webhooks.receiver import Receiver
from tests.interop.calls.harness import (
    Phone,
    SippResult,
    authenticated_call,
    connected_call,
    events_of,
    journaled_end,
    run_sipp,
    through_proxy,
    wait_until,
)
from tests.interop.media.sipp import require_sipp
from tests.interop.sip.test_dialog_connections import CuedAgent
from tests.interop.sip.uac import CallLeg, Message, Uac

pytestmark = pytest.mark.interop

PASSWORD = "correct-horse-9"


def _env(sip_port: int) -> dict[str, str]:
    return {
        "TELEPATH_SIP_WORKERS": "2",
        "TELEPATH_SIP_HOST": "127.0.0.1",
        "TELEPATH_SIP_PORT": str(sip_port),
        "TELEPATH_SIP_DRAIN_TIMEOUT_S": "2",
        "TELEPATH_ALLOW_INSECURE_AGENT_URLS": "true",
        "TELEPATH_SIP_DIGEST_ALGORITHMS": "MD5,SHA-256",
        "TELEPATH_VALIDATE_PROVIDER_KEYS": "false",
        "TELEPATH_RTP_PORT_MIN": "34000",
        "TELEPATH_RTP_PORT_MAX": "34998",
        # the dispatcher never polls the outbox by itself here: a worker's events must wake it
        "TELEPATH_WEBHOOK_POLL_S": "3600",
        "TELEPATH_ALLOW_INSECURE_WEBHOOK_URLS": "true",
    }


def _call_id(owner: int, tag: str) -> str:
    """A Call-ID that worker ``owner`` of two owns."""
    for i in range(1000):
        call_id = f"{tag}-{i}@127.0.0.1"
        if owner_of(call_id.encode(), 2) == owner:
            return call_id
    raise AssertionError("no call id")


def _worker_pids(pid: int) -> list[int]:
    children: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        children += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return children


async def _worker_serving(server: LiveServer) -> None:
    await wait_until(
        lambda: "SIP worker 1 serving its calls" in server.log(), what="the worker to start"
    )


def _sip_port(server: LiveServer, transport: str) -> int:
    """The port the server listens on for ``transport`` (its start-up log line)."""
    return int(re.findall(rf"{transport} 127\.0\.0\.1:(\d+)", server.log())[0])


def _heartbeats(data: Path) -> int:
    """Rows in ``gateway_instances`` (``db/instance_store.py``) of the server on ``data``."""
    with sqlite3.connect(data / "telepath.db") as db:
        (count,) = db.execute("SELECT count(*) FROM gateway_instances").fetchone()
    return int(count)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def _tone_call(
    tmp: Path, sip_port: int, user: str, call_id: str, agent: FakeTelepathAgent, hz: int
) -> None:
    """One call with ``call_id``: a tone from the phone reaches the agent, the agent's back."""
    phone = await Phone().open()
    (tmp / call_id).mkdir()
    try:
        sipp = asyncio.create_task(
            run_sipp(
                authenticated_call(user, phone.port, hold_ms=2500),
                tmp / call_id,
                ("127.0.0.1", sip_port),
                user=user,
                password=PASSWORD,
                extra=("-cid_str", call_id),
            )
        )
        await wait_until(lambda: phone.source is not None or sipp.done(), what="gateway RTP")
        assert phone.source is not None, (await sipp).stdout
        phone.start_tone(phone.source, hz, 2)
        result = await sipp
        assert result.returncode == 0, result.stdout + result.errors
        assert f"Call-ID: {call_id}" in result.messages
    finally:
        await phone.close()
    heard = g711_to_pcm16(bytes(agent.caller_audio), "pcmu")
    assert abs(dominant_frequency(heard) - hz) < 15
    assert abs(phone.dominant(0) - 440) < 15


async def test_two_workers_share_the_port_and_the_work(tmp_path: Path, receiver: Receiver) -> None:
    require_sipp()
    sip_port = free_sip_port()
    server = await asyncio.to_thread(start_server, tmp_path / "data", _env(sip_port))
    try:
        await _worker_serving(server)
        async with (
            FakeTelepathAgent(tone_hz=440, response_ms=1500) as front_agent,
            FakeTelepathAgent(tone_hz=440, response_ms=1500) as worker_agent,
        ):
            hook = {"url": receiver.url, "events": ["call.started", "call.ended"]}
            await live_json(server, "POST", "/v1/webhooks", hook)
            trunks = {}
            for user, agent in (("alice", front_agent), ("bob", worker_agent)):
                body = custom_trunk(user, PASSWORD, agent.url)
                trunks[user] = (await live_json(server, "POST", "/v1/trunks", body))["id"]
            front_id, worker_id = _call_id(0, "front"), _call_id(1, "worker")
            await asyncio.gather(
                _tone_call(tmp_path, sip_port, "alice", front_id, front_agent, 1000),
                _tone_call(tmp_path, sip_port, "bob", worker_id, worker_agent, 700),
            )
            calls = (await live_json(server, "GET", "/v1/calls"))["calls"]
            assert sorted(c["trunk_id"] for c in calls) == sorted(trunks.values())
            assert {c["status"] for c in calls} == {"connected"}  # completed
            assert all(c["end_time"] is not None for c in calls)
            assert {c["disconnect_reason"] for c in calls} == {"caller_hangup"}
            by_trunk = {c["trunk_id"]: c["id"] for c in calls}
            log = server.log()
            # each call was handled where its Call-ID says: the worker tags its lines "w1"
            assert re.search(rf"manager w1 \[{by_trunk[trunks['bob']]}\] .*ended", log), log
            assert re.search(rf"manager \[{by_trunk[trunks['alice']]}\] .*ended", log), log
            assert f"w1 [{by_trunk[trunks['alice']]}]" not in log

            # both calls' events delivered: the worker's woke the front's dispatcher
            def delivered() -> set[tuple[str, str]]:
                events = [json.loads(r.body) for r in receiver.requests]
                return {(e["type"], e["data"]["call_id"]) for e in events}

            expected = {(t, c["id"]) for t in ("call.started", "call.ended") for c in calls}
            await wait_until(lambda: delivered() >= expected, what="the webhooks")

            metrics = (await live_api(server, "GET", "/metrics")).text
            assert 'telepath_calls_total{outcome="caller_hangup"} 2.0' in metrics, metrics
            assert "telepath_active_calls 0.0" in metrics

            # A nonce the front issued, re-used on a call the worker owns: stale, not a failure.
            uac = await Uac.open("UDP", ("127.0.0.1", sip_port))
            try:
                first = CallLeg(uac, "bob", call_id=_call_id(0, "nonce"))
                await first.challenge(None)
                reuse = CallLeg(uac, "bob", call_id=_call_id(1, "reuse"))
                reuse.challenges = first.challenges
                uac.send(reuse.authenticated_invite(PASSWORD, None))
                again = await uac.response(401, reuse.call_id)
                assert "stale=true" in again.headers.get_all("WWW-Authenticate")[0]
                uac.send(reuse.build("ACK", to_tag=again.to.tag, cseq_method="ACK"))
            finally:
                await uac.close()

            # A worker that dies is started again and serves its share of the calls.
            (worker,) = _worker_pids(server.process.pid)
            assert "telepath_sip_workers_up 1.0" in metrics
            async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as client:
                os.kill(worker, signal.SIGKILL)
                # not ready from the exit until the new worker serves (over a second: the
                # restart waits one, then the worker starts)
                for _ in range(250):
                    restarting = await client.get("/readyz")
                    if restarting.status_code == 503:
                        break
                    await asyncio.sleep(0.02)
            assert restarting.status_code == 503
            assert restarting.json()["error"]["code"] == "not_ready"
            await wait_until(lambda: "SIP worker 1 exited" in server.log(), what="the exit")
            await wait_until(
                lambda: server.log().count("SIP worker 1 serving its calls") == 2,
                what="the new worker",
            )
            async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as client:
                for _ in range(250):  # "ready" reaches the front just after that log line
                    if (await client.get("/readyz")).status_code == 200:
                        break
                    await asyncio.sleep(0.02)
                else:
                    raise AssertionError("not ready again after the worker's restart")
            metrics = (await live_api(server, "GET", "/metrics")).text
            assert "telepath_sip_worker_restarts_total 1.0" in metrics
            assert "telepath_sip_workers_up 1.0" in metrics
            (restarted,) = _worker_pids(server.process.pid)
            assert restarted != worker
            await _tone_call(tmp_path, sip_port, "bob", _call_id(1, "again"), worker_agent, 700)
    finally:
        if server.process.poll() is None:
            pids = _worker_pids(server.process.pid)
            server.process.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(server.process.wait, 30)
            assert code == 0, server.log()
            assert pids and not any(_alive(pid) for pid in pids)  # no worker left behind
        else:
            await asyncio.to_thread(stop_server, server)


async def _bobs_call_heard(
    tmp_path: Path, sip_port: int, phone: Phone, hold_ms: int, call_id: str
) -> asyncio.Task[SippResult]:
    """SIPp calls ``bob`` (hanging up after ``hold_ms``), offering ``phone``'s port: its run,
    once the gateway's RTP reaches the phone (or SIPp is done without it)."""
    (tmp_path / "call").mkdir()
    sipp = asyncio.create_task(
        run_sipp(
            authenticated_call("bob", phone.port, hold_ms=hold_ms),
            tmp_path / "call",
            ("127.0.0.1", sip_port),
            user="bob",
            password=PASSWORD,
            extra=("-cid_str", call_id),
        )
    )
    await wait_until(lambda: phone.source is not None or sipp.done(), what="gateway RTP")
    return sipp


async def test_sigterm_keeps_forwarding_while_workers_drain(tmp_path: Path) -> None:
    """A worker's call outlives the front's own drain: its caller's BYE must still get through."""
    require_sipp()
    sip_port = free_sip_port()
    env = {**_env(sip_port), "TELEPATH_SIP_DRAIN_TIMEOUT_S": "8"}
    server = await asyncio.to_thread(start_server, tmp_path / "data", env)
    phone = await Phone().open()
    try:
        await _worker_serving(server)
        async with FakeTelepathAgent(tone_hz=440, response_ms=500) as agent:
            await live_json(server, "POST", "/v1/trunks", custom_trunk("bob", PASSWORD, agent.url))
            sipp = await _bobs_call_heard(tmp_path, sip_port, phone, 2500, _call_id(1, "drain"))
            assert phone.source is not None, (await sipp).stdout
            assert _heartbeats(tmp_path / "data") == 2  # the front and the worker beat
            server.process.send_signal(signal.SIGTERM)
            result = await sipp  # the caller hangs up 2.5 s in, inside the 8 s drain
            assert result.returncode == 0, result.stdout + result.errors
            code = await asyncio.to_thread(server.process.wait, 30)
            assert code == 0, server.log()
        assert re.search(r"manager w1 \[call_\w+\] call \w+ ended: caller_hangup", server.log())
        assert _heartbeats(tmp_path / "data") == 0  # each removed its row once its calls ended
    finally:
        await phone.close()
        if server.process.poll() is None:
            await asyncio.to_thread(stop_server, server)


async def test_an_invite_for_a_worker_gone_in_the_drain_gets_503(tmp_path: Path) -> None:
    """SIGTERM: the idle worker exits at once while the front's call keeps the front draining.
    A new INVITE whose Call-ID that worker owned must get the drain's 503 with Retry-After
    (README "Graceful shutdown", RFC 3261 §21.5.4) from the front — not be dropped for a
    worker that will never come back, leaving the caller to its 32 s Timer B."""
    require_sipp()
    sip_port = free_sip_port()
    env = {**_env(sip_port), "TELEPATH_SIP_DRAIN_TIMEOUT_S": "8"}
    server = await asyncio.to_thread(start_server, tmp_path / "data", env)
    phone = await Phone().open()
    uac = await Uac.open("UDP", ("127.0.0.1", sip_port))
    try:
        await _worker_serving(server)
        (worker,) = _worker_pids(server.process.pid)
        async with FakeTelepathAgent(tone_hz=440, response_ms=500) as agent:
            await live_json(server, "POST", "/v1/trunks", custom_trunk("bob", PASSWORD, agent.url))
            front = _call_id(0, "front")  # the front's own call
            sipp = await _bobs_call_heard(tmp_path, sip_port, phone, 6000, front)
            assert phone.source is not None, (await sipp).stdout
            server.process.send_signal(signal.SIGTERM)
            await wait_until(lambda: not _alive(worker), within_s=15, what="the worker to exit")
            call_id = _call_id(1, "late")
            invite = uac.request("INVITE", "bob", call_id=call_id, cseq=1, body=b"v=0\r\n")

            async def retransmitted() -> None:  # as a UAC's Timer A would (RFC 3261 §17.1.1.2)
                while True:
                    uac.send(invite)
                    await asyncio.sleep(0.5)

            resend = asyncio.create_task(retransmitted())
            try:
                refused = await uac.response(503, call_id)
            finally:
                resend.cancel()
            assert refused.headers.get("Retry-After")
            assert sipp.done() is False  # the front was still draining its own call
            result = await sipp
            assert result.returncode == 0, result.stdout + result.errors
            code = await asyncio.to_thread(server.process.wait, 30)
            assert code == 0, server.log()
    finally:
        await uac.close()
        await phone.close()
        if server.process.poll() is None:
            await asyncio.to_thread(stop_server, server)


async def test_a_killed_workers_calls_are_recorded_as_lost_at_once(
    tmp_path: Path, receiver: Receiver
) -> None:
    require_sipp()
    sip_port = free_sip_port()
    server = await asyncio.to_thread(start_server, tmp_path / "data", _env(sip_port))
    phone = await Phone().open()
    try:
        await _worker_serving(server)
        async with FakeTelepathAgent(tone_hz=440, response_ms=500) as agent:
            await live_json(server, "POST", "/v1/webhooks", {"url": receiver.url, "events": ["*"]})
            await live_json(server, "POST", "/v1/trunks", custom_trunk("bob", PASSWORD, agent.url))
            leg = await connected_call(sip_port, "bob", PASSWORD, _call_id(1, "doomed"), phone.port)
            try:
                (call,) = await live_calls(server, 1)
                assert call["status"] == "connected"
                await wait_until(lambda: "call.started" in events_of(receiver, call["id"]))
                (worker,) = _worker_pids(server.process.pid)
                os.kill(worker, signal.SIGKILL)

                async def closed() -> bool:
                    found = await live_json(server, "GET", f"/v1/calls/{call['id']}")
                    return bool(found["disconnect_reason"] == "lost")

                for _ in range(300):  # the front closes it as soon as it sees the exit
                    if await closed():
                        break
                    await asyncio.sleep(0.02)
                lost = await live_json(server, "GET", f"/v1/calls/{call['id']}")
                assert lost["disconnect_reason"] == "lost", lost
                assert lost["status"] == "disconnected" and lost["end_time"] is not None
                await wait_until(
                    lambda: (
                        {"agent.disconnected", "call.error", "call.ended"}
                        <= set(events_of(receiver, call["id"]))
                    ),
                    what="the lost call's events",
                )
                ended = events_of(receiver, call["id"])["call.ended"]
                assert ended["disconnect_reason"] == "lost" and ended["status"] == "disconnected"
                assert ended["duration_seconds"] == lost["duration_seconds"]
                assert events_of(receiver, call["id"])["agent.disconnected"]["reason"] == "lost"
                error = events_of(receiver, call["id"])["call.error"]
                assert error["error_code"] == "lost" and error["severity"] == "critical"
                metrics = (await live_api(server, "GET", "/metrics")).text
                assert 'telepath_calls_total{outcome="lost"} 1.0' in metrics, metrics
                # the restarted worker knows nothing of the call: the caller's BYE gets 481
                await wait_until(
                    lambda: server.log().count("SIP worker 1 serving its calls") == 2,
                    what="the new worker",
                )
                leg.cseq += 1
                leg.uac.send(leg.build("BYE"))
                await leg.uac.response(481, leg.call_id, method="BYE")
            finally:
                await leg.uac.close()
    finally:
        await phone.close()
        await asyncio.to_thread(stop_server, server)


@pytest.mark.parametrize("transport", ["TCP", "TLS"])
async def test_calls_over_one_stream_connection_are_shared_by_the_workers(
    tmp_path: Path, transport: str
) -> None:
    """A carrier's one TCP/TLS connection carries calls of both processes: the front keeps the
    connection, hands each message to the worker that owns its call, and writes the worker's
    answers on the connection."""
    cert, key = self_signed(tmp_path)
    env = {**_env(free_sip_port()), "TELEPATH_SIP_TLS_CERT": str(cert)}
    env["TELEPATH_SIP_TLS_KEY"] = str(key)
    server = await asyncio.to_thread(start_server, tmp_path / "data", env)
    phones = [await Phone().open(), await Phone().open()]
    try:
        await _worker_serving(server)
        port = _sip_port(server, transport)
        async with FakeTelepathAgent(tone_hz=440, response_ms=500) as agent:
            await live_json(server, "POST", "/v1/trunks", custom_trunk("bob", PASSWORD, agent.url))
            tls = ssl.create_default_context(cafile=str(cert)) if transport == "TLS" else None
            uac = await Uac.open(transport, ("127.0.0.1", port), tls)
            try:
                legs = [
                    CallLeg(uac, "bob", call_id=_call_id(owner, transport.lower()))
                    for owner in (0, 1)
                ]
                for leg, phone in zip(legs, phones, strict=True):
                    await leg.challenge(phone.port)
                    await leg.answered(leg.authenticated_invite(PASSWORD, phone.port))
                    uac.send(leg.ack())
                await wait_until(  # media set up in each process
                    lambda: all(p.source is not None for p in phones), what="gateway RTP"
                )
                calls = (await live_json(server, "GET", "/v1/calls"))["calls"]
                assert [c["status"] for c in calls] == ["connected", "connected"]
                assert [c["end_time"] for c in calls] == [None, None]  # both up
                for leg in legs:
                    await leg.bye()
            finally:
                await uac.close()
        calls = (await live_json(server, "GET", "/v1/calls"))["calls"]
        assert {c["disconnect_reason"] for c in calls} == {"caller_hangup"}
        log = server.log()
        for call in calls:  # the worker's call ended in the worker ("w1"), the other in the front
            found = re.findall(rf"manager( w1)? \[{call['id']}\] .*ended", log)
            assert found, log
        assert sorted(
            bool(re.search(rf"manager w1 \[{c['id']}\] .*ended", log)) for c in calls
        ) == [False, True]
        metrics = (await live_api(server, "GET", "/metrics")).text
        assert 'telepath_calls_total{outcome="caller_hangup"} 2.0' in metrics, metrics
    finally:
        for phone in phones:
            await phone.close()
        await asyncio.to_thread(stop_server, server)


async def test_stream_messages_for_a_restarting_worker_wait_for_it(tmp_path: Path) -> None:
    """Over TCP nothing is retransmitted: a message for a worker that is being started again
    is held and reaches the new process, on the same connection."""
    env = _env(free_sip_port())
    server = await asyncio.to_thread(start_server, tmp_path / "data", env)
    phone = await Phone().open()
    try:
        await _worker_serving(server)
        port = _sip_port(server, "TCP")
        async with FakeTelepathAgent(tone_hz=440, response_ms=500) as agent:
            await live_json(server, "POST", "/v1/trunks", custom_trunk("bob", PASSWORD, agent.url))
            uac = await Uac.open("TCP", ("127.0.0.1", port))
            try:
                leg = CallLeg(uac, "bob", call_id=_call_id(1, "restart"))
                await leg.challenge(phone.port)
                await leg.answered(leg.authenticated_invite(PASSWORD, phone.port))
                uac.send(leg.ack())
                for _ in range(250):  # its record is written (then the kill loses nothing)
                    if (await live_json(server, "GET", "/v1/calls"))["calls"]:
                        break
                    await asyncio.sleep(0.02)
                (worker,) = _worker_pids(server.process.pid)
                os.kill(worker, signal.SIGKILL)
                await wait_until(lambda: "SIP worker 1 exited" in server.log(), what="the exit")
                # sent while no worker 1 runs: held, then answered by the new one (481: the
                # call died with the old process)
                leg.cseq += 1
                uac.send(leg.build("BYE"))
                await uac.response(481, leg.call_id, method="BYE")
                assert server.log().count("SIP worker 1 serving its calls") == 2
                # the same connection carries the new worker's calls
                again = CallLeg(uac, "bob", call_id=_call_id(1, "after"))
                await again.challenge(phone.port)
                await again.answered(again.authenticated_invite(PASSWORD, phone.port))
                uac.send(again.ack())
                await again.bye()
            finally:
                await uac.close()
        # the second call's record is closed after the 200 to its BYE (the agent's close, then
        # the write): read it once both are (reading at once raced that: a null reason)
        reasons: list[str] = []
        for _ in range(250):
            calls = (await live_json(server, "GET", "/v1/calls"))["calls"]
            reasons = sorted(str(c["disconnect_reason"]) for c in calls)
            if "None" not in reasons:
                break
            await asyncio.sleep(0.02)
        assert reasons == ["caller_hangup", "lost"]
    finally:
        await phone.close()
        await asyncio.to_thread(stop_server, server)


async def test_a_worker_killed_in_a_database_outage_leaves_its_calls_end_to_the_front(
    tmp_path: Path, receiver: Receiver, own_postgres: str
) -> None:
    """A worker's call ends while PostgreSQL is unreachable and the worker is then killed: the
    end it kept is in its journal, which the front writes when it sees the exit — the record
    says ``caller_hangup``, not ``lost``."""
    sip_port = free_sip_port()
    data = tmp_path / "data"
    async with TcpProxy.in_front_of(own_postgres) as proxy:
        env = {**_env(sip_port), **through_proxy(proxy, own_postgres)}
        server = await asyncio.to_thread(start_server, data, env)
        phone = await Phone().open()
        try:
            await _worker_serving(server)
            async with FakeTelepathAgent(tone_hz=440, response_ms=500) as agent:
                hook = {"url": receiver.url, "events": ["*"]}
                await live_json(server, "POST", "/v1/webhooks", hook)
                await live_json(
                    server, "POST", "/v1/trunks", custom_trunk("bob", PASSWORD, agent.url)
                )
                call_id = _call_id(1, "outage")
                leg = await connected_call(sip_port, "bob", PASSWORD, call_id, phone.port)
                try:
                    (call,) = await live_calls(server, 1)
                    await wait_until(lambda: "call.started" in events_of(receiver, call["id"]))
                    proxy.cut()
                    await leg.bye()
                    journal = data / "journal"
                    await wait_until(lambda: journaled_end(journal), what="the end journaled")
                    (worker,) = _worker_pids(server.process.pid)
                    os.kill(worker, signal.SIGKILL)
                    await wait_until(
                        lambda: "SIP worker 1 exited" in server.log(), what="the exit seen"
                    )
                    proxy.restore()
                    await wait_until(
                        lambda: "call.ended" in events_of(receiver, call["id"]),
                        within_s=30,
                        what="the call's call.ended event",
                    )
                finally:
                    await leg.uac.close()
            ended = await live_json(server, "GET", f"/v1/calls/{call['id']}")
            assert (ended["status"], ended["disconnect_reason"]) == (
                "connected",
                "caller_hangup",
            ), ended
            sent = events_of(receiver, call["id"])["call.ended"]
            assert sent["disconnect_reason"] == "caller_hangup"
            await wait_until(lambda: not list(journal.iterdir()), what="the journal written")
        finally:
            await phone.close()
            await asyncio.to_thread(stop_server, server)


def _answering(call_id: str) -> Callable[[Message], bool]:
    return lambda m: isinstance(m, Response) and m.call_id == call_id


async def test_auth_failure_bans_count_every_workers_failures(tmp_path: Path) -> None:
    """Failed logins spread over the workers by Call-ID: they add up to one ban, as in one
    process, and the ban holds in every worker (before: each counted its own — N times the
    guesses — and a worker's ban left the others answering)."""
    env = {**_env(free_sip_port()), "TELEPATH_SIP_AUTH_FAILURES_BEFORE_BAN": "3"}
    sip_port = int(env["TELEPATH_SIP_PORT"])
    server = await asyncio.to_thread(start_server, tmp_path / "data", env)
    try:
        await _worker_serving(server)
        await live_json(server, "POST", "/v1/trunks", custom_trunk("bob", PASSWORD, "ws://x"))
        uac = await Uac.open("UDP", ("127.0.0.1", sip_port))
        try:
            # one wrong password on a call of the front, two on calls of the worker
            for owner, tag in ((0, "guess-a"), (1, "guess-b"), (1, "guess-c")):
                leg = CallLeg(uac, "bob", call_id=_call_id(owner, tag))
                await leg.challenge(None)
                uac.send(leg.authenticated_invite("wrong-password", None))
                refused = await uac.response(403, leg.call_id)
                uac.send(leg.build("ACK", to_tag=refused.to.tag, cseq_method="ACK"))
            await wait_until(
                lambda: "banned a SIP source" in server.log(), within_s=5, what="the ban"
            )
            await asyncio.sleep(0.2)  # the ban on its way to the worker
            for owner in (0, 1):  # neither process answers the banned source any more
                probe = CallLeg(uac, "bob", call_id=_call_id(owner, "after-ban"))
                uac.send(probe.build("INVITE", body=b""))
                with pytest.raises(AssertionError, match="nothing matched"):
                    await uac.wait_for(_answering(probe.call_id), within_s=1.5)
        finally:
            await uac.close()
    finally:
        await asyncio.to_thread(stop_server, server)


async def test_an_idle_stream_connection_stays_open_only_while_a_workers_call_uses_it(
    tmp_path: Path,
) -> None:
    """``TELEPATH_SIP_TCP_IDLE_S`` with workers: a connection that once carried a message of a
    worker's Call-ID, then went silent, is closed like any idle one (it was kept for ever: 64
    such connections per source address, 16 addresses, and the 1,024 places were gone); one
    that carries a live call of the worker's is kept past the idle time, both ways — the
    caller's BYE reaches the worker and the worker's 200 comes back on it."""
    env = {**_env(free_sip_port()), "TELEPATH_SIP_TCP_IDLE_S": "1"}
    server = await asyncio.to_thread(start_server, tmp_path / "data", env)
    phone = await Phone().open()
    try:
        await _worker_serving(server)
        port = _sip_port(server, "TCP")
        async with FakeTelepathAgent(tone_hz=440, response_ms=500) as agent:
            await live_json(server, "POST", "/v1/trunks", custom_trunk("bob", PASSWORD, agent.url))
            silent = await Uac.open("TCP", ("127.0.0.1", port))
            uac = await Uac.open("TCP", ("127.0.0.1", port))
            try:
                call_id = _call_id(1, "attack").encode()
                silent.send(b"OPTIONS sip:x SIP/2.0\r\ni: " + call_id + b"\r\nl: 0\r\n\r\n")
                leg = CallLeg(uac, "bob", call_id=_call_id(1, "kept"))
                await leg.challenge(phone.port)
                await leg.answered(leg.authenticated_invite(PASSWORD, phone.port))
                uac.send(leg.ack())
                assert silent._stream is not None and uac._stream is not None
                # closed after the idle time and the workers' time to answer (1 s here)
                await asyncio.wait_for(silent._stream.closed.wait(), 10)
                await asyncio.sleep(3)  # three idle times without a message on the call's
                assert not uac._stream.closed.is_set()
                await leg.bye()  # both ways over the connection kept
            finally:
                await silent.close()
                await uac.close()
        calls = (await live_json(server, "GET", "/v1/calls"))["calls"]
        assert [c["disconnect_reason"] for c in calls] == ["caller_hangup"]
        assert re.search(rf"manager w1 \[{calls[0]['id']}\] .*ended", server.log())
    finally:
        await phone.close()
        await asyncio.to_thread(stop_server, server)


async def _record_when_ended(server: LiveServer, call_id: str, within_s: float) -> Any:
    """The call's record once it has an end (as it is after ``within_s``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while True:
        record = await live_json(server, "GET", f"/v1/calls/{call_id}")
        if record["end_time"] is not None or loop.time() > deadline:
            return record
        await asyncio.sleep(0.05)


async def test_a_workers_bye_the_front_cannot_send_ends_its_dialog_at_once(tmp_path: Path) -> None:
    """RFC 3261 §17.1.4 across processes: the carrier closed the connection of a worker's call
    and refuses a new one to its Contact, so the worker's BYE cannot be sent; the front tells
    the worker, whose BYE transaction ends at once. With ``TELEPATH_SIP_BYE_WAIT_S`` 32 the
    call's record waits for that end: it waited for Timer F (32 s), the front having told only
    its own core."""
    env = {**_env(free_sip_port()), "TELEPATH_SIP_BYE_WAIT_S": "32"}
    server = await asyncio.to_thread(start_server, tmp_path / "data", env)
    phone = await Phone().open()
    try:
        await _worker_serving(server)
        port = _sip_port(server, "TCP")
        async with CuedAgent() as agent:
            await live_json(server, "POST", "/v1/trunks", custom_trunk("bob", PASSWORD, agent.url))
            with socket.socket() as refusing:  # bound, not listening: connections refused
                refusing.bind(("127.0.0.1", 0))
                uac = await Uac.open("TCP", ("127.0.0.1", port))
                uac.local = ("127.0.0.1", int(refusing.getsockname()[1]))  # Via, Contact
                try:
                    leg = CallLeg(uac, "bob", call_id=_call_id(1, "refused"))
                    await leg.challenge(phone.port)
                    await leg.answered(leg.authenticated_invite(PASSWORD, phone.port))
                    uac.send(leg.ack())
                    (call,) = await live_calls(server, 1)
                finally:
                    await uac.close()
                agent.cue.set()  # the worker's BYE, on a connection that is gone
                await wait_until(
                    lambda: "message(s) not sent" in server.log(), what="the BYE refused"
                )
                ended = await _record_when_ended(server, call["id"], within_s=10)
        assert (ended["status"], ended["disconnect_reason"]) == ("connected", "agent_hangup")
        assert re.search(rf"manager w1 \[{call['id']}\] .*ended", server.log())
    finally:
        await phone.close()
        await asyncio.to_thread(stop_server, server)


@dataclass
class _Link:
    """One connection the gateway opened to :class:`_Registrar`."""

    writer: asyncio.StreamWriter
    contact: str = ""  # the contact its REGISTER bound
    messages: list[Message] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def final(self, call_id: str, method: str) -> Response | None:
        """The final answer to our ``method`` of ``call_id`` on this connection, once here."""
        found = [
            m
            for m in self.messages
            if isinstance(m, Response)
            and m.call_id == call_id
            and m.cseq.method == method
            and m.status >= 200
        ]
        return found[-1] if found else None


@dataclass
class _Registrar:
    """A registrar over TCP on a raw socket: grants every REGISTER and keeps each connection
    (:class:`_Link`), to send requests back on it (RFC 5923) and to see it closed."""

    port: int = 0
    links: list[_Link] = field(default_factory=list)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link(writer)
        self.links.append(link)
        framer = StreamFramer()
        try:
            while data := await reader.read(65536):
                for raw in framer.feed(data):
                    message = parse_message(raw)
                    link.messages.append(message)
                    if isinstance(message, Request) and message.method == "REGISTER":
                        contact = (message.headers.get("Contact") or "").split(">")[0] + ">"
                        link.contact = link.contact or contact.strip("<>")
                        granted = [("Contact", f"{contact};expires=60")]
                        response = make_response(message, 200, to_tag="reg", headers=granted)
                        writer.write(response.to_bytes())
        finally:
            link.closed.set()


async def test_a_registrations_connection_stays_open_only_while_a_workers_call_uses_it(
    tmp_path: Path,
) -> None:
    """A registration lets its connection go (its trunk's registration changed): closed, unless
    a call signals over it — here a worker's, of which the front holds no dialog. The front
    asks the workers, as for an idle connection: one that carried only a message of a worker's
    Call-ID (anyone can send one) is closed — it was kept for ever —, one a worker's call
    uses is kept, and the call goes on over it."""
    registrar = _Registrar()
    listening = await asyncio.start_server(registrar.serve, "127.0.0.1", 0)
    registrar.port = int(listening.sockets[0].getsockname()[1])
    server = await asyncio.to_thread(start_server, tmp_path / "data", _env(free_sip_port()))
    phone = await Phone().open()
    try:
        await _worker_serving(server)
        sip_port = _sip_port(server, "TCP")
        async with FakeTelepathAgent(agent="silent") as agent:
            registration = {
                "registrar": f"sip:127.0.0.1:{registrar.port};transport=tcp",
                "username": "alice",
                "password": "carrier-secret-7",
                "expires": 60,
            }
            trunks = [
                await live_json(
                    server,
                    "POST",
                    "/v1/trunks",
                    {**custom_trunk(user, PASSWORD, agent.url), "registration": registration},
                )
                for user in ("idle", "busy")
            ]
            await wait_until(
                lambda: [bool(link.contact) for link in registrar.links] == [True, True],
                what="both registered",
            )
            idle, busy = registrar.links
            caller = Uac("TCP", target=("127.0.0.1", sip_port), local=("127.0.0.1", registrar.port))
            probe = _call_id(1, "probe")  # a message of the worker's, nothing more
            idle.writer.write(
                caller.request("OPTIONS", "x", call_id=probe, cseq=1, uri=idle.contact)
            )
            await wait_until(lambda: idle.final(probe, "OPTIONS"), what="the worker's answer")
            call_id = _call_id(1, "on-registration")
            offer = create_offer(
                local_address="127.0.0.1", local_port=phone.port, session_id=1, session_version=1
            )
            user = busy.contact[4:].split("@")[0]
            busy.writer.write(
                caller.request(
                    "INVITE", user, call_id=call_id, cseq=1, uri=busy.contact, body=offer.to_bytes()
                )
            )
            await wait_until(lambda: busy.final(call_id, "INVITE"), what="the call answered")
            ok = busy.final(call_id, "INVITE")
            assert ok is not None and ok.status == 200, ok
            tag = ok.to.tag
            busy.writer.write(
                caller.request("ACK", user, call_id=call_id, cseq=1, to_tag=tag, uri=busy.contact)
            )
            for trunk in trunks:  # a new registration, on a new connection: the old let go
                changed = {**registration, "expires": 120}
                await live_json(
                    server, "PATCH", f"/v1/trunks/{trunk['id']}", {"registration": changed}
                )
            await asyncio.wait_for(idle.closed.wait(), 10)
            await asyncio.sleep(3)  # longer than the workers have to claim it
            assert not busy.closed.is_set()
            busy.writer.write(
                caller.request("BYE", user, call_id=call_id, cseq=2, to_tag=tag, uri=busy.contact)
            )
            await wait_until(lambda: busy.final(call_id, "BYE"), what="the BYE answered")
            bye = busy.final(call_id, "BYE")
            assert bye is not None and bye.status == 200
            assert len(agent.handshakes) == 1
        (call,) = await live_calls(server, 1)
        assert re.search(rf"manager w1 \[{call['id']}\] .*ended", server.log())
    finally:
        for link in registrar.links:
            link.writer.close()
        listening.close()
        await phone.close()
        await asyncio.to_thread(stop_server, server)


def _receive_waits(metrics: str) -> float:
    """``telepath_sip_receive_wait_seconds_count`` in a ``/metrics`` text (every process's)."""
    (count,) = re.findall(r"^telepath_sip_receive_wait_seconds_count (\S+)$", metrics, re.M)
    return float(count)


async def test_each_datagram_a_worker_serves_is_one_receive_wait(tmp_path: Path) -> None:
    """``telepath_sip_receive_wait_seconds`` observes each datagram once, whichever process
    serves it: the front read each datagram of a worker's call and observed its wait, then the
    worker observed it again (``_count`` rose by 2 for 1)."""
    server = await asyncio.to_thread(start_server, tmp_path / "data", _env(free_sip_port()))
    try:
        await _worker_serving(server)
        before = _receive_waits((await live_api(server, "GET", "/metrics")).text)
        uac = await Uac.open("UDP", ("127.0.0.1", _sip_port(server, "UDP")))
        try:
            owners = (1, 1, 1, 1, 1, 1, 0, 0)  # six of the worker's, two of the front's
            for i, owner in enumerate(owners):
                call_id = _call_id(owner, f"wait{i}")
                uac.send(uac.request("OPTIONS", "bob", call_id=call_id, cseq=1))
                await uac.response(200, call_id)
        finally:
            await uac.close()
        after = _receive_waits((await live_api(server, "GET", "/metrics")).text)
        assert after - before == len(owners)
    finally:
        await asyncio.to_thread(stop_server, server)
