from __future__ import annotations

import pytest

from telepath.rtp.codecs import CodecSpec, make_codec
from telepath.rtp.dtmf import DtmfDecoder, TelephoneEvent
from telepath.rtp.playout import (
    MAX_QUEUED_MARK_CHARS,
    MAX_QUEUED_MARKS,
    Playout,
    PlayoutOverflow,
)

from .audio import tone

pytestmark = pytest.mark.unit

SILENCE = b"\xff" * 160


def make(dtmf: int | None = 101) -> Playout:
    return Playout(make_codec(CodecSpec.static("PCMU")), 20, 0xFFFFFF00, dtmf)


def test_idle_sends_silence_with_continuous_timestamps_across_wrap() -> None:
    playout = make()
    frames = [playout.next_frame()[0] for _ in range(3)]
    assert [f.payload for f in frames if f] == [SILENCE] * 3
    assert [f.timestamp for f in frames if f] == [0xFFFFFF00, 0xFFFFFFA0, 0x00000040]
    assert not any(f.marker for f in frames if f)


def test_no_marker_on_agent_audio_after_sent_silence_and_partial_frame_padding() -> None:
    """RFC 3551 §4.1: "Applications without silence suppression MUST set the marker bit to
    zero" — the silence between the agent's turns is sent, packet for packet, so the agent's
    speech after it is no talkspurt start in the RTP sense: no marker."""
    playout = make()
    playout.next_frame()
    playout.enqueue(b"\x01" * 200)
    first, _ = playout.next_frame()
    second, _ = playout.next_frame()
    third, _ = playout.next_frame()
    assert first and not first.marker and first.agent_audio
    assert second and not second.marker and second.payload == b"\x01" * 40 + b"\xff" * 120
    assert third and third.payload == SILENCE and not third.agent_audio
    assert playout.played_ms == 25
    playout.enqueue(b"\x02" * 160)
    fourth, _ = playout.next_frame()
    assert fourth and fourth.agent_audio and not fourth.marker


def test_marks_fire_when_playout_passes_them() -> None:
    playout = make()
    playout.mark("empty")  # nothing queued: fires on the next frame
    assert playout.next_frame()[1] == ["empty"]
    playout.enqueue(b"\x01" * 320)
    playout.mark("a")
    playout.enqueue(b"\x01" * 160)
    playout.mark("b")
    assert playout.next_frame()[1] == []
    assert playout.next_frame()[1] == ["a"]
    assert playout.next_frame()[1] == ["b"]


def test_flush_reports_played_ms_and_cleared_marks() -> None:
    playout = make()
    playout.enqueue(b"\x01" * 800)
    playout.mark("end")
    playout.next_frame()
    playout.next_frame()
    played, cleared = playout.flush()
    assert (played, cleared) == (40.0, ["end"])
    assert playout.queued_ms == 0
    frame, marks = playout.next_frame()
    assert frame and frame.payload == SILENCE and marks == []
    assert playout.flush() == (0.0, [])
    # New audio after a flush plays from the start and marks count from there.
    playout.enqueue(b"\x03" * 160)
    playout.mark("next")
    assert playout.next_frame()[1] == ["next"]


def test_hold_advances_clock_without_consuming_audio() -> None:
    playout = make()
    playout.enqueue(b"\x01" * 160)
    before = playout.timestamp
    assert playout.next_frame(send=False) == (None, [])
    assert playout.queued_ms == 20
    frame, _ = playout.next_frame()
    assert frame and frame.timestamp == (before + 160) & 0xFFFFFFFF and frame.marker


def test_dtmf_interleaves_and_pauses_audio() -> None:
    playout = make()
    playout.enqueue(b"\x01" * 160)
    playout.send_dtmf("5", duration_ms=40)
    frames = [playout.next_frame()[0] for _ in range(5)]
    assert [f.payload_type for f in frames if f] == [101, 101, 101, 101, 0]
    events = [TelephoneEvent.parse(f.payload) for f in frames[:4] if f]
    assert [(e.event, e.end, e.duration) for e in events] == [
        (5, False, 160),
        (5, True, 320),
        (5, True, 320),
        (5, True, 320),
    ]
    assert len({f.timestamp for f in frames[:4] if f}) == 1  # one event, one timestamp
    last = frames[4]
    assert last and last.marker and last.payload == b"\x01" * 160
    with pytest.raises(RuntimeError):
        make(dtmf=None).send_dtmf("1")


def test_pcm_input_is_resampled_and_encoded() -> None:
    playout = make()
    playout.enqueue_pcm(tone(1000, 16000, 0.1), 16000)
    assert playout.queued_ms == 100
    with pytest.raises(ValueError):
        playout.enqueue_pcm(b"\x00", 8000)


def test_g722_pcm_input_keeps_odd_samples() -> None:
    playout = Playout(make_codec(CodecSpec.static("G722")), 20, 0)
    playout.enqueue_pcm(b"\x00\x00" * 321, 16000)  # 321 samples: one carried over
    assert playout.queued_ms == 20
    frame, _ = playout.next_frame()
    assert frame and frame.payload_type == 9 and len(frame.payload) == 160


def test_queue_is_bounded() -> None:
    playout = make()
    with pytest.raises(PlayoutOverflow):
        playout.enqueue(b"\x00" * (8 * 120_001))


def test_pending_marks_are_bounded_as_the_audio_is() -> None:
    """Agent marks queued without bound (the audio had MAX_QUEUED_MS): past MAX_QUEUED_MARKS
    pending, or MAX_QUEUED_MARK_CHARS of their names, a mark is refused as excess audio is
    (PlayoutOverflow); room comes back as marks are reached or flushed. An unbounded mark
    (call control's own, one per transfer) is always placed."""
    playout = make()
    playout.enqueue(b"\x01" * 320)
    for i in range(MAX_QUEUED_MARKS):
        playout.mark(str(i))
    with pytest.raises(PlayoutOverflow):
        playout.mark("one too many")
    playout.mark("ours", bounded=False)
    playout.next_frame()
    assert len(playout.next_frame()[1]) == MAX_QUEUED_MARKS + 1  # all reached: room again
    playout.enqueue(b"\x01" * 320)
    playout.mark("x" * (MAX_QUEUED_MARK_CHARS - 1))
    with pytest.raises(PlayoutOverflow):
        playout.mark("yz")
    playout.mark("y")  # the names' length, to the character
    assert [len(n) for n in playout.flush()[1]] == [MAX_QUEUED_MARK_CHARS - 1, 1]
    playout.mark("x" * MAX_QUEUED_MARK_CHARS)  # a flush makes room too
    with pytest.raises(PlayoutOverflow):
        playout.mark("y")


def test_a_stall_drops_the_audio_it_should_have_played() -> None:
    playout = make()
    audio = bytes(range(160)) * 5  # 100 ms, each 20 ms frame identical
    marked = bytes([7]) * 160
    playout.enqueue(audio[:320])  # frames 1-2
    playout.mark("after-two")
    playout.enqueue(marked + audio[:320])  # frames 3-5
    start = playout.timestamp
    assert playout.skip_frame() == []
    assert playout.skip_frame() == ["after-two"]  # the mark was passed during the stall
    frame, _ = playout.next_frame()
    assert frame is not None and frame.payload == marked  # real time: frame 3, not frame 1
    assert frame.marker  # a new talkspurt after the gap
    assert frame.timestamp == (start + 2 * 160) & 0xFFFFFFFF
    assert playout.queued_ms == pytest.approx(40)
    assert playout.skipped_bytes == 320


def test_audio_dropped_in_a_stall_counts_as_played_for_the_truncation_point() -> None:
    """``played_ms`` is what ``Call.playout_ms`` (the bridges' barge-in cut) reads: audio a
    stall passed over is behind the caller as much as audio sent, and ``flush`` already counts
    it — a total without it put every later cut that much too early."""
    playout = make()
    playout.enqueue(b"\x01" * 480)  # 60 ms
    playout.skip_frame()
    playout.next_frame()
    playout.next_frame()
    assert playout.played_ms == 60
    assert playout.flush()[0] == 60


def test_a_stall_at_a_key_press_s_first_packet_keeps_the_press_its_own_timestamp() -> None:
    """The stall drops the press's first packet; the rest must still carry the press's own
    start (RFC 4733 §2.5.1.2) and a marker — with the previous press's timestamp they were
    that press's retransmissions, and the far end heard one key, not two."""
    playout = make()
    playout.send_dtmf("1", duration_ms=60)
    first = [playout.next_frame()[0] for _ in range(6)]
    playout.send_dtmf("2", duration_ms=60)
    pressed_at = playout.timestamp
    playout.skip_frame()  # the sender stalled over the second press's first packet
    second = [playout.next_frame()[0] for _ in range(5)]
    decoder = DtmfDecoder()
    keys = [
        d.key
        for f in first + second
        if f is not None and f.payload_type == 101
        for d in decoder.feed(f.timestamp, f.payload)
    ]
    assert keys == ["1", "2"]
    assert second[0] is not None and second[0].marker
    # one timestamp: the press's start, the skipped packet time (not the next one: its
    # duration, counted from the start, would end the press a packet time late)
    assert {f.timestamp for f in second if f is not None and f.payload_type == 101} == {pressed_at}


def test_a_re_offer_without_telephone_event_drops_the_queued_press() -> None:
    playout = make()
    playout.send_dtmf("5", duration_ms=60)
    playout.set_dtmf_payload_type(None)
    frame, _ = playout.next_frame()
    assert frame is not None and frame.payload_type == 0  # audio (silence), no event on None


def test_the_first_packet_after_hold_has_the_marker_whatever_it_carries() -> None:
    """RFC 3551 §4.1: the first packet after a time in which packets were not sent marks the
    new talkspurt — with nothing queued it is silence, and it still carries the timestamp jump
    and the marker; the packets after it do not, nor the agent's audio that follows."""
    playout = make()
    playout.next_frame()
    before = playout.timestamp
    for _ in range(3):
        assert playout.next_frame(send=False) == (None, [])
    first, _ = playout.next_frame()
    second, _ = playout.next_frame()
    assert first and first.payload == SILENCE and first.marker
    assert first.timestamp == (before + 3 * 160) & 0xFFFFFFFF
    assert second and not second.marker


def test_the_first_packet_after_a_stall_has_the_marker_whatever_it_carries() -> None:
    playout = make()
    playout.next_frame()
    playout.skip_frame()
    first, _ = playout.next_frame()
    second, _ = playout.next_frame()
    assert first and first.payload == SILENCE and first.marker
    assert second and not second.marker


def test_one_marker_for_a_gap_that_ends_in_agent_audio() -> None:
    """The gap's marker and the talkspurt's are one: agent audio after a stall is marked once,
    and the silence before it after a hold takes the gap's; the agent's speech after that
    silence, sent contiguously, gets none."""
    playout = make()
    playout.skip_frame()
    playout.enqueue(b"\x01" * 320)
    frames = [playout.next_frame()[0] for _ in range(3)]
    assert [f.marker for f in frames if f] == [True, False, False]
    playout.next_frame(send=False)
    resumed, _ = playout.next_frame()
    playout.enqueue(b"\x02" * 160)
    spoken, _ = playout.next_frame()
    assert resumed and resumed.payload == SILENCE and resumed.marker
    assert spoken and spoken.agent_audio and not spoken.marker  # after sent silence: none


def test_a_key_press_over_a_hold_keeps_its_own_markers_and_the_audio_after_it_is_marked() -> None:
    """Telephone-event packets follow RFC 4733's marker rule (the event's first packet only);
    the audio stream resumes after the press with the gap's marker, silence or not."""
    playout = make()
    playout.send_dtmf("5", duration_ms=60)
    first, _ = playout.next_frame()
    playout.next_frame(send=False)
    rest = [playout.next_frame()[0] for _ in range(4)]
    audio, _ = playout.next_frame()
    assert first and first.payload_type == 101 and first.marker
    assert [f.payload_type for f in rest if f] == [101] * 4
    assert not any(f.marker for f in rest if f)
    assert audio and audio.payload_type == 0 and audio.payload == SILENCE and audio.marker


@pytest.mark.parametrize("negotiated", [None, 101])
def test_a_renegotiation_without_telephone_event_sets_no_marker(negotiated: int | None) -> None:
    """Every re-INVITE passes its telephone-event payload type on; without a press in
    progress the audio stream has no gap, and a marker mid-stream would be against RFC 3551
    §4.1 (some receivers reset their jitter buffer on it)."""
    playout = make(dtmf=negotiated)
    playout.next_frame()
    playout.set_dtmf_payload_type(None)
    frames = [playout.next_frame()[0] for _ in range(3)]
    assert not any(f.marker for f in frames if f)
