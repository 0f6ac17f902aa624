"""RFC 4028 session timers when the caller asks us to refresh: UPDATE or re-INVITE at half the
interval, and what each answer to our refresh does. The UA core with bytes and a fake clock."""

from __future__ import annotations

import pytest

from telepath.clock import FakeClock
from telepath.sip.dialog import Dialog
from telepath.sip.message import Request, Response, make_response
from telepath.sip.ua import (
    CallEnded,
    InviteReceived,
    Output,
    ReofferReceived,
    SessionRefreshed,
    UaConfig,
    UserAgentCore,
)
from tests.unit.sip.test_ua import SDP, SRC, events, request, requests, sent

pytestmark = pytest.mark.unit

ANSWER = (
    b"v=0\r\no=- 7 1 IN IP4 203.0.113.5\r\ns=-\r\nc=IN IP4 203.0.113.5\r\nt=0 0\r\n"
    b"m=audio 20000 RTP/AVP 0\r\n"
)
WITH_UPDATE = "Allow: INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE\r\n"
WITHOUT_UPDATE = "Allow: INVITE, ACK, BYE, CANCEL, OPTIONS\r\n"


@pytest.fixture
def core() -> tuple[UserAgentCore, FakeClock]:
    clock = FakeClock(100.0)
    return UserAgentCore(UaConfig(contact_host="203.0.113.5"), clock), clock


def call(ua: UserAgentCore, timer: str, allow: str = WITH_UPDATE) -> tuple[Dialog, Response]:
    """An answered, acknowledged call whose INVITE carried ``timer`` headers; our 200 with it."""
    out = ua.receive(
        request(body=SDP, extra=f"Content-Type: application/sdp\r\n{allow}{timer}"), SRC
    )
    (ev,) = events(out)
    assert isinstance(ev, InviteReceived)
    dialog, out = ua.accept(ev.tx, ANSWER)
    (ok,) = sent(out)
    ua.receive(request("ACK", branch="z9hG4bK-ack", to_tag=dialog.local_tag), SRC)
    return dialog, ok


def advance(ua: UserAgentCore, clock: FakeClock, seconds: float) -> list[Output]:
    """Time passes in 0.25 s steps (so retransmission timers fire in order)."""
    out: list[Output] = []
    end = clock.now() + seconds
    while clock.now() < end:
        clock.advance(min(0.25, end - clock.now()))
        out += ua.poll()
    return out


def answer(req: Request, status: int, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    if body:
        headers = [*headers, ("Content-Type", "application/sdp")]
    return make_response(req, status, headers=headers, to_tag="from1", body=body).to_bytes()


REFRESH_ME = "Supported: timer\r\nSession-Expires: 90;refresher=uas\r\n"


def first_refresh(
    ua: UserAgentCore, clock: FakeClock, allow: str = WITH_UPDATE
) -> tuple[Dialog, Request]:
    """A call whose caller asks us to refresh (90 s), and our refresh 45 s later."""
    dialog, _ = call(ua, REFRESH_ME, allow=allow)
    (refresh,) = requests(advance(ua, clock, 45.1))
    assert refresh.method == ("UPDATE" if allow == WITH_UPDATE else "INVITE")
    return dialog, refresh


def test_refresher_uas_is_honoured_and_refreshed_by_update(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    ua, clock = core
    dialog, ok = call(ua, REFRESH_ME)
    # §9: a refresher parameter in the request is copied; Require: timer as the UAC supports it
    assert ok.headers.get("Session-Expires") == "90;refresher=uas"
    assert ok.headers.get("Require") == "timer"
    assert requests(advance(ua, clock, 44.9)) == []
    (update,) = requests(advance(ua, clock, 0.2))  # §10: half the interval
    assert update.method == "UPDATE" and update.body == b""
    assert update.headers.get("Session-Expires") == "90;refresher=uac"  # we, its UAC, refresh
    assert "timer" in (update.headers.get("Supported") or "")
    assert update.headers.get("Contact") == "<sip:telepath@203.0.113.5:5060>"  # target refresh
    assert str(update.uri) == "sip:bob@192.0.2.10:5070"  # the caller's Contact (§12.2.1.1)
    assert update.from_.tag == dialog.local_tag and update.to.tag == "from1"
    assert update.cseq.seq == 2
    out = ua.receive(answer(update, 200, [("Session-Expires", "90;refresher=uac")]), SRC)
    assert events(out) == []
    # refreshed: nothing at the old expiry, the next UPDATE half an interval after the 200
    out = advance(ua, clock, 45.1)
    (again,) = requests(out)
    assert again.method == "UPDATE" and again.cseq.seq == 3
    assert events(out) == []


def test_without_update_in_allow_the_refresh_is_a_reinvite_with_our_last_sdp(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    ua, clock = core
    dialog, invite = first_refresh(ua, clock, WITHOUT_UPDATE)
    assert invite.body == ANSWER  # the same session, version unchanged (RFC 3264 §8)
    assert invite.headers.get("Session-Expires") == "90;refresher=uac"
    assert ua.receive(answer(invite, 100, []), SRC) == []
    ok = answer(invite, 200, [("Session-Expires", "90;refresher=uac")], body=SDP)
    out = ua.receive(ok, SRC)
    (ack,) = requests(out)
    assert ack.method == "ACK" and ack.cseq.seq == invite.cseq.seq and ack.cseq.method == "ACK"
    assert ack.top_via.branch != invite.top_via.branch  # §13.2.2.4: its own transaction
    assert events(out) == [SessionRefreshed(dialog, SDP)]
    # a retransmitted 2xx is acknowledged again, and is no new refresh
    out = ua.receive(ok, SRC)
    assert [r.method for r in requests(out)] == ["ACK"] and events(out) == []
    (next_one,) = requests(advance(ua, clock, 45.1))
    assert next_one.method == "INVITE" and next_one.cseq.seq == invite.cseq.seq + 1


def test_update_refused_falls_back_to_reinvite(core: tuple[UserAgentCore, FakeClock]) -> None:
    ua, clock = core
    _, update = first_refresh(ua, clock)
    (invite,) = requests(ua.receive(answer(update, 501, []), SRC))
    assert invite.method == "INVITE" and invite.body == ANSWER


@pytest.mark.parametrize("status", [408, 481])
def test_refresh_answered_408_or_481_ends_the_call_with_bye(
    core: tuple[UserAgentCore, FakeClock], status: int
) -> None:
    ua, clock = core
    dialog, update = first_refresh(ua, clock)
    out = ua.receive(answer(update, status, []), SRC)
    assert [r.method for r in requests(out)] == ["BYE"]
    assert events(out) == [CallEnded(dialog, "refresh_failed")]


def test_refresh_without_any_answer_ends_the_call(core: tuple[UserAgentCore, FakeClock]) -> None:
    ua, clock = core
    dialog, _ = call(ua, "Supported: timer\r\nSession-Expires: 1800;refresher=uas\r\n")
    assert requests(advance(ua, clock, 899.9)) == []
    out = advance(ua, clock, 0.2 + 32.5)  # Timer F: 64*T1
    methods = [r.method for r in requests(out)]
    assert methods.count("UPDATE") > 3  # retransmitted over UDP (Timer E)
    assert methods[-1] == "BYE"
    assert events(out) == [CallEnded(dialog, "refresh_failed")]


def test_reinvite_refresh_rejected_is_acknowledged_and_the_call_goes_on(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    ua, clock = core
    dialog, invite = first_refresh(ua, clock, WITHOUT_UPDATE)
    rejected = answer(invite, 488, [])
    (ack,) = requests(ua.receive(rejected, SRC))
    # §17.1.1.3: the transaction's own ACK, on the INVITE's branch
    assert ack.method == "ACK" and ack.top_via.branch == invite.top_via.branch
    assert [r.method for r in requests(ua.receive(rejected, SRC))] == ["ACK"]
    # not refreshed: the session expires as §10 says, with a BYE
    out = advance(ua, clock, 90 - 30 - 45.1 + 0.2)
    assert events(out) == [CallEnded(dialog, "session_expired")]
    assert requests(out)[-1].method == "BYE"


def test_422_to_a_refresh_asks_again_with_the_callers_min_se(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    ua, clock = core
    _, update = first_refresh(ua, clock)
    (retry,) = requests(ua.receive(answer(update, 422, [("Min-SE", "150")]), SRC))
    assert retry.method == "UPDATE" and retry.headers.get("Session-Expires") == "150;refresher=uac"
    ua.receive(answer(retry, 200, [("Session-Expires", "150;refresher=uac")]), SRC)
    assert requests(advance(ua, clock, 74.8)) == []
    assert [r.method for r in requests(advance(ua, clock, 0.4))] == ["UPDATE"]


def test_caller_taking_over_refreshes_stops_ours(core: tuple[UserAgentCore, FakeClock]) -> None:
    ua, clock = core
    dialog, update = first_refresh(ua, clock)
    ua.receive(answer(update, 200, [("Session-Expires", "90;refresher=uas")]), SRC)
    out = advance(ua, clock, 59.8)  # its UAS (the caller) refreshes now: no UPDATE from us
    assert requests(out) == [] and events(out) == []
    out = advance(ua, clock, 0.4)
    assert events(out) == [CallEnded(dialog, "session_expired")]


def test_uac_without_timer_support_behind_a_proxy_that_asked_for_one(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    ua, clock = core
    _, ok = call(ua, "Session-Expires: 100\r\n")
    # §9: the UAC cannot refresh, so we do; no Require: timer towards a UAC without it
    assert ok.headers.get("Session-Expires") == "100;refresher=uas"
    assert ok.headers.get("Require") is None
    (update,) = requests(advance(ua, clock, 50.1))
    assert update.method == "UPDATE"


def test_callers_refresh_renegotiates_and_only_invite_update_2xx_carry_the_timer(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    ua, clock = core
    dialog, ok = call(ua, "Supported: timer\r\nSession-Expires: 120\r\n")
    assert ok.headers.get("Session-Expires") == "120;refresher=uac"
    tag = dialog.local_tag
    (opt,) = sent(ua.receive(request("OPTIONS", branch="z9hG4bK-o", cseq=2, to_tag=tag), SRC))
    assert opt.status == 200 and opt.headers.get("Session-Expires") is None
    clock.advance(80)
    ua.poll()
    # the caller refreshes with an UPDATE and hands refreshing to us
    upd = request(
        "UPDATE", branch="z9hG4bK-u", cseq=3, to_tag=tag, extra=f"{WITH_UPDATE}{REFRESH_ME}"
    )
    (ev,) = events(ua.receive(upd, SRC))
    assert isinstance(ev, ReofferReceived)
    (ok,) = sent(ua.respond(ev.tx, 200))
    assert ok.headers.get("Session-Expires") == "90;refresher=uas"
    # the old expiry (t = 88 s) passes: the refresh re-armed the timer; our UPDATE comes at 45 s
    out = advance(ua, clock, 45.1)
    assert [r.method for r in requests(out)] == ["UPDATE"] and events(out) == []


def test_callers_reinvite_while_our_reinvite_refresh_is_pending_is_491(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    ua, clock = core
    dialog, invite = first_refresh(ua, clock, WITHOUT_UPDATE)
    reinvite = request(
        "INVITE",
        branch="z9hG4bK-re",
        cseq=2,
        to_tag=dialog.local_tag,
        body=SDP,
        extra="Content-Type: application/sdp\r\n",
    )
    assert [r.status for r in sent(ua.receive(reinvite, SRC))] == [491]  # RFC 3261 §14.2


@pytest.mark.parametrize(
    ("timer", "expected"),
    [
        ("Supported: timer\r\nMin-SE: 3600\r\n", "3600;refresher=uac"),
        ("Supported: timer\r\nMin-SE: 600\r\n", "1800;refresher=uac"),  # ours is above it
        ("Supported: timer\r\nMin-SE: 3600;lr\r\n", "3600;refresher=uac"),  # a parameter
    ],
)
def test_the_interval_we_choose_is_not_below_the_requests_min_se(
    core: tuple[UserAgentCore, FakeClock], timer: str, expected: str
) -> None:
    """RFC 4028 §9: a UAS that asks for a timer the request did not (Supported: timer, no
    Session-Expires) MUST NOT choose an interval below the request's Min-SE. We chose our
    1800 s under a Min-SE of 3600."""
    ua, _ = core
    _, ok = call(ua, timer)
    assert ok.headers.get("Session-Expires") == expected


def test_a_callers_refresh_keeps_the_interval_above_its_min_se(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    """The same in a dialog (§9 applied to a session refresh request, §10)."""
    ua, _ = core
    dialog, _ = call(ua, "Supported: timer\r\nSession-Expires: 1800\r\n")
    upd = request(
        "UPDATE",
        branch="z9hG4bK-u",
        cseq=2,
        to_tag=dialog.local_tag,
        extra="Supported: timer\r\nMin-SE: 2400\r\n",
    )
    (ev,) = events(ua.receive(upd, SRC))
    assert isinstance(ev, ReofferReceived)
    (ok,) = sent(ua.respond(ev.tx, 200))
    assert ok.headers.get("Session-Expires") == "2400;refresher=uac"


@pytest.mark.parametrize("method", ["UPDATE", "INVITE"])
def test_a_refresh_in_the_dialog_below_our_min_se_is_422(
    core: tuple[UserAgentCore, FakeClock], method: str
) -> None:
    """RFC 4028 §9 and §10: a session refresh asking for less than our Min-SE (90 s) gets 422
    with our Min-SE, in a dialog as out of one; the UAS MUST NOT increase an interval it
    accepts. We answered 200 and silently raised 30 s to 90 s."""
    ua, clock = core
    dialog, _ = call(ua, "Supported: timer\r\nSession-Expires: 1800\r\n")
    refresh = request(
        method,
        branch="z9hG4bK-u",
        cseq=2,
        to_tag=dialog.local_tag,
        extra="Supported: timer\r\nSession-Expires: 30;refresher=uac\r\n",
    )
    out = ua.receive(refresh, SRC)
    assert events(out) == []
    (refused,) = [r for r in sent(out) if r.status >= 200]
    assert refused.status == 422 and refused.headers.get("Min-SE") == "90"
    assert refused.headers.get("Session-Expires") is None
    # the session keeps its 1800 s: no end at the refused interval
    assert events(advance(ua, clock, 60)) == []
    assert dialog.session_timer is not None and dialog.session_timer.interval == 1800


def test_a_2xx_to_our_reinvite_after_our_bye_is_still_acknowledged(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    """RFC 3261 §13.2.2.4: the UAC core MUST ACK every 2xx to its INVITE — also one that comes
    after we hung up (our BYE in flight, or answered), else the peer retransmits it for 32 s
    and may end the dialog its own way. It was dropped once the dialog left CONFIRMED."""
    ua, clock = core
    dialog, invite = first_refresh(ua, clock, WITHOUT_UPDATE)
    (bye,) = requests(ua.hangup(dialog))
    assert bye.method == "BYE"
    ok = answer(invite, 200, [("Session-Expires", "90;refresher=uac")], body=SDP)
    out = ua.receive(ok, SRC)
    (ack,) = requests(out)
    assert ack.method == "ACK" and ack.cseq.seq == invite.cseq.seq
    assert events(out) == []  # no refresh of a session that is ending
    # our BYE answered (the dialog over), then the 2xx again: ACKed again
    ended = events(ua.receive(answer(bye, 200, []), SRC))
    assert ended == [CallEnded(dialog, "local_bye")]
    (again,) = requests(ua.receive(ok, SRC))
    assert again.method == "ACK" and again.cseq.seq == invite.cseq.seq


@pytest.mark.parametrize("allow", [WITH_UPDATE, WITHOUT_UPDATE])
def test_a_2xx_to_our_refresh_moves_the_remote_target_to_its_contact(
    core: tuple[UserAgentCore, FakeClock], allow: str
) -> None:
    """RFC 3261 §12.2.1.2 and RFC 3311 §5.1: on a 2xx to a target refresh request of ours
    (our UPDATE or re-INVITE refresh), the UAC MUST take the Contact as the remote target: the
    ACK (for a re-INVITE) and later requests go there. They kept the INVITE's Contact."""
    ua, clock = core
    dialog, refresh = first_refresh(ua, clock, allow)
    moved = "<sip:bob@198.51.100.7:5080;transport=udp>"
    body = SDP if refresh.method == "INVITE" else b""
    ok = answer(refresh, 200, [("Contact", moved), ("Session-Expires", "90;refresher=uac")], body)
    acks = requests(ua.receive(ok, SRC))
    assert [str(a.uri) for a in acks] == (
        ["sip:bob@198.51.100.7:5080;transport=udp"] if refresh.method == "INVITE" else []
    )
    (bye,) = requests(ua.hangup(dialog))
    assert bye.method == "BYE" and str(bye.uri) == "sip:bob@198.51.100.7:5080;transport=udp"


def test_a_2xx_to_our_refresh_with_a_contact_that_does_not_parse_keeps_the_target(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    ua, clock = core
    dialog, update = first_refresh(ua, clock)
    ua.receive(answer(update, 200, [("Contact", "<>"), ("Session-Expires", "90")]), SRC)
    (bye,) = requests(ua.hangup(dialog))
    assert str(bye.uri) == "sip:bob@192.0.2.10:5070"


def test_a_too_short_interval_from_a_uac_without_timers_is_raised_not_refused(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    """A proxy put Session-Expires: 30 on the INVITE of a UAC that does not support timers: a
    422 would fail the call (the UAC cannot retry with Min-SE). RFC 4028 §8.1 (a proxy "cannot
    usefully reject the request"), and erratum 1687 for the UAS: raised to our Min-SE, and we
    refresh."""
    ua, _ = core
    dialog, ok = call(ua, "Session-Expires: 30\r\n")
    assert ok.status == 200
    assert ok.headers.get("Session-Expires") == "90;refresher=uas"
    assert "timer" not in (ok.headers.get("Require") or "")
    assert dialog.session_timer is not None and dialog.session_timer.we_refresh
