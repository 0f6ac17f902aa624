"""RFC 4733 telephone-events (DTMF over RTP): decode received events and encode events to send.

Payload (RFC 4733 §2.3): ``event(8) | E(1) R(1) volume(6) | duration(16)``. One event is one
RTP timestamp (the event's start, §2.5.1.2); update packets repeat that timestamp with a growing
duration; the end packet sets E and is retransmitted, normally three times (§2.5.1.4).

The decoder reports each key press exactly once, when it ends: the first E packet for an event
timestamp ends it, and further E packets with that timestamp are counted as retransmissions and
ignored (§2.5.2.2). When the end packets are all lost, the press is still reported once: when a
new event timestamp starts, or when the caller tells the decoder the stream went quiet
(:meth:`DtmfDecoder.expire`).

A press longer than the 16-bit duration field holds (0xFFFF units, 8.19 s at 8 kHz) is sent in
segments (§2.5.1.3): the sender reports duration 0xFFFF, then goes on with the same event code
at timestamp previous + 0xFFFF, its duration counting from zero again. The decoder joins them
into one press that started at the first segment's timestamp.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import StrEnum

from telepath.rtp.errors import RtpError
from telepath.rtp.seq import ts_add

TELEPHONE_EVENT_CLOCK_RATE = 8000
MAX_VOLUME = 63
MAX_DURATION = 0xFFFF
#: RFC 4733 §2.5.1.4: the final packet is sent three times.
END_RETRANSMISSIONS = 3

_PAYLOAD = struct.Struct("!BBH")


class DtmfKey(StrEnum):
    """The 16 DTMF keys; the event code is the index (RFC 4733 §3.2, Table 3)."""

    D0 = "0"
    D1 = "1"
    D2 = "2"
    D3 = "3"
    D4 = "4"
    D5 = "5"
    D6 = "6"
    D7 = "7"
    D8 = "8"
    D9 = "9"
    STAR = "*"
    POUND = "#"
    A = "A"
    B = "B"
    C = "C"
    D = "D"


_KEYS = list(DtmfKey)
_CODES = {key: code for code, key in enumerate(_KEYS)}


def key_for_event(code: int) -> DtmfKey | None:
    """Return the DTMF key for event code 0-15, None for any other event."""
    return _KEYS[code] if 0 <= code < len(_KEYS) else None


def event_for_key(key: str) -> int:
    """Return the RFC 4733 event code for a DTMF key ("0"-"9", "*", "#", "A"-"D").

    Raises:
        ValueError: ``key`` is not a DTMF key.
    """
    return _CODES[DtmfKey(key.upper())]


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """One decoded telephone-event payload block.

    Attributes:
        event: the event code (0-15 for DTMF).
        end: the E bit.
        volume: power level in -dBm0 (0 loudest, 63 quietest).
        duration: in timestamp units (8 kHz: 160 per 20 ms).
    """

    event: int
    end: bool
    volume: int
    duration: int

    @classmethod
    def parse(cls, payload: bytes) -> TelephoneEvent:
        """Parse the first 4-byte block of a telephone-event payload.

        Raises:
            RtpError: the payload is shorter than 4 bytes.
        """
        if len(payload) < 4:
            raise RtpError("RTP telephone-event payload is shorter than 4 bytes")
        event, flags, duration = _PAYLOAD.unpack_from(payload)
        return cls(event, bool(flags & 0x80), flags & 0x3F, duration)

    def __bytes__(self) -> bytes:
        """Serialize to 4 bytes (the R bit is sent as zero, §2.3.3)."""
        if not 0 <= self.volume <= MAX_VOLUME:
            raise RtpError("RTP telephone-event volume is out of range")
        flags = (0x80 if self.end else 0) | self.volume
        return _PAYLOAD.pack(self.event, flags, min(self.duration, MAX_DURATION))


@dataclass(frozen=True, slots=True)
class DtmfDigit:
    """A completed key press.

    Attributes:
        key: the key.
        timestamp: the RTP timestamp of the event's start.
        duration_ms: how long it was held.
        volume: power level in -dBm0 of the last packet seen.
        ended_cleanly: False when no end packet arrived (the press was inferred).
    """

    key: DtmfKey
    timestamp: int
    duration_ms: float
    volume: int
    ended_cleanly: bool


class DtmfDecoder:
    """Turns received telephone-event packets into key presses, each reported exactly once.

    Args:
        clock_rate: the telephone-event RTP clock rate from SDP (8000 unless ``rate=`` says).
    """

    def __init__(self, clock_rate: int = TELEPHONE_EVENT_CLOCK_RATE) -> None:
        self._clock_rate = clock_rate
        self._current: tuple[int, TelephoneEvent] | None = None  # (timestamp, latest block)
        self._start = 0  # the current press's first timestamp (its first segment's, §2.5.1.3)
        self._carried = 0  # the current press's earlier segments, in timestamp units
        self._finished: list[int] = []  # recent event timestamps already reported
        self.retransmissions = 0
        self.ignored = 0

    def feed(self, timestamp: int, payload: bytes) -> list[DtmfDigit]:
        """Process one telephone-event RTP packet.

        Args:
            timestamp: the packet's RTP timestamp (the start of the event, or of its segment:
                §2.5.1.3).
            payload: the RTP payload.

        Returns:
            Key presses completed by this packet (zero, one, or two when a new event supersedes
            one whose end packets were all lost).

        Raises:
            RtpError: the payload is malformed.
        """
        block = TelephoneEvent.parse(payload)
        if timestamp in self._finished:
            self.retransmissions += 1
            return []
        out: list[DtmfDigit] = []
        current = self._current
        if current is not None and current[0] != timestamp:
            if block.event == current[1].event and timestamp == ts_add(current[0], MAX_DURATION):
                # §2.5.1.3: the same press goes on in a new segment. Its timestamp alone proves
                # the previous one spanned 0xFFFF units, so that packet may have been lost.
                self._remember(current[0])  # a late packet of it is no new press
                self._carried += MAX_DURATION
                self._current = (timestamp, block)  # durations count from zero again
                return self._finish(clean=True) if block.end else []
            out.extend(self._finish(clean=False))
        if key_for_event(block.event) is None:
            self.ignored += 1
            return out
        current = self._current
        if current is None:
            self._start, self._carried = timestamp, 0
            self._current = (timestamp, block)
        elif block.duration >= current[1].duration:
            self._current = (timestamp, block)
        if block.end:
            out.extend(self._finish(clean=True))
        return out

    def expire(self) -> list[DtmfDigit]:
        """Report an event still in progress as ended (call when telephone-events stop arriving
        for longer than a few packet times without an end packet)."""
        return self._finish(clean=False) if self._current is not None else []

    @property
    def active(self) -> DtmfKey | None:
        """The key currently held down, if any (lets callers react to a press early)."""
        return key_for_event(self._current[1].event) if self._current is not None else None

    def _finish(self, clean: bool) -> list[DtmfDigit]:
        assert self._current is not None
        timestamp, block = self._current
        self._current = None
        self._remember(timestamp)
        key = key_for_event(block.event)
        assert key is not None
        duration_ms = (self._carried + block.duration) * 1000 / self._clock_rate
        return [DtmfDigit(key, self._start, duration_ms, block.volume, clean)]

    def _remember(self, timestamp: int) -> None:
        """Ignore further packets at ``timestamp``: its event (or segment) is over."""
        self._finished.append(timestamp)
        del self._finished[:-8]


@dataclass(frozen=True, slots=True)
class DtmfPacket:
    """One telephone-event RTP packet to send.

    Attributes:
        payload: the 4-byte payload.
        marker: True on the first packet of the event (§2.5.1.2).
        end: True on the final packet and its retransmissions.
    """

    payload: bytes
    marker: bool
    end: bool


def encode_dtmf(
    key: str,
    duration_ms: int = 100,
    *,
    ptime_ms: int = 20,
    volume: int = 10,
    clock_rate: int = TELEPHONE_EVENT_CLOCK_RATE,
) -> list[DtmfPacket]:
    """Build the packets for one key press, one per ``ptime_ms``, all sharing one RTP timestamp.

    The sender puts every packet at the event's start timestamp, one packet per ptime, and
    after the final (E) packet sends it ``END_RETRANSMISSIONS - 1`` more times (§2.5.1.4). The
    duration is capped at 0xFFFF units (8.19 s at 8 kHz); longer presses are not needed here.

    Args:
        key: "0"-"9", "*", "#", "A"-"D".
        duration_ms: how long the key is held (at least one ptime).
        ptime_ms: packet interval.
        volume: -dBm0 (RFC 4733 §2.5.1.2 suggests reporting the real level; 10 is typical).
        clock_rate: the negotiated telephone-event clock rate.

    Raises:
        ValueError: ``key`` is not a DTMF key or a value is out of range.
    """
    if duration_ms < ptime_ms or ptime_ms <= 0:
        raise ValueError("DTMF duration must be at least one packet time")
    if not 0 <= volume <= MAX_VOLUME:
        raise ValueError("DTMF volume must be 0-63")
    event = event_for_key(key)
    step = clock_rate * ptime_ms // 1000
    total = min(clock_rate * duration_ms // 1000, MAX_DURATION)
    packets: list[DtmfPacket] = []
    elapsed = step
    while elapsed < total:
        block = TelephoneEvent(event, False, volume, elapsed)
        packets.append(DtmfPacket(bytes(block), marker=not packets, end=False))
        elapsed += step
    final = bytes(TelephoneEvent(event, True, volume, total))
    for i in range(END_RETRANSMISSIONS):
        packets.append(DtmfPacket(final, marker=not packets and i == 0, end=True))
    return packets
