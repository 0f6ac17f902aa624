"""More of the UAS core with a fake clock: To-tag stability, ACK matching, overlapping INVITEs,
Timer H, CANCEL after 2xx, and the TimerQueue itself."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import pytest

from telepath.clock import FakeClock
from telepath.sip.dialog import Dialog
from telepath.sip.timers import TimerQueue
from telepath.sip.transaction import TxState
from telepath.sip.ua import (
    CallEnded,
    InviteReceived,
    ReinviteAcked,
    ReofferReceived,
    Send,
    UaConfig,
    UserAgentCore,
)
from tests.unit.sip.test_ua import SDP, SRC, events, request, requests, sent

pytestmark = pytest.mark.unit

CT = "Content-Type: application/sdp\r\n"


@pytest.fixture
def core() -> tuple[UserAgentCore, FakeClock]:
    clock = FakeClock(100.0)
    return UserAgentCore(UaConfig(contact_host="203.0.113.5"), clock), clock


def _invite(ua: UserAgentCore, **kw: object) -> InviteReceived:
    out = ua.receive(request(body=SDP, extra=CT, **kw), SRC)  # type: ignore[arg-type]
    (ev,) = events(out)
    assert isinstance(ev, InviteReceived)
    return ev


def _confirmed(ua: UserAgentCore) -> Dialog:
    ev = _invite(ua)
    dialog, _ = ua.accept(ev.tx, b"v=0\r\n")
    ua.receive(request("ACK", branch="z9hG4bK-ack", to_tag=dialog.local_tag), SRC)
    return dialog


# ---------------------------------------------------------------- To tag


def test_to_tag_is_stable_across_invites_of_one_call(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    """The 401's To tag is the 200's To tag: a UAC that keeps the challenge's tag still
    matches the dialog (§8.2.6.2 only asks for a tag; stability is what SIPp needs)."""
    ua, _ = core
    first = _invite(ua, branch="z9hG4bK-a")
    (r401,) = sent(ua.respond(first.tx, 401))
    ua.receive(request("ACK", branch="z9hG4bK-a", to_tag=r401.to.tag), SRC)
    second = _invite(ua, branch="z9hG4bK-b", cseq=2)
    dialog, out = ua.accept(second.tx, b"v=0\r\n")
    (ok,) = sent(out)
    assert r401.to.tag == ok.to.tag == dialog.local_tag
    assert r401.to.tag is not None and len(r401.to.tag) >= 8  # §19.3: 32 bits of randomness


def test_to_tag_differs_per_call_and_per_from_tag(core: tuple[UserAgentCore, FakeClock]) -> None:
    ua, _ = core
    a = _invite(ua, branch="z9hG4bK-1", call_id="one@x")
    b = _invite(ua, branch="z9hG4bK-2", call_id="two@x")
    c = _invite(ua, branch="z9hG4bK-3", call_id="one@x", cseq=5)
    tags = [sent(ua.respond(ev.tx, 486))[0].to.tag for ev in (a, b, c)]
    assert tags[0] != tags[1]  # another Call-ID
    assert tags[0] == tags[2]  # same Call-ID and From tag
    other = UserAgentCore(UaConfig(), FakeClock())
    d = _invite(other, branch="z9hG4bK-1", call_id="one@x")
    assert sent(other.respond(d.tx, 486))[0].to.tag != tags[0]  # keyed per process (§19.3)


# ---------------------------------------------------------------- ACK matching


def test_ack_with_another_branch_matches_by_fallback_key(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    """An ACK for a non-2xx final whose branch differs from the INVITE's (SIPp, RFC 2543
    peers) still stops Timer G and moves the transaction to Confirmed (§17.2.1)."""
    ua, clock = core
    ev = _invite(ua, branch="z9hG4bK-inv")
    (r403,) = sent(ua.respond(ev.tx, 403))
    ua.receive(request("ACK", branch="z9hG4bK-other", to_tag=r403.to.tag), SRC)
    assert ev.tx.state == TxState.CONFIRMED
    assert ua.counters["stray_acks"] == 0
    clock.advance(1.0)
    assert sent(ua.poll()) == []  # no Timer G retransmission after the ACK
    clock.advance(5.0)  # Timer I = T4
    ua.poll()
    assert ua.transaction_count == 0


def test_ack_fallback_needs_the_right_to_tag_and_cseq(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    ua, clock = core
    ev = _invite(ua, branch="z9hG4bK-inv")
    (r403,) = sent(ua.respond(ev.tx, 403))
    ua.receive(request("ACK", branch="z9hG4bK-x", to_tag="not-ours"), SRC)
    ua.receive(request("ACK", branch="z9hG4bK-y", to_tag=r403.to.tag, cseq=7), SRC)
    assert ev.tx.state == TxState.COMPLETED
    assert ua.counters["stray_acks"] == 2
    clock.advance(0.5)
    assert [r.status for r in sent(ua.poll())] == [403]  # still retransmitting


# ---------------------------------------------------------------- overlapping INVITEs


def test_reinvite_while_a_reinvite_is_pending_is_500_with_retry_after(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    """§14.2: a second INVITE before our final response to a first one with a lower CSeq on
    the same dialog gets 500 with a Retry-After of 0-10 s (491 is for glare with our offer)."""
    ua, _ = core
    dialog = _confirmed(ua)
    tag = dialog.local_tag
    out = ua.receive(request(branch="z9hG4bK-r1", cseq=2, to_tag=tag, body=SDP, extra=CT), SRC)
    (first,) = events(out)
    assert isinstance(first, ReofferReceived)
    out = ua.receive(request(branch="z9hG4bK-r2", cseq=3, to_tag=tag, body=SDP, extra=CT), SRC)
    assert events(out) == []
    (busy,) = [r for r in sent(out) if r.status >= 200]
    assert busy.status == 500
    retry = busy.headers.get("Retry-After") or ""
    assert retry.isdigit() and 0 <= int(retry) <= 10
    # the first re-INVITE is still answerable, and the dialog lives on
    (ok,) = sent(ua.respond(first.tx, 200, body=b"v=0\r\n"))
    assert ok.status == 200 and ua.dialog_count == 1


def test_update_while_a_reinvite_is_pending_is_500_with_retry_after(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    """RFC 3311 §5.2: an UPDATE offer while we owe an answer to a received offer: 500 +
    Retry-After."""
    ua, _ = core
    dialog = _confirmed(ua)
    tag = dialog.local_tag
    ua.receive(request(branch="z9hG4bK-r1", cseq=2, to_tag=tag, body=SDP, extra=CT), SRC)
    out = ua.receive(
        request("UPDATE", branch="z9hG4bK-u", cseq=3, to_tag=tag, body=SDP, extra=CT), SRC
    )
    (resp,) = sent(out)
    assert resp.status == 500 and resp.headers.get("Retry-After") is not None


def test_ack_of_a_reinvite_2xx_carries_its_answer_up(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    """§14.2: an offerless re-INVITE gets our offer in the 2xx; the answer in its ACK is handed
    to call control (the initial ACK is CallConfirmed, a re-INVITE's is ReinviteAcked)."""
    ua, _ = core
    dialog = _confirmed(ua)
    out = ua.receive(request(branch="z9hG4bK-r1", cseq=2, to_tag=dialog.local_tag), SRC)
    (ev,) = events(out)
    assert isinstance(ev, ReofferReceived) and not ev.tx.request.body
    ua.respond(ev.tx, 200, body=SDP)
    ack = request("ACK", branch="z9hG4bK-a2", cseq=2, to_tag=dialog.local_tag, body=SDP, extra=CT)
    assert events(ua.receive(ack, SRC)) == [ReinviteAcked(dialog, SDP)]
    # a retransmitted ACK is not handed up twice
    assert events(ua.receive(ack, SRC)) == []


def _reinvite_answered(ua: UserAgentCore) -> Dialog:
    """A confirmed call whose re-INVITE (with an offer) we answered 200, not yet ACKed."""
    dialog = _confirmed(ua)
    out = ua.receive(
        request(branch="z9hG4bK-r1", cseq=2, to_tag=dialog.local_tag, body=SDP, extra=CT), SRC
    )
    (ev,) = events(out)
    assert isinstance(ev, ReofferReceived)
    ua.respond(ev.tx, 200, body=b"v=0\r\n")
    return dialog


def test_a_reinvite_2xx_never_acknowledged_ends_the_call_with_a_bye(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    """§13.3.1.4: no ACK for a 2xx within 64*T1: the UAS SHOULD end the session with a BYE.
    That holds for a re-INVITE's 2xx as for the first INVITE's: the call ends as that one's
    does (a BYE, then CallEnded "ack_timeout"), not only the retransmissions."""
    ua, clock = core
    dialog = _reinvite_answered(ua)
    ended: list[object] = []
    byes: list[str] = []
    while clock.now() < 100 + 64 * 0.5 + 1:
        clock.advance(0.25)
        out = ua.poll()
        ended += events(out)
        byes += [r.call_id for r in requests(out) if r.method == "BYE"]
    assert ended == [CallEnded(dialog, "ack_timeout")]
    assert byes and ua.dialog_count == 0


def test_new_invite_while_the_first_is_pending(core: tuple[UserAgentCore, FakeClock]) -> None:
    """A second out-of-dialog INVITE (new branch, higher CSeq) while the first is unanswered is
    its own transaction: both are handed up, and answering one leaves the other intact."""
    ua, _ = core
    first = _invite(ua, branch="z9hG4bK-1")
    second = _invite(ua, branch="z9hG4bK-2", cseq=2)
    assert first.tx is not second.tx
    assert ua.transaction_count == 2
    dialog, _ = ua.accept(second.tx, b"v=0\r\n")
    (r, *_) = sent(ua.respond(first.tx, 486))
    assert r.status == 486 and r.to.tag == dialog.local_tag
    assert ua.dialog_count == 1


def test_merged_invite_on_another_branch_is_482(core: tuple[UserAgentCore, FakeClock]) -> None:
    """§8.2.2.2: the same INVITE (Call-ID, From tag, CSeq) arriving on a second branch while
    the first is being set up, or after it was answered, is refused with 482: one call, one
    dialog, not two."""
    ua, clock = core
    first = _invite(ua, branch="z9hG4bK-1")
    out = ua.receive(request(body=SDP, extra=CT, branch="z9hG4bK-2"), SRC)
    assert [r.status for r in sent(out)] == [482] and events(out) == []
    dialog, _ = ua.accept(first.tx, b"v=0\r\n")
    out = ua.receive(request(body=SDP, extra=CT, branch="z9hG4bK-3"), SRC)
    assert [r.status for r in sent(out)] == [482] and events(out) == []
    assert ua.dialog_count == 1 and ua.counters["merged_requests"] == 2
    # once the first transaction is over (Timer L), the key is forgotten: no leak
    ua.receive(request("ACK", branch="z9hG4bK-ack", to_tag=dialog.local_tag), SRC)
    clock.advance(40)
    ua.poll()
    assert ua._invites == {}


def test_resent_invite_after_a_challenge_with_the_same_cseq_is_not_merged(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    """A UAC that answers the 401 without incrementing CSeq (against §22.2) is still served:
    the rejected first transaction does not make the second a merged request."""
    ua, _ = core
    first = _invite(ua, branch="z9hG4bK-a")
    (r401,) = sent(ua.respond(first.tx, 401))
    ua.receive(request("ACK", branch="z9hG4bK-a", to_tag=r401.to.tag), SRC)
    second = _invite(ua, branch="z9hG4bK-b")
    assert second.tx is not first.tx


# ---------------------------------------------------------------- Timer H, CANCEL after 2xx


def test_timer_h_ends_a_non_2xx_final_never_acked(core: tuple[UserAgentCore, FakeClock]) -> None:
    """§17.2.1: Timer G retransmits at T1, 2T1, ... capped at T2; Timer H (64*T1) gives up."""
    ua, clock = core
    ev = _invite(ua)
    ua.respond(ev.tx, 486)
    times: list[float] = []
    while clock.now() < 100 + 32 + 1:
        clock.advance(0.25)
        if any(r.status == 486 for r in sent(ua.poll())):
            times.append(round(clock.now() - 100, 2))
    assert times[:5] == [0.5, 1.5, 3.5, 7.5, 11.5]  # intervals 0.5, 1, 2, 4, 4 (T2)
    assert times[-1] < 32
    assert ev.tx.state == TxState.TERMINATED
    assert ua.transaction_count == 0
    assert ua.next_deadline() is None


def test_cancel_after_200_gets_200_and_no_487(core: tuple[UserAgentCore, FakeClock]) -> None:
    """§9.2: a CANCEL after the final response has no effect on the INVITE; the CANCEL itself
    still gets 200 (its INVITE transaction still exists, in RFC 6026 Accepted)."""
    ua, _ = core
    ev = _invite(ua)
    dialog, _ = ua.accept(ev.tx, b"v=0\r\n")
    out = ua.receive(request("CANCEL"), SRC)
    statuses = [(r.status, r.cseq.method) for r in sent(out)]
    assert statuses == [(200, "CANCEL")]
    assert events(out) == []
    ua.receive(request("ACK", branch="z9hG4bK-ack", to_tag=dialog.local_tag), SRC)
    out = ua.receive(request("BYE", branch="z9hG4bK-bye", cseq=2, to_tag=dialog.local_tag), SRC)
    assert events(out) == [CallEnded(dialog, "remote_bye")]


# ---------------------------------------------------------------- TimerQueue


@dataclass(eq=False)
class Owner:
    timer_generation: dict[str, int] = field(default_factory=dict)
    fired: list[tuple[str, float]] = field(default_factory=list)
    queue: TimerQueue | None = None
    reschedule: float | None = None

    def on_timer(self, name: str, now: float) -> None:
        self.fired.append((name, now))
        if self.queue is not None and self.reschedule is not None:
            self.queue.schedule(self, name, now + self.reschedule)


def test_timer_queue_orders_cancels_and_rearms() -> None:
    q = TimerQueue()
    a, b = Owner(), Owner()
    q.schedule(a, "x", 5.0)
    q.schedule(b, "y", 3.0)
    q.schedule(a, "z", 4.0)
    assert q.next_deadline() == 3.0
    q.cancel(b, "y")
    assert q.next_deadline() == 4.0  # cancelled entries are skipped lazily
    q.schedule(a, "x", 10.0)  # re-arming replaces the earlier deadline
    assert q.fire_due(6.0) == 1
    assert a.fired == [("z", 6.0)] and b.fired == []
    assert q.fire_due(9.99) == 0
    assert q.fire_due(10.0) == 1
    assert a.fired[-1] == ("x", 10.0)
    assert q.next_deadline() is None and a.timer_generation == {}
    q.cancel(a, "never-armed")  # no-op


def test_a_cancelled_timer_keeps_no_reference_to_its_owner() -> None:
    # A dialog's 32 s give-up timer is cancelled by the ACK: it must not keep the dialog (and
    # the call hanging off it) alive until it would have fired.
    q = TimerQueue()
    keep = Owner()
    q.schedule(keep, "later", 100.0)
    owner = Owner()
    q.schedule(owner, "give-up", 32.0)
    q.schedule(owner, "retransmit", 0.5)
    q.schedule(owner, "retransmit", 1.0)  # re-armed: the first entry is dead too
    gone = weakref.ref(owner)
    q.cancel(owner, "give-up")
    q.cancel(owner, "retransmit")
    del owner
    assert gone() is None
    assert len(q) == 1 and q.next_deadline() == 100.0
    assert q.fire_due(100.0) == 1 and keep.fired == [("later", 100.0)]


def test_dead_timer_entries_do_not_pile_up() -> None:
    q = TimerQueue()
    live = [Owner() for _ in range(10)]
    for i, owner in enumerate(live):
        q.schedule(owner, "t", 1000.0 + i)
    for _ in range(5000):  # long timers armed and cancelled, as at a high call rate
        owner = Owner()
        q.schedule(owner, "session", 1800.0)
        q.cancel(owner, "session")
    assert len(q) == 10
    assert len(q._heap) <= 2 * 10 + 64 + 1
    assert q.fire_due(2000.0) == 10
    assert all(o.fired == [("t", 2000.0)] for o in live)


def test_timers_armed_while_the_heap_is_rebuilt_inside_fire_due() -> None:
    # on_timer arms and cancels timers (as the UA does), so schedule() rebuilds the heap that
    # fire_due is walking: every live timer must still fire exactly once, re-armed ones too.
    q = TimerQueue()

    @dataclass(eq=False)
    class Churner:
        timer_generation: dict[str, int] = field(default_factory=dict)
        fired: list[float] = field(default_factory=list)

        def on_timer(self, name: str, now: float) -> None:
            self.fired.append(now)
            for _ in range(100):
                dead = Owner()
                q.schedule(dead, "x", now + 50)
                q.cancel(dead, "x")
            q.schedule(self, name, now + 1.0)
            if len(self.fired) == 1:
                q.schedule(late, "due-now", now)  # armed after the rebuild, due at once

    late = Owner()
    churner = Churner()
    q.schedule(churner, "tick", 1.0)
    others = [Owner() for _ in range(5)]
    for owner in others:
        q.schedule(owner, "once", 1.0)
    assert q.fire_due(1.0) == 7
    assert late.fired == [("due-now", 1.0)]
    assert q.fire_due(2.0) == 1
    assert churner.fired == [1.0, 2.0]
    assert all(o.fired == [("once", 1.0)] for o in others)
    assert q.next_deadline() == 3.0 and len(q) == 1


def test_timer_queue_fires_due_timers_in_deadline_order_and_reschedules() -> None:
    q = TimerQueue()
    order: list[str] = []

    @dataclass(eq=False)
    class Recorder:
        name: str
        timer_generation: dict[str, int] = field(default_factory=dict)

        def on_timer(self, timer: str, now: float) -> None:
            order.append(self.name)

    for i, deadline in enumerate([3.0, 1.0, 2.0, 1.0]):
        q.schedule(Recorder(f"r{i}"), "t", deadline)
    assert q.fire_due(5.0) == 4
    assert order == ["r1", "r3", "r2", "r0"]  # ties in scheduling order
    periodic = Owner(queue=q, reschedule=1.0)
    q.schedule(periodic, "tick", 1.0)
    assert q.fire_due(1.5) == 1  # the re-armed tick (2.0) is not due yet
    assert q.fire_due(3.0) == 1  # the 2.5 deadline fires (at 3.0) and re-arms for 4.0
    assert [t for _, t in periodic.fired] == [1.5, 3.0]
    assert q.next_deadline() == 4.0


def test_ua_next_deadline_follows_its_timers(core: tuple[UserAgentCore, FakeClock]) -> None:
    ua, clock = core
    assert ua.next_deadline() is None
    ev = _invite(ua)
    ua.respond(ev.tx, 486)
    assert ua.next_deadline() == pytest.approx(100.5)  # Timer G
    ua.receive(request("ACK", to_tag=ev.tx.to_tag), SRC)
    assert ua.next_deadline() == pytest.approx(105.0)  # only Timer I (T4) remains
    clock.advance(5)
    assert [o for o in ua.poll() if isinstance(o, Send)] == []
    assert ua.next_deadline() is None


# ---------------------------------------------------------------- bounded state


def test_requests_with_made_up_methods_leave_bounded_state(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    """A method is any token (RFC 3261 §25.1): a flood of made-up ones must not grow the core's
    counters by a key each (they are answered 501 and counted as OTHER)."""
    ua, _ = core
    for i in range(500):
        out = ua.receive(request(f"X{i}", branch=f"z9hG4bK-m{i}", call_id=f"m{i}@h"), SRC)
        assert [r.status for r in sent(out)] == [501]
    assert ua.counters["request_OTHER"] == 500
    assert len(ua.counters) < 20
    ua.receive(request("OPTIONS", branch="z9hG4bK-o"), SRC)
    assert ua.counters["request_OPTIONS"] == 1


def test_a_dialog_s_contact_address_replaces_the_configured_one_for_its_life(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    """A call that came to a contact registered from behind a NAT gives the NAT's address in
    every Contact of the dialog (the 200, a re-INVITE's 2xx); other dialogs keep the
    configured one."""
    ua, _ = core
    ev = _invite(ua)
    dialog, out = ua.accept(ev.tx, b"v=0\r\n", contact_address="198.51.100.9:40001")
    (ok,) = [r for r in sent(out) if r.status == 200]
    assert ok.headers.get("Contact") == "<sip:telepath@198.51.100.9:40001>"
    ua.receive(request("ACK", branch="z9hG4bK-ack", to_tag=dialog.local_tag), SRC)
    out = ua.receive(
        request(branch="z9hG4bK-r1", cseq=2, to_tag=dialog.local_tag, body=SDP, extra=CT), SRC
    )
    (reoffer,) = events(out)
    assert isinstance(reoffer, ReofferReceived)
    (again,) = sent(ua.respond(reoffer.tx, 200, body=b"v=0\r\n"))
    assert again.headers.get("Contact") == "<sip:telepath@198.51.100.9:40001>"
    other = _invite(ua, call_id="call-2@192.0.2.10", branch="z9hG4bK-2")
    _, out = ua.accept(other.tx, b"v=0\r\n")
    (plain,) = [r for r in sent(out) if r.status == 200]
    assert plain.headers.get("Contact") == "<sip:telepath@203.0.113.5:5060>"


def test_a_crlf_keep_alive_datagram_is_a_keep_alive_not_a_parse_error(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    """Phones and carriers send CRLF CRLF (or a lone CRLF) to keep a NAT mapping open: counted
    as keep-alives, nothing answered — not parse errors, which an operator watches for
    broken peers."""
    ua, _ = core
    for data in (b"\r\n\r\n", b"\r\n", b"\n"):
        assert ua.receive(data, SRC) == []
    assert ua.counters["keepalives"] == 3
    assert ua.counters["parse_errors"] == 0
    ua.receive(b"\x00garbage\r\n\r\n", SRC)
    assert ua.counters["parse_errors"] == 1


# ---------------------------------------------------------------- target refresh


def _moving_offer(method: str, dialog: Dialog) -> bytes:
    """A re-offer in ``dialog`` whose Contact moves the caller to 192.0.2.99:5072."""
    return request(
        method,
        branch="z9hG4bK-tr",
        cseq=2,
        to_tag=dialog.local_tag,
        body=SDP,
        extra="Content-Type: application/sdp\r\n",
    ).replace(b"Contact: <sip:bob@192.0.2.10:5070>", b"Contact: <sip:bob@192.0.2.99:5072>")


@pytest.mark.parametrize("method", ["INVITE", "UPDATE"])
def test_an_accepted_re_offer_s_contact_is_the_dialog_s_new_target(
    core: tuple[UserAgentCore, FakeClock], method: str
) -> None:
    """§12.2.2 (and RFC 3311 §5.2 for UPDATE): a target refresh request's Contact replaces the
    remote target once accepted; our BYE then goes to it (it went to the INVITE's Contact)."""
    ua, _ = core
    dialog = _confirmed(ua)
    (ev,) = events(ua.receive(_moving_offer(method, dialog), SRC))
    assert str(dialog.remote_target) == "sip:bob@192.0.2.10:5070"  # not before the answer
    ua.respond(ev.tx, 200, body=b"v=0\r\n")  # type: ignore[attr-defined]
    assert str(dialog.remote_target) == "sip:bob@192.0.2.99:5072"
    if method == "INVITE":
        ua.receive(request("ACK", branch="z9hG4bK-tra", cseq=2, to_tag=dialog.local_tag), SRC)
    (bye,) = requests(ua.hangup(dialog))
    assert str(bye.uri) == "sip:bob@192.0.2.99:5072"


def test_a_refused_re_offer_leaves_the_target(core: tuple[UserAgentCore, FakeClock]) -> None:
    ua, _ = core
    dialog = _confirmed(ua)
    (ev,) = events(ua.receive(_moving_offer("INVITE", dialog), SRC))
    ua.respond(ev.tx, 488)  # type: ignore[attr-defined]
    assert str(dialog.remote_target) == "sip:bob@192.0.2.10:5070"


@dataclass(eq=False)
class FailingOwner(Owner):
    def on_timer(self, name: str, now: float) -> None:
        super().on_timer(name, now)
        raise RuntimeError("a bug in one timer's handler")


def test_a_timer_that_raises_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    # One call's timer whose handler fails (a bug, or input no check caught) must not take
    # every other call's timers down with it: the queue logs it and goes on (the transport
    # re-arms from next_deadline, which the exception would have skipped).
    q = TimerQueue()
    before, bad, after = Owner(), FailingOwner(), Owner()
    q.schedule(before, "t", 1.0)
    q.schedule(bad, "t", 2.0)
    q.schedule(after, "t", 3.0)
    q.schedule(after, "later", 10.0)
    with caplog.at_level("ERROR", logger="telepath.sip.timers"):
        assert q.fire_due(5.0) == 3
    assert before.fired == [("t", 5.0)] and bad.fired == [("t", 5.0)]
    assert after.fired == [("t", 5.0)]
    assert q.next_deadline() == 10.0 and bad.timer_generation == {}
    assert "a bug in one timer's handler" in caplog.text


def test_a_dialog_whose_bye_cannot_be_built_leaves_the_other_calls_timers(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    ua, clock = core
    extra = CT + "Supported: timer\r\nSession-Expires: 120\r\n"
    first = ua.receive(request(body=SDP, extra=extra), SRC)
    (ev,) = events(first)
    assert isinstance(ev, InviteReceived)
    broken, _ = ua.accept(ev.tx, b"v=0\r\n")
    ua.receive(request("ACK", branch="z9hG4bK-ack", to_tag=broken.local_tag), SRC)
    broken.route_set = ["garbage"]  # what no check may ever let through: the BYE raises
    second = ua.receive(request(body=SDP, extra=extra, call_id="call-2@x", branch="z9hG4bK-2"), SRC)
    (ev2,) = events(second)
    assert isinstance(ev2, InviteReceived)
    clock.advance(10.0)
    dialog, _ = ua.accept(ev2.tx, b"v=0\r\n")
    ua.receive(
        request("ACK", branch="z9hG4bK-ack2", call_id="call-2@x", to_tag=dialog.local_tag), SRC
    )
    clock.advance(120 - 32 + 0.1 - 10.0)  # 32 s before the first call's session expiry
    assert events(ua.poll()) == []  # the first call's expires: its BYE fails, and is logged
    clock.advance(10.0)
    out = ua.poll()
    assert CallEnded(dialog, "session_expired") in events(out)
    assert any(b.method == "BYE" and b.call_id == "call-2@x" for b in requests(out))


def test_an_unacknowledged_reinvite_2xx_after_our_bye_sends_no_second_bye(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    """Our BYE is already out (§15) when the re-INVITE's 2xx gives up: the call ends as that
    BYE's transaction says, with no second BYE."""
    ua, clock = core
    dialog = _reinvite_answered(ua)
    clock.advance(10.0)
    (bye,) = requests(ua.hangup(dialog))
    assert bye.method == "BYE"
    branches = {bye.top_via.branch}
    ended: list[object] = []
    while clock.now() < 100 + 64 * 0.5 + 5:  # past the 2xx's give-up, before the BYE's Timer F
        clock.advance(0.25)
        out = ua.poll()
        ended += events(out)
        branches |= {r.top_via.branch for r in requests(out) if r.method == "BYE"}
    assert ended == [] and len(branches) == 1
