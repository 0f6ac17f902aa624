"""Inbound jitter/reorder buffer with loss and duplicate detection, plus packet-loss concealment.

Theory of operation
-------------------
This is a real-time bridge, not a streaming player: the agent on the other side consumes audio
as a stream and does its own buffering, so the buffer must add **no delay while packets arrive
in order**. It therefore releases packets as soon as they are contiguous and only holds back
when there is a hole in the sequence numbers. A hole is waited for until either

* packets worth more than ``depth_ms`` of audio are queued behind it, or
* the oldest packet behind it has waited ``depth_ms`` of wall time (checked by :meth:`poll`,
  which the session calls every packet time so a hole followed by silence never stalls output),
  or
* the buffer is full (``capacity`` packets, a hard bound on memory),

after which the missing packets are declared lost and emitted as concealment frames
(``lost=True``), at most ``max_conceal_frames`` of them; a longer hole is a jump, not loss.

The depth adapts within ``[min_depth_ms, max_depth_ms]`` (default 20-60 ms): it follows twice
the interarrival jitter reported by the receiver statistics (:meth:`adapt`), rounded up to a
packet time, and is raised one packet time whenever a packet arrives after its slot was already
concealed ("late"); that boost decays one packet time per ``decay_frames`` frames without a late
packet.

Packets older than the playout point are *duplicates* when they were already played, else
*late*. A new SSRC flushes what is buffered and resynchronises on the new stream instead of
concealing thousands of frames. So does a sequence jump beyond ``MAX_DROPOUT`` ahead or
``MAX_MISORDER`` behind (re-INVITE, carrier switchover, a restarted sender). Either only once
the packet after it, of its SSRC, follows (RFC 3550 §A.1: a new source's probation, with
its MIN_SEQUENTIAL of 2, and a jump's ``bad_seq``): until then the packet is held aside, and if
the stream goes on instead it was a *stray* (another stream's packet, a wild duplicate),
dropped without touching the stream; confirmed, it plays first on the new stream.
Ordering uses sequence numbers only, so timestamp jumps (silence suppression, a new timestamp
base) never count as loss. Time (``now``) is passed in by the caller, in seconds.
"""

from __future__ import annotations

import array
import math
from dataclasses import dataclass

from telepath.rtp.seq import seq_add, seq_diff

#: RFC 3550 §A.1: a jump larger than this many packets ahead starts a new stream.
MAX_DROPOUT = 3000
#: RFC 3550 §A.1: a packet this many behind is treated as from a restarted sender.
MAX_MISORDER = 100
DEFAULT_CAPACITY = 16


@dataclass(slots=True)  # not frozen: built per 20 ms frame (frozen costs 3x)
class JitterFrame:
    """One frame in playout order.

    Attributes:
        sequence_number: the RTP sequence number (of the missing packet when ``lost``).
        timestamp: the RTP timestamp (estimated from the previous frame when ``lost``).
        payload: the encoded payload; empty when ``lost``.
        lost: True for a concealment slot.
        marker: the packet's marker bit (start of talkspurt).
        payload_type: the packet's payload type (0 for a concealment slot).
    """

    sequence_number: int
    timestamp: int
    payload: bytes
    lost: bool = False
    marker: bool = False
    payload_type: int = 0


@dataclass(slots=True)
class JitterStats:
    """Counters since the buffer was created (survive resynchronisation)."""

    received: int = 0
    released: int = 0
    lost: int = 0
    late: int = 0
    duplicates: int = 0
    resyncs: int = 0
    overflows: int = 0
    strays: int = 0  # lone packets far from the stream, dropped (RFC 3550 §A.1)


class JitterBuffer:
    """Bounded reorder buffer; see the module docstring for the policy.

    Args:
        ptime_ms: packet time of the stream.
        samples_per_frame: RTP timestamp units per packet (160 for 20 ms at 8 kHz).
        min_depth_ms: the least time a hole is waited for.
        max_depth_ms: the most time a hole is waited for.
        capacity: most packets held at once.
        max_conceal_frames: most concealment frames emitted for one hole.
        decay_frames: frames without a late packet before the late boost shrinks.
    """

    def __init__(
        self,
        ptime_ms: int = 20,
        samples_per_frame: int = 160,
        min_depth_ms: int = 20,
        max_depth_ms: int = 60,
        capacity: int = DEFAULT_CAPACITY,
        max_conceal_frames: int = 5,
        decay_frames: int = 250,
    ) -> None:
        if not 0 < min_depth_ms <= max_depth_ms:
            raise ValueError("jitter buffer depth bounds are invalid")
        if capacity < 2:
            raise ValueError("jitter buffer capacity must be at least 2")
        self.ptime_ms = ptime_ms
        self.samples_per_frame = samples_per_frame
        self.min_depth_ms = min_depth_ms
        self.max_depth_ms = max_depth_ms
        self.capacity = capacity
        self.max_conceal_frames = max_conceal_frames
        self.decay_frames = decay_frames
        self.stats = JitterStats()
        self._jitter_depth_ms = 0
        self._late_boost_ms = 0
        self._frames_since_late = 0
        self._ssrc: int | None = None
        self._next_seq: int | None = None
        self._last_ts: int | None = None
        self._slots: dict[
            int, tuple[int, bytes, bool, int, float]
        ] = {}  # seq -> (ts, data, M, PT, t)
        self._played: list[int] = []  # recent released sequence numbers (real packets)
        # RFC 3550 §A.1: the packet of a new SSRC or a large jump, held until the next one
        # confirms it: (SSRC, seq, ts, data, M, PT)
        self._stray: tuple[int, int, int, bytes, bool, int] | None = None

    @property
    def depth_ms(self) -> int:
        """The current hold time for a hole, in ms (within the configured bounds)."""
        target = max(self._jitter_depth_ms, self.min_depth_ms + self._late_boost_ms)
        return min(self.max_depth_ms, target)

    def __len__(self) -> int:
        return len(self._slots)

    def adapt(self, jitter_ms: float) -> None:
        """Feed the measured interarrival jitter (RFC 3550 §6.4.1) to size the depth."""
        frames = math.ceil(2 * jitter_ms / self.ptime_ms)
        self._jitter_depth_ms = frames * self.ptime_ms

    def push(
        self,
        ssrc: int,
        sequence_number: int,
        timestamp: int,
        payload: bytes,
        now: float,
        marker: bool = False,
        payload_type: int = 0,
    ) -> list[JitterFrame]:
        """Add a received packet; return the frames that became playable, in order.

        Telephone-event packets share the audio stream's sequence space (RFC 4733 §2.1), so
        they are pushed here too (to keep their slots) and skipped by the caller on release.
        """
        self.stats.received += 1
        out: list[JitterFrame] = []
        if self._ssrc != ssrc:
            if self._ssrc is None:  # the first packet
                self._reset(ssrc, sequence_number)
            else:  # another source: on probation (RFC 3550 §A.1)
                restarted = self._restart(
                    ssrc, sequence_number, timestamp, payload, marker, payload_type
                )
                if restarted is None:
                    return out
                out = restarted
        assert self._next_seq is not None
        delta = seq_diff(sequence_number, self._next_seq)
        if delta < 0 and -delta <= MAX_MISORDER:
            if sequence_number in self._played:
                self.stats.duplicates += 1
            else:
                self.stats.late += 1
                self._late_boost_ms = min(
                    self._late_boost_ms + self.ptime_ms, self.max_depth_ms - self.min_depth_ms
                )
                self._frames_since_late = 0
            return out
        if delta < 0 or delta > MAX_DROPOUT:
            # RFC 3550 §A.1: a very large jump is a restarted sender only if the next packet
            # follows it; a lone one is dropped (it resynchronised us onto a stray packet).
            restarted = self._restart(
                ssrc, sequence_number, timestamp, payload, marker, payload_type
            )
            if restarted is None:
                return out
            out += restarted
            delta = 0
        if not delta and not self._slots:  # the expected packet, nothing waiting: play it
            out.append(self._played_now(sequence_number, timestamp, payload, marker, payload_type))
            return out
        if sequence_number in self._slots:
            self.stats.duplicates += 1
            return out
        self._slots[sequence_number] = (timestamp, payload, marker, payload_type, now)
        out += self._release(now)
        return out

    def take_next(self, ssrc: int, sequence_number: int, timestamp: int) -> bool:
        """The common case of :meth:`push` without its objects: if this is the packet expected
        next from the current source and nothing is waiting, count it as received and played
        and return True (the caller plays its payload now); otherwise change nothing and return
        False (the caller pushes it)."""
        if sequence_number != self._next_seq or ssrc != self._ssrc or self._slots:
            return False
        self.stats.received += 1
        self._advance(sequence_number, timestamp)
        return True

    def poll(self, now: float) -> list[JitterFrame]:
        """Release frames whose hole has been waited for long enough (call once per ptime)."""
        return self._release(now) if self._slots else []

    def flush(self) -> list[JitterFrame]:
        """Release everything buffered in order, without concealing holes between packets."""
        out: list[JitterFrame] = []
        if self._next_seq is None:
            return out
        base = self._next_seq
        for seq in sorted(self._slots, key=lambda s: seq_diff(s, base)):
            out.append(self._emit(seq))
        self._slots.clear()
        return out

    def _restart(
        self, ssrc: int, seq: int, ts: int, payload: bytes, marker: bool, pt: int
    ) -> list[JitterFrame] | None:
        """A packet that does not continue the stream (another SSRC, a large jump) starts a new
        one only when it follows the packet held aside, of its SSRC: MIN_SEQUENTIAL (2) in a
        row (RFC 3550 §A.1). Otherwise it is held aside in the last one's place (a stray until
        then), and None returned. Confirmed: what was buffered and the held packet, in order,
        and the buffer expects this one."""
        stray = self._stray
        if stray is None or stray[0] != ssrc or seq != (stray[1] + 1) & 0xFFFF:
            self._stray = (ssrc, seq, ts, payload, marker, pt)
            self.stats.strays += 1
            return None
        self.stats.strays -= 1  # it was the new stream's first packet after all
        out = self.flush()
        self.stats.resyncs += 1
        self._reset(ssrc, stray[1])
        out.append(self._played_now(*stray[1:]))
        return out

    def _reset(self, ssrc: int, sequence_number: int) -> None:
        self._ssrc = ssrc
        self._next_seq = sequence_number
        self._last_ts = None
        self._slots.clear()
        self._played.clear()
        self._stray = None

    def _emit(self, seq: int) -> JitterFrame:
        ts, payload, marker, pt, _ = self._slots.pop(seq)
        return self._played_now(seq, ts, payload, marker, pt)

    def _played_now(self, seq: int, ts: int, payload: bytes, marker: bool, pt: int) -> JitterFrame:
        self._advance(seq, ts)
        return JitterFrame(seq, ts, payload, False, marker, pt)

    def _advance(self, seq: int, ts: int) -> None:
        self._next_seq = (seq + 1) & 0xFFFF  # seq_add(seq, 1), inline: once per packet
        self._last_ts = ts
        self._played.append(seq)
        if len(self._played) > 2 * MAX_MISORDER:
            del self._played[:MAX_MISORDER]
        self.stats.released += 1
        self._frames_since_late += 1
        if self._late_boost_ms and self._frames_since_late >= self.decay_frames:
            self._late_boost_ms -= self.ptime_ms
            self._frames_since_late = 0

    def _release(self, now: float) -> list[JitterFrame]:
        out: list[JitterFrame] = []
        slots = self._slots
        while slots:
            assert self._next_seq is not None
            if self._next_seq in slots:
                out.append(self._emit(self._next_seq))
                continue
            # A hole at _next_seq: decide whether to stop waiting for it.
            base = self._next_seq
            first = min(slots, key=lambda s: seq_diff(s, base))
            newest = max(slots, key=lambda s: seq_diff(s, base))
            depth = self.depth_ms
            queued_ms = seq_diff(newest, base) * self.ptime_ms
            waited_ms = (now - slots[first][4]) * 1000
            full = len(slots) >= self.capacity
            if not (full or queued_ms > depth or waited_ms >= depth):
                break
            if full:
                self.stats.overflows += 1
            missing = seq_diff(first, base)
            self.stats.lost += missing
            ts = self._last_ts
            for i in range(min(missing, self.max_conceal_frames)):
                seq = seq_add(base, i)
                est = (ts + (i + 1) * self.samples_per_frame) & 0xFFFFFFFF if ts is not None else 0
                out.append(JitterFrame(seq, est, b"", lost=True))
            self._next_seq = first
        return out


class Concealer:
    """Packet-loss concealment for PCM16 frames: repeat the last good frame, fading out.

    The first lost frame repeats the last good one at half level, each further one halves again,
    and from the fourth on the output is silence (a simplified form of ITU-T G.711 Appendix I's
    attenuation, without pitch-period repetition). A concealment frame is as long as the last
    good one: the peer's packet time, which need not be ours (RFC 4566 §6 a=ptime:30 is 240
    samples a packet at 8 kHz); ``frame_bytes`` only sizes the silence before any good frame.
    """

    def __init__(self, frame_bytes: int) -> None:
        self._last = b"\x00" * frame_bytes
        self._run = 0

    def good(self, pcm: bytes) -> bytes:
        """Record a correctly received frame and return it unchanged."""
        self._last = pcm
        self._run = 0
        return pcm

    def conceal(self) -> bytes:
        """Return a concealment frame for one lost packet."""
        self._run += 1
        last = self._last
        if self._run > 3 or len(last) % 2:
            return bytes(len(last))
        samples = array.array("h")
        samples.frombytes(last)
        shift = self._run
        return array.array("h", [s >> shift for s in samples]).tobytes()
