"""``telepath serve`` killed with a call up: the next run closes the record.

SIGKILL leaves no chance to end anything: the call's record stays ``connected``. A restart on
the same data directory finds the dead run's process ids in ``<data_dir>/instances``
(``cli/instances.py``) and closes that record at once; a run that shares only the database
closes it once the dead process's heartbeat row has stood still long enough. Either way the
record is ``lost`` with an end time and its events are sent; a call that had ended before the
crash keeps its record as it was.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from telepath.testing.fake_custom import FakeTelepathAgent
from tests.integration.db.tcp_proxy import TcpProxy
from tests.integration.live.conftest import (
    LiveServer,
    custom_trunk,
    free_sip_port,
    live_calls,
    live_json,
    start_server,
    stop_server,
)
from tests.integration.webhooks.receiver import Receiver
from tests.interop.calls.harness import (
    Phone,
    connected_call,
    events_of,
    journaled_end,
    through_proxy,
    wait_until,
)

pytestmark = pytest.mark.interop

PASSWORD = "correct-horse-9"


def _env() -> dict[str, str]:
    return {
        "TELEPATH_SIP_PORT": str(free_sip_port()),
        "TELEPATH_ALLOW_INSECURE_AGENT_URLS": "true",
        "TELEPATH_VALIDATE_PROVIDER_KEYS": "false",
        "TELEPATH_ALLOW_INSECURE_WEBHOOK_URLS": "true",
        "TELEPATH_WEBHOOK_POLL_S": "0.2",
    }


async def _killed_with_a_call_up(
    data: Path, env: dict[str, str], receiver: Receiver
) -> tuple[LiveServer, dict[str, dict[str, Any]]]:
    """A run on ``data`` with one call ended and one up, then SIGKILLed: the run and its two
    records as they were, ``up`` and ``ended``."""
    first = await asyncio.to_thread(start_server, data, env)
    phone = await Phone().open()
    try:
        async with FakeTelepathAgent(tone_hz=440, response_ms=500) as agent:
            await live_json(first, "POST", "/v1/webhooks", {"url": receiver.url, "events": ["*"]})
            await live_json(first, "POST", "/v1/trunks", custom_trunk("bob", PASSWORD, agent.url))
            sip_port = int(env["TELEPATH_SIP_PORT"])
            done = await connected_call(
                sip_port, "bob", PASSWORD, "before-crash@127.0.0.1", phone.port
            )
            await done.bye()
            await done.uac.close()
            await _until_ended(first)  # the record's end is written beside the teardown
            live = await connected_call(sip_port, "bob", PASSWORD, "at-crash@127.0.0.1", phone.port)
            await live.uac.close()
            listed = await live_calls(first, 2)
            calls = {("up" if c["end_time"] is None else "ended"): c for c in listed}
            assert set(calls) == {"up", "ended"}
            # the one still up and the one that ended normally: both connected
            assert {c["status"] for c in listed} == {"connected"}
    finally:
        await phone.close()
        first.process.send_signal(signal.SIGKILL)  # also when the set-up failed: no orphan
        await asyncio.to_thread(first.process.wait, 10)
    return first, calls


async def _until_ended(server: LiveServer) -> None:
    """Wait (10 s at most) until one of ``server``'s call records has an end."""
    for _ in range(100):
        calls = (await live_json(server, "GET", "/v1/calls"))["calls"]
        if any(c["end_time"] is not None for c in calls):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"no call record ended: {calls}")


async def _check_closed(
    second: LiveServer, calls: dict[str, dict[str, Any]], receiver: Receiver
) -> None:
    """The call that was up is ``lost`` with an end, and its events went out; the other kept."""
    call = calls["up"]
    lost = await live_json(second, "GET", f"/v1/calls/{call['id']}")
    assert lost["disconnect_reason"] == "lost", lost
    assert lost["status"] == "disconnected" and lost["end_time"] is not None
    assert lost["end_time"] >= call["start_time"]
    kept = await live_json(second, "GET", f"/v1/calls/{calls['ended']['id']}")
    assert (kept["status"], kept["disconnect_reason"]) == ("connected", "caller_hangup")
    await wait_until(
        lambda: {"call.error", "call.ended"} <= set(events_of(receiver, call["id"])),
        what="the lost call's events",
    )
    assert events_of(receiver, call["id"])["call.ended"]["disconnect_reason"] == "lost"
    assert "closed 1 call record(s) of a stopped gateway process as lost" in second.log()


async def test_a_killed_runs_open_call_is_closed_by_the_next_run(
    tmp_path: Path, receiver: Receiver
) -> None:
    data = tmp_path / "data"
    env = _env()
    first, calls = await _killed_with_a_call_up(data, env, receiver)
    second = await asyncio.to_thread(start_server, data, env, first.api_key)
    try:
        await _check_closed(second, calls, receiver)  # closed before the API served
    finally:
        await asyncio.to_thread(stop_server, second)
    assert second.process.returncode == 0
    assert (data / "instances").read_text() == ""  # a clean stop leaves nothing to close


async def test_a_killed_runs_open_call_is_closed_by_a_run_that_shares_only_the_database(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A container restarted without its data directory, or another host on the same
    PostgreSQL: no instances file tells it, the stopped heartbeat in the database does."""
    data = tmp_path / "data"
    env = {**_env(), "TELEPATH_LOST_INSTANCE_AFTER_S": "2"}
    first, calls = await _killed_with_a_call_up(data, env, receiver)
    elsewhere = {
        **env,
        "TELEPATH_SIP_PORT": str(free_sip_port()),
        "TELEPATH_DATABASE_URL": f"sqlite+aiosqlite:///{data / 'telepath.db'}",
        "TELEPATH_SECRET_KEY": (data / "secret.key").read_text().split()[0],
    }
    second = await asyncio.to_thread(start_server, tmp_path / "other", elsewhere, first.api_key)
    try:
        call_id = calls["up"]["id"]
        for _ in range(100):  # it watches the dead heartbeat for 2 s first
            record = await live_json(second, "GET", f"/v1/calls/{call_id}")
            if record["disconnect_reason"] is not None:
                break
            await asyncio.sleep(0.1)
        await _check_closed(second, calls, receiver)
    finally:
        await asyncio.to_thread(stop_server, second)
    assert second.process.returncode == 0
    with sqlite3.connect(data / "telepath.db") as db:  # a clean stop leaves no heartbeat
        assert db.execute("SELECT count(*) FROM gateway_instances").fetchone() == (0,)


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "stopped"])
async def test_a_call_that_ended_in_a_database_outage_keeps_its_end_when_the_run_stops(
    tmp_path: Path, receiver: Receiver, own_postgres: str, stop: signal.Signals
) -> None:
    """The call ends while PostgreSQL is unreachable; the run is killed — or stopped cleanly,
    which leaves no process id behind — before it is back. Its end and events were journaled
    in the data directory: the next run writes them, so the record says ``caller_hangup`` with
    its real end, not ``lost``."""
    data = tmp_path / "data"
    async with TcpProxy.in_front_of(own_postgres) as proxy:
        env = {**_env(), **through_proxy(proxy, own_postgres)}
        first = await asyncio.to_thread(start_server, data, env)
        phone = await Phone().open()
        try:
            async with FakeTelepathAgent(tone_hz=440, response_ms=500) as agent:
                await live_json(
                    first, "POST", "/v1/webhooks", {"url": receiver.url, "events": ["*"]}
                )
                await live_json(
                    first, "POST", "/v1/trunks", custom_trunk("bob", PASSWORD, agent.url)
                )
                sip_port = int(env["TELEPATH_SIP_PORT"])
                call = await connected_call(
                    sip_port, "bob", PASSWORD, "outage@127.0.0.1", phone.port
                )
                (record,) = await live_calls(first, 1)
                assert record["status"] == "connected"
                proxy.cut()
                await call.bye()
                await call.uac.close()
                journal = data / "journal"
                await wait_until(
                    lambda: journaled_end(journal), what="the call's end and events journaled"
                )
            first.process.send_signal(stop)
            await asyncio.to_thread(first.process.wait, 30)
        finally:
            await phone.close()
            if first.process.poll() is None:  # failed before its stop: not left running
                first.process.kill()
                await asyncio.to_thread(first.process.wait, 30)
        if stop == signal.SIGTERM:
            assert "kept in" in first.log() and (data / "instances").read_text() == ""
        proxy.restore()
        second = await asyncio.to_thread(start_server, data, env, first.api_key)
        try:
            ended = await live_json(second, "GET", f"/v1/calls/{record['id']}")
            assert (ended["status"], ended["disconnect_reason"]) == (
                "connected",
                "caller_hangup",
            ), ended
            assert ended["end_time"] is not None
            await wait_until(
                lambda: "call.ended" in events_of(receiver, record["id"]),
                what="the call's call.ended event",
            )
            sent = events_of(receiver, record["id"])["call.ended"]
            assert sent["disconnect_reason"] == "caller_hangup"
            assert not list(journal.iterdir())  # written: nothing left to replay
            assert "replayed" in second.log()
        finally:
            await asyncio.to_thread(stop_server, second)
    assert second.process.returncode == 0
