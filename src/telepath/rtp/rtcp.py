"""RTCP packets (RFC 3550 §6): SR, RR, SDES, BYE, and compound packets.

Each packet class has ``parse`` for one packet and ``__bytes__`` as its exact inverse; use
:func:`parse_compound` on a datagram. Packet types this module does not model (APP, feedback,
XR) are kept as :class:`RtcpUnknown` so a compound packet still round-trips byte for byte.
Padding (the P bit) is kept per packet in ``padding``. Nothing here reads a clock: NTP
timestamps are computed from a wall time passed in (:func:`ntp_from_unix`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Self

from telepath.rtp.errors import RtcpError

RTCP_SR = 200
RTCP_RR = 201
RTCP_SDES = 202
RTCP_BYE = 203
RTCP_APP = 204
SDES_END = 0
SDES_CNAME = 1
RTCP_HEADER_LENGTH = 4
REPORT_BLOCK_LENGTH = 24
MAX_REPORT_BLOCKS = 31
#: Seconds between 1900-01-01 (NTP epoch) and 1970-01-01 (Unix epoch).
NTP_UNIX_OFFSET = 2_208_988_800

_HEADER = struct.Struct("!BBH")
_REPORT = struct.Struct("!IB3sIIII")
_SENDER_INFO = struct.Struct("!IQIII")


def ntp_from_unix(unix_seconds: float) -> int:
    """Return the 64-bit NTP timestamp (RFC 3550 §4) for a Unix wall time."""
    return int((unix_seconds + NTP_UNIX_OFFSET) * (1 << 32)) & 0xFFFFFFFFFFFFFFFF


def ntp_middle32(ntp: int) -> int:
    """Return the middle 32 bits of an NTP timestamp: the LSR field of a report block (§6.4.1)."""
    return (ntp >> 16) & 0xFFFFFFFF


def last_sr_fields(lsr: int, delay_s: float) -> tuple[int, int]:
    """The LSR and DLSR fields of a report block (RFC 3550 §6.4.1), ``delay_s`` seconds after
    the SR whose middle 32 NTP bits are ``lsr`` arrived.

    DLSR is 32 bits of 1/65536 s, so it says at most 65536 s (about 18.2 h). §6.4.1 has both
    fields 0 when no SR has been received; an SR older than DLSR can express (a long call whose
    peer stopped sending) is treated the same way — the sender then computes no round trip from
    this block, rather than one from a wrapped delay. A negative delay (impossible on a
    monotonic clock) gives 0 too.
    """
    dlsr = int(delay_s * 65536)
    if not 0 <= dlsr <= 0xFFFFFFFF:
        return 0, 0
    return lsr, dlsr


@dataclass(slots=True)
class RtcpReportBlock:
    """One reception report block (RFC 3550 §6.4.1).

    Attributes:
        ssrc: the source this block reports on.
        fraction_lost: packets lost since the previous report, as a fraction of 256.
        packets_lost: cumulative lost packets, signed 24-bit (duplicates can make it negative).
        highest_sequence: extended highest sequence number received (cycles << 16 | seq).
        jitter: interarrival jitter in timestamp units.
        lsr: middle 32 bits of the last SR's NTP timestamp, 0 if none.
        dlsr: delay since that SR in 1/65536 s, 0 if none.
    """

    ssrc: int
    fraction_lost: int = 0
    packets_lost: int = 0
    highest_sequence: int = 0
    jitter: int = 0
    lsr: int = 0
    dlsr: int = 0

    @classmethod
    def parse(cls, data: bytes, pos: int = 0) -> Self:
        """Parse a 24-byte report block at ``pos``."""
        ssrc, fraction, lost, highest, jitter, lsr, dlsr = _REPORT.unpack_from(data, pos)
        cumulative = int.from_bytes(lost, "big", signed=True)
        return cls(ssrc, fraction, cumulative, highest, jitter, lsr, dlsr)

    def __bytes__(self) -> bytes:
        """Serialize to 24 bytes; ``packets_lost`` is clamped to the signed 24-bit range."""
        lost = max(-(1 << 23), min((1 << 23) - 1, self.packets_lost))
        return _REPORT.pack(
            self.ssrc,
            self.fraction_lost,
            lost.to_bytes(3, "big", signed=True),
            self.highest_sequence,
            self.jitter,
            self.lsr,
            self.dlsr,
        )


def _pack(packet_type: int, count: int, body: bytes, padding: bytes) -> bytes:
    if len(body) % 4:
        raise RtcpError("RTCP packet body is not a multiple of 4 bytes")
    first = 0x80 | count
    if padding:
        first |= 0x20
    words = (len(body) + len(padding)) // 4
    return _HEADER.pack(first, packet_type, words) + body + padding


def _reports(data: bytes, pos: int, count: int, end: int, name: str) -> list[RtcpReportBlock]:
    if pos + count * REPORT_BLOCK_LENGTH > end:
        raise RtcpError(f"RTCP {name} report block count is invalid")
    return [RtcpReportBlock.parse(data, pos + i * REPORT_BLOCK_LENGTH) for i in range(count)]


@dataclass(slots=True)
class RtcpSenderReport:
    """SR: sender info plus reception reports (RFC 3550 §6.4.1).

    Attributes:
        ssrc: the sender.
        ntp_timestamp: 64-bit NTP wall time of this report.
        rtp_timestamp: the RTP timestamp corresponding to ``ntp_timestamp``.
        packet_count: RTP packets sent so far.
        octet_count: payload octets sent so far.
        reports: reception report blocks.
        extension: profile-specific extension octets (kept verbatim).
        padding: trailing padding including the count octet.
    """

    ssrc: int
    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: list[RtcpReportBlock] = field(default_factory=list)
    extension: bytes = b""
    padding: bytes = b""

    @classmethod
    def parse(cls, data: bytes, count: int, padding: bytes = b"") -> Self:
        """Parse an SR body (``data`` excludes the 4-byte header and the padding)."""
        if len(data) < _SENDER_INFO.size:
            raise RtcpError("RTCP sender report length is invalid")
        ssrc, ntp, rtp_ts, packets, octets = _SENDER_INFO.unpack_from(data)
        reports = _reports(data, _SENDER_INFO.size, count, len(data), "sender report")
        ext = data[_SENDER_INFO.size + count * REPORT_BLOCK_LENGTH :]
        return cls(ssrc, ntp, rtp_ts, packets, octets, reports, ext, padding)

    def __bytes__(self) -> bytes:
        """Serialize, the exact inverse of :meth:`parse`."""
        if len(self.reports) > MAX_REPORT_BLOCKS:
            raise RtcpError("RTCP packet has more than 31 report blocks")
        body = _SENDER_INFO.pack(
            self.ssrc, self.ntp_timestamp, self.rtp_timestamp, self.packet_count, self.octet_count
        )
        body += b"".join(bytes(r) for r in self.reports) + self.extension
        return _pack(RTCP_SR, len(self.reports), body, self.padding)


@dataclass(slots=True)
class RtcpReceiverReport:
    """RR: reception reports from a participant that is not sending (RFC 3550 §6.4.2)."""

    ssrc: int
    reports: list[RtcpReportBlock] = field(default_factory=list)
    extension: bytes = b""
    padding: bytes = b""

    @classmethod
    def parse(cls, data: bytes, count: int, padding: bytes = b"") -> Self:
        """Parse an RR body (``data`` excludes the 4-byte header and the padding)."""
        if len(data) < 4:
            raise RtcpError("RTCP receiver report length is invalid")
        (ssrc,) = struct.unpack_from("!I", data)
        reports = _reports(data, 4, count, len(data), "receiver report")
        return cls(ssrc, reports, data[4 + count * REPORT_BLOCK_LENGTH :], padding)

    def __bytes__(self) -> bytes:
        """Serialize, the exact inverse of :meth:`parse`."""
        if len(self.reports) > MAX_REPORT_BLOCKS:
            raise RtcpError("RTCP packet has more than 31 report blocks")
        body = struct.pack("!I", self.ssrc) + b"".join(bytes(r) for r in self.reports)
        return _pack(RTCP_RR, len(self.reports), body + self.extension, self.padding)


@dataclass(slots=True)
class RtcpSourceDescription:
    """One SDES chunk: an SSRC and its items as ``(item type, value)`` pairs (§6.5)."""

    ssrc: int
    items: list[tuple[int, bytes]] = field(default_factory=list)


@dataclass(slots=True)
class RtcpSdes:
    """SDES: source description chunks (RFC 3550 §6.5)."""

    chunks: list[RtcpSourceDescription] = field(default_factory=list)
    padding: bytes = b""

    @classmethod
    def parse(cls, data: bytes, count: int, padding: bytes = b"") -> Self:
        """Parse an SDES body."""
        chunks = []
        pos = 0
        for _ in range(count):
            if pos + 4 > len(data):
                raise RtcpError("RTCP SDES source is truncated")
            (ssrc,) = struct.unpack_from("!I", data, pos)
            pos += 4
            items: list[tuple[int, bytes]] = []
            while True:
                if pos >= len(data):
                    raise RtcpError("RTCP SDES item is truncated")
                item_type = data[pos]
                if item_type == SDES_END:
                    # The list ends with one or more null octets up to the next 32-bit boundary.
                    pos = (pos + 4) & ~3
                    break
                if pos + 2 > len(data) or pos + 2 + data[pos + 1] > len(data):
                    raise RtcpError("RTCP SDES item is truncated")
                length = data[pos + 1]
                items.append((item_type, data[pos + 2 : pos + 2 + length]))
                pos += 2 + length
            chunks.append(RtcpSourceDescription(ssrc, items))
        return cls(chunks, padding)

    def __bytes__(self) -> bytes:
        """Serialize with the minimal null termination per chunk (the canonical form)."""
        body = bytearray()
        for chunk in self.chunks:
            body += struct.pack("!I", chunk.ssrc)
            for item_type, value in chunk.items:
                if len(value) > 255:
                    raise RtcpError("RTCP SDES item is longer than 255 bytes")
                body += bytes((item_type, len(value))) + value
            body += b"\x00" * (4 - len(body) % 4)
        return _pack(RTCP_SDES, len(self.chunks), bytes(body), self.padding)


@dataclass(slots=True)
class RtcpBye:
    """BYE: sources leaving, with an optional reason (RFC 3550 §6.6)."""

    sources: list[int] = field(default_factory=list)
    reason: bytes = b""
    padding: bytes = b""

    @classmethod
    def parse(cls, data: bytes, count: int, padding: bytes = b"") -> Self:
        """Parse a BYE body."""
        if len(data) < 4 * count:
            raise RtcpError("RTCP bye length is invalid")
        sources = list(struct.unpack_from(f"!{count}I", data))
        pos = 4 * count
        reason = b""
        if pos < len(data):
            length = data[pos]
            if pos + 1 + length > len(data):
                raise RtcpError("RTCP bye reason length is invalid")
            reason = data[pos + 1 : pos + 1 + length]
        return cls(sources, reason, padding)

    def __bytes__(self) -> bytes:
        """Serialize, the reason padded with nulls to a 32-bit boundary."""
        body = struct.pack(f"!{len(self.sources)}I", *self.sources)
        if self.reason:
            if len(self.reason) > 255:
                raise RtcpError("RTCP bye reason is longer than 255 bytes")
            body += bytes((len(self.reason),)) + self.reason
            body += b"\x00" * (-len(body) % 4)
        return _pack(RTCP_BYE, len(self.sources), body, self.padding)


@dataclass(slots=True)
class RtcpUnknown:
    """An RTCP packet type this module does not model, kept verbatim."""

    packet_type: int
    count: int
    body: bytes
    padding: bytes = b""

    def __bytes__(self) -> bytes:
        """Serialize unchanged."""
        return _pack(self.packet_type, self.count, self.body, self.padding)


RtcpPacket = RtcpSenderReport | RtcpReceiverReport | RtcpSdes | RtcpBye | RtcpUnknown


def parse_compound(data: bytes) -> list[RtcpPacket]:
    """Parse a (compound) RTCP datagram into its packets (RFC 3550 §6.1).

    Raises:
        RtcpError: the datagram is malformed; the message names the defect.
    """
    packets: list[RtcpPacket] = []
    pos = 0
    while pos < len(data):
        if pos + RTCP_HEADER_LENGTH > len(data):
            raise RtcpError("RTCP packet length is less than 4 bytes")
        first, packet_type, words = _HEADER.unpack_from(data, pos)
        if first >> 6 != 2:
            raise RtcpError(f"RTCP packet has invalid version {first >> 6}")
        end = pos + RTCP_HEADER_LENGTH + 4 * words
        if end > len(data):
            raise RtcpError("RTCP packet length is invalid")
        body = data[pos + RTCP_HEADER_LENGTH : end]
        padding = b""
        if first & 0x20:
            pad = body[-1] if body else 0
            if pad == 0 or pad > len(body):
                raise RtcpError("RTCP packet padding length is invalid")
            padding = body[-pad:]
            body = body[:-pad]
        count = first & 0x1F
        packet: RtcpPacket
        if packet_type == RTCP_SR:
            packet = RtcpSenderReport.parse(body, count, padding)
        elif packet_type == RTCP_RR:
            packet = RtcpReceiverReport.parse(body, count, padding)
        elif packet_type == RTCP_SDES:
            packet = RtcpSdes.parse(body, count, padding)
        elif packet_type == RTCP_BYE:
            packet = RtcpBye.parse(body, count, padding)
        else:
            packet = RtcpUnknown(packet_type, count, body, padding)
        packets.append(packet)
        pos = end
    if not packets:
        raise RtcpError("RTCP packet length is less than 4 bytes")
    return packets


def serialize_compound(packets: list[RtcpPacket]) -> bytes:
    """Serialize packets back into one datagram."""
    return b"".join(bytes(p) for p in packets)
