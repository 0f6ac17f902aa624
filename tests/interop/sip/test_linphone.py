"""linphone (Debian's linphonec, liblinphone 5.1 on belle-sip) as the caller: a second real
phone stack, and one that answers the default challenge order (SHA-256 first, RFC 8760 §2.4)
with SHA-256 — what neither Debian's SIPp nor baresip 1.0 can. It plays a 440 Hz WAV file
into the call ("soundcard use files"), sends DTMF by SIP INFO or RFC 4733 as configured, runs
session timers either way, follows our REFER to a transfer target, and hangs up."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import shutil
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from telepath.cli.gateway import Gateway
from telepath.sip.auth import AuthOutcome, AuthResult
from telepath.testing.fake_custom import FakeTelepathAgent
from telepath.testing.tones import dominant_frequency, g711_to_pcm16, sine_pcm16
from tests.conftest import free_udp_port, skip_loudly
from tests.integration.conftest import Api
from tests.interop.calls.conftest import create_trunk
from tests.interop.media.sipp import require_sipp
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


def _config(directory: Path, extra_sip: str = "") -> Path:
    rc = directory / "linphonerc"
    rc.write_text(
        "[sip]\n"
        "use_ipv6=0\n"
        'contact="Caller" <sip:alice@127.0.0.1>\n'
        f"{extra_sip}"
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


class Linphone:
    """linphonec driven line by line on stdin, as a user would type."""

    def __init__(self, tmp_path: Path, gateway: Gateway, extra_sip: str = "") -> None:
        self.tmp_path = tmp_path
        self.gateway = gateway
        self.rc = _config(tmp_path, extra_sip)
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Linphone:
        self.proc = await asyncio.create_subprocess_exec(
            require_linphonec(),
            "-c",
            str(self.rc),
            "-d",
            "0",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={"HOME": str(self.tmp_path), "PATH": "/usr/bin:/bin"},
        )
        await self.say(f"ports sip {free_udp_port()}")  # linphonec ignores sip_port in its rc
        await self.say("soundcard use files")
        await self.say(f"play {_tone_wav(self.tmp_path / 'tone.wav')}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def say(self, line: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(f"{line}\n".encode())
        await self.proc.stdin.drain()

    async def call(self) -> None:
        """Dial the trunk and wait until the gateway has the call up."""
        await self.say(f"call sip:alice@127.0.0.1:{self.gateway.server.bound['UDP'][1]}")
        await self._until(lambda: self.gateway.manager.active_calls == 1)

    async def hang_up(self) -> str:
        """``terminate``, wait for the gateway to see it, quit; linphonec's output."""
        await self.say("terminate")
        await self._until(lambda: self.gateway.manager.active_calls == 0)
        await self.say("quit")
        assert self.proc is not None
        out, _ = await asyncio.wait_for(self.proc.communicate(), 15)
        return out.decode(errors="replace")

    async def _until(self, predicate: Callable[[], bool]) -> None:
        try:
            await until(predicate, within_s=10)
        except AssertionError:
            assert self.proc is not None
            self.proc.kill()
            out, _ = await self.proc.communicate()
            raise AssertionError(out.decode(errors="replace")[-4000:]) from None


async def test_linphone_call_answers_the_sha256_challenge(
    api: Api, gateway: Gateway, tmp_path: Path
) -> None:
    # A spy on the real verifier (behaviour unchanged): which algorithm linphone answered with.
    outcomes: list[AuthOutcome] = []
    verify = gateway.manager.auth.verify

    def spy(*args: Any, **kwargs: Any) -> AuthOutcome:
        outcomes.append(verify(*args, **kwargs))
        return outcomes[-1]

    gateway.manager.auth.verify = spy  # type: ignore[method-assign]
    async with FakeTelepathAgent(agent="silent") as agent:
        await create_trunk(api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=agent.url)
        async with Linphone(tmp_path, gateway) as phone:
            await phone.call()
            await asyncio.sleep(2.0)
            log = await phone.hang_up()
        (record,) = await ended_records(api, gateway)
    assert record["status"] == "connected", log
    assert record["disconnect_reason"] == "caller_hangup"
    # RFC 8760 §2.4: linphone took the first (SHA-256) of our two challenges
    assert [(o.result, o.algorithm) for o in outcomes] == [(AuthResult.OK, "SHA-256")]
    heard = g711_to_pcm16(bytes(agent.caller_audio), "pcmu")
    assert len(heard) > 8000, log  # a second of the caller's audio reached the agent
    assert abs(dominant_frequency(heard) - 440) < 15


@pytest.mark.parametrize(
    ("method", "extra_sip"),
    [
        pytest.param("INFO", "use_info=1\nuse_rfc2833=0\n", id="sip-info"),
        pytest.param("RFC 4733", "use_info=0\nuse_rfc2833=1\n", id="rfc4733"),
    ],
)
async def test_linphone_dtmf_reaches_the_agent(
    api: Api, gateway: Gateway, tmp_path: Path, method: str, extra_sip: str
) -> None:
    async with FakeTelepathAgent(agent="silent") as agent:
        await create_trunk(api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=agent.url)
        async with Linphone(tmp_path, gateway, extra_sip) as phone:
            await phone.call()
            await asyncio.sleep(0.5)
            for digit in "19#":
                await phone.say(digit)  # a lone digit in a call: linphonec sends it as DTMF
                await asyncio.sleep(0.4)
            await until(lambda: len(agent.digits) >= 3, within_s=5)
            log = await phone.hang_up()
        (record,) = await ended_records(api, gateway)
    assert agent.digits == ["1", "9", "#"], log
    infos = gateway.server.core.counters["request_INFO"]
    assert infos == (3 if method == "INFO" else 0)  # each digit came the configured way
    assert record["disconnect_reason"] == "caller_hangup"


@pytest.mark.parametrize(
    ("setting", "refresher"),
    [pytest.param(1, "uas", id="we-refresh"), pytest.param(2, "uac", id="linphone-refreshes")],
)
async def test_session_timer_with_linphone_keeps_the_call_up(
    api: Api, gateway: Gateway, tmp_path: Path, setting: int, refresher: str
) -> None:
    """RFC 4028 with a real UAC, either side the refresher: the refreshes keep the call up past
    its interval. (Min-SE is 90 s by §4; the running core's floor is lowered so the interval
    can be 6 s and the refreshes come every 3 s.)"""
    core = gateway.server.core
    core.config = dataclasses.replace(core.config, min_se=2)
    timers = (
        "session_expires_enabled=1\nsession_expires_value=6\nsession_expires_min_value=2\n"
        f"session_expires_refresher_value={setting}\n"  # liblinphone: 1 uas, 2 uac
    )
    async with FakeTelepathAgent(agent="silent") as agent:
        await create_trunk(api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=agent.url)
        async with Linphone(tmp_path, gateway, timers) as phone:
            await phone.call()
            await asyncio.sleep(8.0)  # past the interval: only refreshes keep it alive
            assert gateway.manager.active_calls == 1
            log = await phone.hang_up()
        (record,) = await ended_records(api, gateway)
    assert record["disconnect_reason"] == "caller_hangup", log
    trace = (await api.get(f"/v1/calls/{record['id']}")).json()["sip_trace"]
    assert f"Session-Expires: 6;refresher={refresher}" in trace  # our 200 OK (§9)
    sent_by = "out" if refresher == "uas" else "in"
    # in-dialog refreshes (UPDATE, or re-INVITE carrying our To tag) in the expected direction
    refreshes = re.findall(
        rf"^--- {sent_by}[^\n]*\n(?:UPDATE|INVITE) sip:[^\n]*\n(?:[^\n]+\n)*?To: [^\n]*tag=",
        trace,
        re.M,
    )
    assert len(refreshes) >= 2, trace
    assert len(agent.handshakes) == 1


async def test_transfer_by_refer_to_a_real_phone(
    api: Api, gateway: Gateway, tmp_path: Path
) -> None:
    """The agent transfers the call: our REFER (RFC 3515) reaches linphone, which calls the
    target (SIPp's built-in UAS) and reports the outcome by NOTIFY sipfrag; the agent gets the
    result and the record says ``transferred``."""
    sipp = require_sipp()
    target_port = free_udp_port()
    uas = await asyncio.create_subprocess_exec(
        sipp,
        "-sn",
        "uas",
        "-i",
        "127.0.0.1",
        "-p",
        str(target_port),
        "-m",
        "1",
        "-nostdin",
        "-timeout",
        "30s",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=tmp_path,
    )
    target = f"sip:desk@127.0.0.1:{target_port}"
    try:
        async with FakeTelepathAgent(agent="tone", response_ms=400, transfer_to=target) as agent:
            await create_trunk(
                api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=agent.url
            )
            async with Linphone(tmp_path, gateway) as phone:
                await phone.call()
                await until(lambda: bool(agent.transfer_results), within_s=10)
                (record,) = await ended_records(api, gateway, within_s=10)
                await phone.say("terminate")  # linphone's new call, to the target
                # the target saw a whole call: INVITE, ACK, BYE from linphone
                assert await asyncio.wait_for(uas.wait(), 15) == 0
                await phone.say("quit")
    finally:
        if uas.returncode is None:
            uas.kill()
            await uas.wait()
    # the final sipfrag status, reported to the agent
    assert agent.transfer_results == [
        {"type": "transfer_result", "request_id": "xfer-1", "ok": True, "detail": "SIP 200"}
    ]
    assert record["disconnect_reason"] == "transferred"
    trace = (await api.get(f"/v1/calls/{record['id']}")).json()["sip_trace"]
    assert f"Refer-To: <{target}>" in trace
    assert re.search(r"^NOTIFY sip:", trace, re.M)  # linphone's progress report reached us


async def test_hold_and_resume_from_a_real_phone(
    api: Api, gateway: Gateway, tmp_path: Path
) -> None:
    """linphone's ``pause`` / ``resume`` re-INVITEs (a=sendonly, then sendrecv): we answer each
    (recvonly, sendrecv; RFC 3264 §8.4), the call and the agent session survive both."""
    async with FakeTelepathAgent(agent="silent") as agent:
        await create_trunk(api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=agent.url)
        async with Linphone(tmp_path, gateway) as phone:
            await phone.call()
            await asyncio.sleep(1.0)
            await phone.say("pause")
            await asyncio.sleep(1.5)
            await phone.say("resume")
            await asyncio.sleep(1.5)
            log = await phone.hang_up()
        (record,) = await ended_records(api, gateway)
    assert record["disconnect_reason"] == "caller_hangup", log
    assert len(agent.handshakes) == 1
    trace = (await api.get(f"/v1/calls/{record['id']}")).json()["sip_trace"]
    messages = re.split(r"^--- ", trace, flags=re.M)
    ours = [
        m
        for m in messages
        if m.startswith("out\nSIP/2.0 200") and re.search(r"^CSeq: \d+ INVITE", m, re.M)
    ]
    directions = [re.findall(r"^a=(sendrecv|recvonly|sendonly|inactive)", b, re.M) for b in ours]
    # the first answer, the hold answer, the resume answer
    assert [d[-1] if d else "sendrecv" for d in directions] == ["sendrecv", "recvonly", "sendrecv"]
