"""linphone (Debian's linphonec, liblinphone 5.1 on belle-sip) as the caller: a second real
phone stack, and one that answers the default challenge order (SHA-256 first, RFC 8760 §2.4)
with SHA-256 — what neither Debian's SIPp nor baresip 1.0 can. It plays a 440 Hz WAV file
into the call ("soundcard use files") and hangs up."""

from __future__ import annotations

import asyncio
import shutil
import socket
import wave
from pathlib import Path
from typing import Any

import pytest

from telepath.cli.gateway import Gateway
from telepath.sip.auth import AuthOutcome, AuthResult
from telepath.testing.fake_custom import FakeTelepathAgent
from telepath.testing.tones import dominant_frequency, g711_to_pcm16, sine_pcm16
from tests.conftest import skip_loudly
from tests.integration.conftest import Api
from tests.interop.calls.conftest import create_trunk
from tests.interop.sip.waits import ended_records, until

pytestmark = pytest.mark.interop

PASSWORD = "linphone-Pass-1"
REALM = "sip.example.test"


@pytest.fixture
def settings_overrides(settings_overrides: dict[str, Any]) -> dict[str, Any]:
    overrides = dict(settings_overrides)
    overrides.pop("sip_digest_algorithms")  # the default order: SHA-256, then MD5
    return overrides


def require_linphonec() -> str:
    exe = shutil.which("linphonec")
    if exe is None:
        skip_loudly("linphone", "linphonec (Debian package linphone-cli) is missing")
    assert exe is not None
    return exe


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _config(directory: Path) -> Path:
    rc = directory / "linphonerc"
    rc.write_text(
        "[sip]\n"
        "use_ipv6=0\n"
        'contact="Caller" <sip:alice@127.0.0.1>\n'
        "[rtp]\naudio_rtp_port=41000-41999\n"
        "[auth_info_0]\n"
        f"username=alice\npasswd={PASSWORD}\nrealm={REALM}\ndomain=127.0.0.1\n"
        "[sound]\necho_cancellation=0\n"
    )
    return rc


def _tone_wav(path: Path) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(sine_pcm16(440, 8000, rate=8000))
    return path


async def test_linphone_call_answers_the_sha256_challenge(
    api: Api, gateway: Gateway, tmp_path: Path
) -> None:
    exe = require_linphonec()
    port = gateway.server.bound["UDP"][1]
    rc = _config(tmp_path)
    wav = _tone_wav(tmp_path / "tone.wav")
    # A spy on the real verifier (behaviour unchanged): which algorithm linphone answered with.
    outcomes: list[AuthOutcome] = []
    verify = gateway.manager.auth.verify

    def spy(*args: Any, **kwargs: Any) -> AuthOutcome:
        outcomes.append(verify(*args, **kwargs))
        return outcomes[-1]

    gateway.manager.auth.verify = spy  # type: ignore[method-assign]
    async with FakeTelepathAgent(agent="silent") as agent:
        await create_trunk(api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=agent.url)
        proc = await asyncio.create_subprocess_exec(
            exe,
            "-c",
            str(rc),
            "-d",
            "0",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        )
        assert proc.stdin is not None

        async def say(line: str) -> None:
            assert proc.stdin is not None
            proc.stdin.write(f"{line}\n".encode())
            await proc.stdin.drain()

        try:
            await say(f"ports sip {_free_udp_port()}")  # linphonec ignores sip_port in its rc
            await say("soundcard use files")
            await say(f"play {wav}")
            await say(f"call sip:alice@127.0.0.1:{port}")
            await until(lambda: gateway.manager.active_calls == 1, within_s=10)
            await asyncio.sleep(2.0)
            await say("terminate")
            await until(lambda: gateway.manager.active_calls == 0, within_s=10)
            await say("quit")
            out, _ = await asyncio.wait_for(proc.communicate(), 15)
        except AssertionError:
            proc.kill()
            out, _ = await proc.communicate()
            raise AssertionError(out.decode(errors="replace")[-4000:]) from None
        (record,) = await ended_records(api, gateway)
    log = out.decode(errors="replace")
    assert record["status"] == "disconnected", log
    assert record["disconnect_reason"] == "caller_hangup"
    # RFC 8760 §2.4: linphone took the first (SHA-256) of our two challenges
    assert [(o.result, o.algorithm) for o in outcomes] == [(AuthResult.OK, "SHA-256")]
    heard = g711_to_pcm16(bytes(agent.caller_audio), "pcmu")
    assert len(heard) > 8000, log  # a second of the caller's audio reached the agent
    assert abs(dominant_frequency(heard) - 440) < 15
