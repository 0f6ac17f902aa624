"""SIPp as the carrier, over UDP and TCP, against the in-process gateway with a trunk created
through the API: every way a call gets in, is refused, or changes mid-call."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from telepath.cli.gateway import Gateway
from telepath.sip.transaction import Source
from telepath.sip.ua import Send
from telepath.testing.fake_custom import FakeTelepathAgent
from tests.integration.conftest import Api
from tests.interop.calls.conftest import create_trunk
from tests.interop.calls.harness import Phone
from tests.interop.media.sipp import require_sipp
from tests.interop.sip.sipp_scenarios import (
    call,
    cancelled_call,
    info_dtmf,
    options_ping,
    reinvite,
    rejected_call,
    run_sipp,
)
from tests.interop.sip.waits import ended_records, until

pytestmark = pytest.mark.interop

PASSWORD = "s1pp-Secret"
TRANSPORTS = [pytest.param("u1", id="udp"), pytest.param("t1", id="tcp")]


def _target(gateway: Gateway, transport: str) -> tuple[str, int]:
    return gateway.server.bound["UDP" if transport == "u1" else "TCP"]


async def _calls(api: Api) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = (await api.get("/v1/calls")).json()["calls"]
    return calls


async def _ended_record(api: Api, gateway: Gateway) -> dict[str, Any]:
    (record,) = await ended_records(api, gateway)
    return record


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_call_with_bye_from_caller(
    api: Api, gateway: Gateway, tmp_path: Path, phone: Phone, transport: str
) -> None:
    require_sipp()
    async with FakeTelepathAgent(agent="silent") as agent:
        await create_trunk(api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=agent.url)
        result = await run_sipp(
            call("alice", phone.port, hold_ms=800),
            tmp_path,
            _target(gateway, transport),
            user="alice",
            password=PASSWORD,
            transport=transport,
        )
        assert result.returncode == 0, result.stdout + result.errors
        record = await _ended_record(api, gateway)
    assert record["disconnect_reason"] == "caller_hangup"
    assert record["from"] == "+15551230000"
    assert len(agent.handshakes) == 1
    detail = (await api.get(f"/v1/calls/{record['id']}")).json()
    wire = "UDP" if transport == "u1" else "TCP"
    assert f"--- in {wire} 127.0.0.1:" in detail["sip_trace"]
    assert "algorithm=MD5" in detail["sip_trace"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_call_with_bye_from_gateway(
    api: Api, gateway: Gateway, tmp_path: Path, phone: Phone, transport: str
) -> None:
    require_sipp()
    async with FakeTelepathAgent(agent="tone", response_ms=300, hangup=True) as agent:
        await create_trunk(api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=agent.url)
        result = await run_sipp(
            call("alice", phone.port, hold_ms=3000, caller_hangs_up=False),
            tmp_path,
            _target(gateway, transport),
            user="alice",
            password=PASSWORD,
            transport=transport,
        )
        assert result.returncode == 0, result.stdout + result.errors
        record = await _ended_record(api, gateway)
    assert record["disconnect_reason"] == "agent_hangup"
    assert "BYE sip:caller@127.0.0.1" in result.messages  # to the Contact (§12.2.1.1)
    assert gateway.server.core.dialog_count == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(("user", "password"), [("alice", "wrong"), ("nobody", PASSWORD)])
async def test_wrong_credentials_get_403(
    api: Api,
    gateway: Gateway,
    tmp_path: Path,
    transport: str,
    user: str,
    password: str,
) -> None:
    require_sipp()
    await create_trunk(
        api, "alice", PASSWORD, ai_provider="custom", custom_endpoint="ws://127.0.0.1:9/"
    )
    result = await run_sipp(
        rejected_call(user, 40000, 403),
        tmp_path,
        _target(gateway, transport),
        user=user,
        password=password,
        transport=transport,
    )
    assert result.returncode == 0, result.stdout + result.errors
    # An unknown user is challenged exactly like a known one: same realm, qop, algorithms.
    challenge = next(
        line for line in result.messages.splitlines() if line.startswith("WWW-Authenticate:")
    )
    assert 'realm="sip.example.test"' in challenge and 'qop="auth"' in challenge
    assert gateway.manager.counters.get("rejected_auth_failed") == 1
    assert gateway.manager.active_calls == 0
    assert await _calls(api) == []


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_cancel_before_answer_gets_487(
    api: Api, gateway: Gateway, tmp_path: Path, transport: str
) -> None:
    require_sipp()
    async with FakeTelepathAgent(agent="silent", handshake_delay_s=3) as agent:
        await create_trunk(api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=agent.url)
        result = await run_sipp(
            cancelled_call("alice", 40000),
            tmp_path,
            _target(gateway, transport),
            user="alice",
            password=PASSWORD,
            transport=transport,
        )
        assert result.returncode == 0, result.stdout + result.errors
        await until(lambda: gateway.manager.counters.get("cancelled_during_setup") == 1)
    assert gateway.manager.active_calls == 0
    assert gateway.server.core.dialog_count == 0
    assert "SIP/2.0 200 OK" not in _responses_to(result.messages, "INVITE")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_reinvite_hold_and_resume_keep_the_call(
    api: Api, gateway: Gateway, tmp_path: Path, phone: Phone, transport: str
) -> None:
    require_sipp()
    middle = (
        '  <pause milliseconds="300"/>\n'
        + reinvite("alice", phone.port, 3, "sendonly", "recvonly")
        + '  <pause milliseconds="300"/>\n'
        + reinvite("alice", phone.port, 4, "sendrecv", "sendrecv")
    )
    async with FakeTelepathAgent(agent="silent") as agent:
        await create_trunk(api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=agent.url)
        sipp = asyncio.create_task(
            run_sipp(
                call("alice", phone.port, hold_ms=500, middle=middle),
                tmp_path,
                _target(gateway, transport),
                user="alice",
                password=PASSWORD,
                transport=transport,
            )
        )
        result = await sipp
        assert result.returncode == 0, result.stdout + result.errors
        record = await _ended_record(api, gateway)
    assert record["disconnect_reason"] == "caller_hangup"  # not torn down by the re-INVITEs
    assert len(agent.handshakes) == 1
    assert len(await _calls(api)) == 1
    answers = _bodies_of_200(result.messages)
    assert len(answers) == 3  # initial answer, hold answer, resume answer
    versions = [_origin_version(a) for a in answers]
    assert versions[0] < versions[1] < versions[2]  # RFC 3264 §8: a changed answer bumps o=


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_options_needs_no_auth(gateway: Gateway, tmp_path: Path, transport: str) -> None:
    require_sipp()
    result = await run_sipp(
        options_ping("alice"),
        tmp_path,
        _target(gateway, transport),
        user="x",
        password="x",
        transport=transport,
    )
    assert result.returncode == 0, result.stdout + result.errors
    assert "WWW-Authenticate" not in result.messages


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_info_dtmf_reaches_the_agent(
    api: Api, gateway: Gateway, tmp_path: Path, phone: Phone, transport: str
) -> None:
    require_sipp()
    middle = info_dtmf("alice", 3, "1") + info_dtmf("alice", 4, "11") + info_dtmf("alice", 5, "*")
    async with FakeTelepathAgent(agent="silent") as agent:
        await create_trunk(api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=agent.url)
        result = await run_sipp(
            call("alice", phone.port, hold_ms=300, middle=middle),
            tmp_path,
            _target(gateway, transport),
            user="alice",
            password=PASSWORD,
            transport=transport,
        )
        assert result.returncode == 0, result.stdout + result.errors
        await _ended_record(api, gateway)
        await until(lambda: len(agent.digits) == 3)
    assert agent.digits == ["1", "#", "*"]  # Signal=11 is '#' (RFC 4733 event code)


async def test_udp_retransmissions_under_random_loss(
    api: Api, gateway: Gateway, tmp_path: Path, phone: Phone
) -> None:
    """SIPp drops 10 % of what it sends and receives; timers on both sides recover."""
    require_sipp()
    async with FakeTelepathAgent(agent="silent") as agent:
        await create_trunk(api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=agent.url)
        result = await run_sipp(
            call("alice", phone.port, hold_ms=500),
            tmp_path,
            gateway.server.bound["UDP"],
            user="alice",
            password=PASSWORD,
            extra=("-lost", "10"),
        )
        assert result.returncode == 0, result.stdout + result.errors
        record = await _ended_record(api, gateway)
    assert record["disconnect_reason"] == "caller_hangup"


async def test_udp_retransmissions_under_staged_loss(
    api: Api, gateway: Gateway, tmp_path: Path, phone: Phone, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deterministic loss: the gateway's first 401, first 200 OK and first 200 to BYE, and
    SIPp's first ACK for the 2xx, are dropped. SIPp's INVITE/BYE retransmissions and our
    Timer G and 2xx retransmissions (§17.2.1, §13.3.1.4) must complete the call anyway."""
    require_sipp()
    server = gateway.server
    dropped: list[str] = []
    send = server._send
    feed = server.feed

    def first_time(kind: str, match: bool) -> bool:
        if match and kind not in dropped:
            dropped.append(kind)
            return True
        return False

    def lossy_send(out: Send) -> None:
        line, text = out.data.split(b"\r\n", 1)[0], out.data[:600]
        if first_time("401", line.startswith(b"SIP/2.0 401")):
            return
        if first_time("200-invite", line.startswith(b"SIP/2.0 200") and b"INVITE\r\n" in text):
            return
        if first_time("200-bye", line.startswith(b"SIP/2.0 200") and b" BYE\r\n" in text):
            return
        send(out)

    def lossy_feed(data: bytes, source: Source) -> None:
        if first_time("ack-2xx", data.startswith(b"ACK ") and b"CSeq: 2 ACK" in data):
            return
        feed(data, source)

    monkeypatch.setattr(server, "_send", lossy_send)
    monkeypatch.setattr(server, "feed", lossy_feed)
    async with FakeTelepathAgent(agent="silent") as agent:
        await create_trunk(api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=agent.url)
        result = await run_sipp(
            call("alice", phone.port, hold_ms=300),
            tmp_path,
            server.bound["UDP"],
            user="alice",
            password=PASSWORD,
        )
        assert result.returncode == 0, result.stdout + result.errors
        record = await _ended_record(api, gateway)
    assert sorted(dropped) == ["200-bye", "200-invite", "401", "ack-2xx"]
    assert record["disconnect_reason"] == "caller_hangup"
    assert len(agent.handshakes) == 1  # the retransmitted INVITE did not start a second call


# ---------------------------------------------------------------- SIPp message log parsing


def _messages(log: str) -> list[str]:
    """The SIP messages in SIPp's ``-trace_msg`` file."""
    out: list[str] = []
    for block in log.split("----------------------------------------------- ")[1:]:
        _, _, rest = block.partition("\n\n")
        out.append(rest.strip("\n"))
    return out


def _responses_to(log: str, method: str) -> list[str]:
    return [
        m.splitlines()[0]
        for m in _messages(log)
        if m.startswith("SIP/2.0 ") and any(ln.endswith(f" {method}") for ln in m.splitlines())
    ]


def _bodies_of_200(log: str) -> list[str]:
    return [
        m.partition("\n\n")[2]
        for m in _messages(log)
        if m.startswith("SIP/2.0 200") and "CSeq: " in m and " INVITE" in m and "v=0" in m
    ]


def _origin_version(sdp: str) -> int:
    line = next(ln for ln in sdp.splitlines() if ln.startswith("o="))
    return int(line.split()[2])
