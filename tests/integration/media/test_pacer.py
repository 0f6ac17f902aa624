"""The shared pacer: every subscriber once per ptime, spread over slots, frames counted."""

from __future__ import annotations

import asyncio
import contextvars
import socket
import time
from collections.abc import Callable

import pytest
import uvloop

from telepath.log import call_id_var
from telepath.transport import media_pacer
from telepath.transport.media_pacer import SLOT_CAPACITY, Pacer, observe_lateness, serve_due
from tests.integration.media.logged import call_ids_logged, drop_clocks_of_closed_loops
from tests.integration.media.peer import until

pytestmark = pytest.mark.integration


async def test_slots_fill_before_the_next_opens_and_streams_are_paced() -> None:
    loop = asyncio.get_running_loop()
    pacer = Pacer(20, loop)
    assert pacer.slots == 4
    calls: dict[int, list[float]] = {i: [] for i in range(70)}
    frames_seen: list[int] = []

    def make(i: int) -> Callable[[float, int], None]:
        def tick(now: float, frames: int) -> None:
            calls[i].append(now)
            frames_seen.append(frames)

        return tick

    handles = [pacer.subscribe(make(i)) for i in range(40)]

    def sizes() -> list[int]:
        return [list(pacer._slot_of.values()).count(slot) for slot in range(pacer.slots)]

    assert sizes() == [SLOT_CAPACITY, SLOT_CAPACITY, 40 - 2 * SLOT_CAPACITY, 0]
    handles += [pacer.subscribe(make(i)) for i in range(40, 70)]
    assert sizes() == [18, 18, 17, 17]  # all full: then the least loaded, bursts stay even
    await asyncio.sleep(0.5)
    for h in handles:
        pacer.unsubscribe(h)
    assert pacer.subscriber_count == 0
    counts = [len(times) for times in calls.values()]
    assert min(counts) > 0
    assert max(counts) - min(counts) <= 1  # every session ticks at the same rate
    assert set(frames_seen) == {1}


async def test_with_few_streams_one_wakeup_serves_them_all() -> None:
    loop = asyncio.get_running_loop()
    pacer = Pacer(20, loop)
    ticks: list[int] = []
    handles = [pacer.subscribe(lambda now, frames: ticks.append(frames)) for _ in range(5)]
    await asyncio.sleep(0.3)
    for h in handles:
        pacer.unsubscribe(h)
    per_stream = len(ticks) / 5
    assert per_stream >= 1
    # one wake-up per 20 ms for all five (empty slots are passed over), not one per 5 ms slot;
    # +1: the wake-up that finds nobody left and stops the clock
    assert pacer.wakeups <= per_stream + 1


async def test_a_stream_joining_a_passed_over_slot_counts_one_frame() -> None:
    loop = asyncio.get_running_loop()
    pacer = Pacer(20, loop)
    handles = [pacer.subscribe(lambda now, frames: None) for _ in range(SLOT_CAPACITY)]
    await asyncio.sleep(0.15)  # slots 1-3 empty all along: passed over ~7 times each
    late: list[int] = []
    handles.append(pacer.subscribe(lambda now, frames: late.append(frames)))
    assert pacer._slot_of[handles[-1]] == 1
    await asyncio.sleep(0.1)
    for h in handles:
        pacer.unsubscribe(h)
    assert late and set(late) == {1}  # not the 150 ms its slot stood empty


async def test_a_stall_is_counted_in_frames_not_burst() -> None:
    loop = asyncio.get_running_loop()
    pacer = Pacer(20, loop)
    seen: dict[int, list[int]] = {i: [] for i in range(4)}

    def make(i: int) -> Callable[[float, int], None]:
        return lambda now, frames: seen[i].append(frames)

    handles = [pacer.subscribe(make(i)) for i in range(4)]
    await asyncio.sleep(0.1)
    skipped = media_pacer.skipped_frames()
    time.sleep(0.2)  # noqa: ASYNC251  (on purpose: the loop stalls for 10 packet times)
    await asyncio.sleep(0.1)
    for h in handles:
        pacer.unsubscribe(h)
    assert 7 <= media_pacer.skipped_frames() - skipped <= 11  # counted, once per stall
    for frames in seen.values():
        # every stream learns once that ~10 frames elapsed, instead of getting 10 calls at once
        assert max(frames) >= 8
        assert len(frames) < sum(frames)  # fewer calls than frames: the stall was not replayed


async def test_every_wakeup_reports_how_late_it_was() -> None:
    seen: list[float] = []
    served: list[float] = []

    def tick(now: float, frames: int) -> None:
        if len(served) == 3:
            time.sleep(0.045)  # a 45 ms stall: the next wake-up, due 20 ms on, is 25 ms late
        served.append(now)

    observe_lateness(seen.append)
    try:
        pacer = Pacer(20, asyncio.get_running_loop())
        handle = pacer.subscribe(tick)
        await asyncio.sleep(0.3)
        pacer.unsubscribe(handle)
    finally:
        observe_lateness(None)
    assert len(seen) == len(served) >= 8  # one observation per wake-up that served streams
    assert min(seen) >= 0
    assert max(seen) >= 0.02
    assert sorted(seen)[len(seen) // 2] < 0.01  # the others were on time


async def test_a_due_clock_is_served_from_inside_a_long_batch_of_callbacks() -> None:
    # One loop iteration can hold hundreds of receive callbacks; each calls serve_due first,
    # so a slot falling due in the middle is served there, not after the whole batch.
    loop = asyncio.get_running_loop()
    pacer = Pacer(20, loop)
    served: list[float] = []
    early: list[float] = []

    def tick(now: float, frames: int) -> None:
        served.append(time.monotonic())
        if served[-1] < pacer._deadline:  # the slot being served is due at pacer._deadline
            early.append(pacer._deadline - served[-1])

    handle = pacer.subscribe(tick)
    await asyncio.sleep(0.05)
    inside: list[float] = []

    def busy_batch() -> None:  # 45 ms of ~1 ms callbacks in one go
        end = time.monotonic() + 0.045
        while time.monotonic() < end:
            before = len(served)
            serve_due()
            if len(served) > before:
                inside.append(served[-1])
            time.sleep(0.001)

    loop.call_soon(busy_batch)
    await asyncio.sleep(0.12)
    pacer.unsubscribe(handle)
    await asyncio.sleep(0.05)
    assert len(inside) >= 2  # the slots due during the batch were served inside it
    assert early == []  # and never ahead of its deadline
    ticks = len(served)
    serve_due()  # a stopped clock is no longer served
    assert len(served) == ticks and pacer.subscriber_count == 0


async def test_the_timers_pending_wakeup_does_not_serve_a_slot_served_just_before() -> None:
    # A datagram and the clock's timer become ready in the same loop iteration, the datagram
    # first; its receive callback serves the due slot (serve_due). The timer's wake-up that
    # follows in the same iteration must serve nothing: the next slot is not due yet.
    loop = asyncio.get_running_loop()
    pacer = Pacer(20, loop)
    served: list[float] = []
    early: list[float] = []
    by_datagram: list[int] = []

    def tick(now: float, frames: int) -> None:
        served.append(time.monotonic())
        if served[-1] < pacer._deadline:
            early.append(pacer._deadline - served[-1])

    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def on_datagram() -> None:
        rx.recv(64)
        before = len(served)
        serve_due()
        by_datagram.append(len(served) - before)

    loop.add_reader(rx.fileno(), on_datagram)
    handle = pacer.subscribe(tick)
    try:
        for _ in range(5):
            await asyncio.sleep(0.03)

            def stall() -> None:  # the datagram is ready first, then the timer expires
                tx.sendto(b"x", rx.getsockname())
                time.sleep(max(0.0, pacer._deadline - time.monotonic()) + 0.005)

            loop.call_soon(stall)
            await asyncio.sleep(0)
    finally:
        pacer.unsubscribe(handle)
        loop.remove_reader(rx.fileno())
        rx.close()
        tx.close()
    assert sum(by_datagram) >= 3  # the datagram's callback served the due slot
    assert early == []


async def test_lines_logged_from_a_tick_name_the_right_call_or_none() -> None:
    """The clock serves every call: a subscriber's failure names that subscriber's call, and
    the clock's own lines none — whichever call's set-up started the clock, and whichever
    call's packet served it (``serve_due``)."""
    loop = asyncio.get_running_loop()
    drop_clocks_of_closed_loops()
    pacer = Pacer(20, loop)
    handles: list[int] = []
    fail = False

    ticked_in: set[str] = set()

    def quiet(now: float, frames: int) -> None:
        ticked_in.add(call_id_var.get())

    def broken(now: float, frames: int) -> None:
        if fail:
            raise RuntimeError("a bug in one session")

    async def call(call_id: str, tick: Callable[[float, int], None]) -> None:
        call_id_var.set(call_id)
        handles.append(pacer.subscribe(tick))

    with call_ids_logged("telepath.transport.media_pacer") as lines:
        await loop.create_task(call("call_first", quiet))  # starts the clock
        await loop.create_task(call("call_second", broken))
        await asyncio.sleep(0.05)
        fail = True
        await asyncio.sleep(0.05)  # failures from the timer's wake-ups
        fail = False
        time.sleep(0.1)  # noqa: ASYNC251  (a stall: the clock says so, for no call)
        await asyncio.sleep(0.05)

        def packet_of_first_call(late_s: float = 0.001) -> None:
            time.sleep(max(0.0, pacer._deadline - time.monotonic()) + late_s)
            serve_due()

        first = contextvars.copy_context()  # what its socket's receive callback runs in
        first.run(call_id_var.set, "call_first")
        fail = True
        for _ in range(4):  # failures served from inside the first call's receive path
            first.run(packet_of_first_call)
        fail = False
        first.run(packet_of_first_call, 0.1)  # and a stall found there
        for h in handles:
            pacer.unsubscribe(h)
    failures = [c for m, c in lines if m == "media session tick failed"]
    assert len(failures) >= 5
    assert set(failures) == {"call_second"}, lines
    stalls = [c for m, c in lines if m.startswith("media pacer stalled")]
    assert len(stalls) >= 2 and set(stalls) == {"-"}, lines
    assert ticked_in == {"-"}  # what subscribers run in: no call's


async def test_last_tick_is_the_deadline_each_call_was_for() -> None:
    """What a session's final sender report reads (its RTP timestamp is the last frame's plus
    the time since, RFC 3550 §6.4.1): the deadline of the subscriber's last call, one ptime
    after the one before (frames counted), and None once unsubscribed."""
    loop = asyncio.get_running_loop()
    pacer = Pacer(20, loop)
    seen: list[tuple[float | None, int]] = []
    enough = asyncio.Event()
    handle = 0

    def tick(now: float, frames: int) -> None:
        seen.append((pacer.last_tick(handle), frames))
        if len(seen) >= 5:
            enough.set()

    handle = pacer.subscribe(tick)
    try:
        async with asyncio.timeout(10):
            await enough.wait()
    finally:
        pacer.unsubscribe(handle)
    assert pacer.last_tick(handle) is None
    for (before, _), (after, frames) in zip(seen, seen[1:], strict=False):
        assert before is not None and after is not None
        assert after - before == pytest.approx(frames * pacer.ptime)


def test_ticks_pass_the_precise_clock_on_uvloop_too() -> None:
    """Sessions compare the tick's time with RTP arrival times (the jitter buffer's release,
    the inactivity timeout), which are read from ``time.monotonic`` to the microsecond: the
    tick passes that clock, not uvloop's ``loop.time()`` — the same clock in whole
    milliseconds, a millisecond and more behind it."""
    seen: list[tuple[float, float, float]] = []

    async def run() -> None:
        done = asyncio.Event()

        def tick(now: float, frames: int) -> None:
            seen.append((before, now, time.monotonic()))
            if len(seen) >= 10:
                done.set()

        pacer = Pacer(20, asyncio.get_running_loop())
        before = time.monotonic()
        handle = pacer.subscribe(tick)
        try:
            async with asyncio.timeout(10):
                await done.wait()
        finally:
            pacer.unsubscribe(handle)
            await until(lambda: not pacer._running)  # the clock's last wake-up stops it

    uvloop.run(run())
    assert all(before <= now <= after for before, now, after in seen)
    assert not all(abs(now * 1000 - round(now * 1000)) < 1e-6 for _, now, _ in seen)
