"""``telepath call``'s dialler against the real gateway: SHA-256 digest, audio both ways, over
UDP, TCP and TLS (the certificate verified against the test CA)."""

from __future__ import annotations

import asyncio
import logging
import ssl
import wave
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from telepath.cli.dialer import Dialer
from telepath.cli.gateway import Gateway
from telepath.cli.main import app
from telepath.testing.fake_custom import FakeTelepathAgent
from telepath.testing.tones import dominant_frequency, g711_to_pcm16
from telepath.transport.dns import SipLocator
from tests.certs import tls_listener
from tests.dnsmasq import Naptr, Srv, dnsmasq
from tests.integration.conftest import Api, api, settings  # noqa: F401  (fixtures)
from tests.interop.calls.conftest import (  # noqa: F401  (fixtures)
    GATEWAY_SETTINGS,
    create_trunk,
    database_url,
    gateway,
)
from tests.interop.calls.harness import settled, wait_until

pytestmark = pytest.mark.interop


@pytest.fixture
def settings_overrides(tmp_path: Path) -> dict[str, Any]:
    return {**GATEWAY_SETTINGS, **tls_listener(tmp_path)}


def _target(gateway: Gateway, user: str, transport: str) -> str:  # noqa: F811
    host, port = gateway.server.bound[transport]
    if transport == "TLS":
        return f"sips:{user}@{host}:{port}"
    return f"sip:{user}@{host}:{port}" + (";transport=tcp" if transport == "TCP" else "")


@pytest.mark.parametrize(
    ("transport", "srtp"),
    [
        ("UDP", None),
        ("TCP", None),
        ("TLS", None),
        ("TLS", "AES_CM_128_HMAC_SHA1_80"),
        ("TLS", "AEAD_AES_256_GCM"),  # RFC 7714, answered in the offered suite
    ],
)
async def test_dialer_call_both_ways(
    api: Api,  # noqa: F811
    gateway: Gateway,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
    settings_overrides: dict[str, Any],
    transport: str,
    srtp: str | None,
) -> None:
    caplog.set_level(logging.INFO)
    async with FakeTelepathAgent(agent="tone", tone_hz=440, response_ms=1500) as agent:
        await create_trunk(
            api, "bob", "dialer-pass-1", ai_provider="custom", custom_endpoint=agent.url
        )
        dialer = Dialer(
            _target(gateway, "bob", transport),
            username="bob",
            password="dialer-pass-1",
            ca_file=settings_overrides["sip_tls_cert"],
            srtp=srtp is not None,
            srtp_suite=srtp or "AES_CM_128_HMAC_SHA1_80",
        )
        result = await dialer.run(duration_s=2.5, tone_hz=1000)
        await settled(gateway)  # the record is closed after our BYE's 200, not before it
    assert result.status == 200 and result.setup_ms is not None
    assert result.codec == "PCMU"
    assert result.srtp == srtp
    assert result.ended_by == "dialer"
    assert abs(dominant_frequency(result.recorded) - 440) < 15
    heard = g711_to_pcm16(bytes(agent.caller_audio), "pcmu")
    assert abs(dominant_frequency(heard) - 1000) < 15
    # The dialler answers the SHA-256 challenge when one is offered, so this call also proves
    # SHA-256 digest (RFC 8760) end to end over UDP.
    calls = (await api.get("/v1/calls")).json()["calls"]
    detail = (await api.get(f"/v1/calls/{calls[0]['id']}")).json()
    assert detail["disconnect_reason"] == "caller_hangup"
    assert "Digest <redacted>" in detail["sip_trace"]
    assert f"SIP/2.0/{transport} " in detail["sip_trace"]  # the INVITE came over it
    # nothing personal or secret at INFO: no phone number, no password, no SIP payloads
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "call_" in logged  # the call was logged...
    assert "+15550000000" not in logged and "5550000000" not in logged  # ...without the caller
    assert "dialer-pass-1" not in logged and "Digest" not in logged


def test_dialer_refuses_srtp_without_tls() -> None:
    with pytest.raises(ValueError, match="TLS"):
        Dialer("sip:bob@127.0.0.1:5060", username="bob", password="x", srtp=True)
    with pytest.raises(ValueError, match="unknown SRTP suite"):
        Dialer("sips:bob@127.0.0.1", username="bob", password="x", srtp=True, srtp_suite="F8")


async def test_dialer_wrong_password_is_403(api: Api, gateway: Gateway) -> None:  # noqa: F811
    await create_trunk(
        api, "carol", "right-pass-1", ai_provider="custom", custom_endpoint="ws://127.0.0.1:9/x"
    )
    host, port = gateway.server.bound["UDP"]
    dialer = Dialer(f"sip:carol@{host}:{port}", username="carol", password="wrong-pass-1")
    result = await dialer.run(duration_s=1)
    assert result.status == 403
    assert result.setup_ms is None


async def test_dialer_refuses_a_certificate_it_cannot_verify(
    api: Api,  # noqa: F811
    gateway: Gateway,  # noqa: F811
) -> None:
    dialer = Dialer(_target(gateway, "dave", "TLS"), username="dave", password="any-pass-1")
    with pytest.raises(ssl.SSLCertVerificationError):  # the test CA is not trusted here
        await dialer.run(duration_s=1)


async def test_dialer_without_password_calls_an_address_trunk_by_number(
    api: Api,  # noqa: F811
    gateway: Gateway,  # noqa: F811
) -> None:
    host, port = gateway.server.bound["UDP"]
    async with FakeTelepathAgent(agent="tone", tone_hz=440, response_ms=300) as agent:
        await create_trunk(
            api,
            "by-number",
            "dialer-pass-1",
            ai_provider="custom",
            custom_endpoint=agent.url,
            sip_auth="address",
            allowed_addresses=["127.0.0.1"],
            inbound_numbers=["+14155550100"],
        )
        answered = await Dialer(f"sip:+14155550100@{host}:{port}", username="", password=None).run(
            duration_s=1.5, tone_hz=1000
        )
        # A digest trunk challenges; without a password the dialler stops there and says why.
        challenged = await Dialer(
            f"sip:by-number@{host}:{port}", username="by-number", password=None
        ).run(duration_s=1)
    assert answered.status == 200 and answered.setup_ms is not None
    assert abs(dominant_frequency(answered.recorded) - 440) < 15
    assert challenged.status == 401 and challenged.setup_ms is None
    assert "--password" in challenged.log[-1]


async def test_a_custom_agent_that_drops_is_reconnected_and_the_call_goes_on(
    api: Api,  # noqa: F811
    gateway: Gateway,  # noqa: F811
) -> None:
    """custom_reconnect: the echo agent's first connection is aborted 0.8 s into the call; the
    gateway dials again, resumes with start.reconnect, and the caller's tone keeps coming back
    until the caller hangs up — one call, one record, ended by the caller."""
    async with FakeTelepathAgent(agent="echo", drop_after_ms=800) as agent:
        trunk = await create_trunk(
            api,
            "robin",
            "dialer-pass-1",
            ai_provider="custom",
            custom_endpoint=agent.url,
            custom_reconnect=True,
        )
        assert trunk["id"]
        shown = (await api.get(f"/v1/trunks/{trunk['id']}")).json()
        assert shown["custom_reconnect"] is True
        dialer = Dialer(
            _target(gateway, "robin", "UDP"), username="robin", password="dialer-pass-1"
        )
        result = await dialer.run(duration_s=3.0, tone_hz=1000)
        await settled(gateway)  # the record is closed after our BYE's 200, not before it
    assert result.status == 200 and result.ended_by == "dialer"
    assert [s.reconnect for s in agent.starts] == [None, 1]
    # the echo came back after the reconnect: the last second of what the caller heard
    last_second = result.recorded[-16000:]
    assert abs(dominant_frequency(last_second) - 1000) < 15
    calls = (await api.get("/v1/calls")).json()["calls"]
    assert len(calls) == 1 and calls[0]["disconnect_reason"] == "caller_hangup"
    metrics = api.state.metrics.render().decode()
    assert "telepath_agent_reconnects_total 1.0" in metrics


async def test_a_gateway_named_by_its_domain_is_located_through_dns(
    api: Api,  # noqa: F811
    gateway: Gateway,  # noqa: F811
) -> None:
    """``sip:bob@gw.test``: NAPTR says TCP, SRV gives two servers — the first (127.0.0.2)
    refuses the connection, the second is the gateway (RFC 3263 §4.3): the call goes through
    over TCP, its Via and Contact saying so."""
    _, port = gateway.server.bound["TCP"]
    hosts = {"one.gw.test": "127.0.0.2", "two.gw.test": "127.0.0.1", "gw.test": "127.0.0.3"}
    srv = [
        Srv("_sip._tcp.gw.test", "one.gw.test", port, priority=10),
        Srv("_sip._tcp.gw.test", "two.gw.test", port, priority=20),
    ]
    naptr = [Naptr("gw.test", 10, 50, "SIP+D2T", "_sip._tcp.gw.test")]
    async with (
        dnsmasq(hosts=hosts, srv=srv, naptr=naptr) as dns_port,
        FakeTelepathAgent(agent="tone", tone_hz=440, response_ms=300) as agent,
    ):
        await create_trunk(
            api, "bob", "dialer-pass-1", ai_provider="custom", custom_endpoint=agent.url
        )
        dialer = Dialer(
            "sip:bob@gw.test",
            username="bob",
            password="dialer-pass-1",
            locator=SipLocator([("127.0.0.1", dns_port)]),
        )
        result = await dialer.run(duration_s=1.5, tone_hz=1000)
    assert result.status == 200 and result.setup_ms is not None
    assert dialer.transport == "TCP"
    assert abs(dominant_frequency(result.recorded) - 440) < 15


async def test_a_domain_that_does_not_resolve_is_said_so() -> None:
    async with dnsmasq() as dns_port:
        dialer = Dialer(
            "sip:bob@nowhere.test",
            username="bob",
            password="x",
            locator=SipLocator([("127.0.0.1", dns_port)]),
        )
        with pytest.raises(OSError, match="cannot resolve nowhere.test"):
            await dialer.run(duration_s=1)


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
async def test_a_call_the_agent_takes_too_long_to_answer_is_cancelled(
    api: Api,  # noqa: F811
    gateway: Gateway,  # noqa: F811
    transport: str,
) -> None:
    """The gateway rings (180) while the agent is slow to connect; past ``ring_timeout_s`` the
    dialler cancels (RFC 3261 §9.1) and acknowledges the 487: the gateway lets the call go at
    once — no dialog, media ports or agent left waiting for an ACK that never comes."""
    async with FakeTelepathAgent(handshake_delay_s=5) as agent:
        await create_trunk(
            api, "bob", "dialer-pass-1", ai_provider="custom", custom_endpoint=agent.url
        )
        dialer = Dialer(
            _target(gateway, "bob", transport), username="bob", password="dialer-pass-1"
        )
        result = await dialer.run(duration_s=1, ring_timeout_s=0.5)
        await settled(gateway)
    assert result.status == 487 and result.cancelled and result.setup_ms is None
    assert len(agent.handshakes) == 1  # the agent was being dialled when the dialler gave up
    assert gateway.server.core.dialog_count == 0 and gateway.manager.active_calls == 0
    assert gateway.manager.ports.in_use == 0


async def test_a_dialler_stopped_mid_call_hangs_up(
    api: Api,  # noqa: F811
    gateway: Gateway,  # noqa: F811
) -> None:
    """The dialler is stopped while the call is up (Ctrl-C: its task cancelled): it sends BYE
    on its way out (RFC 3261 §15), so the gateway ends the call as the caller's hang-up at
    once instead of keeping it until the media timeout."""
    async with FakeTelepathAgent(agent="tone", tone_hz=440, response_ms=300) as agent:
        await create_trunk(
            api, "bob", "dialer-pass-1", ai_provider="custom", custom_endpoint=agent.url
        )
        dialer = Dialer(_target(gateway, "bob", "UDP"), username="bob", password="dialer-pass-1")
        call = asyncio.get_running_loop().create_task(dialer.run(duration_s=60, tone_hz=1000))
        await wait_until(lambda: len(agent.caller_audio) > 0, what="the caller's audio")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await settled(gateway)
    calls = (await api.get("/v1/calls")).json()["calls"]
    assert [c["disconnect_reason"] for c in calls] == ["caller_hangup"]


async def test_a_dialler_stopped_while_ringing_cancels(
    api: Api,  # noqa: F811
    gateway: Gateway,  # noqa: F811
) -> None:
    """The dialler is stopped (Ctrl-C: its task cancelled) while the gateway rings, the agent
    slow to connect: it cancels the INVITE on its way out (RFC 3261 §9.1) and acknowledges the
    487, so the gateway lets the call go at once — it answered once the agent connected, and
    kept the call, its agent and its ports for an ACK that never came."""
    async with FakeTelepathAgent(handshake_delay_s=2) as agent:
        await create_trunk(
            api, "bob", "dialer-pass-1", ai_provider="custom", custom_endpoint=agent.url
        )
        dialer = Dialer(_target(gateway, "bob", "UDP"), username="bob", password="dialer-pass-1")
        call = asyncio.get_running_loop().create_task(dialer.run(duration_s=60))
        await wait_until(lambda: dialer.rang and agent.handshakes, what="the call to ring")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await settled(gateway)
    assert dialer.result.status == 487 and dialer.result.cancelled
    assert gateway.server.core.dialog_count == 0 and gateway.manager.active_calls == 0
    assert gateway.manager.ports.in_use == 0


async def test_the_cli_saves_the_agent_s_audio(
    api: Api,  # noqa: F811
    gateway: Gateway,  # noqa: F811
    tmp_path: Path,
) -> None:
    """``telepath call --record``: the agent's tone, saved as an 8 kHz WAV file once the call
    is over (the path was checked before dialling)."""
    record = tmp_path / "agent.wav"
    async with FakeTelepathAgent(agent="tone", tone_hz=440, response_ms=300) as agent:
        await create_trunk(
            api, "bob", "dialer-pass-1", ai_provider="custom", custom_endpoint=agent.url
        )
        args = ["call", _target(gateway, "bob", "UDP"), "--password", "dialer-pass-1"]
        args += ["--duration", "1.5", "--record", str(record)]
        result = await asyncio.to_thread(CliRunner().invoke, app, args)
    assert result.exit_code == 0, result.output
    assert f"agent audio saved to {record}" in result.output
    with wave.open(str(record), "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (8000, 1, 2)
        assert abs(dominant_frequency(w.readframes(w.getnframes())) - 440) < 15


async def test_the_cli_takes_the_password_from_the_environment(
    api: Api,  # noqa: F811
    gateway: Gateway,  # noqa: F811
) -> None:
    """``--password`` on the command line is in ``ps`` and the shell's history for everyone on
    the machine: ``TELEPATH_CALL_PASSWORD`` gives it without either."""
    async with FakeTelepathAgent(agent="tone", tone_hz=440, response_ms=300) as agent:
        await create_trunk(
            api, "erin", "dialer-pass-1", ai_provider="custom", custom_endpoint=agent.url
        )
        args = ["call", _target(gateway, "erin", "UDP"), "--duration", "1"]
        result = await asyncio.to_thread(
            CliRunner().invoke, app, args, env={"TELEPATH_CALL_PASSWORD": "dialer-pass-1"}
        )
    assert result.exit_code == 0, result.output
    assert "dialer-pass-1" not in result.output
