"""The outbound registration state machine (RFC 3261 §10.2) and the client side of Digest,
checked against the project's own server-side verifier (RFC 7616)."""

from __future__ import annotations

import hashlib

import pytest

from telepath.clock import FakeClock
from telepath.secrets.digest import compute_ha1
from telepath.sip.auth import AuthResult, DigestAuthenticator, parse_authorization
from telepath.sip.client_auth import answer_challenge, parse_challenge
from telepath.sip.message import Request, Response, make_response
from telepath.sip.parser import parse_message
from telepath.sip.registration import (
    Failed,
    Registered,
    Registration,
    Resend,
    Unregistered,
    backoff_delay,
    refresh_delay,
)
from telepath.sip.transaction import Source
from telepath.sip.ua import RequestAnswered, Send, UaConfig, UserAgentCore
from telepath.sip.uri import parse_uri

REALM = "carrier.example"
PASSWORD = "pa55-word"
CONTACT = "sip:tpr-0123456789abcdef0123@203.0.113.5:5060"


def registration(**over: object) -> Registration:
    kwargs: dict[str, object] = {
        "registrar": parse_uri("sip:sip.carrier.example"),
        "aor": "sip:alice@carrier.example",
        "contact": CONTACT,
        "via": "SIP/2.0/UDP 203.0.113.5:5060",
        "auth_username": "alice",
        "password": PASSWORD,
        "expires": 300,
        "rng": lambda: 0.0,
    } | over
    return Registration(**kwargs)  # type: ignore[arg-type]


def roundtrip(request: Request) -> Request:
    parsed = parse_message(request.to_bytes())
    assert isinstance(parsed, Request)
    return parsed


def answer(request: Request, status: int, headers: list[tuple[str, str]] | None = None) -> Response:
    response = make_response(request, status, to_tag="reg1", headers=headers or [])
    parsed = parse_message(response.to_bytes())
    assert isinstance(parsed, Response)
    return parsed


def server() -> DigestAuthenticator:
    return DigestAuthenticator(REALM, b"s" * 32, FakeClock())


def verified(auth: DigestAuthenticator, request: Request, header: str = "Authorization") -> bool:
    value = request.headers.get(header)
    assert value is not None
    creds = parse_authorization(value)

    def ha1(username: str, algorithm: str) -> str | None:
        if username != "alice":
            return None
        return compute_ha1(algorithm, "alice", REALM, PASSWORD)  # type: ignore[arg-type]

    return auth.verify(creds, method="REGISTER", ha1_lookup=ha1).result == AuthResult.OK


def test_the_register_request_follows_section_10_2() -> None:
    reg = registration()
    first = roundtrip(reg.register())
    assert first.method == "REGISTER"
    assert str(first.uri) == "sip:sip.carrier.example"  # no user part in the Request-URI
    assert first.headers.get("To") == "<sip:alice@carrier.example>"
    assert first.from_.uri == parse_uri("sip:alice@carrier.example") and first.from_.tag
    assert first.headers.get("Contact") == f"<{CONTACT}>"
    assert first.headers.get("Expires") == "300"
    assert first.cseq.seq == 1
    assert first.top_via.branch is not None and first.top_via.branch.startswith("z9hG4bK")
    refresh = roundtrip(reg.register())
    # a refresh replaces the binding: same Call-ID and From tag, the next CSeq, a new branch
    assert refresh.call_id == first.call_id and refresh.from_.tag == first.from_.tag
    assert refresh.cseq.seq == 2 and refresh.top_via.branch != first.top_via.branch
    assert "pa55" not in repr(reg)


def test_a_challenge_is_answered_with_sha_256_and_the_server_accepts_it() -> None:
    auth = server()
    reg = registration()
    request = reg.register()
    challenge = [("WWW-Authenticate", v) for v in auth.challenge_headers()]
    outcome = reg.on_response(answer(request, 401, challenge))
    assert isinstance(outcome, Resend)
    signed = roundtrip(outcome.request)
    assert signed.cseq.seq == 2 and signed.call_id == request.call_id
    assert signed.headers.get("Expires") == "300"
    creds = parse_authorization(signed.headers.get("Authorization") or "")
    assert creds.algorithm == "SHA-256" and creds.uri == "sip:sip.carrier.example"
    assert verified(auth, signed)
    ok = reg.on_response(answer(signed, 200, [("Contact", f"<{CONTACT}>;expires=120")]))
    assert ok == Registered(120, 60.0)
    assert reg.failures == 0


def test_a_proxy_challenge_gets_proxy_authorization() -> None:
    auth = server()
    reg = registration()
    request = reg.register()
    values = auth.challenge_headers(algorithms=["MD5"])
    outcome = reg.on_response(answer(request, 407, [("Proxy-Authenticate", values[0])]))
    assert isinstance(outcome, Resend)
    assert outcome.request.headers.get("Authorization") is None
    assert verified(auth, outcome.request, "Proxy-Authorization")


def test_a_second_challenge_is_a_refusal_unless_stale() -> None:
    auth = server()
    reg = registration()
    request = reg.register()
    challenge = [("WWW-Authenticate", auth.challenge_headers()[0])]
    signed = reg.on_response(answer(request, 401, challenge))
    assert isinstance(signed, Resend)
    stale = [("WWW-Authenticate", v) for v in auth.challenge_headers(stale=True)]
    again = reg.on_response(answer(signed.request, 401, stale))
    assert isinstance(again, Resend)  # stale=true: re-sign, no fault (§22.4)
    refused = reg.on_response(answer(again.request, 401, challenge))
    assert refused == Failed("401 Unauthorized (credentials refused)", 15.0)
    # the next attempt starts afresh: its first challenge is answered again
    retry = reg.register()
    assert isinstance(reg.on_response(answer(retry, 401, challenge)), Resend)


def test_a_proxy_then_a_registrar_challenge_are_both_answered() -> None:
    """An authenticating outbound proxy's 407, then the registrar's 401 (RFC 3261 §22.3): the
    401 is no refusal — its realm was not answered yet — and the resend carries both answers;
    the proxy's again with the next nonce count, so a proxy that checks counts takes it
    (RFC 7616 §3.4: the same nc with the same nonce is a replay)."""
    proxy, registrar = DigestAuthenticator(REALM, b"p" * 32, FakeClock()), server()
    reg = registration()
    request = reg.register()
    first = reg.on_response(
        answer(request, 407, [("Proxy-Authenticate", proxy.challenge_headers()[0])])
    )
    assert isinstance(first, Resend) and verified(proxy, first.request, "Proxy-Authorization")
    challenge = [("WWW-Authenticate", registrar.challenge_headers()[0])]
    second = reg.on_response(answer(first.request, 401, challenge))
    assert isinstance(second, Resend)
    signed = roundtrip(second.request)
    assert signed.headers.count("Proxy-Authorization") == 1
    assert signed.headers.count("Authorization") == 1
    assert verified(proxy, signed, "Proxy-Authorization")  # nc 2: not a replay
    assert verified(registrar, signed)
    # the proxy's nonce goes stale: its answer is replaced, the registrar's counts on
    stale = [("Proxy-Authenticate", proxy.challenge_headers(stale=True)[0])]
    third = reg.on_response(answer(signed, 407, stale))
    assert isinstance(third, Resend)
    again = roundtrip(third.request)
    assert again.headers.count("Proxy-Authorization") == again.headers.count("Authorization") == 1
    assert verified(proxy, again, "Proxy-Authorization") and verified(registrar, again)
    # each realm is refused once it was answered: a challenge, not stale, ends it
    refused = reg.on_response(answer(again, 401, challenge))
    assert refused == Failed("401 Unauthorized (credentials refused)", 15.0)


def test_stale_challenges_are_answered_a_bounded_number_of_times() -> None:
    auth = server()
    reg = registration()
    request = reg.register()
    stale = [("WWW-Authenticate", v) for v in auth.challenge_headers(stale=True)]
    outcomes = []
    for _ in range(10):
        outcome = reg.on_response(answer(request, 401, stale))
        outcomes.append(outcome)
        if not isinstance(outcome, Resend):
            break
        request = outcome.request
    assert sum(isinstance(o, Resend) for o in outcomes) == 4
    assert isinstance(outcomes[-1], Failed)


def test_a_challenge_it_cannot_meet_fails() -> None:
    reg = registration()
    request = reg.register()
    value = 'Digest realm="r", nonce="n", algorithm=SHA-512-256, qop="auth"'
    outcome = reg.on_response(answer(request, 401, [("WWW-Authenticate", value)]))
    assert isinstance(outcome, Failed)
    assert "no supported digest algorithm" in outcome.detail


@pytest.mark.parametrize(
    ("headers", "granted"),
    [
        ([("Contact", f"<sip:phone@198.51.100.7>;expires=3600, <{CONTACT}>;expires=90")], 90),
        # a NAT-aware registrar rewrote our host and port: the contact user still identifies us
        ([("Contact", "<sip:tpr-0123456789abcdef0123@198.51.100.1:40123>;expires=200")], 200),
        ([("Expires", "240"), ("Contact", "<sip:phone@198.51.100.7>;expires=3600")], 240),
        ([], 300),
    ],
)
def test_the_interval_granted(headers: list[tuple[str, str]], granted: int) -> None:
    reg = registration()
    outcome = reg.on_response(answer(reg.register(), 200, headers))
    assert outcome == Registered(granted, refresh_delay(granted))


@pytest.mark.parametrize(
    "headers",
    [
        [("Contact", f"<{CONTACT}>;expires=1000000000000")],
        [("Contact", f"<{CONTACT}>;expires={'9' * 5000}")],  # past int()'s 4,300 digits
        [("Expires", "1000000000000")],
    ],
)
def test_a_registrar_granting_more_than_asked_is_taken_at_what_was_asked(
    headers: list[tuple[str, str]],
) -> None:
    """RFC 3261 §10.3 step 7: a registrar may shorten the interval asked for, never lengthen
    it. 10**12 s made the driver's ``registered_until`` overflow, and 5,000 digits made
    ``int()`` raise: the answer was lost and the binding never refreshed again."""
    reg = registration()
    outcome = reg.on_response(answer(reg.register(), 200, headers))
    assert outcome == Registered(300, refresh_delay(300))


def test_refresh_comes_a_minute_early_or_half_way() -> None:
    assert refresh_delay(3600) == 3540
    assert refresh_delay(300) == 240
    assert refresh_delay(120) == 60
    assert refresh_delay(60) == 30


def test_interval_too_brief_retries_with_min_expires_once() -> None:
    reg = registration(expires=60)
    outcome = reg.on_response(answer(reg.register(), 423, [("Min-Expires", "600")]))
    assert isinstance(outcome, Resend)
    assert outcome.request.headers.get("Expires") == "600"
    assert reg.expires == 600  # refreshes keep asking for it
    # a registrar that asks for no more than what was sent, or says nothing, is a failure
    again = reg.on_response(answer(outcome.request, 423, [("Min-Expires", "600")]))
    assert isinstance(again, Failed) and again.detail.startswith("423")
    plain = registration()
    assert isinstance(plain.on_response(answer(plain.register(), 423)), Failed)


def test_failures_back_off_and_retry_after_is_honoured() -> None:
    reg = registration()
    delays = []
    for _ in range(7):
        reg.register()
        outcome = reg.on_timeout()
        assert isinstance(outcome, Failed) and outcome.detail == "no response"
        delays.append(outcome.retry_in)
    assert delays == [15, 30, 60, 120, 240, 300, 300]  # rng 0: half of 30 s × 2^n, up to 600 s
    assert backoff_delay(3, lambda: 1.0) == 120
    busy = registration()
    outcome = busy.on_response(answer(busy.register(), 503, [("Retry-After", "20")]))
    assert outcome == Failed("503 Service Unavailable", 20.0)
    moved = registration()
    outcome = moved.on_response(answer(moved.register(), 302))
    assert isinstance(outcome, Failed) and outcome.detail.startswith("302 ")
    zero = registration()
    outcome = zero.on_response(answer(zero.register(), 200, [("Expires", "0")]))
    assert isinstance(outcome, Failed)


@pytest.mark.parametrize(
    ("value", "retry_in"),
    [
        ("20 (busy)", 20.0),  # RFC 3261 §20.33: delta-seconds [ comment ] *( SEMI retry-param )
        ("20(busy)", 20.0),
        ("20 (a (nested) \\) comment);duration=3600", 20.0),
        ("20;duration=3600", 20.0),
        (" 20 ", 20.0),
        ("20 (unclosed", 15.0),  # not a Retry-After: the back-off's first step
        ("20 busy", 15.0),
        ("0", 15.0),
    ],
)
def test_retry_after_with_a_comment_or_parameters_is_honoured(value: str, retry_in: float) -> None:
    """A 503's ``Retry-After: 120 (I'm in a meeting)`` — §20.33's own example — was taken for
    no Retry-After, and the registrar asked again after 15-30 s instead."""
    reg = registration()
    outcome = reg.on_response(answer(reg.register(), 503, [("Retry-After", value)]))
    assert outcome == Failed("503 Service Unavailable", retry_in)


def test_a_registrar_granting_no_time_is_backed_off_like_any_failure() -> None:
    """A 2xx that grants 0 s is a failure, and the back-off grows (RFC 5626 §4.5): failures
    are reset once registered only — reset at every 2xx, such a registrar was asked again
    every 15-30 s for ever."""
    reg = registration()
    delays = []
    for _ in range(3):
        outcome = reg.on_response(answer(reg.register(), 200, [("Expires", "0")]))
        assert isinstance(outcome, Failed) and outcome.detail == "the registrar granted no time"
        delays.append(outcome.retry_in)
    assert delays == [15, 30, 60]
    assert isinstance(reg.on_response(answer(reg.register(), 200)), Registered)
    assert reg.failures == 0


def test_unregistering_sends_expires_zero_and_ends_whatever_the_answer() -> None:
    auth = server()
    reg = registration()
    request = roundtrip(reg.unregister())
    assert request.headers.get("Expires") == "0"
    assert request.headers.get("Contact") == f"<{CONTACT}>"  # ours only, never "*"
    challenge = [("WWW-Authenticate", v) for v in auth.challenge_headers()]
    signed = reg.on_response(answer(request, 401, challenge))
    assert isinstance(signed, Resend) and signed.request.headers.get("Expires") == "0"
    assert verified(auth, signed.request)
    assert reg.on_response(answer(signed.request, 200)) == Unregistered()
    assert registration().on_timeout() == Failed("no response", 15.0)
    leaving = registration()
    leaving.unregister()
    assert leaving.on_timeout() == Unregistered()
    assert leaving.on_response(answer(leaving.unregister(), 403)) == Unregistered()


def test_only_the_awaited_request_counts() -> None:
    reg = registration()
    old = reg.register()
    new = reg.register()
    assert reg.is_current(new) and not reg.is_current(old)


def test_client_digest_forms() -> None:
    """RFC 2069 form when no qop is offered; opaque echoed; other schemes ignored."""
    value = 'Digest realm="r", nonce="abc", opaque="xyz"'
    answered = answer_challenge(
        ['Basic realm="x"', value], method="REGISTER", uri="sip:r", username="u", password="p"
    )
    assert answered is not None
    creds = parse_authorization(answered[0])
    assert creds.qop is None and creds.cnonce is None and creds.opaque == "xyz"
    assert creds.algorithm == "MD5"
    assert parse_challenge('Digest realm="r"') is None  # no nonce
    assert parse_challenge("Digest realm=") is None  # bad syntax
    only_int = 'Digest realm="r", nonce="n", qop="auth-int"'
    assert answer_challenge([only_int], method="X", uri="u", username="u", password="p") is None


def test_the_core_sends_an_out_of_dialog_request_and_reports_its_answer() -> None:
    """``send_request``: retransmitted over UDP (Timer E), the final answer reported once
    (retransmissions absorbed), a timeout reported as no answer (Timer F)."""
    clock = FakeClock(100.0)
    ua = UserAgentCore(UaConfig(contact_host="203.0.113.5"), clock)
    registrar = Source("UDP", ("198.51.100.1", 5060))
    request = registration().register()
    out = ua.send_request(request, registrar)
    assert [o.dest for o in out if isinstance(o, Send)] == [registrar]
    clock.advance(0.5)
    assert len([o for o in ua.poll() if isinstance(o, Send)]) == 1  # Timer E
    ok = make_response(request, 200, to_tag="r1").to_bytes()
    (event,) = ua.receive(ok, registrar)
    assert isinstance(event, RequestAnswered) and event.request is request
    assert event.response is not None and event.response.status == 200
    assert ua.receive(ok, registrar) == []  # a retransmitted final: absorbed
    clock.advance(10)
    ua.poll()
    assert ua.transaction_count == 0  # Timer K ended it

    lost = registration().register()
    ua.send_request(lost, registrar)
    answers: list[object] = []
    while clock.now() < 100 + 10 + 33:
        clock.advance(0.5)
        answers += [o for o in ua.poll() if isinstance(o, RequestAnswered)]
    assert answers == [RequestAnswered(lost, None)]
    assert ua.transaction_count == 0


def seen_from(
    request: Request, ip: str, port: int, headers: list[tuple[str, str]] | None = None
) -> Response:
    """A 200 from a registrar that saw ``request`` come from ``ip:port`` (RFC 3581 §4)."""
    response = make_response(request, 200, to_tag="reg1", headers=headers or [])
    response.headers.set("Via", str(response.top_via.with_received(ip, port)))
    parsed = parse_message(response.to_bytes())
    assert isinstance(parsed, Response)
    return parsed


MOVED = "sip:tpr-0123456789abcdef0123@198.51.100.9:40001"


def test_a_nat_seen_by_the_registrar_moves_the_contact_there() -> None:
    auth = server()
    reg = registration()
    first = reg.register()
    assert (first.top_via.rport, first.top_via.received) == ("", None)  # rport asked for
    outcome = reg.on_response(seen_from(first, "198.51.100.9", 40001))
    assert isinstance(outcome, Resend) and reg.behind_nat
    moved = roundtrip(outcome.request)
    # the binding is redone at the NAT's address and the unreachable one removed, in one request
    assert moved.headers.get_all("Contact") == [f"<{MOVED}>", f"<{CONTACT}>;expires=0"]
    assert moved.headers.get("Expires") == "300"
    assert moved.top_via.host == "203.0.113.5"  # the Via keeps our own address (RFC 3581 §3)
    assert moved.call_id == first.call_id and moved.cseq.seq == first.cseq.seq + 1
    # challenged: the signed request is the same one
    challenge = [("WWW-Authenticate", v) for v in auth.challenge_headers()]
    signed = reg.on_response(answer(moved, 401, challenge))
    assert isinstance(signed, Resend) and verified(auth, signed.request)
    assert signed.request.headers.get_all("Contact") == moved.headers.get_all("Contact")
    # the registrar lists the new binding (and, say, the old one not yet gone): ours is the new
    listed = [("Contact", f"<{CONTACT}>;expires=7, <{MOVED}>;expires=120")]
    done = reg.on_response(seen_from(signed.request, "198.51.100.9", 40001, listed))
    assert done == Registered(120, 60.0)
    assert reg.contact == MOVED
    # refreshes and the unregistration use the new contact alone
    assert roundtrip(reg.register()).headers.get_all("Contact") == [f"<{MOVED}>"]
    assert roundtrip(reg.unregister()).headers.get_all("Contact") == [f"<{MOVED}>"]


def test_the_contact_moves_once_per_refresh_and_only_when_the_address_differs() -> None:
    reg = registration()
    moved = reg.on_response(seen_from(reg.register(), "198.51.100.9", 40001))
    assert isinstance(moved, Resend)
    # a registrar that sees yet another address: registered as is, no ping-pong
    again = reg.on_response(seen_from(moved.request, "198.51.100.10", 40002))
    assert again == Registered(300, 240.0) and reg.contact == MOVED
    # the next refresh may move it again (the NAT's mapping changed)
    assert isinstance(reg.on_response(seen_from(reg.register(), "198.51.100.10", 40002)), Resend)
    assert reg.contact == "sip:tpr-0123456789abcdef0123@198.51.100.10:40002"
    # no NAT: the registrar saw the contact's own address
    direct = registration()
    assert direct.on_response(seen_from(direct.register(), "203.0.113.5", 5060)) == Registered(
        300, 240.0
    )
    assert not direct.behind_nat and direct.contact == CONTACT
    # a port-changing NAT in front of the configured public address moves the port alone
    port_only = registration()
    assert isinstance(
        port_only.on_response(seen_from(port_only.register(), "203.0.113.5", 1)), Resend
    )
    assert port_only.contact == "sip:tpr-0123456789abcdef0123@203.0.113.5:1"
    # IPv6: written as a URI host
    v6 = registration()
    assert isinstance(v6.on_response(seen_from(v6.register(), "2001:db8::7", 5062)), Resend)
    assert v6.contact == "sip:tpr-0123456789abcdef0123@[2001:db8::7]:5062"


@pytest.mark.parametrize(
    "via_params", [";received=registrar.example;rport=40001", ";received=203.0.113.5;rport=70000"]
)
def test_a_received_that_is_no_ip_address_or_an_impossible_port_is_ignored(
    via_params: str,
) -> None:
    """RFC 3581 §4: ``received`` is the source IP address and ``rport`` its port: anything else
    is the registrar's mistake, never a contact to register."""
    reg = registration()
    request = reg.register()
    response = make_response(request, 200, to_tag="reg1")
    via = request.headers.get("Via") or ""
    response.headers.set("Via", via.replace(";rport", via_params))
    parsed = parse_message(response.to_bytes())
    assert isinstance(parsed, Response)
    assert reg.on_response(parsed) == Registered(300, 240.0)
    assert reg.contact == CONTACT and not reg.behind_nat


def test_over_tcp_only_another_address_is_a_nat_then_the_connection_s_port_follows() -> None:
    """A connection's source port is never the contact's listening port: over TCP a port of
    its own is no NAT. Another address is: the contact moves to the connection's address
    (transport kept), and after that to each new connection's port."""
    tcp_contact = CONTACT + ";transport=tcp"
    reg = registration(contact=tcp_contact, via="SIP/2.0/TCP 203.0.113.5:5060")
    assert reg.on_response(seen_from(reg.register(), "203.0.113.5", 51000)) == Registered(
        300, 240.0
    )
    assert reg.contact == tcp_contact and not reg.behind_nat
    behind = registration(contact=tcp_contact, via="SIP/2.0/TCP 203.0.113.5:5060")
    moved = behind.on_response(seen_from(behind.register(), "198.51.100.9", 51000))
    assert isinstance(moved, Resend) and behind.behind_nat
    assert behind.contact == "sip:tpr-0123456789abcdef0123@198.51.100.9:51000;transport=tcp"
    assert moved.request.top_via.transport == "TCP"
    behind.on_response(seen_from(moved.request, "198.51.100.9", 51000))
    # a new connection (the old one dropped): the same address, another port
    again = behind.on_response(seen_from(behind.register(), "198.51.100.9", 52000))
    assert isinstance(again, Resend)
    assert behind.contact == "sip:tpr-0123456789abcdef0123@198.51.100.9:52000;transport=tcp"


def test_unicode_digits_in_a_registrar_s_numbers_are_no_numbers() -> None:
    """``str.isdigit`` takes "²", which ``int()`` refuses: a Retry-After or Min-Expires of
    such is one not given (it raised)."""
    reg = registration()
    request = reg.register()
    outcome = reg.on_response(answer(request, 503, [("Retry-After", "\u00b2")]))
    assert isinstance(outcome, Failed) and outcome.retry_in == 15.0
    outcome = reg.on_response(answer(reg.register(), 423, [("Min-Expires", "1\u00b2")]))
    assert isinstance(outcome, Failed)


def test_a_realm_that_is_not_utf_8_is_answered_over_its_bytes() -> None:
    """Header text keeps bytes that are not UTF-8 as surrogates; the HA1 is over the bytes the
    registrar sent (it raised UnicodeEncodeError, failing the registration's driver)."""
    realm = b"M\xfcller GmbH".decode("utf-8", "surrogateescape")
    found = answer_challenge(
        [f'Digest realm="{realm}", nonce="n1"'],
        method="REGISTER",
        uri="sip:r",
        username="u",
        password="p",
    )
    assert found is not None
    creds = parse_authorization(found[0])
    ha1 = hashlib.md5(b"u:M\xfcller GmbH:p").hexdigest()
    ha2 = hashlib.md5(b"REGISTER:sip:r").hexdigest()
    assert creds.response == hashlib.md5(f"{ha1}:n1:{ha2}".encode()).hexdigest()


def test_the_registrar_s_reason_phrase_is_kept_out_of_the_detail_for_logs() -> None:
    """A registrar's reason phrase is its own text, and some put the account's user (often the
    number) in it: the API shows the detail to the trunk's owner, the log gets it without."""
    reg = registration()
    request = reg.register()
    refused = make_response(request, 403, "User +4930123456 unknown", to_tag="reg1")
    parsed = parse_message(refused.to_bytes())
    assert isinstance(parsed, Response)
    failed = reg.on_response(parsed)
    assert isinstance(failed, Failed)
    assert failed.detail == "403 User +4930123456 unknown"
    assert "4930123456" not in failed.safe_detail
    assert failed.safe_detail.startswith("403")
