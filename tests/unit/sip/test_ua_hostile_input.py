"""Requests a carrier or an attacker may send that are odd but parse: the core answers each
with the status RFC 3261 gives, never raises, and keeps no transaction beyond its timers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from telepath.clock import FakeClock
from telepath.sip.message import make_response
from telepath.sip.transaction import Source
from telepath.sip.ua import (
    DtmfInfo,
    InviteReceived,
    ReofferReceived,
    UaConfig,
    UserAgentCore,
    redact_trace,
)
from tests.unit.sip.test_ua import SDP, SRC, _confirmed, answered, events, request, sent

pytestmark = pytest.mark.unit

CORPUS = Path(__file__).resolve().parents[2] / "data" / "rfc4475"
LATIN1_FROM = b'From: "M\xfcller" <sip:+15551230000@carrier.example>;tag=from1\r\n'


def latin1(raw: bytes) -> bytes:
    """``raw`` with a display name in Latin-1, not UTF-8 — as some PBXs send it."""
    start = raw.index(b"From: ")
    end = raw.index(b"\r\n", start) + 2
    return raw[:start] + LATIN1_FROM + raw[end:]


@pytest.fixture
def core() -> tuple[UserAgentCore, FakeClock]:
    clock = FakeClock(100.0)
    config = UaConfig(contact_host="203.0.113.5", trace_budget_bytes=200_000)
    return UserAgentCore(config, clock), clock


@pytest.mark.parametrize(
    ("method", "status"), [("OPTIONS", 200), ("BYE", 481), ("CANCEL", 481), ("SUBSCRIBE", 405)]
)
def test_a_display_name_that_is_not_utf_8_is_answered_and_forgotten(
    core: tuple[UserAgentCore, FakeClock], method: str, status: int
) -> None:
    ua, clock = core
    (resp,) = sent(ua.receive(latin1(request(method)), SRC))
    assert resp.status == status and resp.to.tag  # a To tag made of the raw From (§8.2.6.2)
    clock.advance(40.0)  # Timer J
    ua.poll()
    assert ua.transaction_count == 0


def test_an_invite_from_a_latin_1_name_can_be_answered(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    ua, _ = core
    raw = latin1(request(body=SDP, extra="Content-Type: application/sdp\r\n"))
    out = ua.receive(raw, SRC)
    (ev,) = events(out)
    assert isinstance(ev, InviteReceived)
    assert [r.status for r in sent(ua.respond(ev.tx, 180))] == [180]
    dialog, out = ua.accept(ev.tx, b"v=0\r\n")
    (ok,) = sent(out)
    assert ok.status == 200 and ok.to.tag == dialog.local_tag


@pytest.mark.parametrize("value", ["\u00b2", "1\u00b9"])  # digits to str.isdigit, not to int()
def test_a_session_expires_of_unicode_digits_is_ignored_like_any_unusable_one(
    core: tuple[UserAgentCore, FakeClock], value: str
) -> None:
    ua, _ = core
    raw = request(body=SDP, extra=f"Content-Type: application/sdp\r\nSession-Expires: {value}\r\n")
    out = ua.receive(raw.replace(value.encode(), value.encode("utf-8")), SRC)
    assert [r.status for r in sent(out)] == [100]
    assert isinstance(events(out)[0], InviteReceived)


def test_an_info_of_unicode_digits_is_a_bad_dtmf_body(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    ua, _ = core
    dialog = _confirmed(ua)
    tag = dialog.local_tag  # type: ignore[attr-defined]
    raw = request(
        "INFO",
        branch="z9hG4bK-i1",
        cseq=2,
        to_tag=tag,
        body="\u00b2".encode(),
        extra="Content-Type: application/dtmf\r\n",
    )
    out = ua.receive(raw, SRC)
    assert [(r.status, r.reason) for r in sent(out)] == [(400, "Bad DTMF Body")]
    assert not any(isinstance(e, DtmfInfo) for e in events(out))


def test_contact_star_outside_register_is_a_bad_request(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    """§10.2.2 / §20.10: ``*`` is a REGISTER's "all bindings" only; an INVITE's dialog needs a
    URI to send its requests to."""
    ua, _ = core
    raw = request(body=SDP, extra="Content-Type: application/sdp\r\n").replace(
        b"Contact: <sip:bob@192.0.2.10:5070>", b"Contact: *"
    )
    out = ua.receive(raw, SRC)
    assert [r.status for r in sent(out)] == [400] and events(out) == []


def test_a_method_not_known_is_501_and_one_known_but_not_taken_405(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    """§21.5.2 / §21.4.6, out of a dialog and in one; both list what we take in ``Allow``."""
    ua, _ = core
    for raw, status in [(request("FOO"), 501), (request("MESSAGE", branch="z9hG4bK-m"), 405)]:
        (resp,) = sent(ua.receive(raw, SRC))
        assert resp.status == status and "INVITE" in (resp.headers.get("Allow") or "")
    tag = _confirmed(ua).local_tag  # type: ignore[attr-defined]
    for cseq, (method, status) in enumerate([("FOO", 501), ("MESSAGE", 405)], start=5):
        raw = request(method, branch=f"z9hG4bK-d{method}", cseq=cseq, to_tag=tag)
        assert [r.status for r in sent(ua.receive(raw, SRC))] == [status]


def test_nothing_goes_out_on_a_transaction_after_its_final_answer(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    """§17.2.1: once a final response went, the TU's later ones are discarded — a CANCEL's 487
    while the application still set the call up must stay the answer its retransmissions
    repeat and its ACK matches (a late 180 replaced it; a late 200 made a dialog)."""
    ua, clock = core
    ev, _ = answered(ua)
    out = ua.receive(request("CANCEL"), SRC)
    assert sorted(r.status for r in sent(out)) == [200, 487]
    assert sent(ua.respond(ev.tx, 180)) == []
    assert ua.counters["late_responses_discarded"] == 1
    with pytest.raises(ValueError, match="already answered"):
        ua.accept(ev.tx, b"v=0\r\n")
    assert ua.dialog_count == 0
    clock.advance(0.5)  # Timer G: the 487 again, not the 180
    assert [r.status for r in sent(ua.poll())] == [487]
    ack = request("ACK").replace(
        b"To: <sip:alice@gw.example>", f"To: <sip:alice@gw.example>;tag={ev.tx.to_tag}".encode()
    )
    ua.receive(ack, SRC)
    assert ua.counters["stray_acks"] == 0  # the ACK matched the 487's transaction


def test_a_server_transaction_discards_a_provisional_after_its_final(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    ua, clock = core
    ev, _ = answered(ua)
    ua.receive(request("CANCEL"), SRC)  # 487
    ev.tx.respond(make_response(ev.tx.request, 180, to_tag=ev.tx.to_tag), clock.now())
    assert ev.tx.status == 487
    clock.advance(0.5)
    assert [r.status for r in sent(ua.poll())] == [487]  # Timer G repeats the final answer


def test_a_malformed_request_s_answer_carries_a_to_tag(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    """§8.2.6.2: every response but a 100 has a To tag — the 400 to a bad request too."""
    ua, _ = core
    raw = request("OPTIONS").replace(b"Max-Forwards: 70", b"Max-Forwards: many")
    (resp,) = sent(ua.receive(raw, SRC))
    assert resp.status == 400 and resp.to.tag


def test_traces_are_bounded_in_bytes_not_only_in_calls(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    """Every parseable request is traced — challenged INVITEs and OPTIONS from anyone too: at
    the call and message caps alone a flood could hold ~1 GB of traces. Past the byte budget
    the oldest calls' traces go first; a call's own trace is whole or gone, never cut."""
    ua, _ = core
    padding = "X-Pad: " + "p" * 3000 + "\r\n"
    for i in range(200):
        raw = request("OPTIONS", branch=f"z9hG4bK-t{i}", call_id=f"t{i}@h", extra=padding)
        ua.receive(raw, SRC)
    assert ua.trace_bytes <= 200_000  # the budget set below, not 200 calls x 2 x 3 KB
    assert ua.pop_trace("t0@h", "from1") == ""  # the oldest went
    assert (
        ua.pop_trace("t199@h", "from1").count("X-Pad") == 1
    )  # the newest kept: request (+ answer)
    for i in range(200):
        ua.pop_trace(f"t{i}@h", "from1")
    assert ua.trace_bytes == 0  # popped traces are no longer counted


def test_a_ringing_that_makes_an_early_dialog_has_a_contact(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    """§12.1.1: a response that creates a dialog — a 180 with a To tag makes an early one —
    MUST carry a Contact; at the address a NAT gives us, when known, as the 200's."""
    ua, _ = core
    ev, _ = answered(ua)
    (ringing,) = sent(ua.respond(ev.tx, 180, contact_address="198.51.100.7:6060"))
    assert ringing.to.tag and ringing.headers.get("Contact") == "<sip:telepath@198.51.100.7:6060>"
    (trying,) = sent(ua.receive(request("OPTIONS", branch="z9hG4bK-o"), SRC))
    assert trying.status == 200


def test_a_folded_authorization_header_is_redacted_whole() -> None:
    """§7.3.1 allows a header folded over lines; the digest response on a continuation line
    stayed in the trace (and the call record's sip_trace) — enough to guess the password
    offline."""
    trace = (
        "INVITE sip:a@b SIP/2.0\r\n"
        'Authorization: Digest username="alice", realm="r",\r\n'
        ' nonce="n", response="0123456789abcdef0123456789abcdef"\r\n'
        '\tcnonce="c"\r\n'
        'Proxy-Authorization: Digest username="alice",\r\n'
        ' response="fedcba9876543210fedcba9876543210"\r\n'
        "Call-ID: x\r\n\r\n"
    )
    redacted = redact_trace(trace)
    assert "0123456789abcdef" not in redacted and "fedcba98" not in redacted
    assert 'cnonce="c"' not in redacted
    assert "Call-ID: x" in redacted and redacted.count("Digest <redacted>") == 2


def test_passwords_in_uris_and_credential_headers_are_redacted() -> None:
    """A transfer target with ``user:password@`` (RFC 3261 §19.1.1 allows it, NOT RECOMMENDED)
    or a PBX's token header stayed in the call record's sip_trace as sent."""
    trace = (
        "REFER sip:a@b SIP/2.0\r\n"
        "Refer-To: <sip:bob:s3cret@pbx.example;transport=tcp>\r\n"
        "Contact: <sips:carol:pa55@10.0.0.1:5061>\r\n"
        "X-Api-Key: abcdef123456\r\n"
        "X-Auth-Token: tok-987\r\n"
        "X-Client-Secret: sh\r\n"
        'WWW-Authenticate: Digest realm="gw", nonce="n1", algorithm=SHA-256\r\n'
        "From: <sip:+15551230000@carrier.example:5060>;tag=1\r\n"
        "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1\r\n"
        "Call-ID: x\r\n\r\n"
    )
    redacted = redact_trace(trace)
    for secret in ("s3cret", "pa55", "abcdef123456", "tok-987", ": sh"):
        assert secret not in redacted, secret
    assert "sip:bob:<redacted>@pbx.example;transport=tcp" in redacted
    assert "X-Api-Key: <redacted>" in redacted
    assert 'WWW-Authenticate: Digest realm="gw", nonce="n1", algorithm=SHA-256' in redacted
    # nothing else touched: a host's port is no password
    assert "<sip:+15551230000@carrier.example:5060>;tag=1" in redacted
    assert "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1" in redacted


def test_a_uri_password_in_a_message_is_kept_out_of_its_trace(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    ua, _ = core
    ev, _ = answered(ua)
    dialog, _ = ua.accept(ev.tx, b"v=0\r\n")
    ua.receive(request("ACK", branch="z9hG4bK-ack", to_tag=dialog.local_tag), SRC)
    ua.refer(dialog, "sip:bob:s3cret@pbx.example")
    trace = ua.pop_trace(dialog.call_id, dialog.remote_tag)
    assert "REFER " in trace and "s3cret" not in trace


VIA = b"Via: SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bK-1;rport\r\n"


@pytest.mark.parametrize(
    ("line", "instead"),
    [
        (VIA, b""),
        (VIA, b"Via: \r\n"),
        (b"Call-ID: call-1@192.0.2.10\r\n", b""),
        (b"Call-ID: call-1@192.0.2.10\r\n", b"Call-ID: \r\n"),
        (b"CSeq: 1 OPTIONS\r\n", b""),
        (b'From: "Bob" <sip:+15551230000@carrier.example>;tag=from1\r\n', b""),
        (b"To: <sip:alice@gw.example>\r\n", b""),
    ],
    ids=["no-via", "empty-via", "no-call-id", "empty-call-id", "no-cseq", "no-from", "no-to"],
)
def test_a_request_that_cannot_be_answered_is_dropped(
    core: tuple[UserAgentCore, FakeClock], line: bytes, instead: bytes
) -> None:
    """§8.2.6.2: a response copies the request's Via, From, To, Call-ID and CSeq — what the
    UAC matches it by (§17.1.3, §8.1.3.3); §18.2.2: it is sent where the top Via says. Without
    them the 400 went out with no Via or an empty Call-ID: a message no UAC can match, which
    any parser (ours too) drops. Nothing is sent; the request is counted."""
    ua, _ = core
    raw = request("OPTIONS")
    assert line in raw
    assert ua.receive(raw.replace(line, instead), SRC) == []
    assert ua.counters["parse_errors"] == ua.counters["unanswerable_requests"] == 1


@pytest.mark.parametrize(
    ("name", "status"), [("badinv01", 400), ("badvers", 505), ("mismatch01", 400)]
)
def test_a_request_with_the_fields_to_answer_by_is_answered_even_with_a_bad_via(
    core: tuple[UserAgentCore, FakeClock], name: str, status: int
) -> None:
    """RFC 4475 §3.1.2.1 and §3.1.2.16: a Via with empty parameters, or of SIP/7.0, gets its
    400 or 505 — copied as received, the UAC matches the answer by it; sent to the source."""
    ua, _ = core
    (resp,) = sent(ua.receive((CORPUS / "invalid" / f"{name}.dat").read_bytes(), SRC))
    assert resp.status == status and ua.counters["unanswerable_requests"] == 0


# RFC 3261 §25.1: quoted-string = DQUOTE *(qdtext / quoted-pair) DQUOTE
_WARNING = re.compile(r'399 203\.0\.113\.5 "(?:[^"\\]|\\[\x00-\x09\x0b\x0c\x0e-\x7f])*"')


@pytest.mark.parametrize("user", [b"ab" + b"\xff" * 20, b"ab" + b"\\" * 99, b'a"' * 50])
def test_the_warning_of_a_400_is_one_quoted_string_however_it_is_cut(
    core: tuple[UserAgentCore, FakeClock], user: bytes
) -> None:
    """§20.43: warn-text is a quoted-string. It was escaped, then cut at 120 characters — a
    cut between a backslash and what it escapes left the closing quote escaped: a Warning that
    never ends. Cut first, then escaped."""
    ua, _ = core
    raw = request("OPTIONS").replace(b"sip:alice@gw.example", b"sip:" + user + b"@gw.example", 1)
    (resp,) = sent(ua.receive(raw, SRC))
    assert resp.status == 400
    assert _WARNING.fullmatch(resp.headers.get("Warning") or "")


def test_the_400_to_a_malformed_request_tells_a_nated_caller_where_it_was_seen(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    """RFC 3581 §4 / RFC 3261 §18.2.1: the top Via of every answer carries ``received`` and the
    filled ``rport`` — the 400s to malformed requests had neither."""
    ua, _ = core
    raw = request("OPTIONS").replace(b"Max-Forwards: 70", b"Max-Forwards: many")
    (resp,) = sent(ua.receive(raw, Source("UDP", ("198.51.100.7", 6000))))
    assert resp.status == 400
    assert (resp.top_via.received, resp.top_via.rport) == ("198.51.100.7", "6000")


@pytest.mark.parametrize(
    ("extra", "status", "warning"),
    [
        ("Max Forwards: 70\r\n", 400, "malformed header line"),
        ("Subject\r\n", 400, "malformed header line"),
        ("X-Pad: p\r\n" * 260, 513, "too many header fields"),
    ],
    ids=["space-in-name", "no-colon", "too-many-fields"],
)
def test_a_request_with_one_bad_header_line_is_answered(
    core: tuple[UserAgentCore, FakeClock], extra: str, status: int, warning: str
) -> None:
    """A bad line, or too many, among the fields an answer needs was found before the request
    that carries them existed: the request was dropped, its sender left to retransmit it for
    32 s. §8.2 / §21.4.1: it gets its 400 (or 513, §21.5.9) like any other malformed one."""
    ua, _ = core
    (resp,) = sent(ua.receive(request("OPTIONS", extra=extra), SRC))
    assert resp.status == status and resp.call_id == "call-1@192.0.2.10"
    assert resp.cseq.method == "OPTIONS" and resp.top_via.branch == "z9hG4bK-1"
    assert warning in (resp.headers.get("Warning") or "")


@pytest.mark.parametrize(
    "record_route",
    [
        "garbage",
        "<sip:p1.example;lr>, garbage",
        "sip:p1.example;lr",  # §20.30: a rec-route is a name-addr, never a bare addr-spec
        "<sip:p1.example;lr",
    ],
)
def test_an_invite_with_a_malformed_record_route_is_a_bad_request(
    core: tuple[UserAgentCore, FakeClock], record_route: str
) -> None:
    """RFC 3261 §12.1.1, §20.30: the Record-Route of an INVITE becomes the dialog's route set,
    which every request we send in it follows; one that does not parse could never route our
    BYE, so the INVITE is refused before a dialog is made of it."""
    ua, _ = core
    extra = f"Content-Type: application/sdp\r\nRecord-Route: {record_route}\r\n"
    out = ua.receive(request(body=SDP, extra=extra), SRC)
    (resp,) = sent(out)
    assert resp.status == 400 and events(out) == []
    assert "Record-Route" in (resp.headers.get("Warning") or "")


@pytest.mark.parametrize("header", ["Max-Forwards", "Expires"])
@pytest.mark.parametrize("digits", [4301, 5000, 11])
def test_a_number_of_thousands_of_digits_is_a_bad_request(
    core: tuple[UserAgentCore, FakeClock], header: str, digits: int
) -> None:
    """RFC 3261 §20.22 (Max-Forwards: 0-255), §20.19 (Expires: delta-seconds, below 2**32),
    RFC 4475 §3.1.2.4 ``scalarlg``: too large is a 400. Past 4,300 digits ``int()`` refuses the
    text itself (ValueError): it must not escape the core, which catches SipParseError only (a
    traceback per datagram, a stream connection torn down)."""
    ua, _ = core
    raw = request("OPTIONS", extra=f"{header}: 1{'0' * (digits - 1)}\r\n")
    if header == "Max-Forwards":
        raw = raw.replace(b"Max-Forwards: 70\r\n", b"")
    (resp,) = sent(ua.receive(raw, SRC))
    assert resp.status == 400 and header in (resp.headers.get("Warning") or "")


@pytest.mark.parametrize("record_route", ["garbage", "sip:p1.example;lr"])
def test_a_re_invite_with_a_malformed_record_route_is_not_refused(
    core: tuple[UserAgentCore, FakeClock], record_route: str
) -> None:
    """RFC 3261 §12.2: the route set is made once, by the dialog-creating INVITE; the
    Record-Route of a re-INVITE (a To tag: in-dialog) does not change it and is ignored, so a
    session refresh that carries a malformed one is not a 400 (§12.2.2)."""
    ua, _ = core
    dialog = _confirmed(ua)
    extra = f"Content-Type: application/sdp\r\nRecord-Route: {record_route}\r\n"
    raw = request(
        body=SDP,
        extra=extra,
        branch="z9hG4bK-re",
        cseq=2,
        to_tag=dialog.local_tag,  # type: ignore[attr-defined]
    )
    out = ua.receive(raw, SRC)
    assert [r.status for r in sent(out)] == [100]
    (ev,) = events(out)
    assert isinstance(ev, ReofferReceived) and ev.dialog is dialog
    assert ev.dialog.route_set == []  # unchanged (§12.2)
