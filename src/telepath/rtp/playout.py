"""Outbound playout state: the agent-audio queue, marks, barge-in flush and DTMF interleaving.

Pure and synchronous: the media session calls :meth:`Playout.next_frame` once per packet time
from its deadline-paced clock and sends what it returns. Keeping the state here means every
rule below is unit-tested without sockets or sleeps.

* Audio is queued already encoded in the call's codec (pass-through for an agent that speaks
  μ-law: zero transcoding), or as PCM16 that is resampled and encoded on entry.
* When the queue is empty a silence frame is sent, so carriers never see the stream stop. The
  timestamp advances by one frame per tick whatever is sent, held or not (RFC 3550 §5.1: it
  follows the sampling clock), so it stays continuous across silence, DTMF and hold.
* The RTP marker bit (RFC 3551 §4.1: the first packet of a talkspurt, "the first packet after
  a silence period during which packets have not been transmitted contiguously"): the first
  audio-codec packet sent after packet times in which none was (hold, a sender stall, a key
  press's telephone-event packets) carries it, whatever it holds — silence too: it is the
  packet whose timestamp jumps, where a receiver may adjust its playout delay. No other packet
  does: the silence between the agent's turns is sent packet for packet, so the agent's speech
  after it starts no talkspurt in RTP's sense ("Applications without silence suppression MUST
  set the marker bit to zero", §4.1). The stream's first packet is not marked unless packet
  times went unsent before it (no address to send to yet). Telephone-event packets follow
  RFC 4733's own rule (the event's first packet, §2.5.1.2).
* :meth:`Playout.flush` empties the queue at once (barge-in) and reports how much of the
  agent's audio was really played since the previous flush, in ms, so the agent can truncate
  its transcript. Marks still ahead of the playout point are returned as cleared.
* :meth:`Playout.mark` places a named mark at the current end of the queue; ``next_frame``
  returns it once the frame containing that point has been sent.
* :meth:`Playout.send_dtmf` interleaves RFC 4733 packets: agent audio pauses (it is not lost)
  while the event's packets go out, then resumes with the marker bit set.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace

from telepath.errors import TelepathError
from telepath.rtp.codecs import FrameCodec
from telepath.rtp.dtmf import DtmfPacket, encode_dtmf
from telepath.rtp.resample import Resampler
from telepath.rtp.seq import ts_add

#: Bound on queued agent audio (a runaway producer cannot grow memory without limit).
MAX_QUEUED_MS = 120_000
#: Bounds on the agent's marks waiting for playout to reach them, for the same reason: their
#: number (more than one per 20 ms frame of MAX_QUEUED_MS, so an agent marking every audio
#: message stays far below it) and the characters of their names (a name may be as long as a
#: WebSocket message, 16 MiB).
MAX_QUEUED_MARKS = 10_000
MAX_QUEUED_MARK_CHARS = 1 << 20


class PlayoutOverflow(TelepathError):
    """More agent audio was queued than :data:`MAX_QUEUED_MS` allows, or more marks than
    :data:`MAX_QUEUED_MARKS` / :data:`MAX_QUEUED_MARK_CHARS`."""


@dataclass(slots=True)  # not frozen: built per 20 ms frame (frozen costs 3x)
class OutboundFrame:
    """One RTP packet's worth of outbound media.

    Attributes:
        payload_type: RTP payload type (the codec's, or telephone-event's).
        payload: encoded payload.
        marker: the RTP marker bit.
        timestamp: RTP timestamp.
        agent_audio: True when the payload is (at least partly) agent audio, not filler.
    """

    payload_type: int
    payload: bytes
    marker: bool
    timestamp: int
    agent_audio: bool


class Playout:
    """Per-call outbound queue.

    Args:
        codec: the negotiated codec (its encoder state is used for PCM input and silence).
        ptime_ms: packet time.
        initial_timestamp: first RTP timestamp (random per RFC 3550 §5.1).
        dtmf_payload_type: negotiated telephone-event payload type, None if not negotiated.
    """

    def __init__(
        self,
        codec: FrameCodec,
        ptime_ms: int,
        initial_timestamp: int,
        dtmf_payload_type: int | None = None,
    ) -> None:
        self._codec = codec
        self.ptime_ms = ptime_ms
        self.dtmf_payload_type = dtmf_payload_type
        self.frame_bytes = codec.spec.payload_bytes(ptime_ms)
        self.samples_per_frame = codec.spec.clock_rate * ptime_ms // 1000
        self._bytes_per_ms = self.frame_bytes / ptime_ms
        self._max_bytes = int(MAX_QUEUED_MS * self._bytes_per_ms)
        self._timestamp = initial_timestamp
        self._queue = bytearray()
        self._queued_total = 0  # bytes ever enqueued (absolute offsets for marks)
        self._sent_total = 0  # bytes ever consumed
        self._marks: deque[tuple[int, str, bool]] = deque()  # (offset, name, bounded)
        self._bounded_marks = 0  # of ``_marks``, those under the bounds
        self._bounded_chars = 0  # and their names' characters
        self.skipped_bytes = 0  # agent audio dropped because the sender stalled
        self._played_since_flush = 0
        self._played_total = 0
        # Packet times passed without an audio-codec packet (hold, stall, a key press): the
        # next one sent, silence or not, is the first after a gap in transmission and the only
        # kind that carries the marker (RFC 3551 §4.1).
        self._gap = False
        self._dtmf: deque[DtmfPacket] = deque()
        self._dtmf_started = False  # the press's start is set: its first packet was skipped
        self._dtmf_timestamp = 0
        self._resamplers: dict[int, Resampler] = {}
        self._odd_sample = b""

    @property
    def queued_ms(self) -> float:
        """Agent audio waiting to be played, in ms."""
        return len(self._queue) / self._bytes_per_ms

    @property
    def played_ms(self) -> float:
        """Agent audio played since the session started, in ms.

        Audio a sender stall dropped (:meth:`skip_frame`) counts as played, as in
        :meth:`flush`: its time has passed, so it is behind the caller like audio sent. The
        bridges' barge-in cut is read from this total (``MediaStats.audio_played_ms``, its only
        reader, through ``Call.playout_ms``); without the dropped audio every cut after a stall
        fell that much short. The call's turn timing counts it as heard too: it works from what
        is still queued."""
        return self._played_total / self._bytes_per_ms

    @property
    def timestamp(self) -> int:
        """The RTP timestamp the next frame will carry."""
        return self._timestamp

    def enqueue(self, payload: bytes) -> None:
        """Queue audio already encoded in the call's codec (any length).

        Raises:
            PlayoutOverflow: the queue would exceed :data:`MAX_QUEUED_MS`.
        """
        if len(self._queue) + len(payload) > self._max_bytes:
            raise PlayoutOverflow("outbound audio queue is full")
        self._queue += payload
        self._queued_total += len(payload)

    def enqueue_pcm(self, pcm: bytes, sample_rate: int) -> None:
        """Queue PCM16 audio, resampling to the codec's rate (8/16/24 kHz in) and encoding it.

        Raises:
            PlayoutOverflow: the queue would exceed :data:`MAX_QUEUED_MS`.
            ValueError: unsupported sample rate or odd byte length.
        """
        if len(pcm) % 2:
            raise ValueError("PCM16 data has an odd number of bytes")
        target = self._codec.spec.sample_rate
        if sample_rate != target:
            resampler = self._resamplers.get(sample_rate)
            if resampler is None:
                resampler = self._resamplers[sample_rate] = Resampler(sample_rate, target)
            pcm = resampler.process(pcm)
        if self._codec.spec.name == "G722":
            # G.722 packs two samples per byte: carry an odd trailing sample to the next call.
            pcm = self._odd_sample + pcm
            cut = len(pcm) - len(pcm) % 4
            pcm, self._odd_sample = pcm[:cut], pcm[cut:]
        self.enqueue(self._codec.encode(pcm))

    def mark(self, name: str, *, bounded: bool = True) -> None:
        """Place a mark at the current end of the queued audio.

        Args:
            bounded: False for a mark of call control's own (one per transfer), which the
                agent's cannot crowd out.

        Raises:
            PlayoutOverflow: ``bounded`` and more than :data:`MAX_QUEUED_MARKS` marks, or
                :data:`MAX_QUEUED_MARK_CHARS` of their names, would wait.
        """
        if bounded:
            if (
                self._bounded_marks >= MAX_QUEUED_MARKS
                or self._bounded_chars + len(name) > MAX_QUEUED_MARK_CHARS
            ):
                raise PlayoutOverflow("outbound mark queue is full")
            self._bounded_marks += 1
            self._bounded_chars += len(name)
        self._marks.append((self._queued_total, name, bounded))

    def flush(self) -> tuple[float, list[str]]:
        """Discard queued audio now (barge-in).

        Returns:
            ``(played_ms, cleared_marks)``: agent audio actually sent since the previous flush,
            and the names of marks that will now never be reached.
        """
        played = self._played_since_flush / self._bytes_per_ms
        self._played_since_flush = 0
        self._queue.clear()
        self._queued_total = self._sent_total
        self._odd_sample = b""
        for resampler_rate in list(self._resamplers):
            self._resamplers[resampler_rate] = Resampler(
                resampler_rate, self._codec.spec.sample_rate
            )
        cleared = [name for _, name, _ in self._marks]
        self._marks.clear()
        self._bounded_marks = self._bounded_chars = 0
        return played, cleared

    def set_dtmf_payload_type(self, payload_type: int | None) -> None:
        """A re-offer's telephone-event payload type; None (no longer offered) drops the
        press being sent."""
        self.dtmf_payload_type = payload_type
        if payload_type is None and self._dtmf:  # a press cut short: the audio resumes
            self._dtmf.clear()
            self._dtmf_started = False
            self._gap = True

    def send_dtmf(self, key: str, duration_ms: int = 100, volume: int = 10) -> None:
        """Queue an RFC 4733 key press; it starts on the next frame.

        Raises:
            RuntimeError: telephone-event was not negotiated.
            ValueError: ``key`` is not a DTMF key, or the duration is shorter than a ptime.
        """
        if self.dtmf_payload_type is None:
            raise RuntimeError("telephone-event was not negotiated for this call")
        self._dtmf.extend(encode_dtmf(key, duration_ms, ptime_ms=self.ptime_ms, volume=volume))

    def next_frame(self, send: bool = True) -> tuple[OutboundFrame | None, list[str]]:
        """Produce the frame for this packet time.

        Args:
            send: False while on hold: the clock advances but nothing is sent or consumed.

        Returns:
            ``(frame, reached_marks)``; ``frame`` is None when ``send`` is False.
        """
        timestamp = self._timestamp
        self._timestamp = ts_add(timestamp, self.samples_per_frame)
        if not send:
            self._gap = True
            return None, []
        if self._dtmf:
            assert self.dtmf_payload_type is not None
            packet = self._dtmf.popleft()
            if packet.marker and not self._dtmf_started:
                self._dtmf_timestamp = timestamp
            self._dtmf_started = False
            self._gap = True  # the audio stream paused for the press
            return (
                OutboundFrame(
                    self.dtmf_payload_type,
                    packet.payload,
                    packet.marker,
                    self._dtmf_timestamp,
                    False,
                ),
                [],
            )
        marker = self._gap  # the first packet after a gap, silence or agent audio alike
        self._gap = False
        if not self._queue:
            return (
                OutboundFrame(
                    self._codec.spec.payload_type,
                    self._codec.silence(self.frame_bytes),
                    marker,
                    timestamp,
                    False,
                ),
                self._reached(),
            )
        size = self.frame_bytes
        payload = bytes(self._queue[:size])
        del self._queue[:size]
        self._sent_total += len(payload)
        self._played_since_flush += len(payload)
        self._played_total += len(payload)
        if len(payload) < size:
            payload += self._codec.silence(size - len(payload))
        frame = OutboundFrame(self._codec.spec.payload_type, payload, marker, timestamp, True)
        return frame, self._reached()

    def skip_frame(self) -> list[str]:
        """A packet time that passed without a send (the sender stalled): advance the clock and
        drop the audio that should have played in it, so agent audio stays on real time instead
        of being delayed by every stall. Counts as played for barge-in truncation (the caller
        will never hear it). Returns the marks passed."""
        timestamp = self._timestamp
        self._timestamp = ts_add(timestamp, self.samples_per_frame)
        self._gap = True
        if self._dtmf:
            packet = self._dtmf.popleft()
            if packet.marker:
                # The press began in this packet time (RFC 4733 §2.5.1.2: every packet of an
                # event carries its start); the first one sent gets the marker, and keeps
                # this start (its duration counts from it).
                self._dtmf_timestamp = timestamp
                if self._dtmf and not self._dtmf[0].marker:
                    self._dtmf[0] = replace(self._dtmf[0], marker=True)
                    self._dtmf_started = True
            return []
        dropped = min(len(self._queue), self.frame_bytes)
        del self._queue[:dropped]
        self._sent_total += dropped
        self._played_since_flush += dropped
        self._played_total += dropped
        self.skipped_bytes += dropped
        return self._reached()

    def _reached(self) -> list[str]:
        reached: list[str] = []
        while self._marks and self._marks[0][0] <= self._sent_total:
            _, name, bounded = self._marks.popleft()
            if bounded:
                self._bounded_marks -= 1
                self._bounded_chars -= len(name)
            reached.append(name)
        return reached
