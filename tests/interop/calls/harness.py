"""End-to-end harness: the real gateway (SIP + RTP + call control) in this process, a trunk
created through the API, SIPp as the carrier, a UDP "phone" as the caller's media, and the
provider fakes as agents."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from telepath.bridges.base import Codec
from telepath.calls.call import Call
from telepath.cli.gateway import Gateway
from telepath.rtp.dtmf import encode_dtmf
from telepath.rtp.g722 import G722Decoder, G722Encoder
from telepath.testing.tones import dominant_frequency, g711_to_pcm16, sine_g711, sine_pcm16
from tests.conftest import free_udp_port
from tests.integration.db.tcp_proxy import TcpProxy
from tests.integration.webhooks.receiver import Receiver
from tests.interop.media.sipp import require_sipp
from tests.interop.sip.uac import CallLeg, Uac

HEADER = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="telepath e2e">
"""

INVITE = """  <send retrans="500"%(txn)s>
    <![CDATA[
      INVITE sip:%(user)s@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: "Caller" <sip:+15551230000@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:%(user)s@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: %(cseq)d INVITE
      Contact: <sip:caller@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70%(auth)s
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=caller 53655765 2353687637 IN IP4 [local_ip]
      s=-
      c=IN IP4 127.0.0.1
      t=0 0
      m=audio %(media_port)d RTP/AVP %(formats)s
%(rtpmaps)s      a=ptime:20
    ]]>
  </send>
"""

ACK_TXN = """  <send ack_txn="%(txn)s">
    <![CDATA[
      ACK sip:%(user)s@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: "Caller" <sip:+15551230000@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:%(user)s@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: %(cseq)d ACK
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
"""

# The answer to the last request SIPp received (``status``: "200 OK", "202 Accepted", ...).
ANSWER_REQUEST = """  <send>
    <![CDATA[
      SIP/2.0 %(status)s
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0
    ]]>
  </send>
"""
OK_TO_REQUEST = ANSWER_REQUEST % {"status": "200 OK"}

ACK_2XX = """  <send>
    <![CDATA[
      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: "Caller" <sip:+15551230000@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:%(user)s@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: %(cseq)d ACK
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
"""

IN_DIALOG = """  <send retrans="500">
    <![CDATA[
      %(method)s [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: "Caller" <sip:+15551230000@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:%(user)s@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: %(cseq)d %(method)s
      Max-Forwards: 70
      %(extra)s
      Content-Length: [len]
%(body)s
    ]]>
  </send>
"""


def authenticated_call(
    user: str,
    media_port: int,
    *,
    hold_ms: int = 3000,
    formats: str = "0 8 101",
    middle: str = "",
    caller_hangs_up: bool = True,
) -> str:
    """INVITE → 401 → ACK → INVITE with digest → 200 → ACK → [middle] → pause → BYE."""
    parts = [HEADER]
    common = {
        "user": user,
        "media_port": media_port,
        "formats": formats,
        "rtpmaps": rtpmaps(formats),
    }
    parts.append(INVITE % {**common, "txn": ' start_txn="inv1"', "cseq": 1, "auth": ""})
    parts.append('  <recv response="100" optional="true" response_txn="inv1"/>\n')
    parts.append('  <recv response="401" auth="true" response_txn="inv1"/>\n')
    parts.append(ACK_TXN % {**common, "txn": "inv1", "cseq": 1})
    parts.append(INVITE % {**common, "txn": "", "cseq": 2, "auth": "\n      [authentication]"})
    parts.append('  <recv response="100" optional="true"/>\n')
    parts.append('  <recv response="180" optional="true"/>\n')
    parts.append('  <recv response="200" rrs="true" rtd="true"/>\n')
    parts.append(ACK_2XX % {**common, "cseq": 2})
    parts.append(middle)
    if caller_hangs_up:
        parts.append(f'  <pause milliseconds="{hold_ms}"/>\n')
        parts.append(IN_DIALOG % {**common, "method": "BYE", "cseq": 10, "extra": "", "body": ""})
        parts.append('  <recv response="200"/>\n')
    else:
        parts.append(f'  <recv request="BYE" timeout="{hold_ms + 15000}"/>\n')
        parts.append(OK_TO_REQUEST)
    parts.append("</scenario>\n")
    return "".join(parts)


def rejected_call(user: str, media_port: int, status: int, formats: str = "0 8 101") -> str:
    """INVITE → 401 → ACK → INVITE with digest → ``status`` → ACK (a call the gateway refuses)."""
    common = {
        "user": user,
        "media_port": media_port,
        "formats": formats,
        "rtpmaps": rtpmaps(formats),
    }
    return "".join(
        [
            HEADER,
            INVITE % {**common, "txn": ' start_txn="inv1"', "cseq": 1, "auth": ""},
            '  <recv response="100" optional="true" response_txn="inv1"/>\n',
            '  <recv response="401" auth="true" response_txn="inv1"/>\n',
            ACK_TXN % {**common, "txn": "inv1", "cseq": 1},
            INVITE
            % {
                **common,
                "txn": ' start_txn="inv2"',
                "cseq": 2,
                "auth": "\n      [authentication]",
            },
            '  <recv response="100" optional="true" response_txn="inv2"/>\n',
            '  <recv response="180" optional="true" response_txn="inv2"/>\n',
            f'  <recv response="{status}" response_txn="inv2"/>\n',
            ACK_TXN % {**common, "txn": "inv2", "cseq": 2},
            "</scenario>\n",
        ]
    )


def refused_call(user: str, media_port: int, status: int) -> str:
    """INVITE (no credentials) → ``status`` → ACK: what a draining or full gateway answers."""
    common = {"user": user, "media_port": media_port, "formats": "0 101"}
    common["rtpmaps"] = rtpmaps("0 101")
    return "".join(
        [
            HEADER,
            INVITE % {**common, "txn": ' start_txn="inv1"', "cseq": 1, "auth": ""},
            '  <recv response="100" optional="true" response_txn="inv1"/>\n',
            f'  <recv response="{status}" response_txn="inv1"/>\n',
            ACK_TXN % {**common, "txn": "inv1", "cseq": 1},
            "</scenario>\n",
        ]
    )


RTPMAPS = {
    "0": ["a=rtpmap:0 PCMU/8000"],
    "8": ["a=rtpmap:8 PCMA/8000"],
    "9": ["a=rtpmap:9 G722/8000"],
    "101": ["a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-16"],
}


def rtpmaps(formats: str) -> str:
    lines = [line for pt in formats.split() for line in RTPMAPS.get(pt, [])]
    return "".join(f"      {line}\n" for line in lines)


@dataclass
class SippResult:
    returncode: int
    stdout: str
    errors: str
    messages: str


async def run_sipp(
    scenario: str,
    tmp: Path,
    target: tuple[str, int],
    *,
    user: str,
    password: str,
    transport: str = "u1",
    extra: tuple[str, ...] = (),
    timeout_s: float = 30,
) -> SippResult:
    """Run one SIPp call against the gateway and wait for it to finish (``extra``: more SIPp
    arguments, e.g. ``-lost 10``)."""
    path = tmp / f"scenario-{random.randrange(1 << 30)}.xml"
    path.write_text(scenario)
    errors = tmp / "sipp_errors.log"
    messages = tmp / "sipp_messages.log"
    proc = await asyncio.create_subprocess_exec(
        require_sipp(),
        f"{target[0]}:{target[1]}",
        "-sf",
        str(path),
        "-m",
        "1",
        "-l",
        "1",
        "-i",
        "127.0.0.1",
        "-p",
        str(free_udp_port()),
        "-t",
        transport,
        "-au",
        user,
        "-ap",
        password,
        "-timeout",
        f"{int(timeout_s)}s",
        "-timeout_error",
        "-nostdin",
        "-trace_err",
        "-error_file",
        str(errors),
        "-trace_msg",
        "-message_file",
        str(messages),
        "-nd",
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout_s + 10)
    return SippResult(
        proc.returncode or 0,
        out.decode(errors="replace"),
        errors.read_text(errors="replace") if errors.exists() else "",
        messages.read_text(errors="replace") if messages.exists() else "",
    )


def free_tcp_port() -> int:
    """A TCP port nothing listens on (for an unreachable agent)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _PhoneProtocol(asyncio.DatagramProtocol):
    def __init__(self, phone: Phone) -> None:
        self.phone = phone

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < 12 or data[0] >> 6 != 2:
            return
        pt = data[1] & 0x7F
        if pt >= 72 and pt <= 76:
            return  # RTCP on the same port (not expected, ignored)
        self.phone.received.append((pt, data[12:]))
        self.phone.source = addr


PT_CODEC = {0: "pcmu", 8: "pcma", 9: "g722"}
TONE_RMS = 1000  # a received frame louder than this counts as agent tone (silence is ~0)


@dataclass
class Phone:
    """The caller's RTP endpoint: sends a tone (PCMU, PCMA or G.722) and RFC 4733 key presses
    in one RTP stream, records every packet the gateway sends."""

    port: int = 0
    received: list[tuple[int, bytes]] = field(default_factory=list)
    sent: list[tuple[int, float]] = field(default_factory=list)  # audio: (RTP ts, monotonic)
    source: tuple[str, int] | None = None
    transport: asyncio.DatagramTransport | None = None
    dtmf_pt: int = 101
    _task: asyncio.Task[None] | None = None
    _presses: list[str] = field(default_factory=list)

    async def open(self) -> Phone:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _PhoneProtocol(self), local_addr=("127.0.0.1", 0)
        )
        self.transport = transport
        self.port = int(self.transport.get_extra_info("sockname")[1])
        return self

    def start_tone(
        self,
        dest: tuple[str, int],
        freq_hz: float,
        seconds: float,
        pt: int = 0,
        *,
        then_silence_s: float = 0.0,
        drop_every: int = 0,
        odd_late_ms: float = 0.0,
    ) -> None:
        """Send ``seconds`` of tone, then ``then_silence_s`` of silence in the same stream (the
        caller stops talking, the line stays up).

        A lossy, jittery line: ``drop_every=k`` never sends frame ``i`` when ``i % k == k // 2``
        (its sequence number is used up all the same: lost on the way); ``odd_late_ms`` sends
        every odd frame that much after its slot. ``sent`` has the frames that left, and when.
        """
        self._task = asyncio.get_running_loop().create_task(
            self._send(dest, freq_hz, seconds, pt, then_silence_s, drop_every, odd_late_ms / 1000)
        )

    def press(self, key: str) -> None:
        """Send ``key`` as RFC 4733 telephone-events (100 ms, end bit x3) in the tone stream."""
        self._presses.append(key)

    async def stop_sending(self) -> None:
        """Stop the tone now (the caller's media goes silent: no more RTP)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _send(
        self,
        dest: tuple[str, int],
        freq: float,
        seconds: float,
        pt: int,
        silence_s: float,
        drop_every: int,
        odd_late_s: float,
    ) -> None:
        loop = asyncio.get_running_loop()
        ssrc = random.randrange(1 << 32)
        start = loop.time()
        encoder = G722Encoder() if pt == 9 else None
        seq = 0
        i = 0
        tone_frames = int(seconds * 50)
        frames = tone_frames + int(silence_s * 50)
        while i < frames:
            if self._presses:
                key = self._presses.pop(0)
                event_ts = i * 160  # every packet of one event carries its start timestamp
                for packet in encode_dtmf(key, 100):
                    marker = 0x80 if packet.marker else 0
                    header = struct.pack(
                        "!BBHII", 0x80, self.dtmf_pt | marker, seq & 0xFFFF, event_ts, ssrc
                    )
                    self._sendto(header + packet.payload, dest)
                    seq += 1
                    i += 1
                    await asyncio.sleep(max(0.0, start + i * 0.02 - loop.time()))
                continue
            level = 0.5 if i < tone_frames else 0.0
            if encoder is not None:
                payload = encoder.encode(sine_pcm16(freq, 20, 16000, level, phase=i * 320))
            else:
                law: Codec = "pcmu" if pt == 0 else "pcma"
                payload = sine_g711(freq, 20, law, level, phase=i * 160)
            header = struct.pack(
                "!BBHII", 0x80, pt | (0x80 if i == 0 else 0), seq & 0xFFFF, i * 160, ssrc
            )
            if not drop_every or i % drop_every != drop_every // 2:
                self._sendto(header + payload, dest)
                self.sent.append((i * 160, time.monotonic()))
            seq += 1
            i += 1
            late = odd_late_s if i % 2 else 0.0
            await asyncio.sleep(max(0.0, start + i * 0.02 + late - loop.time()))

    def _sendto(self, data: bytes, dest: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, dest)

    def audio(self, pt: int = 0) -> bytes:
        """Everything received with payload type ``pt``, concatenated."""
        return b"".join(p for t, p in self.received if t == pt)

    def pcm(self, pt: int = 0) -> tuple[bytes, int]:
        """The received audio of payload type ``pt`` decoded to PCM16, and its sample rate."""
        data = self.audio(pt)
        if pt == 9:
            return G722Decoder().decode(data), 16000
        return g711_to_pcm16(data, "pcmu" if pt == 0 else "pcma"), 8000

    def dominant(self, pt: int = 0, *, voiced_only: bool = False) -> float:
        """Dominant frequency of the received audio (optionally of its loud frames only)."""
        if voiced_only:
            codec: Codec = "pcmu" if pt == 0 else "pcma"
            pcm = b"".join(g711_to_pcm16(p, codec) for p in self.frames(pt) if is_loud(p, codec))
            return dominant_frequency(pcm)
        pcm, rate = self.pcm(pt)
        return dominant_frequency(pcm, rate)

    def frames(self, pt: int = 0) -> list[bytes]:
        """Received payloads of type ``pt``, in arrival order."""
        return [p for t, p in self.received if t == pt]

    def loud_frames(self, pt: int = 0) -> int:
        """How many received G.711 frames carried sound (agent audio rather than silence)."""
        codec: Codec = "pcmu" if pt == 0 else "pcma"
        return sum(1 for p in self.frames(pt) if is_loud(p, codec))

    async def close(self) -> None:
        await self.stop_sending()
        if self.transport is not None:
            self.transport.close()


def is_loud(payload: bytes, codec: Codec = "pcmu") -> bool:
    """Whether a G.711 frame carries sound (agent audio rather than silence)."""
    view = memoryview(g711_to_pcm16(payload, codec)).cast("h")
    if not len(view):
        return False
    rms = (sum(s * s for s in view) / len(view)) ** 0.5
    return bool(rms > TONE_RMS)


def frame_tone(payload: bytes, codec: Codec = "pcmu") -> float | None:
    """Dominant frequency of one G.711 frame (50 Hz resolution at 20 ms), ``None`` if silent."""
    if not is_loud(payload, codec):
        return None
    return dominant_frequency(g711_to_pcm16(payload, codec))


async def wait_until(
    condition: Callable[[], object], within_s: float = 10, what: str = "condition"
) -> None:
    """Poll ``condition`` every 20 ms until it is truthy (fails after ``within_s``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass
class PlacedCall:
    """A SIPp call in progress: its task, the caller's phone and the gateway's call."""

    sipp: asyncio.Task[SippResult]
    phone: Phone
    call: Call

    @property
    def rtp(self) -> tuple[str, int]:
        """Where the phone sends its RTP (the gateway's media port)."""
        return ("127.0.0.1", self.call.media.local_port)

    @property
    def call_id(self) -> str:
        return self.call.record.id

    async def tone_until_end(self, seconds: float, hz: float = 1000) -> SippResult:
        """Play a tone from the phone, then wait for SIPp's scenario to end; close the phone."""
        self.phone.start_tone(self.rtp, hz, seconds)
        result = await self.sipp
        await self.phone.close()
        return result


async def place_call(
    gateway: Gateway,
    tmp: Path,
    user: str,
    password: str,
    *,
    hold_ms: int = 2500,
    formats: str = "0 8 101",
    caller_hangs_up: bool = True,
    middle: str | Callable[[int], str] = "",
) -> PlacedCall:
    """Start SIPp dialling ``user`` and wait until the gateway has answered the call
    (``middle`` may be made from the phone's RTP port, e.g. a re-INVITE's SDP)."""
    phone = await Phone().open()
    scenario = authenticated_call(
        user,
        phone.port,
        hold_ms=hold_ms,
        formats=formats,
        caller_hangs_up=caller_hangs_up,
        middle=middle if isinstance(middle, str) else middle(phone.port),
    )
    sipp = asyncio.create_task(
        run_sipp(scenario, tmp, gateway.server.bound["UDP"], user=user, password=password)
    )
    seen = _watch_calls(gateway)
    try:
        await wait_until(lambda: seen or sipp.done(), what="an answered call")
    except BaseException:
        await phone.close()
        sipp.cancel()
        raise
    if not seen:
        await phone.close()
        result = await sipp
        raise AssertionError("no call was set up:\n" + result.stdout + result.errors)
    return PlacedCall(sipp, phone, seen[0])


class _SeenCalls(dict[str, Call]):
    """``CallManager.calls`` that also remembers every call ever added (a call that fails
    right after its 200 OK may be gone before a poll could see it)."""

    def __init__(self, current: dict[str, Call]) -> None:
        super().__init__(current)
        self.seen: list[Call] = list(current.values())

    def __setitem__(self, key: str, value: Call) -> None:
        self.seen.append(value)
        super().__setitem__(key, value)


def _watch_calls(gateway: Gateway) -> list[Call]:
    manager = gateway.manager
    if not isinstance(manager.calls, _SeenCalls):
        manager.calls = _SeenCalls(manager.calls)
    calls = manager.calls
    assert isinstance(calls, _SeenCalls)
    calls.seen.clear()
    return calls.seen


def forget_seen_calls(gateway: Gateway) -> None:
    """Drop the harness's own references to the calls it saw (for tests of what frees them)."""
    calls = gateway.manager.calls
    if isinstance(calls, _SeenCalls):
        calls.seen.clear()


async def settled(gateway: Gateway) -> None:
    """Wait until every call and setup task finished (records and events written)."""
    manager = gateway.manager
    await wait_until(
        lambda: not manager._tasks and not manager.calls and not manager._setups,
        what="the gateway to settle",
    )


async def connected_call(
    sip_port: int, user: str, password: str, call_id: str, media_port: int
) -> CallLeg:
    """A call answered and ACKed, placed from a raw UAC (close ``leg.uac`` afterwards)."""
    uac = await Uac.open("UDP", ("127.0.0.1", sip_port))
    leg = CallLeg(uac, user, call_id=call_id)
    await leg.challenge(media_port)
    await leg.answered(leg.authenticated_invite(password, media_port))
    uac.send(leg.ack())
    return leg


def events_of(receiver: Receiver, call_id: str) -> dict[str, dict[str, Any]]:
    """The webhook events delivered for ``call_id``, by type."""
    events = [json.loads(r.body) for r in receiver.requests]
    return {e["type"]: e["data"] for e in events if e["data"].get("call_id") == call_id}


def journaled_end(journal: Path) -> bool:
    """Whether a gateway's journal (``<data_dir>/journal``) holds a call's end: its record's
    start and end with its ``call.ended`` event, one write (kept while the database is down)."""
    records = "".join(path.read_text() for path in journal.glob("*.call_records.jsonl"))
    return any('"call_ended"' in line and '"call.ended"' in line for line in records.splitlines())


def through_proxy(proxy: TcpProxy, database_url: str) -> dict[str, str]:
    """A live server's environment for ``database_url`` by way of ``proxy`` (which a test cuts
    and restores), counting a silent database as unavailable after 1 s."""
    return {
        "TELEPATH_DATABASE_URL": proxy.through(database_url),
        "TELEPATH_DATABASE_TIMEOUT_S": "1",
    }
