"""The UAS core driven with bytes and a fake clock: no sockets, no sleeps."""

from __future__ import annotations

import pytest

from telepath.bridges.custom.events import Dtmf as CustomDtmf
from telepath.clock import FakeClock
from telepath.sip.message import Request, Response, make_response
from telepath.sip.parser import parse_message
from telepath.sip.transaction import Source, TxState
from telepath.sip.ua import (
    CallConfirmed,
    CallEnded,
    DtmfInfo,
    InviteCancelled,
    InviteReceived,
    Output,
    ReferUpdate,
    ReofferReceived,
    Send,
    UaConfig,
    UserAgentCore,
)

pytestmark = pytest.mark.unit

SRC = Source("UDP", ("192.0.2.10", 5070))
SDP = (
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 0\r\n"
)


def request(
    method: str = "INVITE",
    *,
    branch: str = "z9hG4bK-1",
    cseq: int = 1,
    to_tag: str | None = None,
    call_id: str = "call-1@192.0.2.10",
    body: bytes = b"",
    extra: str = "",
    cseq_method: str | None = None,
    from_tag: str = "from1",
) -> bytes:
    to = "<sip:alice@gw.example>" + (f";tag={to_tag}" if to_tag else "")
    head = (
        f"{method} sip:alice@gw.example SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.10:5070;branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        f'From: "Bob" <sip:+15551230000@carrier.example>;tag={from_tag}\r\n'
        f"To: {to}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {cseq_method or method}\r\n"
        "Contact: <sip:bob@192.0.2.10:5070>\r\n"
        f"{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def reply(req: object, status: int) -> bytes:
    assert isinstance(req, Request)
    return make_response(req, status).to_bytes()


def _parsed(outputs: list[Output]) -> list[Request | Response]:
    return [parse_message(o.data) for o in outputs if isinstance(o, Send)]


def sent(outputs: list[Output]) -> list[Response]:
    """The responses among what the core sent."""
    return [m for m in _parsed(outputs) if isinstance(m, Response)]


def requests(outputs: list[Output]) -> list[Request]:
    """The requests among what the core sent (BYE, REFER, refreshes, ACKs)."""
    return [m for m in _parsed(outputs) if isinstance(m, Request)]


def events(outputs: list[Output]) -> list[object]:
    return [o for o in outputs if not isinstance(o, Send)]


@pytest.fixture
def core() -> tuple[UserAgentCore, FakeClock]:
    clock = FakeClock(100.0)
    return UserAgentCore(UaConfig(contact_host="203.0.113.5"), clock), clock


def answered(ua: UserAgentCore) -> tuple[InviteReceived, list[Output]]:
    out = ua.receive(request(body=SDP, extra="Content-Type: application/sdp\r\n"), SRC)
    assert [r.status for r in sent(out)] == [100]
    (ev,) = events(out)
    assert isinstance(ev, InviteReceived)
    return ev, out


def test_invite_answer_ack_bye(core: tuple[UserAgentCore, FakeClock]) -> None:
    ua, _ = core
    ev, _ = answered(ua)
    dialog, out = ua.accept(ev.tx, b"v=0\r\n")
    (ok,) = sent(out)
    assert ok.status == 200 and ok.to.tag == dialog.local_tag
    assert ok.headers.get("Contact") == "<sip:telepath@203.0.113.5:5060>"
    assert "INVITE" in (ok.headers.get("Allow") or "")
    out = ua.receive(request("ACK", branch="z9hG4bK-ack", to_tag=dialog.local_tag), SRC)
    assert events(out) == [CallConfirmed(dialog)]
    out = ua.receive(request("BYE", branch="z9hG4bK-bye", cseq=2, to_tag=dialog.local_tag), SRC)
    assert [r.status for r in sent(out)] == [200]
    assert events(out) == [CallEnded(dialog, "remote_bye")]
    assert ua.dialog_count == 0


def test_retransmitted_invite_gets_last_response_again(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    ua, _ = core
    ev, _ = answered(ua)
    ua.respond(ev.tx, 401, headers=[("WWW-Authenticate", 'Digest realm="x", nonce="n"')])
    out = ua.receive(request(body=SDP, extra="Content-Type: application/sdp\r\n"), SRC)
    assert [r.status for r in sent(out)] == [401]
    assert events(out) == []
    assert ua.counters["retransmissions_absorbed"] == 1


def test_a_lingering_transaction_keeps_the_response_as_bytes_only(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    # It lingers 32 s after its final response (RFC 6026): bytes and status, no parsed objects.
    ua, _ = core
    ev, _ = answered(ua)
    ua.respond(ev.tx, 486)
    assert ev.tx.status == 486
    assert not [v for v in vars(ev.tx).values() if isinstance(v, Response)]
    ua.receive(request("ACK", to_tag=ev.tx.to_tag), SRC)  # the non-2xx ACK still matches
    assert ev.tx.state == TxState.CONFIRMED


def test_non_2xx_final_retransmitted_until_ack(core: tuple[UserAgentCore, FakeClock]) -> None:
    ua, clock = core
    ev, _ = answered(ua)
    ua.respond(ev.tx, 403)
    clock.advance(0.5)
    assert [r.status for r in sent(ua.poll())] == [403]  # Timer G = T1
    clock.advance(1.0)
    assert [r.status for r in sent(ua.poll())] == [403]  # 2*T1
    ua.receive(request("ACK", to_tag=ev.tx.to_tag), SRC)
    clock.advance(10)
    assert sent(ua.poll()) == []
    assert ua.transaction_count == 0  # Timer I ended it


def test_2xx_retransmitted_then_bye_without_ack(core: tuple[UserAgentCore, FakeClock]) -> None:
    ua, clock = core
    ev, _ = answered(ua)
    dialog, _ = ua.accept(ev.tx, b"v=0\r\n")
    statuses: list[int] = []
    ended: list[object] = []
    requests: list[bytes] = []
    while clock.now() < 100 + 64 * 0.5 + 1:
        clock.advance(0.25)
        out = ua.poll()
        statuses += [r.status for r in sent(out)]
        ended += events(out)
        requests += [o.data for o in out if isinstance(o, Send) and not o.data.startswith(b"SIP/")]
    assert statuses.count(200) >= 6
    assert ended == [CallEnded(dialog, "ack_timeout")]
    # the BYE itself is retransmitted by its client transaction (Timer E) until answered
    assert requests and all(r.startswith(b"BYE sip:bob@192.0.2.10:5070 SIP/2.0") for r in requests)
    assert len({r.split(b"branch=")[1][:30] for r in requests}) == 1


def test_cancel_before_answer(core: tuple[UserAgentCore, FakeClock]) -> None:
    ua, _ = core
    ev, _ = answered(ua)
    out = ua.receive(request("CANCEL"), SRC)
    assert sorted(r.status for r in sent(out)) == [200, 487]
    assert events(out) == [InviteCancelled(ev.tx)]


def test_bye_on_the_early_dialog_ends_the_invite_with_487(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    """RFC 3261 §15: the caller may send BYE on the early dialog our 180 made (its To tag);
    §15.1.2: the BYE gets 200 and the pending INVITE 487, and the set-up is abandoned as a
    CANCEL abandons it — it matched no dialog and got 481, and the call was answered after."""
    ua, _ = core
    ev, _ = answered(ua)
    (ringing,) = sent(ua.respond(ev.tx, 180))
    tag = ringing.to.tag
    assert tag is not None
    out = ua.receive(request("BYE", branch="z9hG4bK-bye", cseq=2, to_tag=tag), SRC)
    assert [r.status for r in sent(out)] == [200, 487]
    assert all(r.to.tag == tag for r in sent(out))
    assert events(out) == [InviteCancelled(ev.tx)]
    with pytest.raises(ValueError, match="already answered"):
        ua.accept(ev.tx, b"v=0\r\n")
    again = ua.receive(request("BYE", branch="z9hG4bK-bye2", cseq=3, to_tag=tag), SRC)
    assert [r.status for r in sent(again)] == [481]  # the early dialog is over


def test_bye_on_the_early_dialog_of_a_challenged_call_still_ends_the_invite(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    """Every INVITE of a call gets the same To tag: when the challenged INVITE's transaction
    ended (Timer I, T4 = 5 s after the ACK of its 401), it removed the early dialog of the
    authenticated one — a caller hanging up after that got 481, and the call was answered."""
    ua, clock = core
    ev, _ = answered(ua)
    ua.respond(ev.tx, 401)
    ua.receive(request("ACK", to_tag=ev.tx.to_tag), SRC)
    out = ua.receive(
        request(branch="z9hG4bK-2", cseq=2, body=SDP, extra="Content-Type: application/sdp\r\n"),
        SRC,
    )
    (second,) = events(out)
    assert isinstance(second, InviteReceived)
    (ringing,) = sent(ua.respond(second.tx, 180))
    clock.advance(6)
    ua.poll()  # Timer I of the challenged INVITE
    tag = ringing.to.tag
    out = ua.receive(request("BYE", branch="z9hG4bK-bye", cseq=3, to_tag=tag), SRC)
    assert [r.status for r in sent(out)] == [200, 487]


def test_a_bye_with_another_to_tag_than_the_180_s_is_481(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    ua, _ = core
    ev, _ = answered(ua)
    ua.respond(ev.tx, 180)
    out = ua.receive(request("BYE", branch="z9hG4bK-bye", cseq=2, to_tag="other"), SRC)
    assert [r.status for r in sent(out)] == [481]
    assert events(out) == [] and not ev.tx.final_sent


def test_cancel_without_invite_is_481(core: tuple[UserAgentCore, FakeClock]) -> None:
    ua, _ = core
    out = ua.receive(request("CANCEL", branch="z9hG4bK-none"), SRC)
    assert [r.status for r in sent(out)] == [481]


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (request("OPTIONS"), 200),
        (request("BYE", to_tag="nope"), 481),
        (request("SUBSCRIBE"), 405),
        (request("OPTIONS", extra="Require: foo\r\n"), 420),
        (request("OPTIONS").replace(b"Max-Forwards: 70", b"Max-Forwards: 0"), 200),
        (request("OPTIONS", cseq_method="INVITE"), 400),
        (request("INVITE", extra="Session-Expires: 30\r\nSupported: timer\r\n"), 422),
        (request("OPTIONS").replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1), 505),
    ],
)
def test_out_of_dialog_answers(
    core: tuple[UserAgentCore, FakeClock], raw: bytes, status: int
) -> None:
    ua, _ = core
    statuses = [r.status for r in sent(ua.receive(raw, SRC))]
    assert statuses[-1] == status


def test_options_advertises_capabilities(core: tuple[UserAgentCore, FakeClock]) -> None:
    ua, _ = core
    (resp,) = sent(ua.receive(request("OPTIONS"), SRC))
    assert resp.headers.get("Accept") == "application/sdp"
    assert "INFO" in (resp.headers.get("Allow") or "")
    assert resp.headers.get("Supported") == "timer"


def test_options_is_refused_as_an_invite_would_be(core: tuple[UserAgentCore, FakeClock]) -> None:
    """RFC 3261 §11.2: the response to OPTIONS MUST be the one an INVITE would get — a
    draining or full gateway answers 503 with its Retry-After (probes mark it down), else 200."""
    ua, _ = core
    ua.refusing = lambda: "30"  # the application refuses every new INVITE now
    (refused,) = sent(ua.receive(request("OPTIONS"), SRC))
    assert refused.status == 503 and refused.headers.get("Retry-After") == "30"
    ua.refusing = lambda: None
    (ok,) = sent(ua.receive(request("OPTIONS", branch="z9hG4bK-o2", cseq=2), SRC))
    assert ok.status == 200


def _confirmed(ua: UserAgentCore) -> object:
    ev, _ = answered(ua)
    dialog, _ = ua.accept(ev.tx, b"v=0\r\n")
    ua.receive(request("ACK", branch="z9hG4bK-ack", to_tag=dialog.local_tag), SRC)
    return dialog


def test_options_in_a_dialog_is_not_refused(core: tuple[UserAgentCore, FakeClock]) -> None:
    """§11.2 is about OPTIONS outside a dialog; inside one it is answered as a re-INVITE would
    be, and a live call's re-INVITE is still served while the gateway drains or is full: an
    in-dialog OPTIONS keep-alive gets 200 (SBCs end a session whose keep-alive gets a non-2xx)."""
    ua, _ = core
    dialog = _confirmed(ua)
    ua.refusing = lambda: "5"  # new INVITEs refused: full, or draining
    tag = dialog.local_tag  # type: ignore[attr-defined]
    (ok,) = sent(ua.receive(request("OPTIONS", branch="z9hG4bK-o3", cseq=2, to_tag=tag), SRC))
    assert ok.status == 200 and ok.headers.get("Accept") == "application/sdp"


def test_info_dtmf_relay_and_dtmf(core: tuple[UserAgentCore, FakeClock]) -> None:
    ua, _ = core
    dialog = _confirmed(ua)
    tag = dialog.local_tag  # type: ignore[attr-defined]
    out = ua.receive(
        request(
            "INFO",
            branch="z9hG4bK-i1",
            cseq=2,
            to_tag=tag,
            body=b"Signal=5\r\nDuration=160\r\n",
            extra="Content-Type: application/dtmf-relay\r\n",
        ),
        SRC,
    )
    assert [r.status for r in sent(out)] == [200]
    assert events(out) == [DtmfInfo(dialog, "5", 160)]  # type: ignore[arg-type]
    out = ua.receive(
        request(
            "INFO",
            branch="z9hG4bK-i2",
            cseq=3,
            to_tag=tag,
            body=b"11",
            extra="Content-Type: application/dtmf\r\n",
        ),
        SRC,
    )
    assert events(out) == [DtmfInfo(dialog, "#", 250)]  # type: ignore[arg-type]


RELAY, DTMF = "application/dtmf-relay", "application/dtmf"


@pytest.mark.parametrize(
    ("ctype", "body", "key"),
    [
        (RELAY, b"Signal=16\r\nDuration=250\r\n", None),  # flash (RFC 4733 event 16)
        (RELAY, b"Signal=!\r\nDuration=250\r\n", None),  # flash, as Asterisk writes it
        (RELAY, b"Signal=17\r\n", None),  # an RFC 4733 event that is no key
        (RELAY, b"Signal=255\r\n", None),
        (DTMF, b"16", None),
        (DTMF, b"!", None),
        (RELAY, b"signal=a\r\nduration=100\r\n", "A"),  # a letter in either case
        (RELAY, b"Signal= d\r\n", "D"),
        (RELAY, b"Signal=12\r\n", "A"),  # event codes 0-15 are the keys
        (RELAY, b"Signal=15\r\n", "D"),
        (RELAY, b"Signal=010\r\n", "*"),
        (RELAY, b"Signal=#\r\n", "#"),
        (DTMF, b"a", "A"),
        (DTMF, b"10", "*"),
    ],
)
def test_info_dtmf_signals(
    core: tuple[UserAgentCore, FakeClock], ctype: str, body: bytes, key: str | None
) -> None:
    """A key press reaches the application as the key the bridges send (0-9, *, #, A-D in
    upper case: a custom agent's ``dtmf`` allows only those, and ``a`` was dropped there).
    Flash (16) raised IndexError: the INFO was never answered. A signal that is no key is
    answered 200 and not passed on: the request is well-formed, only nothing we relay — a 4xx
    would tell the peer its INFO was wrong (some end the call on that)."""
    out = _info_in_dialog(core[0], ctype, body)
    assert [r.status for r in sent(out)] == [200]
    assert [e.digit for e in events(out) if isinstance(e, DtmfInfo)] == ([key] if key else [])
    if key is not None:
        assert CustomDtmf(digit=key).digit == key  # what the custom bridge sends


def _info_in_dialog(ua: UserAgentCore, ctype: str, body: bytes) -> list[Output]:
    """An INFO with ``body`` of type ``ctype`` in a confirmed call's dialog; what it produced."""
    dialog = _confirmed(ua)
    tag = dialog.local_tag  # type: ignore[attr-defined]
    info = request(
        "INFO",
        branch="z9hG4bK-i1",
        cseq=2,
        to_tag=tag,
        body=body,
        extra=f"Content-Type: {ctype}\r\n",
    )
    return ua.receive(info, SRC)


@pytest.mark.parametrize(
    ("ctype", "body"),
    [
        (RELAY, b"Duration=250\r\n"),  # no signal at all
        (RELAY, b"Signal=\r\n"),
        (RELAY, b"Signal=256\r\n"),  # past RFC 4733's 8-bit event code
        (RELAY, b"Signal=ab\r\n"),
        (DTMF, b"x"),
    ],
)
def test_an_info_that_names_no_signal_is_a_bad_dtmf_body(
    core: tuple[UserAgentCore, FakeClock], ctype: str, body: bytes
) -> None:
    out = _info_in_dialog(core[0], ctype, body)
    assert [(r.status, r.reason) for r in sent(out)] == [(400, "Bad DTMF Body")]
    assert events(out) == []


def test_reinvite_hold_is_offered_to_the_application(core: tuple[UserAgentCore, FakeClock]) -> None:
    ua, _ = core
    dialog = _confirmed(ua)
    tag = dialog.local_tag  # type: ignore[attr-defined]
    out = ua.receive(
        request(
            "INVITE",
            branch="z9hG4bK-re",
            cseq=2,
            to_tag=tag,
            body=SDP,
            extra="Content-Type: application/sdp\r\n",
        ),
        SRC,
    )
    assert [r.status for r in sent(out)] == [100]
    (ev,) = events(out)
    assert isinstance(ev, ReofferReceived)
    # a second offer while the first is unanswered: 500 + Retry-After (RFC 3311 §5.2)
    out = ua.receive(request("UPDATE", branch="z9hG4bK-up", cseq=3, to_tag=tag), SRC)
    assert [r.status for r in sent(out)] == [500]
    out = ua.respond(ev.tx, 200, body=b"v=0\r\n")
    (ok,) = sent(out)
    assert ok.status == 200 and ok.headers.get("Contact")
    assert ua.dialog_count == 1


def test_out_of_order_cseq_is_500(core: tuple[UserAgentCore, FakeClock]) -> None:
    ua, _ = core
    dialog = _confirmed(ua)
    out = ua.receive(request("BYE", branch="z9hG4bK-b", cseq=1, to_tag=dialog.local_tag), SRC)  # type: ignore[attr-defined]
    assert [r.status for r in sent(out)] == [500]


def test_local_hangup_sends_bye_and_ends_on_200(core: tuple[UserAgentCore, FakeClock]) -> None:
    ua, _ = core
    dialog = _confirmed(ua)
    out = ua.hangup(dialog)  # type: ignore[arg-type]
    (send,) = [o for o in out if isinstance(o, Send)]
    bye = parse_message(send.data)
    assert bye.method == "BYE"  # type: ignore[union-attr]
    assert send.dest == SRC
    resp = reply(bye, 200)
    out = ua.receive(resp, SRC)
    assert events(out) == [CallEnded(dialog, "local_bye")]  # type: ignore[arg-type]


def test_refer_reports_progress(core: tuple[UserAgentCore, FakeClock]) -> None:
    ua, _ = core
    dialog = _confirmed(ua)
    out = ua.refer(dialog, "sip:+15550001111@carrier.example")  # type: ignore[arg-type]
    (send,) = [o for o in out if isinstance(o, Send)]
    refer = parse_message(send.data)
    assert refer.headers.get("Refer-To") == "<sip:+15550001111@carrier.example>"
    resp = reply(refer, 202)
    assert events(ua.receive(resp, SRC)) == [ReferUpdate(dialog, 202, False)]  # type: ignore[arg-type]
    tag = dialog.local_tag  # type: ignore[attr-defined]
    notify = request(
        "NOTIFY",
        branch="z9hG4bK-n",
        cseq=2,
        to_tag=tag,
        body=b"SIP/2.0 200 OK\r\n",
        extra="Event: refer\r\nContent-Type: message/sipfrag\r\n",
    )
    out = ua.receive(notify, SRC)
    assert [r.status for r in sent(out)] == [200]
    assert events(out) == [ReferUpdate(dialog, 200, True)]  # type: ignore[arg-type]


def _refer_notify(tag: str, cseq: int, state: str, frag: bytes) -> bytes:
    return request(
        "NOTIFY",
        branch=f"z9hG4bK-n{cseq}",
        cseq=cseq,
        to_tag=tag,
        body=frag,
        extra=f"Event: refer\r\nSubscription-State: {state}\r\nContent-Type: message/sipfrag\r\n",
    )


def test_a_refer_notify_carries_its_subscriptions_expiry_and_its_end(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    """RFC 6665 §8.2.3 / RFC 3515 §2.4.5: a NOTIFY's Subscription-State says how long the
    implicit subscription lives (``expires``) and when it ended (``terminated``). A 1xx sipfrag
    in an active subscription is progress with the time left; one in a terminated subscription
    is the last word (no outcome will follow): final, so the transfer is not left pending."""
    ua, _ = core
    dialog = _confirmed(ua)
    out = ua.refer(dialog, "sip:+15550001111@carrier.example")  # type: ignore[arg-type]
    (send,) = [o for o in out if isinstance(o, Send)]
    ua.receive(reply(parse_message(send.data), 202), SRC)
    tag = dialog.local_tag  # type: ignore[attr-defined]
    out = ua.receive(_refer_notify(tag, 2, "active;expires=60", b"SIP/2.0 100 Trying\r\n"), SRC)
    assert events(out) == [ReferUpdate(dialog, 100, False, 60)]  # type: ignore[arg-type]
    out = ua.receive(_refer_notify(tag, 3, "pending", b"SIP/2.0 180 Ringing\r\n"), SRC)
    assert events(out) == [ReferUpdate(dialog, 180, False, None)]  # type: ignore[arg-type]
    out = ua.receive(
        _refer_notify(tag, 4, "terminated;reason=noresource", b"SIP/2.0 180 Ringing\r\n"), SRC
    )
    assert [r.status for r in sent(out)] == [200]
    assert events(out) == [ReferUpdate(dialog, 180, True)]  # type: ignore[arg-type]


def test_malformed_request_gets_400_with_warning(core: tuple[UserAgentCore, FakeClock]) -> None:
    ua, _ = core
    raw = request("OPTIONS", extra="Call-ID: another@192.0.2.10\r\n")  # RFC 4475 multi01
    (resp,) = sent(ua.receive(raw, SRC))
    assert resp.status == 400 and resp.call_id == "call-1@192.0.2.10"  # the first one
    assert "Call-ID" in (resp.headers.get("Warning") or "")


def test_garbage_is_dropped(core: tuple[UserAgentCore, FakeClock]) -> None:
    ua, _ = core
    assert ua.receive(b"\x00\xffgarbage", SRC) == []
    assert ua.counters["parse_errors"] == 1


def test_session_timer_expiry_sends_bye(core: tuple[UserAgentCore, FakeClock]) -> None:
    ua, clock = core
    out = ua.receive(
        request(
            body=SDP,
            extra="Content-Type: application/sdp\r\nSupported: timer\r\nSession-Expires: 120\r\n",
        ),
        SRC,
    )
    (ev,) = events(out)
    assert isinstance(ev, InviteReceived)
    dialog, out = ua.accept(ev.tx, b"v=0\r\n")
    (ok,) = sent(out)
    assert ok.headers.get("Session-Expires") == "120;refresher=uac"
    assert ok.headers.get("Require") == "timer"
    ua.receive(request("ACK", branch="z9hG4bK-ack", to_tag=dialog.local_tag), SRC)
    clock.advance(120 - 32 + 0.1)
    out = ua.poll()
    assert events(out) == [CallEnded(dialog, "session_expired")]
    assert any(isinstance(o, Send) and o.data.startswith(b"BYE ") for o in out)


@pytest.mark.parametrize(
    "header", ["Authorization", "AUTHORIZATION", "authorization", "Proxy-Authorization"]
)
def test_trace_redacts_credentials(core: tuple[UserAgentCore, FakeClock], header: str) -> None:
    ua, _ = core
    ua.receive(request("OPTIONS", branch="z9hG4bK-0"), SRC)  # a message without any
    ua.receive(request(extra=f'{header}: Digest username="alice", response="deadbeef"\r\n'), SRC)
    trace = ua.pop_trace("call-1@192.0.2.10", "from1")
    assert "OPTIONS sip:alice@gw.example" in trace and "INVITE sip:alice@gw.example" in trace
    assert "deadbeef" not in trace and "Digest <redacted>" in trace


def test_trace_redacts_srtp_keys_both_ways(core: tuple[UserAgentCore, FakeClock]) -> None:
    ua, _ = core
    theirs = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz"
    ours = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNk"
    offer = (
        SDP.rstrip(b"\r\n")
        + (
            f"\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{theirs}|2^20|1:4\r\n"
            f"a=CRYPTO:2 AES_CM_128_HMAC_SHA1_32 INLINE:{theirs};inline:{theirs}\r\n"
        ).encode()
    )
    out = ua.receive(request(body=offer, extra="Content-Type: application/sdp\r\n"), SRC)
    (ev,) = events(out)
    assert isinstance(ev, InviteReceived)
    ua.accept(ev.tx, f"v=0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{ours}\r\n".encode())
    trace = ua.pop_trace("call-1@192.0.2.10", "from1")
    assert theirs not in trace and ours not in trace
    assert "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:<redacted>|2^20|1:4" in trace
    assert trace.count("<redacted>") == 4


def test_observers_see_every_request_and_response() -> None:
    methods: list[str] = []
    statuses: list[int] = []
    ua = UserAgentCore(
        UaConfig(), FakeClock(), on_request=methods.append, on_response=statuses.append
    )
    ua.receive(request("OPTIONS"), SRC)
    ua.receive(request("FOOBAR", branch="z9hG4bK-2"), SRC)
    ua.receive(request("OPTIONS", branch="z9hG4bK-3", extra="Expires: soon\r\n"), SRC)
    assert methods == ["OPTIONS", "OTHER"]  # unknown methods do not grow label sets
    assert statuses == [200, 501, 400]


def test_calls_sharing_a_call_id_keep_their_own_traces(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    # Call-IDs are only as unique as the carrier makes them (SIPp's "1-<pid>@host"; a PBX's
    # counter): two callers' calls with one Call-ID, or a stranger's OPTIONS reusing a live
    # call's, must not show up in each other's records — a trace is one caller's dialog.
    ua, _ = core
    other = Source("UDP", ("198.51.100.7", 5060))
    dialogs = []
    for tag, source, marker in (("from1", SRC, "X-Mine: 1"), ("zz9", other, "X-Theirs: 2")):
        raw = request(body=SDP, branch=f"z9hG4bK-{tag}", from_tag=tag, extra=f"{marker}\r\n")
        out = ua.receive(raw, source)
        (ev,) = events(out)
        assert isinstance(ev, InviteReceived)
        dialogs.append(ua.accept(ev.tx, b"v=0\r\n")[0])
    ua.receive(request("OPTIONS", branch="z9hG4bK-o", from_tag="x", extra="X-Probe: 3\r\n"), other)
    ack = request("ACK", branch="z9hG4bK-a", from_tag="zz9", to_tag=dialogs[1].local_tag)
    ua.receive(ack, other)
    (bye,) = requests(ua.hangup(dialogs[1]))  # our BYE in the second call, and its answer
    ua.receive(reply(bye, 200), other)
    mine = ua.pop_trace("call-1@192.0.2.10", "from1")
    assert "X-Mine" in mine and mine.count("SIP/2.0 200 OK") == 1
    assert "X-Theirs" not in mine and "X-Probe" not in mine and "BYE " not in mine
    theirs = ua.pop_trace("call-1@192.0.2.10", "zz9")
    assert "X-Theirs" in theirs and "BYE " in theirs and "X-Mine" not in theirs
    assert theirs.count("SIP/2.0 200 OK") == 2  # the INVITE's and the BYE's


def test_no_new_trace_after_a_call_is_popped(core: tuple[UserAgentCore, FakeClock]) -> None:
    ua, _ = core
    ua.receive(request("OPTIONS"), SRC)
    assert "OPTIONS" in ua.pop_trace("call-1@192.0.2.10", "from1")
    ua.receive(request("OPTIONS", branch="z9hG4bK-late"), SRC)  # a late retransmission
    assert ua.pop_trace("call-1@192.0.2.10", "from1") == ""


def test_dialog_establishing_responses_copy_the_record_route(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    """RFC 3261 §12.1.1: the UAS copies every Record-Route of the INVITE, in order, into the
    responses that establish the dialog (the 18x and the 2xx), so the caller's ACK and BYE
    follow the proxies' route; a rejection establishes none."""
    ua, _ = core
    routes = "Record-Route: <sip:p1.example;lr>\r\nRecord-Route: <sip:p2.example;lr;ftag=x>\r\n"
    extra = "Content-Type: application/sdp\r\n" + routes
    (ev,) = events(ua.receive(request(body=SDP, extra=extra), SRC))
    assert isinstance(ev, InviteReceived)
    expected = ["<sip:p1.example;lr>", "<sip:p2.example;lr;ftag=x>"]
    (ringing,) = sent(ua.respond(ev.tx, 180))
    assert ringing.headers.get_all("Record-Route") == expected
    _, out = ua.accept(ev.tx, b"v=0\r\n")
    (ok,) = sent(out)
    assert ok.headers.get_all("Record-Route") == expected
    (ev2,) = events(
        ua.receive(request(body=SDP, extra=extra, call_id="call-2@x", branch="z9hG4bK-2"), SRC)
    )
    assert isinstance(ev2, InviteReceived)
    (refused,) = sent(ua.respond(ev2.tx, 486))
    assert refused.headers.get_all("Record-Route") == []


def test_a_dialog_holds_the_connection_its_invite_came_on(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    """``uses_connection``: whether a stream connection still carries a call's signalling (a
    registration must not close it under the call)."""
    ua, clock = core
    tcp = Source("TCP", ("192.0.2.10", 5070), conn=7)
    assert not ua.uses_connection(7)
    out = ua.receive(request(body=SDP, extra="Content-Type: application/sdp\r\n"), tcp)
    (ev,) = events(out)
    assert isinstance(ev, InviteReceived)
    # ringing, its agent being connected: no dialog yet, but the 200 OK must go out on it
    assert ua.uses_connection(7) and not ua.uses_connection(8)
    dialog, _ = ua.accept(ev.tx, b"v=0\r\n")
    assert ua.uses_connection(7) and not ua.uses_connection(8)
    ua.receive(request("BYE", branch="z9hG4bK-bye", cseq=2, to_tag=dialog.local_tag), tcp)
    clock.advance(64 * 0.5)  # the INVITE transaction's Accepted state ends (RFC 6026 Timer L)
    ua.poll()
    assert not ua.uses_connection(7)


def test_reject_answers_a_request_statelessly(core: tuple[UserAgentCore, FakeClock]) -> None:
    """RFC 3261 §8.2.7: the transport's 503 to a rate-limited INVITE (defence.py) — a tagged
    final answer to where it came from, with no transaction, dialog or trace left behind."""
    ua, _ = core
    tcp = Source("TCP", ("192.0.2.10", 40123), 7)
    out = ua.reject(request(), tcp, 503, [("Retry-After", "1")])
    (send,) = out
    assert isinstance(send, Send) and send.dest == tcp
    (resp,) = sent(out)
    assert (resp.status, resp.headers.get("Retry-After"), resp.call_id) == (
        503,
        "1",
        "call-1@192.0.2.10",
    )
    assert resp.to.tag and resp.top_via.received == "192.0.2.10"
    assert (ua.transaction_count, ua.dialog_count) == (0, 0)
    assert ua.pop_trace("call-1@192.0.2.10", "from1") == ""
    for other in (request("ACK"), reply(parse_message(request()), 200), b"INVITE garbage"):
        assert ua.reject(other, tcp, 503, []) == []


def test_the_dialog_follows_its_peer_to_a_new_connection(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    """RFC 3261 §18.1.1/§18.2.2: a carrier whose proxy reconnected sends in the dialog on its
    new connection; our BYE goes there, not on the first (which may be gone). Another host, or
    another transport, does not move the dialog; nor does a request refused as out of order."""
    ua, _ = core
    first = Source("TCP", ("192.0.2.10", 40001), 1)
    (ev,) = events(ua.receive(request(body=SDP, extra="Content-Type: application/sdp\r\n"), first))
    assert isinstance(ev, InviteReceived)
    dialog, _ = ua.accept(ev.tx, b"v=0\r\n")
    ua.receive(request("ACK", branch="z9hG4bK-ack", to_tag=dialog.local_tag), first)
    elsewhere = Source("TCP", ("198.51.100.9", 40003), 3)
    tls = Source("TLS", ("192.0.2.10", 40004), 4)
    second = Source("TCP", ("192.0.2.10", 40002), 2)
    for cseq, source in ((2, elsewhere), (3, tls), (3, second)):  # the last: out of order
        branch = f"z9hG4bK-o{cseq}{source.conn}"
        options = request("OPTIONS", branch=branch, cseq=cseq, to_tag=dialog.local_tag)
        out = ua.receive(options, source)
        assert dialog.source == first, source
    assert [r.status for r in sent(out)] == [500]
    out = ua.receive(
        request("OPTIONS", branch="z9hG4bK-o4", cseq=4, to_tag=dialog.local_tag), second
    )
    assert [r.status for r in sent(out)] == [200] and dialog.source == second
    (bye,) = [o for o in ua.hangup(dialog) if isinstance(o, Send)]
    assert bye.dest == second
    assert ua.uses_connection(2)


def test_a_request_the_transport_could_not_send_ends_its_transaction_at_once(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    """RFC 3261 §17.1.4: no connection to the BYE's next hop could be opened — the dialog
    ends now (as on Timer F), not 32 s later; a REFER that could not be sent fails now. Bytes
    that are not one of our pending requests change nothing."""
    ua, _ = core
    dialog = _confirmed(ua)
    out = ua.refer(dialog, "sip:+15550001111@carrier.example")  # type: ignore[arg-type]
    (refer,) = [o for o in out if isinstance(o, Send)]
    assert events(ua.transport_failed(refer.data)) == [ReferUpdate(dialog, 408, True)]  # type: ignore[arg-type]
    assert ua.transport_failed(refer.data) == []  # its transaction is gone: once only
    (bye,) = [o for o in ua.hangup(dialog) if isinstance(o, Send)]  # type: ignore[arg-type]
    for other in (b"garbage", reply(parse_message(bye.data), 200), request("ACK")):
        assert ua.transport_failed(other) == []
    assert ua.dialog_count == 1
    assert events(ua.transport_failed(bye.data)) == [CallEnded(dialog, "bye_failed")]  # type: ignore[arg-type]
    assert (ua.dialog_count, ua.counters["client_tx_transport_errors"]) == (0, 2)


def test_a_transport_failure_after_the_final_answer_changes_nothing(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    """A retransmission failing after the peer answered (its answer already came on another
    path) does not undo the answer."""
    ua, _ = core
    dialog = _confirmed(ua)
    out = ua.refer(dialog, "sip:+15550001111@carrier.example")  # type: ignore[arg-type]
    (refer,) = [o for o in out if isinstance(o, Send)]
    ua.receive(reply(parse_message(refer.data), 202), SRC)
    assert ua.transport_failed(refer.data) == []
    assert (ua.dialog_count, ua.counters["client_tx_transport_errors"]) == (1, 0)


@pytest.mark.parametrize(
    "target",
    [
        "sip:a@b>\r\nX-Injected: 1",  # a header of the caller's (or the model's) choosing
        "sip:a@b\r\nContent-Length: 0\r\n\r\nBYE sip:x SIP/2.0",  # a second request (TCP)
        "sip:a b@c",
        "https://evil.example/",
        "sip:",
    ],
)
def test_a_transfer_target_that_is_no_sip_or_tel_uri_is_refused(
    core: tuple[UserAgentCore, FakeClock], target: str
) -> None:
    """The target comes from the agent — an LLM a caller can talk into anything: written into
    Refer-To as it was, a CR LF in it added headers of its choosing to our REFER, or a whole
    request after it on a stream connection."""
    ua, _ = core
    dialog = _confirmed(ua)
    with pytest.raises(ValueError, match="transfer target"):
        ua.refer(dialog, target)  # type: ignore[arg-type]
    assert [o for o in ua.refer(dialog, "tel:+15550001111") if isinstance(o, Send)]  # type: ignore[arg-type]
