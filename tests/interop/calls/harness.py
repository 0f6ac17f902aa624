"""End-to-end harness: the real gateway (SIP + RTP + call control) in this process, a trunk
created through the API, SIPp as the carrier, a UDP "phone" as the caller's media, and the
provider fakes as agents."""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path

from telepath.testing.tones import dominant_frequency, g711_to_pcm16, sine_g711
from tests.interop.media.sipp import require_sipp

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
      a=rtpmap:0 PCMU/8000
      a=rtpmap:8 PCMA/8000
      a=rtpmap:101 telephone-event/8000
      a=fmtp:101 0-16
      a=ptime:20
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

ACK_2XX = """  <send>
    <![CDATA[
      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: "Caller" <sip:+15551230000@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:%(user)s@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 2 ACK
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
    common = {"user": user, "media_port": media_port, "formats": formats}
    parts.append(INVITE % {**common, "txn": ' start_txn="inv1"', "cseq": 1, "auth": ""})
    parts.append('  <recv response="100" optional="true" response_txn="inv1"/>\n')
    parts.append('  <recv response="401" auth="true" response_txn="inv1"/>\n')
    parts.append(ACK_TXN % {**common, "txn": "inv1", "cseq": 1})
    parts.append(INVITE % {**common, "txn": "", "cseq": 2, "auth": "\n      [authentication]"})
    parts.append('  <recv response="100" optional="true"/>\n')
    parts.append('  <recv response="180" optional="true"/>\n')
    parts.append('  <recv response="200" rrs="true" rtd="true"/>\n')
    parts.append(ACK_2XX % common)
    parts.append(middle)
    if caller_hangs_up:
        parts.append(f'  <pause milliseconds="{hold_ms}"/>\n')
        parts.append(IN_DIALOG % {**common, "method": "BYE", "cseq": 10, "extra": "", "body": ""})
        parts.append('  <recv response="200"/>\n')
    else:
        parts.append(f'  <recv request="BYE" timeout="{hold_ms + 15000}"/>\n')
        parts.append(
            """  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0
    ]]>
  </send>
"""
        )
    parts.append("</scenario>\n")
    return "".join(parts)


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
    timeout_s: float = 30,
) -> SippResult:
    """Run one SIPp call against the gateway and wait for it to finish."""
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
        "-bg" if False else "-nd",
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


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
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


@dataclass
class Phone:
    """The caller's RTP endpoint: sends a PCMU tone, records what the gateway sends."""

    port: int = 0
    received: list[tuple[int, bytes]] = field(default_factory=list)
    source: tuple[str, int] | None = None
    transport: asyncio.DatagramTransport | None = None
    _task: asyncio.Task[None] | None = None

    async def open(self) -> Phone:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _PhoneProtocol(self), local_addr=("127.0.0.1", 0)
        )
        self.transport = transport
        self.port = int(self.transport.get_extra_info("sockname")[1])
        return self

    def start_tone(
        self, dest: tuple[str, int], freq_hz: float, seconds: float, pt: int = 0
    ) -> None:
        self._task = asyncio.get_running_loop().create_task(self._send(dest, freq_hz, seconds, pt))

    async def _send(self, dest: tuple[str, int], freq: float, seconds: float, pt: int) -> None:
        loop = asyncio.get_running_loop()
        ssrc = random.randrange(1 << 32)
        start = loop.time()
        for i in range(int(seconds * 50)):
            payload = sine_g711(freq, 20, "pcmu" if pt == 0 else "pcma", phase=i * 160)
            header = struct.pack(
                "!BBHII", 0x80, pt | (0x80 if i == 0 else 0), i & 0xFFFF, i * 160, ssrc
            )
            assert self.transport is not None
            self.transport.sendto(header + payload, dest)
            await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - loop.time()))

    def audio(self, pt: int = 0) -> bytes:
        """Everything received with payload type ``pt``, concatenated."""
        return b"".join(p for t, p in self.received if t == pt)

    def dominant(self, pt: int = 0) -> float:
        """Dominant frequency of the non-silent received audio."""
        data = self.audio(pt)
        pcm = g711_to_pcm16(data, "pcmu" if pt == 0 else "pcma")
        return dominant_frequency(pcm)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self.transport is not None:
            self.transport.close()
