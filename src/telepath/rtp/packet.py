"""RTP data packets (RFC 3550 §5.1): parse and serialize with exact round-trips.

``bytes(RtpPacket.parse(data)) == data`` holds for every packet this module accepts: CSRC
lists, the header extension (§5.3.1) and padding (including its non-zero filler octets) are
kept verbatim. Nothing here does I/O.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Self

from telepath.rtp.errors import RtpError

RTP_VERSION = 2
RTP_HEADER_LENGTH = 12
MAX_CSRC_COUNT = 15
#: RFC 5761 §4: with RTP/RTCP multiplexing, payload types 64-95 would collide with RTCP packet
#: types 192-223 when the marker bit is set; they are never used for RTP here.
RTCP_PACKET_TYPES = range(192, 224)
DYNAMIC_PAYLOAD_TYPES = range(96, 128)

_HEADER = struct.Struct("!BBHII")
#: The fixed header (V/P/X/CC, M/PT, sequence, timestamp, SSRC), RFC 3550 §5.1. A packet whose
#: first octet is ``PLAIN_V2`` (version 2; no padding, extension or CSRC — nearly every packet)
#: is this header and then the payload: the receive path may read it in place.
FIXED_HEADER = _HEADER
PLAIN_V2 = 0x80
_EXT_HEADER = struct.Struct("!HH")


@dataclass(slots=True)
class RtpPacket:
    """One RTP data packet.

    Attributes:
        payload_type: 7-bit payload type (0 PCMU, 8 PCMA, 9 G722, dynamic for telephone-event).
        sequence_number: 16-bit; compare only through :mod:`telepath.rtp.seq`.
        timestamp: 32-bit media clock; compare only through :mod:`telepath.rtp.seq`.
        ssrc: 32-bit synchronisation source.
        marker: the M bit (start of a talkspurt for audio, RFC 3551 §4.1).
        payload: the codec payload, padding excluded.
        csrc: contributing sources (at most 15).
        extension_profile: the 16-bit "defined by profile" field, or None without an extension.
        extension: the extension data, a multiple of 4 bytes.
        padding: trailing padding octets including the final count octet, or empty.
    """

    payload_type: int
    sequence_number: int
    timestamp: int
    ssrc: int
    payload: bytes = b""
    marker: bool = False
    csrc: list[int] = field(default_factory=list)
    extension_profile: int | None = None
    extension: bytes = b""
    padding: bytes = b""

    @classmethod
    def parse(cls, data: bytes) -> Self:
        """Parse one RTP packet.

        Args:
            data: the UDP payload.

        Returns:
            The packet.

        Raises:
            RtpError: the datagram is not a valid RTP version 2 packet; the message names the
                defect ("RTP packet has truncated CSRC", ...).
        """
        length = len(data)
        if length < RTP_HEADER_LENGTH:
            raise RtpError("RTP packet length is less than 12 bytes")
        first, second, seq, ts, ssrc = _HEADER.unpack_from(data)
        if first == PLAIN_V2:  # version 2 without padding, extension or CSRC: nearly every one
            return cls(second & 0x7F, seq, ts, ssrc, data[RTP_HEADER_LENGTH:], second > 0x7F, [])
        version = first >> 6
        if version != RTP_VERSION:
            raise RtpError(f"RTP packet has invalid version {version}")
        pos = RTP_HEADER_LENGTH
        cc = first & 0x0F
        csrc: list[int] = []
        if cc:
            end = pos + 4 * cc
            if end > length:
                raise RtpError("RTP packet has truncated CSRC")
            csrc = list(struct.unpack_from(f"!{cc}I", data, pos))
            pos = end
        profile: int | None = None
        extension = b""
        if first & 0x10:
            if pos + 4 > length:
                raise RtpError("RTP packet has truncated extension profile / length")
            profile, words = _EXT_HEADER.unpack_from(data, pos)
            pos += 4
            end = pos + 4 * words
            if end > length:
                raise RtpError("RTP packet has truncated extension value")
            extension = data[pos:end]
            pos = end
        padding = b""
        if first & 0x20:
            # §5.1: the last octet of the padding counts how many padding octets (itself
            # included) to ignore; zero is not a valid count.
            pad = data[-1]
            if pad == 0 or pos + pad > length:
                raise RtpError("RTP packet padding length is invalid")
            padding = data[length - pad :]
            length -= pad
        return cls(
            payload_type=second & 0x7F,
            sequence_number=seq,
            timestamp=ts,
            ssrc=ssrc,
            payload=data[pos:length],
            marker=bool(second & 0x80),
            csrc=csrc,
            extension_profile=profile,
            extension=extension,
            padding=padding,
        )

    def __bytes__(self) -> bytes:
        """Serialize; the exact inverse of :meth:`parse`.

        Raises:
            RtpError: a field is out of range (too many CSRCs, unaligned extension, bad padding).
        """
        cc = len(self.csrc)
        if cc > MAX_CSRC_COUNT:
            raise RtpError("RTP packet has more than 15 CSRC")
        first = (RTP_VERSION << 6) | cc
        if self.padding:
            if self.padding[-1] != len(self.padding):
                raise RtpError("RTP packet padding length is invalid")
            first |= 0x20
        if self.extension_profile is not None:
            first |= 0x10
        second = (0x80 if self.marker else 0) | (self.payload_type & 0x7F)
        parts = [_HEADER.pack(first, second, self.sequence_number, self.timestamp, self.ssrc)]
        if cc:
            parts.append(struct.pack(f"!{cc}I", *self.csrc))
        if self.extension_profile is not None:
            if len(self.extension) % 4:
                raise RtpError("RTP packet extension length is not a multiple of 4")
            parts.append(_EXT_HEADER.pack(self.extension_profile, len(self.extension) // 4))
            parts.append(self.extension)
        parts.append(self.payload)
        parts.append(self.padding)
        return b"".join(parts)


def pack_rtp(
    payload_type: int, sequence_number: int, timestamp: int, ssrc: int, payload: bytes, marker: bool
) -> bytes:
    """Serialize a plain RTP packet (no CSRC, extension or padding) without building an object.

    This is the hot path for outbound audio: one ``struct.pack`` and one concatenation.
    """
    second = (0x80 if marker else 0) | (payload_type & 0x7F)
    return _HEADER.pack(0x80, second, sequence_number, timestamp, ssrc) + payload


def is_rtcp(data: bytes) -> bool:
    """Return True when a datagram looks like RTCP rather than RTP (RFC 5761 §4 demultiplexing)."""
    return len(data) >= 2 and data[1] in RTCP_PACKET_TYPES
