"""baresip (Debian's 1.0.0; its SRTP is libre's own implementation, not libsrtp) calling over
SIP/TLS with mandatory SRTP (``mediaenc=srtp-mand``: ``RTP/SAVP`` with SDES keys, RFC 4568): its
tone reaches the agent through our SRTP decryption, the agent's tone reaches baresip through
our encryption (libre logs every packet it cannot authenticate, and there is none), the
record's SIP trace has the keys redacted. Over UDP the same offer gets 488: keys are only taken
over TLS. And the other way round, baresip called: each suite we can offer, AES-GCM included,
taken by libre and echoed back through both implementations."""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path
from typing import Any

import pytest

from telepath.cli.dialer import Dialer
from telepath.cli.gateway import Gateway
from telepath.rtp.srtp_keys import SUITES
from telepath.testing.fake_custom import FakeTelepathAgent
from telepath.testing.tones import dominant_frequency, g711_to_pcm16
from tests.certs import self_signed, tls_listener
from tests.integration.conftest import Api
from tests.integration.live.conftest import free_sip_port
from tests.interop.calls.conftest import create_trunk
from tests.interop.sip.test_baresip import MODULES, PASSWORD, _dial, require_baresip
from tests.interop.sip.test_baresip import baresip_config as _baresip_config
from tests.interop.sip.waits import ended_records

pytestmark = pytest.mark.interop


@pytest.fixture
def settings_overrides(settings_overrides: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    return {
        **settings_overrides,
        "sip_digest_algorithms": "MD5",
        **tls_listener(tmp_path),
    }


def srtp_config(tmp_path: Path, port: int, transport: str, cafile: str) -> Path:
    if not (MODULES / "srtp.so").exists():
        pytest.fail("baresip-core has no srtp.so module")
    config = _baresip_config(tmp_path, port, transport=transport, extra=f"sip_cafile\t\t{cafile}\n")
    main = config / "config"  # the media encryption must be loaded before the accounts
    account = "module\t\t\taccount.so\n"
    main.write_text(main.read_text().replace(account, "module\t\t\tsrtp.so\n" + account))
    accounts = config / "accounts"
    accounts.write_text(accounts.read_text().rstrip("\n") + ";mediaenc=srtp-mand\n")
    return config


async def test_baresip_srtp_call_over_tls(
    api: Api, gateway: Gateway, tmp_path: Path, settings_overrides: dict[str, Any]
) -> None:
    require_baresip()
    port = gateway.server.bound["TLS"][1]
    config = srtp_config(tmp_path, port, "tls", settings_overrides["sip_tls_cert"])
    async with FakeTelepathAgent(agent="tone", tone_hz=1000) as agent:
        await create_trunk(api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=agent.url)
        out = await _dial(config, port, 3, scheme_params=";transport=tls")
        assert "Call established" in out, out
        (record,) = await ended_records(api, gateway)
    assert "SRTP is Enabled" in out, out
    assert "failed to decrypt" not in out and "failed to encrypt" not in out, out
    assert record["status"] == "connected" and record["disconnect_reason"] == "caller_hangup"
    heard = g711_to_pcm16(bytes(agent.caller_audio), "pcmu")
    assert len(heard) > 8000, out  # baresip's 440 Hz, decrypted by us
    assert abs(dominant_frequency(heard) - 440) < 15
    trace = (await api.get(f"/v1/calls/{record['id']}")).json()["sip_trace"]
    assert "RTP/SAVP" in trace
    crypto = re.findall(r"a=crypto:\S+ \S+ inline:(\S+)", trace)
    assert len(crypto) >= 2 and all(c.startswith("<redacted>") for c in crypto), trace


async def test_srtp_offer_over_udp_is_refused_with_a_reason(
    api: Api, gateway: Gateway, tmp_path: Path, settings_overrides: dict[str, Any]
) -> None:
    require_baresip()
    port = gateway.server.bound["UDP"][1]
    config = srtp_config(tmp_path, port, "udp", settings_overrides["sip_tls_cert"])
    async with FakeTelepathAgent(agent="silent") as agent:
        await create_trunk(api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=agent.url)
        out = await _dial(config, port, 2)
    assert "Call established" not in out, out
    assert "488" in out, out


def _listen_ports() -> int:
    """A port ``p`` with UDP and TCP ``p`` and TCP ``p + 1`` free: baresip's ``sip_listen``
    binds UDP and TCP there and TLS on the next port."""
    for _ in range(50):
        port = free_sip_port()
        try:
            with socket.socket() as tls:
                tls.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no free pair of loopback ports")


def echo_config(tmp_path: Path, port: int) -> Path:
    """baresip as the called party over TLS with mandatory SRTP, its ``echo`` module answering
    every call and sending back what it decrypted (``aubridge`` joins its player to its source),
    so a tone comes back only through libre's SRTP both ways."""
    cert, key = self_signed(tmp_path)
    pem = tmp_path / "baresip.pem"
    pem.write_text(cert.read_text() + key.read_text())
    config = tmp_path / "baresip-echo"
    config.mkdir()
    (config / "config").write_text(
        "poll_method\t\tepoll\n"
        f"sip_listen\t\t127.0.0.1:{port}\n"
        f"sip_certificate\t\t{pem}\n"
        "audio_player\t\taubridge,nil\n"
        "audio_source\t\taubridge,nil\n"
        "audio_alert\t\taufile,/dev/null\n"
        f"module_path\t\t{MODULES}\n"
        "module\t\t\tg711.so\n"
        "module\t\t\taubridge.so\n"
        "module\t\t\taufile.so\n"
        "module\t\t\tsrtp.so\n"
        "module_app\t\techo.so\n"
        "module\t\t\taccount.so\n"
    )
    (config / "accounts").write_text(
        "<sip:alice@127.0.0.1;transport=tls>;regint=0;mediaenc=srtp-mand\n"
    )
    return cert


#: libre (baresip's SRTP) tags SRTCP with the suite's SRTP tag length, 32 bits for these; RFC
#: 4568 §6.2.2 and RFC 3711 §5.2 make SRTCP's 80 bits in every AES_CM suite, as libsrtp (ours,
#: Asterisk's, FreeSWITCH's) does: libre refuses our RTCP in these suites, RTP goes through.
LIBRE_SRTCP_32 = frozenset({"AES_CM_128_HMAC_SHA1_32"})


async def test_our_srtp_offer_in_each_suite_is_taken_by_baresip(tmp_path: Path) -> None:
    """Interop of every suite we offer with another implementation (libre's SRTP): the dialler
    offers each suite to baresip; baresip's echo sends our 1000 Hz back, so the tone we record
    went through our encryption, libre's decryption and encryption, and our decryption. AES-GCM
    (RFC 7714) interop matters beyond libsrtp's self-test: implementations read the 96-bit salt
    into the RFC 3711 key derivation differently (erratum 4938), and a mismatch is silence."""
    exe = require_baresip()
    if not (MODULES / "echo.so").exists() or not (MODULES / "aubridge.so").exists():
        pytest.fail("baresip-core has no echo.so or aubridge.so module")
    port = _listen_ports()
    cafile = echo_config(tmp_path, port)
    proc = await asyncio.create_subprocess_exec(
        exe,
        "-f",
        str(tmp_path / "baresip-echo"),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        await until_listening(port + 1)
        for suite in SUITES:
            dialer = Dialer(
                f"sips:alice@127.0.0.1:{port + 1}",
                username="alice",
                password=None,
                ca_file=cafile,
                srtp=True,
                srtp_suite=suite,
            )
            result = await dialer.run(duration_s=1.5, tone_hz=1000)
            assert (result.status, result.srtp) == (200, suite)
            assert len(result.recorded) > 8000, suite  # at least half a second came back
            assert abs(dominant_frequency(result.recorded) - 1000) < 15, suite
    finally:
        proc.terminate()
        out, _ = await asyncio.wait_for(proc.communicate(), 10)
    log = out.decode(errors="replace")
    for suite in SUITES:
        assert f"SRTP is Enabled (cryptosuite={suite})" in log, log
    assert "failed to encrypt" not in log, log
    for call in log.split("SRTP is Enabled (cryptosuite=")[1:]:
        suite = call.split(")", 1)[0]
        failures = call.replace("failed to decrypt RTCP", "") if suite in LIBRE_SRTCP_32 else call
        assert "failed to decrypt" not in failures, (suite, log)


async def until_listening(port: int) -> None:
    """Wait (up to 10 s) until a TCP connection to 127.0.0.1:``port`` is accepted."""
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")
