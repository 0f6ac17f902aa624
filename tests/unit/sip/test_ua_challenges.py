"""Our own in-dialog requests challenged (RFC 3261 §22.2-22.3): a dialog given credentials (a
call its trunk's registrar sent) answers a 401/407 to its BYE, REFER or refresh once, verified
by the server side's digest code; without credentials, or when they are refused, the
challenge is the request's final failure, as before."""

from __future__ import annotations

import pytest

from telepath.clock import FakeClock
from telepath.secrets.digest import compute_ha1
from telepath.sip.auth import Algorithm, AuthResult, DigestAuthenticator, parse_authorization
from telepath.sip.dialog import Dialog
from telepath.sip.message import Request, make_response
from telepath.sip.ua import (
    CallEnded,
    ReferUpdate,
    Send,
    SessionRefreshed,
    UaConfig,
    UserAgentCore,
)
from telepath.sip.uri import parse_uri
from tests.unit.sip.test_session_refresh import (
    ANSWER,
    REFRESH_ME,
    WITHOUT_UPDATE,
    advance,
    answer,
    call,
)
from tests.unit.sip.test_ua import SDP, SRC, _confirmed, events, requests

pytestmark = pytest.mark.unit

USER, PASSWORD, REALM = "alice", "carrier-secret-7", "carrier.example"


@pytest.fixture
def ua() -> UserAgentCore:
    return UserAgentCore(UaConfig(contact_host="203.0.113.5"), FakeClock(100.0))


@pytest.fixture
def carrier() -> DigestAuthenticator:
    return DigestAuthenticator(REALM, b"k" * 32, FakeClock(100.0))


def dialog_with(ua: UserAgentCore, credentials: tuple[str, str] | None) -> Dialog:
    dialog = _confirmed(ua)
    assert isinstance(dialog, Dialog)
    dialog.credentials = credentials
    return dialog


def challenge(
    request: Request, carrier: DigestAuthenticator, status: int = 407, *, stale: bool = False
) -> bytes:
    name = "Proxy-Authenticate" if status == 407 else "WWW-Authenticate"
    values = carrier.challenge_headers(stale=stale)
    return make_response(request, status, headers=[(name, v) for v in values]).to_bytes()


def verified(request: Request, carrier: DigestAuthenticator, field: str) -> AuthResult:
    creds = parse_authorization(request.headers.get(field) or "")

    def ha1(username: str, algorithm: Algorithm) -> str | None:
        return compute_ha1(algorithm, USER, REALM, PASSWORD) if username == USER else None

    assert creds.uri == str(request.uri)
    return carrier.verify(creds, method=request.method, ha1_lookup=ha1).result


@pytest.mark.parametrize(
    ("status", "field"), [(407, "Proxy-Authorization"), (401, "Authorization")]
)
def test_a_challenged_bye_is_sent_again_with_credentials(
    ua: UserAgentCore, carrier: DigestAuthenticator, status: int, field: str
) -> None:
    dialog = dialog_with(ua, (USER, PASSWORD))
    (bye,) = requests(ua.hangup(dialog))
    out = ua.receive(challenge(bye, carrier, status), SRC)
    assert events(out) == []  # the call is not over yet: the BYE goes again
    (again,) = requests(out)
    assert again.method == "BYE" and again.cseq.seq == bye.cseq.seq + 1  # §8.1.3.5
    assert (again.call_id, again.from_.tag, again.to.tag) == (
        bye.call_id,
        bye.from_.tag,
        bye.to.tag,
    )
    assert again.top_via.branch != bye.top_via.branch
    assert [o.dest for o in out if isinstance(o, Send)] == [SRC]
    assert verified(again, carrier, field) == AuthResult.OK
    assert ua.counters["challenges_answered"] == 1
    assert events(ua.receive(make_response(again, 200).to_bytes(), SRC)) == [
        CallEnded(dialog, "local_bye")
    ]
    trace = ua.pop_trace(dialog.call_id, dialog.remote_tag)  # both BYEs, the answer redacted
    assert trace.count("BYE sip:") == 2 and f"{field}: Digest <redacted>" in trace


def test_without_credentials_a_challenge_ends_the_bye_as_before(
    ua: UserAgentCore, carrier: DigestAuthenticator
) -> None:
    dialog = dialog_with(ua, None)
    (bye,) = requests(ua.hangup(dialog))
    out = ua.receive(challenge(bye, carrier), SRC)
    assert requests(out) == [] and events(out) == [CallEnded(dialog, "local_bye")]


def test_refused_credentials_are_not_sent_again(
    ua: UserAgentCore, carrier: DigestAuthenticator
) -> None:
    dialog = dialog_with(ua, (USER, "wrong-password"))
    (bye,) = requests(ua.hangup(dialog))
    (again,) = requests(ua.receive(challenge(bye, carrier), SRC))
    out = ua.receive(challenge(again, carrier), SRC)  # refused: not stale
    assert requests(out) == [] and events(out) == [CallEnded(dialog, "local_bye")]
    assert ua.counters["challenges_refused"] == 1


def test_a_proxy_then_a_server_challenge_are_both_answered_with_fresh_counts(
    ua: UserAgentCore, carrier: DigestAuthenticator
) -> None:
    """A carrier's proxy challenges our BYE (407), then the server behind it (401): the second
    resend carries both answers, the proxy's with the next nonce count — the same nc with the
    same nonce is a replay to a proxy that checks counts (RFC 7616 §3.4, RFC 2617 §3.2.2)."""
    server = DigestAuthenticator(REALM, b"s" * 32, FakeClock(100.0))
    dialog = dialog_with(ua, (USER, PASSWORD))
    (bye,) = requests(ua.hangup(dialog))
    (first,) = requests(ua.receive(challenge(bye, carrier, 407), SRC))
    assert verified(first, carrier, "Proxy-Authorization") == AuthResult.OK
    (second,) = requests(ua.receive(challenge(first, server, 401), SRC))
    assert second.headers.count("Proxy-Authorization") == 1
    assert verified(second, carrier, "Proxy-Authorization") == AuthResult.OK  # not REPLAY
    assert verified(second, server, "Authorization") == AuthResult.OK
    assert ua.counters["challenges_answered"] == 2


def test_a_stale_nonce_is_answered_again_but_not_forever(
    ua: UserAgentCore, carrier: DigestAuthenticator
) -> None:
    dialog = dialog_with(ua, (USER, PASSWORD))
    (bye,) = requests(ua.hangup(dialog))
    (first,) = requests(ua.receive(challenge(bye, carrier), SRC))
    (second,) = requests(ua.receive(challenge(first, carrier, stale=True), SRC))
    assert second.headers.count("Proxy-Authorization") == 1  # replaced, not added
    assert second.cseq.seq == first.cseq.seq + 1
    # a peer that keeps saying stale is answered four times per request, then given up on
    (third,) = requests(ua.receive(challenge(second, carrier, stale=True), SRC))
    (fourth,) = requests(ua.receive(challenge(third, carrier, stale=True), SRC))
    out = ua.receive(challenge(fourth, carrier, stale=True), SRC)
    assert requests(out) == [] and events(out) == [CallEnded(dialog, "local_bye")]
    assert ua.counters["challenges_answered"] == 4


def test_a_challenged_refer_keeps_its_headers(
    ua: UserAgentCore, carrier: DigestAuthenticator
) -> None:
    dialog = dialog_with(ua, (USER, PASSWORD))
    (refer,) = requests(ua.refer(dialog, "sip:+15550001111@carrier.example"))
    out = ua.receive(challenge(refer, carrier, 401), SRC)
    assert events(out) == []
    (again,) = requests(out)
    assert again.method == "REFER" and verified(again, carrier, "Authorization") == AuthResult.OK
    for name in ("Refer-To", "Referred-By", "Contact"):
        assert again.headers.get(name) == refer.headers.get(name), name
    assert again.headers.count("Via") == 1 and again.headers.count("CSeq") == 1
    assert events(ua.receive(make_response(again, 202).to_bytes(), SRC)) == [
        ReferUpdate(dialog, 202, False)
    ]


def test_a_challenged_reinvite_refresh_is_acknowledged_and_sent_again(
    carrier: DigestAuthenticator,
) -> None:
    clock = FakeClock(100.0)
    ua = UserAgentCore(UaConfig(contact_host="203.0.113.5"), clock)
    dialog, _ = call(ua, REFRESH_ME, allow=WITHOUT_UPDATE)
    dialog.credentials = (USER, PASSWORD)
    (invite,) = requests(advance(ua, clock, 45.1))
    assert invite.method == "INVITE"
    challenged = answer(invite, 407, [("Proxy-Authenticate", carrier.challenge_headers()[0])])
    out = ua.receive(challenged, SRC)
    ack, again = requests(out)
    # §17.1.1.3: the challenged INVITE's own ACK; then the INVITE again, same offer
    assert ack.method == "ACK" and ack.top_via.branch == invite.top_via.branch
    assert again.method == "INVITE" and again.body == invite.body == ANSWER
    assert again.headers.get("Session-Expires") == invite.headers.get("Session-Expires")
    assert verified(again, carrier, "Proxy-Authorization") == AuthResult.OK
    ok = answer(again, 200, [("Session-Expires", "90;refresher=uac")], body=SDP)
    out = ua.receive(ok, SRC)
    (ack,) = requests(out)
    assert ack.cseq.seq == again.cseq.seq
    # §13.2.2.4: with the INVITE's credentials (a proxy that authenticates ACKs drops one
    # without, and the peer ends the call after retransmitting its 2xx)
    assert ack.headers.get("Proxy-Authorization") == again.headers.get("Proxy-Authorization")
    assert events(out) == [SessionRefreshed(dialog, SDP)]  # the refresh went through


def test_a_challenge_from_beyond_a_proxying_carrier_is_not_answered(
    ua: UserAgentCore, carrier: DigestAuthenticator
) -> None:
    """The carrier proxies the dialog on: its remote target (the far end's Contact) is not the
    address the call came from. Whoever is there could challenge our BYE to collect a digest
    of the registration's password: the challenge is the BYE's final failure instead."""
    dialog = dialog_with(ua, (USER, PASSWORD))
    dialog.remote_target = parse_uri("sip:caller@198.51.100.77:5060")  # a target refresh
    (bye,) = requests(ua.hangup(dialog))
    for status in (401, 407):
        out = ua.receive(challenge(bye, carrier, status), SRC)
        assert requests(out) == []
    assert ua.counters["challenges_answered"] == 0
    assert ua.counters["challenges_not_ours"] >= 1


def test_our_bye_after_the_session_expired_still_answers_the_challenge(
    ua: UserAgentCore, carrier: DigestAuthenticator
) -> None:
    """The session expired (RFC 4028 §10): the BYE goes and the dialog ends on our side at
    once; a carrier that challenges that BYE still gets the answer, or its leg stays up."""
    clock = ua.clock
    assert isinstance(clock, FakeClock)
    dialog, _ = call(ua, "Supported: timer\r\nSession-Expires: 90;refresher=uac\r\n")
    dialog.credentials = (USER, PASSWORD)
    out = advance(ua, clock, 60.5)
    assert events(out) == [CallEnded(dialog, "session_expired")]
    bye = requests(out)[-1]
    assert bye.method == "BYE"
    (again,) = requests(ua.receive(challenge(bye, carrier, 407), SRC))
    assert again.method == "BYE" and again.cseq.seq == bye.cseq.seq + 1
    assert verified(again, carrier, "Proxy-Authorization") == AuthResult.OK
