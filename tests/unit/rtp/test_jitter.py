from __future__ import annotations

import pytest

from telepath.rtp.jitter import Concealer, JitterBuffer, JitterFrame

pytestmark = pytest.mark.unit

SSRC = 0x1234


def payload(seq: int) -> bytes:
    return seq.to_bytes(2, "big")


class Feeder:
    """Pushes packets with a manual clock (seconds) and records what is released."""

    def __init__(self, buffer: JitterBuffer, ssrc: int = SSRC) -> None:
        self.buffer = buffer
        self.ssrc = ssrc
        self.now = 0.0

    def push(self, seq: int, ts: int | None = None) -> list[JitterFrame]:
        ts = seq * 160 if ts is None else ts
        return self.buffer.push(self.ssrc, seq & 0xFFFF, ts & 0xFFFFFFFF, payload(seq), self.now)

    def seqs(self, frames: list[JitterFrame]) -> list[tuple[int, bool]]:
        return [(f.sequence_number, f.lost) for f in frames]


def test_in_order_packets_are_released_immediately() -> None:
    feed = Feeder(JitterBuffer())
    for seq in range(10, 15):
        assert feed.seqs(feed.push(seq)) == [(seq, False)]
    assert len(feed.buffer) == 0
    assert feed.buffer.depth_ms == 20  # default: one packet time


def test_released_frames_keep_marker_and_payload_type_in_order_and_after_a_hole() -> None:
    buffer = JitterBuffer()
    (first,) = buffer.push(SSRC, 1, 160, b"a", 0.0, True, 0)  # in order: released at once
    assert (first.sequence_number, first.payload, first.marker, first.payload_type) == (
        1,
        b"a",
        True,
        0,
    )
    assert buffer.push(SSRC, 3, 480, b"c", 0.0, False, 101) == []  # waits for 2
    frames = buffer.push(SSRC, 2, 320, b"b", 0.0, True, 0)
    assert [(f.sequence_number, f.marker, f.payload_type) for f in frames] == [
        (2, True, 0),
        (3, False, 101),
    ]
    assert buffer.stats.released == 3


def test_one_packet_reorder_is_repaired_without_loss() -> None:
    feed = Feeder(JitterBuffer())
    feed.push(1)
    assert feed.push(3) == []  # hole at 2: held (20 ms of audio queued, not > 20)
    assert feed.seqs(feed.push(2)) == [(2, False), (3, False)]
    assert feed.buffer.stats.lost == 0


def test_hole_is_declared_lost_when_queued_audio_exceeds_depth() -> None:
    feed = Feeder(JitterBuffer())
    feed.push(1)
    feed.push(3)
    frames = feed.push(4)  # 40 ms queued behind the hole > 20 ms depth
    assert feed.seqs(frames) == [(2, True), (3, False), (4, False)]
    assert frames[0].timestamp == 2 * 160  # estimated from the previous frame
    assert feed.buffer.stats.lost == 1
    # The missing packet turns up after its slot was concealed: late, and depth grows.
    assert feed.push(2) == []
    assert feed.buffer.stats.late == 1
    assert feed.buffer.depth_ms == 40


def test_poll_releases_after_wall_time_depth_so_silence_never_stalls() -> None:
    feed = Feeder(JitterBuffer())
    feed.push(1)
    feed.push(3)
    feed.now = 0.019
    assert feed.buffer.poll(feed.now) == []
    feed.now = 0.020
    assert feed.seqs(feed.buffer.poll(feed.now)) == [(2, True), (3, False)]


def test_duplicates_are_counted_and_dropped() -> None:
    feed = Feeder(JitterBuffer())
    feed.push(1)
    assert feed.push(1) == []  # already played
    feed.push(3)
    assert feed.push(3) == []  # already buffered
    assert feed.buffer.stats.duplicates == 2
    assert feed.buffer.stats.late == 0


def test_sequence_wrap_is_seamless() -> None:
    feed = Feeder(JitterBuffer())
    out = []
    for seq in (65534, 65535, 1, 0, 2):
        out += feed.push(seq)
    assert feed.seqs(out) == [(65534, False), (65535, False), (0, False), (1, False), (2, False)]


def test_ssrc_change_flushes_and_resynchronises() -> None:
    # RFC 3550 §A.1 (MIN_SEQUENTIAL = 2): once its second packet follows the first.
    buffer = JitterBuffer()
    feed = Feeder(buffer)
    feed.push(100)
    feed.push(102)  # held behind a hole
    other = Feeder(buffer, ssrc=0x9999)
    assert other.push(5000, ts=7) == []  # on probation: held aside
    frames = other.push(5001, ts=167)
    assert feed.seqs(frames) == [(102, False), (5000, False), (5001, False)]
    assert (buffer.stats.resyncs, buffer.stats.strays, buffer.stats.lost) == (1, 0, 0)


def test_one_packet_of_another_ssrc_is_a_stray_not_a_new_stream() -> None:
    """RFC 3550 §A.1: a new source is on probation until MIN_SEQUENTIAL (2) packets of it
    follow each other. One packet with another SSRC (a stray of another stream, RTCP read as
    RTP) flushed the buffer — a hole's packets played without waiting for it — and restarted
    it on itself; the stream's next packet then restarted it again."""
    buffer = JitterBuffer()
    feed, other = Feeder(buffer), Feeder(buffer, ssrc=0x9999)
    out = feed.push(100) + feed.push(102)  # 102 waits for 101
    assert other.push(5000) == []
    out += feed.push(101) + feed.push(103)
    assert feed.seqs(out) == [(100, False), (101, False), (102, False), (103, False)]
    assert (buffer.stats.resyncs, buffer.stats.strays, buffer.stats.lost) == (0, 1, 0)
    # nor does a packet of the current stream confirm another SSRC's held packet
    assert other.push(7000) == []
    assert feed.seqs(feed.push(104)) == [(104, False)]
    assert Feeder(buffer, ssrc=0x7777).push(7001) == []
    assert (buffer.stats.resyncs, buffer.stats.strays) == (0, 3)


def test_sequence_jump_resynchronises_instead_of_concealing() -> None:
    # RFC 3550 §A.1: the jump is a new stream once the next packet follows it (then both
    # play); until then the first packet is held aside.
    feed = Feeder(JitterBuffer())
    feed.push(10)
    assert feed.push(20000) == []
    assert feed.seqs(feed.push(20001)) == [(20000, False), (20001, False)]
    assert feed.seqs(feed.push(20002)) == [(20002, False)]
    assert feed.buffer.stats.resyncs == 1
    assert feed.buffer.stats.lost == 0
    # A restarted sender far behind is also a new stream, not "late".
    assert feed.push(500) == []
    assert feed.seqs(feed.push(501)) == [(500, False), (501, False)]
    assert feed.buffer.stats.resyncs == 2
    assert (feed.buffer.stats.late, feed.buffer.stats.strays) == (0, 0)


@pytest.mark.parametrize("stray_offset", [-200, -101, 3500, 20000])
def test_one_stray_packet_far_away_is_dropped_not_a_resync(stray_offset: int) -> None:
    # RFC 3550 §A.1 (bad_seq): one packet 101-3000+ away from a perfect stream is dropped. It
    # resynchronised the buffer on itself: the stream's next packet was then a hole of 200,
    # waited for at full depth, 5 frames concealed and 200 counted lost.
    feed = Feeder(JitterBuffer())
    out: list[JitterFrame] = []
    for i in range(500):
        seq = (65100 + i) & 0xFFFF
        out += feed.push(seq, ts=i * 160)
        if seq == 65400:
            assert feed.push((seq + stray_offset) & 0xFFFF, ts=12345678) == []
    assert feed.seqs(out) == [((65100 + i) & 0xFFFF, False) for i in range(500)]
    stats = feed.buffer.stats
    assert (stats.lost, stats.resyncs, stats.late, stats.strays) == (0, 0, 0, 1)
    assert len(feed.buffer) == 0


def test_a_held_stray_is_replaced_by_the_next_one() -> None:
    feed = Feeder(JitterBuffer())
    feed.push(100)
    assert feed.push(30000) == []
    assert feed.seqs(feed.push(101)) == [(101, False)]
    assert feed.push(40000) == []
    assert feed.push(30001) == []  # 30000 is no longer the one held aside: held in its place
    assert feed.seqs(feed.push(30002)) == [(30001, False), (30002, False)]
    assert (feed.buffer.stats.strays, feed.buffer.stats.resyncs) == (2, 1)


def test_timestamp_jump_is_not_loss() -> None:
    feed = Feeder(JitterBuffer())
    feed.push(1, ts=160)
    assert feed.seqs(feed.push(2, ts=900_000)) == [(2, False)]
    assert feed.buffer.stats.lost == 0


def test_long_hole_conceals_at_most_max_frames() -> None:
    feed = Feeder(JitterBuffer(max_conceal_frames=3))
    feed.push(1)
    frames = feed.push(11) + feed.push(12)
    assert [f.lost for f in frames] == [True, True, True, False, False]
    assert feed.buffer.stats.lost == 9


def test_capacity_bounds_memory() -> None:
    feed = Feeder(JitterBuffer(capacity=4, max_depth_ms=1000, min_depth_ms=1000, ptime_ms=20))
    feed.push(1)
    for seq in (3, 4, 5):
        assert feed.push(seq) == []
    frames = feed.push(6)  # 4 packets held: full
    assert feed.seqs(frames) == [(2, True), (3, False), (4, False), (5, False), (6, False)]
    assert feed.buffer.stats.overflows == 1


def test_depth_adapts_to_jitter_within_bounds_and_late_boost_decays() -> None:
    buffer = JitterBuffer(min_depth_ms=20, max_depth_ms=60, decay_frames=5)
    buffer.adapt(jitter_ms=12)  # 2 x 12 ms -> rounded up to 2 packet times
    assert buffer.depth_ms == 40
    buffer.adapt(jitter_ms=100)
    assert buffer.depth_ms == 60  # clamped
    buffer.adapt(jitter_ms=0)
    assert buffer.depth_ms == 20
    feed = Feeder(buffer)
    feed.push(1)
    feed.push(3)
    feed.push(4)
    feed.push(2)  # late
    assert buffer.depth_ms == 40
    for seq in range(5, 10):
        feed.push(seq)
    assert buffer.depth_ms == 20


def test_flush_releases_everything_in_order() -> None:
    feed = Feeder(JitterBuffer(max_depth_ms=200, min_depth_ms=200))
    feed.push(1)
    feed.push(4)
    feed.push(3)
    assert feed.seqs(feed.buffer.flush()) == [(3, False), (4, False)]
    assert JitterBuffer().flush() == []


def test_invalid_configuration() -> None:
    with pytest.raises(ValueError):
        JitterBuffer(min_depth_ms=80, max_depth_ms=40)
    with pytest.raises(ValueError):
        JitterBuffer(capacity=1)


def test_concealer_fades_then_silences() -> None:
    concealer = Concealer(frame_bytes=4)
    frame = (1000).to_bytes(2, "little", signed=True) * 2
    assert concealer.good(frame) == frame
    levels = [int.from_bytes(concealer.conceal()[:2], "little", signed=True) for _ in range(4)]
    assert levels == [500, 250, 125, 0]
    concealer.good(frame)
    assert int.from_bytes(concealer.conceal()[:2], "little", signed=True) == 500


def test_concealer_repeats_a_frame_of_the_peer_s_packet_time() -> None:
    # A peer sending 30 ms packets (a=ptime:30, 240 samples) while we send 20 ms: a lost packet
    # is a faded repeat of the last 30 ms, not 20 ms of silence (a frame of another length).
    concealer = Concealer(frame_bytes=320)  # our 20 ms at 8 kHz
    frame = (1000).to_bytes(2, "little", signed=True) * 240
    concealer.good(frame)
    first = concealer.conceal()
    assert len(first) == 480
    assert int.from_bytes(first[:2], "little", signed=True) == 500
    for _ in range(3):
        last = concealer.conceal()
    assert last == b"\x00" * 480
    assert Concealer(frame_bytes=320).conceal() == b"\x00" * 320  # nothing received yet
