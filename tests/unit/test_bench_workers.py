"""The bench phones' own accounting (bench/workers.py ``Phones.summary``), fed by hand."""

from __future__ import annotations

import pytest
from bench.workers import FILL, Phones, _Phone

pytestmark = pytest.mark.unit


def phones(count: int) -> Phones:
    ph = Phones()
    ph.phones = [_Phone(i, ph) for i in range(count)]
    return ph


def test_calls_bridged_are_the_phones_whose_frames_came_back_in_the_window() -> None:
    ph = phones(3)
    ph.sent = {"0:1": 1.0, "0:2": 1.02, "1:1": 1.0, "2:1": 1.0}
    ph.recv = {"0:1": 1.003, "1:1": 1.004, "2:7": 0.5}  # phone 2: only a frame from before
    assert ph.summary()["calls_bridged"] == 2


def stream(packets: int, seq0: int = 1000) -> list[tuple[float, int, int, int]]:
    """``packets`` in-order RTP arrivals 20 ms apart from one source."""
    return [(i * 0.02, (seq0 + i) & 0xFFFF, 0xABCD, 40000) for i in range(packets)]


def test_a_latched_phone_that_hears_nothing_in_the_window_lost_everything() -> None:
    ph = phones(2)
    ph.window_s = 5.0  # 250 frame times
    for p in ph.phones:
        p.latched = True
    ph.phones[0].arrivals = stream(250)
    summary = ph.summary()
    assert summary["rx_loss_pct"] == 50.0


def test_a_stream_that_stops_halfway_lost_the_rest_of_the_window() -> None:
    ph = phones(1)
    ph.window_s = 5.0
    ph.phones[0].latched = True
    ph.phones[0].arrivals = stream(125)
    assert ph.summary()["rx_loss_pct"] == 50.0


def test_a_full_stream_loses_nothing_and_gaps_still_count() -> None:
    ph = phones(2)
    ph.window_s = 5.01  # the window's edges: 250 or 251 frames
    for p in ph.phones:
        p.latched = True
    ph.phones[0].arrivals = stream(251)
    gappy = stream(251)
    ph.phones[1].arrivals = gappy[:100] + gappy[105:]  # 5 lost inside the span
    assert ph.summary()["rx_loss_pct"] == round(100 * 5 / 502, 3)


def test_phones_that_never_latched_are_not_expected_to_hear_anything() -> None:
    ph = phones(2)
    ph.window_s = 5.0
    ph.phones[0].latched = True
    ph.phones[0].arrivals = stream(250)
    assert ph.summary()["rx_loss_pct"] == 0.0


def test_jitter_and_round_trip_percentiles_are_nearest_rank() -> None:
    ph = phones(1)
    t, arrivals = 0.0, [(0.0, 1, 0xABCD, 40000)]
    for i in range(1, 101):  # deviations of 0.01, 0.02 .. 1.00 ms from 20 ms
        t += 0.020 + i * 1e-5
        arrivals.append((t, 1 + i, 0xABCD, 40000))
    ph.phones[0].arrivals = arrivals
    ph.sent = {f"0:{i}": 0.0 for i in range(1, 101)}
    ph.recv = {f"0:{i}": i / 1000 for i in range(1, 101)}  # round trips 1 .. 100 ms
    summary = ph.summary()
    assert (summary["jitter_p50_ms"], summary["jitter_p99_ms"]) == (0.5, 0.99)
    assert (summary["rtt_p50_ms"], summary["rtt_p99_ms"]) == (50.0, 99.0)


async def test_the_echo_agents_send_stamp_is_taken_before_the_send() -> None:
    import base64

    from bench.workers import echo_frame, marker

    now = [10.0]

    class SlowSocket:
        """A send that takes a while to drain (the clock moves on inside it)."""

        def __init__(self) -> None:
            self.sent: list[str] = []

        async def send(self, message: str) -> None:
            now[0] += 0.5
            self.sent.append(message)

    ws = SlowSocket()
    stamps: dict[str, list[float]] = {}
    payload = base64.b64encode(marker(3, 7) + FILL).decode()
    await echo_frame(ws, payload, 9.9, stamps, clock=lambda: now[0])
    assert ws.sent == ['{"type":"audio","payload":"' + payload + '"}']
    # the agent → phone figure starts when the agent sends, not after its send drained
    assert stamps == {"3:7": [9.9, 10.0]}
