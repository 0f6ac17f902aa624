"""The bounds on a pending transfer (``Call.refer_update``): every transfer the carrier accepts
gets its wait, whatever came before it; a call that is ending arms nothing; a subscription's
``expires`` cannot hold a transfer pending longer than ``REFER_OUTCOME_WAIT_S``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from telepath.bridges.base import AgentEvent, AgentMark, AgentTransfer
from telepath.calls.call import REFER_NOTIFY_WAIT_S, REFER_OUTCOME_WAIT_S, Call
from telepath.calls.model import DisconnectReason
from telepath.rtp.playout import PlayoutOverflow
from telepath.transport.media_session import MarkPlayed, MediaEvent
from tests.unit.call_stubs import stub_call

pytestmark = pytest.mark.unit


class Agent:
    def __init__(self) -> None:
        self.results: list[tuple[str, bool, str | None]] = []

    async def send_transfer_result(
        self, request_id: str, ok: bool, detail: str | None = None, *, ending: bool = False
    ) -> None:
        self.results.append((request_id, ok, detail))


def _remaining(call: Call) -> float:
    timer = call._refer_timer
    assert timer is not None
    return timer.when() - asyncio.get_running_loop().time()


async def test_a_late_progress_notify_does_not_disarm_the_next_transfers_wait() -> None:
    """Transfer 1 timed out (no NOTIFY in 32 s); its late ``100 Trying`` NOTIFY then marked the
    call as notified, and transfer 2's 202 armed no wait: with no NOTIFY ever, it stayed
    pending for the rest of the call, every later transfer refused."""
    agent = Agent()
    call = stub_call(agent)
    call._transfer_request = "xfer-1"
    call.refer_update(202, False)
    assert call._refer_timer is not None
    call._refer_timer.cancel()
    call._refer_unanswered()  # its 32 s ran out
    await asyncio.sleep(0)
    assert [r[:2] for r in agent.results] == [("xfer-1", False)]
    call.refer_update(100, False, 60)  # transfer 1's NOTIFY, late: nothing pending
    assert call._refer_timer is None
    call._transfer_request = "xfer-2"
    call.refer_update(202, False)
    assert call._refer_timer is not None  # transfer 2's own wait for its first NOTIFY
    assert _remaining(call) == pytest.approx(REFER_NOTIFY_WAIT_S, abs=1.0)
    call._stop_refer_timer()


async def test_a_call_that_is_ending_arms_no_transfer_wait() -> None:
    """A NOTIFY arriving while the call ends (its BYE's answer awaited) armed a wait of minutes
    that kept the ended call in memory and later told its gone agent the transfer failed."""
    agent = Agent()
    call = stub_call(agent)
    call._transfer_request = "xfer-1"
    call.end(DisconnectReason.AGENT_HANGUP)
    call.refer_update(100, False, 60)
    assert call._refer_timer is None


async def test_a_subscriptions_expires_is_capped() -> None:
    """``Subscription-State: active;expires=86400`` held the transfer pending for a day."""
    agent = Agent()
    call = stub_call(agent)
    call._transfer_request = "xfer-1"
    call.refer_update(202, False)
    call.refer_update(100, False, 86400)
    assert _remaining(call) <= REFER_OUTCOME_WAIT_S + REFER_NOTIFY_WAIT_S + 1
    call.refer_update(180, False, 20)  # a shorter one is kept as given
    assert _remaining(call) == pytest.approx(20 + REFER_NOTIFY_WAIT_S, abs=1.0)
    call._stop_refer_timer()


async def test_every_failed_transfer_is_counted_the_timed_out_ones_too() -> None:
    """The manager counted ``transfer_failed`` only for a final NOTIFY or REFER response that
    was not a 2xx: a transfer whose NOTIFY never came, or whose subscription ran out, failed
    uncounted."""
    failed: list[str] = []
    call = stub_call(Agent())
    call._on_transfer_failed = lambda: failed.append("x")
    call._transfer_request = "xfer-1"
    call.refer_update(202, False)
    call._stop_refer_timer()
    call._refer_unanswered()  # no NOTIFY within its wait
    call._transfer_request = "xfer-2"
    call.refer_update(202, False)
    call.refer_update(100, False, 30)
    call._stop_refer_timer()
    call._refer_unanswered("SIP 100")  # the subscription ran out with no outcome
    call._transfer_request = "xfer-3"
    call.refer_update(603, True)  # refused
    await asyncio.sleep(0)
    assert len(failed) == 3
    call.refer_update(100, False, 60)  # late progress of a decided transfer: no failure more
    call._refer_unanswered()  # a stray timer with nothing pending: none either
    assert len(failed) == 3


class _Media:
    """The media session as the call's media pump reads it: events from a queue, marks kept."""

    def __init__(self, queued_ms: float) -> None:
        self.queued_ms = queued_ms
        self.marks: list[str] = []
        self.marks_full = False  # the playout's bound on marks reached (MAX_QUEUED_MARKS)
        self.events_in: asyncio.Queue[MediaEvent] = asyncio.Queue()

    def hold(self, held: bool) -> None:
        pass

    def mark(self, name: str, *, bounded: bool = True) -> None:
        if bounded and self.marks_full:
            raise PlayoutOverflow("outbound mark queue is full")
        self.marks.append(name)

    def set_audio_sink(self, sink: object) -> None:
        pass

    async def events(self) -> AsyncIterator[MediaEvent]:
        while True:
            yield await self.events_in.get()


async def _turns(count: int = 10) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def test_a_flushed_announcement_lets_the_refer_go_at_once() -> None:
    """The REFER waited as long as the audio queued when the transfer was asked for (5 s
    here) whatever happened meanwhile: a barge-in's flush now ends the wait — the mark at the
    announcement's end comes back cleared and the REFER goes in the next turns of the loop, no
    clock involved."""
    refers: list[str] = []
    media = _Media(queued_ms=5000.0)
    call = stub_call(Agent())
    call.media = cast(Any, media)
    call._refer_sip = refers.append
    call._transfer_request, call._refer_due = "xfer-1", True
    call._mark_announcement()
    pump = asyncio.create_task(call._media_pump())
    waiting = asyncio.create_task(call._refer_after_playout("sip:desk@example.com"))
    try:
        await _turns()
        assert refers == [] and len(media.marks) == 1  # the announcement plays
        media.events_in.put_nowait(MarkPlayed(media.marks[0], cleared=True))  # barge-in
        await _turns()
        assert refers == ["sip:desk@example.com"]
    finally:
        waiting.cancel()
        pump.cancel()
        await asyncio.gather(waiting, pump, return_exceptions=True)


class _MarkingAgent(Agent):
    """An agent whose events the test feeds; the mark echoes it gets are kept."""

    def __init__(self) -> None:
        super().__init__()
        self.events_in: asyncio.Queue[AgentEvent] = asyncio.Queue()
        self.echoes: list[str] = []

    def set_audio_sink(self, sink: object) -> None:
        pass

    async def events(self) -> AsyncIterator[AgentEvent]:
        while True:
            yield await self.events_in.get()

    async def notify_mark(self, name: str) -> None:
        self.echoes.append(name)


@pytest.mark.parametrize("name", ["\x00telepath-1", "\x00telepath-2", "o1", "x", ""])
async def test_an_agent_mark_named_like_ours_is_echoed_and_ends_no_announcement(
    name: str,
) -> None:
    """Our own marks were told from the agent's by a name prefix ("\\x00telepath-"), which an
    agent's mark (any JSON string) could carry: such a mark was never echoed (every mark is,
    providers.md §4.3) and, named as the announcement's, let the REFER go mid-announcement. An
    agent mark placed in the announcement (queued before the transfer) is now its own."""
    refers: list[str] = []
    media = _Media(queued_ms=5000.0)
    agent = _MarkingAgent()
    call = stub_call(agent)
    call.media = cast(Any, media)
    call._refer_sip = refers.append
    pumps = [asyncio.create_task(call._media_pump()), asyncio.create_task(call._agent_pump())]
    try:
        agent.events_in.put_nowait(AgentMark(name))  # mid-announcement
        agent.events_in.put_nowait(AgentTransfer("sip:desk@example.com", "xfer-1"))
        await _turns()
        assert len(media.marks) == 2  # the agent's, then the announcement's end
        media.events_in.put_nowait(MarkPlayed(media.marks[0]))  # the agent's mark plays
        await _turns()
        assert agent.echoes == [name]
        assert refers == []  # the announcement plays on
        media.events_in.put_nowait(MarkPlayed(media.marks[1]))  # the announcement is over
        await _turns(30)
        assert refers == ["sip:desk@example.com"] and agent.echoes == [name]
    finally:
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)


async def test_an_agent_mark_past_the_playout_bound_ends_the_call() -> None:
    """Past the bound on pending marks (playout.MAX_QUEUED_MARKS, MAX_QUEUED_MARK_CHARS) the
    agent is broken: the call ends as a provider protocol error (ai_provider_error). The mark
    used to be echoed at once — ahead of the earlier marks still waiting, out of the FIFO order
    agents rely on (providers.md §4.3) — with one task per mark. Nothing is echoed out of
    order, and the agent's later marks are not taken. Our own announcement mark is not bounded:
    a transfer asked for at the bound is still placed."""
    media = _Media(queued_ms=5000.0)
    agent = _MarkingAgent()
    call = stub_call(agent)
    call.media = cast(Any, media)
    call._refer_sip = lambda target: None
    media_pump = asyncio.create_task(call._media_pump())
    agent_pump = asyncio.create_task(call._agent_pump())
    try:
        agent.events_in.put_nowait(AgentMark("m1"))
        await _turns()
        media.marks_full = True  # m1 is the last mark the bound has room for
        agent.events_in.put_nowait(AgentTransfer("sip:desk@example.com", "xfer-1"))
        await _turns()
        assert len(media.marks) == 2 and not call._end.done()  # the announcement's, placed
        agent.events_in.put_nowait(AgentMark("m2-secret"))  # one past the bound
        agent.events_in.put_nowait(AgentMark("m3"))
        await _turns(30)
        assert call._end.done()
        end = call._end.result()
        assert end.reason == DisconnectReason.AI_PROVIDER_ERROR
        assert end.error and "marks" in end.error and "m2-secret" not in end.error
        assert agent_pump.done()  # the agent's later events are not taken
        assert agent.echoes == []  # nothing echoed ahead of m1
        media.events_in.put_nowait(MarkPlayed(media.marks[0]))  # m1 plays
        await _turns(30)
        assert agent.echoes == ["m1"]  # and never m2 or m3
    finally:
        for task in (media_pump, agent_pump):
            task.cancel()
        await asyncio.gather(media_pump, agent_pump, return_exceptions=True)
