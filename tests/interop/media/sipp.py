"""Drive SIPp 3.6.1 as a real RTP peer: a minimal SIP stub answers its INVITE with our SDP,
then SIPp plays a pcap of RTP to us (``play_pcap_audio``) or echoes our RTP (``-rtp_echo``)."""

from __future__ import annotations

import asyncio
import shutil
import struct
from pathlib import Path
from typing import cast

from tests.conftest import skip_loudly

SIPP = shutil.which("sipp")

UAC_SCENARIO = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="telepath media peer">
  <send retrans="500">
    <![CDATA[
      INVITE sip:agent@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:agent@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:sipp@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0 101
      a=rtpmap:0 PCMU/8000
      a=rtpmap:101 telephone-event/8000
    ]]>
  </send>
  <recv response="200" rtd="true"/>
  <send>
    <![CDATA[
      ACK sip:agent@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:agent@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
  %(media)s
  <send retrans="500">
    <![CDATA[
      BYE sip:agent@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:agent@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
  <recv response="200"/>
</scenario>
"""

PLAY = """<nop><action><exec play_pcap_audio="%(pcap)s"/></action></nop>
  <pause milliseconds="%(ms)d"/>"""
PAUSE = """<pause milliseconds="%(ms)d"/>"""


def require_sipp() -> str:
    if SIPP is None:
        skip_loudly("SIPp", "the sipp binary is not installed (Debian package sip-tester)")
    assert SIPP is not None
    return SIPP


def write_rtp_pcap(path: Path, packets: list[bytes], ptime_ms: int = 20) -> None:
    """Write RTP packets as an Ethernet/IPv4/UDP pcap, ``ptime_ms`` apart (SIPp paces by it)."""
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    for i, rtp in enumerate(packets):
        udp = struct.pack("!HHHH", 6000, 6000, 8 + len(rtp), 0) + rtp
        ip = (
            struct.pack(
                "!BBHHHBBH4s4s",
                0x45,
                0,
                20 + len(udp),
                i,
                0,
                64,
                17,
                0,
                bytes([127, 0, 0, 1]),
                bytes([127, 0, 0, 1]),
            )
            + udp
        )
        frame = b"\x00" * 12 + b"\x08\x00" + ip
        usec = i * ptime_ms * 1000
        out += struct.pack("<IIII", usec // 1_000_000, usec % 1_000_000, len(frame), len(frame))
        out += frame
    path.write_bytes(bytes(out))


class SipStub(asyncio.DatagramProtocol):
    """Answers INVITE with 200 OK + an SDP pointing at ``media_port``, and BYE with 200 OK."""

    def __init__(self, media_port: int) -> None:
        self.media_port = media_port
        self.transport: asyncio.DatagramTransport | None = None
        self.offer = ""
        self.bye = asyncio.Event()
        self.invited = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        text = data.decode(errors="replace")
        head, _, body = text.partition("\r\n\r\n")
        lines = head.split("\r\n")
        method = lines[0].split(" ", 1)[0]
        if method not in ("INVITE", "BYE"):
            return
        keep = [
            ln
            for ln in lines[1:]
            if ln.split(":", 1)[0].lower() in ("via", "from", "to", "call-id", "cseq")
        ]
        keep = [
            ln + ";tag=stub" if ln.lower().startswith("to:") and "tag=" not in ln else ln
            for ln in keep
        ]
        sdp = ""
        if method == "INVITE":
            self.offer = body
            sdp = (
                "v=0\r\no=telepath 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
                f"t=0 0\r\nm=audio {self.media_port} RTP/AVP 0 101\r\n"
                "a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
            )
        headers = ["SIP/2.0 200 OK", *keep, "Contact: <sip:agent@127.0.0.1>"]
        if sdp:
            headers.append("Content-Type: application/sdp")
        headers.append(f"Content-Length: {len(sdp)}")
        assert self.transport is not None
        self.transport.sendto(("\r\n".join(headers) + "\r\n\r\n" + sdp).encode(), addr)
        (self.invited if method == "INVITE" else self.bye).set()

    def offered_media_port(self) -> int:
        for line in self.offer.splitlines():
            if line.startswith("m=audio "):
                return int(line.split()[1])
        raise AssertionError("no m=audio line in SIPp's offer")


async def run_sipp(
    tmp: Path, sip_port: int, media_port: int, media_xml: str, *, echo: bool = False
) -> asyncio.subprocess.Process:
    """Start SIPp as a UAC placing one call to 127.0.0.1:``sip_port``."""
    scenario = tmp / "uac.xml"
    scenario.write_text(UAC_SCENARIO % {"media": media_xml})
    args = [
        require_sipp(),
        f"127.0.0.1:{sip_port}",
        "-sf",
        str(scenario),
        "-m",
        "1",
        "-i",
        "127.0.0.1",
        "-mi",
        "127.0.0.1",
        "-mp",
        str(media_port),
        "-nostdin",
        "-timeout",
        "20s",
        "-trace_err",
        "-error_file",
        str(tmp / "sipp_errors.log"),
    ]
    if echo:
        args.append("-rtp_echo")
    return await asyncio.create_subprocess_exec(
        *args, cwd=tmp, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
