"""Digest authentication: RFC 7616 vectors, challenge/response round trips, replay, parsing."""

from __future__ import annotations

import base64
import ipaddress
import random
import re
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telepath.clock import FakeClock
from telepath.secrets.digest import compute_ha1
from telepath.sip.auth import (
    Algorithm,
    AuthHeaderError,
    AuthOutcome,
    AuthResult,
    DigestAuthenticator,
    DigestCredentials,
    digest_response,
    parse_authorization,
    redact_authorization,
)

pytestmark = pytest.mark.unit

REALM = "sip.telepath.local"
SECRET = b"0123456789abcdef-test-secret"
USERS = {"alice": "wonderland", "bob": "builder"}


def ha1_lookup(username: str, algorithm: Algorithm) -> str | None:
    """The trunk store: HA1 per (user, algorithm), None for strangers."""
    password = USERS.get(username)
    return None if password is None else compute_ha1(algorithm, username, REALM, password)


def challenge_params(challenge: str) -> dict[str, str]:
    """Client side: read a WWW-Authenticate value (our own, so a simple regex is enough)."""
    assert challenge.startswith("Digest ")
    return {
        m.group(1): m.group(2) if m.group(2) is not None else m.group(3)
        for m in re.finditer(r'(\w+)=(?:"([^"]*)"|([^,\s]+))', challenge)
    }


def compute_response(
    challenge: str,
    *,
    username: str,
    password: str,
    method: str,
    uri: str,
    nc: int = 1,
    cnonce: str = "0a4f113b",
    use_qop: bool = True,
    realm: str | None = None,
) -> str:
    """Client side: answer ``challenge`` and return the Authorization header value."""
    params = challenge_params(challenge)
    algorithm = params["algorithm"]
    assert algorithm in ("MD5", "SHA-256")
    realm = params["realm"] if realm is None else realm
    ha1 = compute_ha1(algorithm, username, realm, password)  # type: ignore[arg-type]
    nc_text = f"{nc:08x}"
    response = digest_response(
        algorithm,  # type: ignore[arg-type]
        ha1,
        nonce=params["nonce"],
        method=method,
        uri=uri,
        qop="auth" if use_qop else None,
        nc=nc_text,
        cnonce=cnonce,
    )
    header = (
        f'Digest username="{username}", realm="{realm}", nonce="{params["nonce"]}", '
        f'uri="{uri}", response="{response}", algorithm={algorithm}'
    )
    if use_qop:
        header += f', cnonce="{cnonce}", qop=auth, nc={nc_text}'
    return header


def make(
    clock: FakeClock | None = None, **kwargs: float | int
) -> tuple[DigestAuthenticator, FakeClock]:
    clock = clock or FakeClock(1000.0)
    return DigestAuthenticator(REALM, SECRET, clock, **kwargs), clock  # type: ignore[arg-type]


def verify(
    auth: DigestAuthenticator, header: str, method: str = "REGISTER", source: str | None = None
) -> AuthOutcome:
    return auth.verify(
        parse_authorization(header), method=method, ha1_lookup=ha1_lookup, source=source
    )


def answer(
    auth: DigestAuthenticator,
    algorithm: Algorithm = "SHA-256",
    source: str | None = None,
    **kwargs: str | int | bool,
) -> str:
    challenge = auth.challenge_headers(source=source)[0 if algorithm == "SHA-256" else 1]
    options: dict[str, str | int | bool] = {
        "username": "alice",
        "password": USERS["alice"],
        "method": "REGISTER",
        "uri": "sip:sip.telepath.local",
    }
    options.update(kwargs)
    return compute_response(challenge, **options)  # type: ignore[arg-type]


# -- RFC 7616 §3.9.1 test vectors -----------------------------------------------------------

RFC_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC_SHA256_RESPONSE = "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", RFC_SHA256_RESPONSE),
    ],
)
def test_rfc7616_example_vectors(algorithm: Algorithm, expected: str) -> None:
    ha1 = compute_ha1(algorithm, "Mufasa", "http-auth@example.org", "Circle of Life")
    response = digest_response(
        algorithm,
        ha1,
        nonce=RFC_NONCE,
        method="GET",
        uri="/dir/index.html",
        qop="auth",
        nc="00000001",
        cnonce=RFC_CNONCE,
    )
    assert response == expected


def test_rfc7616_example_header_parses_to_the_same_response() -> None:
    header = (
        'Digest username="Mufasa",\r\n realm="http-auth@example.org",\r\n'
        ' uri="/dir/index.html",\r\n algorithm=SHA-256,\r\n'
        f' nonce="{RFC_NONCE}",\r\n nc=00000001,\r\n cnonce="{RFC_CNONCE}",\r\n'
        f' qop=auth,\r\n response="{RFC_SHA256_RESPONSE}",'
        '\r\n opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
    )
    creds = parse_authorization(header)
    assert creds == DigestCredentials(
        username="Mufasa",
        realm="http-auth@example.org",
        nonce=RFC_NONCE,
        uri="/dir/index.html",
        response=RFC_SHA256_RESPONSE,
        algorithm="SHA-256",
        cnonce=RFC_CNONCE,
        nc=1,
        qop="auth",
        opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS",
        nc_value="00000001",
    )


def test_rfc2069_response_without_qop() -> None:
    # RFC 2617 §3.2.2.1 without qop: H(HA1:nonce:HA2), computed here from first principles.
    import hashlib

    ha1 = hashlib.md5(b"u:r:p").hexdigest()
    ha2 = hashlib.md5(b"INVITE:sip:x@y").hexdigest()
    expected = hashlib.md5(f"{ha1}:n0nce:{ha2}".encode()).hexdigest()
    assert digest_response("MD5", ha1, nonce="n0nce", method="INVITE", uri="sip:x@y") == expected


# -- challenges ---------------------------------------------------------------------------


def test_challenges_sha256_first_then_md5_sharing_a_nonce() -> None:
    auth, _ = make()
    sha, md5 = auth.challenge_headers()
    assert re.fullmatch(
        r'Digest realm="sip\.telepath\.local", nonce="[A-Za-z0-9_-]{64}", '
        r'algorithm=SHA-256, qop="auth"',
        sha,
    )
    assert md5 == sha.replace("algorithm=SHA-256", "algorithm=MD5")
    assert "stale" not in sha


def test_stale_challenge_and_fresh_nonce_each_time() -> None:
    auth, _ = make()
    first = auth.challenge_headers(stale=True)
    second = auth.challenge_headers()
    assert all(value.endswith(", stale=true") for value in first)
    assert challenge_params(first[0])["nonce"] != challenge_params(second[0])["nonce"]


def test_realm_is_quoted_safely() -> None:
    auth = DigestAuthenticator('we"ird\\realm', SECRET, FakeClock())
    creds = parse_authorization(
        auth.challenge_headers()[0] + ', username="u", uri="sip:x", response="00"'
    )
    assert creds.realm == 'we"ird\\realm'


def test_short_secret_rejected() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        DigestAuthenticator(REALM, b"short", FakeClock())


# -- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_round_trip_ok(algorithm: Algorithm) -> None:
    auth, _ = make()
    outcome = verify(auth, answer(auth, algorithm))
    assert outcome == AuthOutcome(AuthResult.OK, "alice", algorithm)


@pytest.mark.parametrize("name", ["md5", "Md5", "sha-256", "Sha-256"])
def test_algorithm_names_are_case_insensitive(name: str) -> None:
    auth, _ = make()
    algorithm: Algorithm = "MD5" if name.lower() == "md5" else "SHA-256"
    header = answer(auth, algorithm).replace(f"algorithm={algorithm}", f"algorithm={name}")
    assert verify(auth, header) == AuthOutcome(AuthResult.OK, "alice", algorithm)


def test_missing_algorithm_means_md5() -> None:
    auth, _ = make()
    header = answer(auth, "MD5").replace(", algorithm=MD5", "")
    assert parse_authorization(header).algorithm == "MD5"
    assert verify(auth, header).result is AuthResult.OK


def test_upper_case_response_hex_accepted() -> None:
    auth, _ = make()
    header = answer(auth)
    response = parse_authorization(header).response
    assert verify(auth, header.replace(response, response.upper())).result is AuthResult.OK


def test_response_is_bound_to_method() -> None:
    auth, _ = make()
    assert verify(auth, answer(auth), method="INVITE").result is AuthResult.FAILED


def test_wrong_password_fails() -> None:
    auth, _ = make()
    outcome = verify(auth, answer(auth, password="guess"))
    assert outcome == AuthOutcome(AuthResult.FAILED, "alice", "SHA-256")


def test_unknown_user_looks_exactly_like_a_wrong_password() -> None:
    auth, _ = make()
    asked: list[tuple[str, Algorithm]] = []

    def lookup(username: str, algorithm: Algorithm) -> str | None:
        asked.append((username, algorithm))
        return ha1_lookup(username, algorithm)

    stranger = auth.verify(
        parse_authorization(answer(auth, "MD5", username="mallory", password="x")),
        method="REGISTER",
        ha1_lookup=lookup,
    )
    assert stranger == AuthOutcome(AuthResult.FAILED, "mallory", "MD5")
    assert asked == [("mallory", "MD5")]
    # A known user with a wrong password yields the same shape, field for field.
    wrong = verify(auth, answer(auth, "MD5", username="bob", password="x"))
    assert (wrong.result, wrong.algorithm) == (stranger.result, stranger.algorithm)
    assert type(wrong) is type(stranger)
    # Failures leave no state behind.
    assert auth.tracked_nonces() == 0


def test_wrong_realm_fails() -> None:
    auth, _ = make()
    header = answer(auth, realm="evil.example")
    assert verify(auth, header) == AuthOutcome(AuthResult.FAILED, "alice", "SHA-256")
    # The realm parameter is not in the response hash (only in HA1): a correct response with a
    # rewritten realm parameter must still fail.
    rewritten = answer(auth).replace(f'realm="{REALM}"', 'realm="evil.example"')
    assert parse_authorization(rewritten).realm == "evil.example"
    assert verify(auth, rewritten).result is AuthResult.FAILED


def test_unknown_user_never_passes_even_against_the_dummy_ha1() -> None:
    # White-box: forge a response from the internal dummy HA1 an unknown user is checked with.
    auth, _ = make()
    challenge = auth.challenge_headers()[0]
    nonce = challenge_params(challenge)["nonce"]
    dummy = auth._dummy_ha1("mallory", "SHA-256")
    response = digest_response(
        "SHA-256", dummy, nonce=nonce, method="REGISTER", uri="u", qop="auth", nc="00000001",
        cnonce="c",
    )  # fmt: skip
    creds = DigestCredentials("mallory", REALM, nonce, "u", response, "SHA-256", "c", 1, "auth")
    outcome = auth.verify(creds, method="REGISTER", ha1_lookup=ha1_lookup)
    assert outcome == AuthOutcome(AuthResult.FAILED, "mallory", "SHA-256")


def test_nonce_from_another_secret_or_realm_is_unknown() -> None:
    auth, clock = make()
    other_secret = DigestAuthenticator(REALM, b"another-secret-of-16+", clock)
    assert verify(auth, answer(other_secret)) == AuthOutcome(
        AuthResult.UNKNOWN_NONCE, "alice", "SHA-256"
    )
    other_realm = DigestAuthenticator("other.realm", SECRET, clock)
    # Correct password for our realm, but the nonce was minted for another realm.
    header = answer(other_realm, realm=REALM)
    assert verify(auth, header).result is AuthResult.UNKNOWN_NONCE


def test_only_a_response_to_a_nonce_of_ours_can_fail() -> None:
    """A response over a nonce we never issued is no password guess: whoever sent it saw no
    challenge of ours (a spoofed UDP source cannot), and could learn nothing from the answer.
    It is UNKNOWN_NONCE — re-challenged, not counted: ten forged INVITEs with a carrier's
    source address banned the carrier. A wrong response to one of ours is still FAILED,
    whatever its realm."""
    auth, _ = make()
    forged = answer(auth, password="guess").replace('nonce="', 'nonce="x', 1)
    assert verify(auth, forged).result is AuthResult.UNKNOWN_NONCE
    elsewhere = forged.replace(f'realm="{REALM}"', 'realm="evil.example"')
    assert verify(auth, elsewhere).result is AuthResult.UNKNOWN_NONCE
    assert verify(auth, answer(auth, password="guess")).result is AuthResult.FAILED
    assert verify(auth, answer(auth, realm="evil.example")).result is AuthResult.FAILED


@pytest.mark.parametrize("position", [0, 5, 11, 20, 21, 30, 42, 43, 50, 63])
def test_tampered_nonce_is_unknown(position: int) -> None:
    """Timestamp (characters 0-10), random part, issuing address (21-42) or MAC: any change
    makes it a nonce we never issued."""
    auth, _ = make()
    challenge = auth.challenge_headers(source="192.0.2.10")[0]
    nonce = challenge_params(challenge)["nonce"]
    flipped = "A" if nonce[position] != "A" else "B"
    tampered = nonce[:position] + flipped + nonce[position + 1 :]
    # The client signs the tampered nonce correctly: only the MAC can catch it.
    header = compute_response(
        challenge.replace(nonce, tampered),
        username="alice",
        password=USERS["alice"],
        method="REGISTER",
        uri="sip:x",
    )
    for source in ("192.0.2.10", "198.51.100.66"):
        assert verify(auth, header, source=source).result is AuthResult.UNKNOWN_NONCE


@pytest.mark.parametrize(
    "nonce", ["", "abc", "!" * 64, "é" * 64, "A" * 63 + "=", "A" * 48, "A" * 64, "A" * 88]
)
def test_garbage_nonce_is_unknown(nonce: str) -> None:
    auth, _ = make()
    creds = DigestCredentials("alice", REALM, nonce, "sip:x", "0" * 64, "SHA-256", "c", 1, "auth")
    outcome = auth.verify(creds, method="REGISTER", ha1_lookup=ha1_lookup)
    assert outcome.result is AuthResult.UNKNOWN_NONCE


# -- nonce lifetime ------------------------------------------------------------------------


def test_stale_after_ttl_only_when_response_is_correct() -> None:
    auth, clock = make(nonce_ttl_s=30.0)
    good = answer(auth)
    bad = answer(auth, password="guess")
    clock.advance(30.0)
    assert verify(auth, good).result is AuthResult.OK  # age == ttl still fresh
    good2 = answer(auth)
    clock.advance(30.001)
    assert verify(auth, good2) == AuthOutcome(AuthResult.STALE, "alice", "SHA-256")
    assert verify(auth, bad).result is AuthResult.FAILED
    # A fresh challenge then works again.
    assert verify(auth, answer(auth)).result is AuthResult.OK


def test_nonce_from_the_future_is_stale() -> None:
    # Same secret, clock restarted (monotonic time reset on reboot): MAC valid, age negative.
    before_reboot, _ = make(FakeClock(5000.0))
    after_reboot, _ = make(FakeClock(10.0))
    assert verify(after_reboot, answer(before_reboot)).result is AuthResult.STALE


def test_a_sibling_workers_nonce_is_stale_never_accepted_or_a_failure() -> None:
    """SIP workers: a client re-using another worker's nonce is re-challenged (stale=true)."""
    clock = FakeClock(1000.0)
    other_secret = b"another-worker-secret-0123456789"
    sibling = DigestAuthenticator(REALM, other_secret, clock)
    worker = DigestAuthenticator(REALM, SECRET, clock, sibling_secrets=(other_secret,))
    alone = DigestAuthenticator(REALM, SECRET, clock)  # knows no sibling
    good = answer(sibling)
    assert verify(worker, good) == AuthOutcome(AuthResult.STALE, "alice", "SHA-256")
    assert verify(worker, good).result is AuthResult.STALE  # and again: nothing was recorded
    assert verify(worker, answer(sibling, password="guess")).result is AuthResult.FAILED
    assert verify(alone, good).result is AuthResult.UNKNOWN_NONCE
    assert verify(sibling, good).result is AuthResult.OK  # the issuer accepts it, once
    assert verify(sibling, good).result is AuthResult.REPLAY
    assert verify(worker, answer(worker)).result is AuthResult.OK  # its own nonces still work


# -- the address a nonce was issued to -------------------------------------------------------

FETCHER, ANSWERER = "192.0.2.10", "198.51.100.66"


def raw_nonce(header: str) -> bytes:
    nonce = parse_authorization(header).nonce
    return base64.urlsafe_b64decode(nonce.encode("ascii"))


def with_raw_nonce(header: str, raw: bytes) -> str:
    nonce = parse_authorization(header).nonce
    return header.replace(nonce, base64.urlsafe_b64encode(raw).decode("ascii"))


def test_a_nonce_answered_from_another_address_is_checked_and_names_where_it_was_sent() -> None:
    """Nonces carry the IP address they were sent to (MAC'd), and are good from anywhere: a
    carrier's SBC cluster may send each request from another node. Bound to that address
    instead, a retry from another node was re-challenged with a nonce for the node it came
    from, the next retry left from yet another, and the client never got in (a wrong password
    never got its 403 either). The digest is checked as from the address itself, and the
    outcome names the address the nonce was sent to: a wrong answer counts toward *its* ban
    (a forger answering a nonce it fetched under a carrier's UDP source bans itself)."""
    auth, clock = make(nonce_ttl_s=30.0)
    right = answer(auth, source=FETCHER)
    wrong = answer(auth, source=FETCHER, password="guess")
    failed = AuthOutcome(AuthResult.FAILED, "alice", "SHA-256", issuer=FETCHER)
    assert verify(auth, wrong, source=ANSWERER) == failed
    assert verify(auth, wrong, source=FETCHER) == failed
    ok = AuthOutcome(AuthResult.OK, "alice", "SHA-256", issuer=FETCHER)
    assert verify(auth, right, source=ANSWERER) == ok
    # the nonce count is the nonce's, wherever its answers come from
    replay = AuthOutcome(AuthResult.REPLAY, "alice", "SHA-256", issuer=FETCHER)
    assert verify(auth, right, source=FETCHER) == replay
    assert verify(auth, right, source=ANSWERER) == replay
    late = answer(auth, source=FETCHER)
    clock.advance(30.001)
    stale = AuthOutcome(AuthResult.STALE, "alice", "SHA-256", issuer=FETCHER)
    assert verify(auth, late, source=ANSWERER) == stale
    # one made up names no address, from anywhere
    forged = right.replace('nonce="', 'nonce="x', 1)
    assert verify(auth, forged, source=ANSWERER) == AuthOutcome(
        AuthResult.UNKNOWN_NONCE, "alice", "SHA-256"
    )


def test_the_address_in_a_nonce_cannot_be_changed() -> None:
    """The MAC covers the address: a nonce moved to another address (a guesser shifting its
    failures onto a carrier) is one we never issued, from the old address or the new."""
    auth, _ = make()
    header = answer(auth, source=FETCHER)
    raw = raw_nonce(header)
    assert raw[16:32] == ipaddress.IPv6Address(f"::ffff:{FETCHER}").packed
    moved = raw[:16] + ipaddress.IPv6Address(f"::ffff:{ANSWERER}").packed + raw[32:]
    # (its digest is over the nonce as issued: were the move not caught, a FAILED for ANSWERER)
    for source in (FETCHER, ANSWERER):
        outcome = verify(auth, with_raw_nonce(header, moved), source=source)
        assert outcome == AuthOutcome(AuthResult.UNKNOWN_NONCE, "alice", "SHA-256")
    assert verify(auth, header, source=ANSWERER).issuer == FETCHER


@pytest.mark.parametrize(
    ("issued_to", "answered_from", "issuer"),
    [
        ("192.0.2.10", "192.0.2.10", "192.0.2.10"),
        # the same address: named as the source spells it (the guard's key)
        ("192.0.2.10", "::ffff:192.0.2.10", "::ffff:192.0.2.10"),  # a dual-stack socket
        ("::ffff:192.0.2.10", "192.0.2.10", "192.0.2.10"),
        ("2001:db8::1", "2001:DB8:0::1", "2001:DB8:0::1"),
        # another: spelt as the socket the source came through writes addresses
        ("192.0.2.10", "198.51.100.66", "192.0.2.10"),
        ("192.0.2.10", "::ffff:198.51.100.66", "::ffff:192.0.2.10"),
        ("::ffff:192.0.2.10", "2001:db8::1", "::ffff:192.0.2.10"),
        ("2001:DB8:0::1", "2001:db8::2", "2001:db8::1"),
        ("2001:db8::1", "198.51.100.66", "2001:db8::1"),
    ],
)
def test_an_ipv4_address_is_one_in_any_spelling(
    issued_to: str, answered_from: str, issuer: str
) -> None:
    """An IPv4 address is carried IPv4-mapped (16 bytes, fixed length): an IPv4 caller on a
    dual-stack socket is the same address as on an IPv4 one."""
    auth, _ = make()
    header = answer(auth, source=issued_to)
    if "." in issued_to:
        v4 = issued_to.removeprefix("::ffff:")
        assert raw_nonce(header)[16:32] == raw_nonce(answer(auth, source=v4))[16:32]
    assert verify(auth, header, source=answered_from) == AuthOutcome(
        AuthResult.OK, "alice", "SHA-256", issuer=issuer
    )


@pytest.mark.parametrize("issued_to", [None, "not-an-address"])
def test_a_nonce_issued_to_no_address_names_none(issued_to: str | None) -> None:
    auth, _ = make()
    header = answer(auth, source=issued_to)
    assert verify(auth, header, source=FETCHER) == AuthOutcome(AuthResult.OK, "alice", "SHA-256")
    assert verify(auth, answer(auth, source=FETCHER)).issuer == FETCHER


def test_a_sibling_workers_nonce_names_where_it_was_sent_too() -> None:
    clock = FakeClock(1000.0)
    other_secret = b"another-worker-secret-0123456789"
    sibling = DigestAuthenticator(REALM, other_secret, clock)
    worker = DigestAuthenticator(REALM, SECRET, clock, sibling_secrets=(other_secret,))
    alone = DigestAuthenticator(REALM, SECRET, clock)
    good = answer(sibling, source=FETCHER)
    for source in (FETCHER, ANSWERER):
        outcome = verify(worker, good, source=source)
        assert outcome == AuthOutcome(AuthResult.STALE, "alice", "SHA-256", issuer=FETCHER)
    bad = answer(sibling, source=FETCHER, password="guess")
    outcome = verify(worker, bad, source=ANSWERER)
    assert outcome == AuthOutcome(AuthResult.FAILED, "alice", "SHA-256", issuer=FETCHER)
    raw = raw_nonce(good)
    moved = with_raw_nonce(good, raw[:16] + ipaddress.IPv6Address("::1").packed + raw[32:])
    assert verify(worker, moved, source=FETCHER).result is AuthResult.UNKNOWN_NONCE
    assert verify(alone, good, source=FETCHER).result is AuthResult.UNKNOWN_NONCE
    assert verify(sibling, good, source=ANSWERER).result is AuthResult.OK


# -- replay ----------------------------------------------------------------------------------


def test_nc_must_strictly_increase() -> None:
    auth, _ = make()
    challenge = auth.challenge_headers()[0]

    def with_nc(nc: int) -> str:
        return compute_response(
            challenge,
            username="alice",
            password=USERS["alice"],
            method="INVITE",
            uri="sip:a@b",
            nc=nc,
        )

    assert verify(auth, with_nc(1), "INVITE").result is AuthResult.OK
    assert verify(auth, with_nc(1), "INVITE") == AuthOutcome(AuthResult.REPLAY, "alice", "SHA-256")
    assert verify(auth, with_nc(3), "INVITE").result is AuthResult.OK
    assert verify(auth, with_nc(2), "INVITE").result is AuthResult.REPLAY
    assert verify(auth, with_nc(3), "INVITE").result is AuthResult.REPLAY
    assert verify(auth, with_nc(4), "INVITE").result is AuthResult.OK
    assert auth.tracked_nonces() == 1


def test_failed_attempts_do_not_consume_nonce_counts() -> None:
    auth, _ = make()
    challenge = auth.challenge_headers()[0]
    bad = compute_response(challenge, username="alice", password="x", method="R", uri="u", nc=5)
    good = compute_response(
        challenge, username="alice", password=USERS["alice"], method="R", uri="u", nc=1
    )
    assert verify(auth, bad, "R").result is AuthResult.FAILED
    assert verify(auth, good, "R").result is AuthResult.OK


def test_qopless_response_accepted_once_per_nonce() -> None:
    auth, _ = make()
    header = answer(auth, "MD5", use_qop=False)
    creds = parse_authorization(header)
    assert (creds.qop, creds.nc, creds.cnonce) == (None, None, None)
    assert verify(auth, header) == AuthOutcome(AuthResult.OK, "alice", "MD5")
    assert verify(auth, header).result is AuthResult.REPLAY


def test_qop_use_after_qopless_use_is_replay() -> None:
    auth, _ = make()
    challenge = auth.challenge_headers()[1]
    kwargs = {"username": "alice", "password": USERS["alice"], "method": "R", "uri": "u"}
    plain = compute_response(challenge, use_qop=False, **kwargs)  # type: ignore[arg-type]
    qop = compute_response(challenge, nc=7, **kwargs)  # type: ignore[arg-type]
    assert verify(auth, plain, "R").result is AuthResult.OK
    assert verify(auth, qop, "R").result is AuthResult.REPLAY


def test_replay_table_is_bounded_and_eviction_never_allows_a_replay() -> None:
    auth, clock = make(max_tracked_nonces=3)
    headers = []
    for _ in range(5):
        headers.append(answer(auth))
        clock.advance(0.01)
    for header in headers:
        assert verify(auth, header).result is AuthResult.OK
    assert auth.tracked_nonces() == 3
    # The two evicted nonces must not become replayable...
    assert [verify(auth, h).result for h in headers] == [AuthResult.REPLAY] * 5
    # ...and a nonce issued later than every evicted one still works.
    assert verify(auth, answer(auth)).result is AuthResult.OK


def test_expired_nonces_leave_the_replay_table() -> None:
    auth, clock = make(nonce_ttl_s=10.0)
    for _ in range(4):
        assert verify(auth, answer(auth)).result is AuthResult.OK
    assert auth.tracked_nonces() == 4
    clock.advance(11.0)
    assert verify(auth, answer(auth)).result is AuthResult.OK
    assert auth.tracked_nonces() == 1


# -- malformed -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("algorithm=SHA-256", "algorithm=SHA-256-sess"),
        ("algorithm=SHA-256", "algorithm=MD5-sess"),
        ("algorithm=SHA-256", "algorithm=SHA-512-256"),
        ("qop=auth", "qop=auth-int"),
        ('cnonce="0a4f113b", ', ""),
        (", nc=00000001", ""),
    ],
)
def test_malformed_outcomes(old: str, new: str) -> None:
    auth, _ = make()
    header = answer(auth).replace(old, new)
    assert old in answer(auth)
    assert verify(auth, header) == AuthOutcome(AuthResult.MALFORMED, None, None)


# -- parsing ---------------------------------------------------------------------------------


def test_sipp_style_header() -> None:
    header = (
        'Digest username="alice",realm="sip.telepath.local",uri="sip:alice@127.0.0.1",'
        'nonce="abc",response="0123abcd",algorithm=MD5,cnonce="6b8b4567",qop=auth,nc=00000001'
    )
    creds = parse_authorization(header)
    assert creds == DigestCredentials(
        "alice", REALM, "abc", "sip:alice@127.0.0.1", "0123abcd", "MD5", "6b8b4567", 1, "auth",
        None, "00000001",
    )  # fmt: skip


def test_baresip_and_linphone_style_headers() -> None:
    baresip = (
        'Digest username="alice", realm="sip.telepath.local", nonce="n", '
        'uri="sip:sip.telepath.local;transport=udp", response="ff", algorithm=SHA-256, '
        'cnonce="12345", qop=auth, nc=0000000a'
    )
    linphone = (
        'Digest realm="sip.telepath.local", nonce="n", algorithm=SHA-256, opaque="o", '
        'username="alice",  uri="sip:sip.telepath.local", response="ff", cnonce="c", '
        'nc=0000000A, qop="auth"'
    )
    a, b = parse_authorization(baresip), parse_authorization(linphone)
    assert (a.nc, a.nc_value, a.qop, a.uri) == (
        10,
        "0000000a",
        "auth",
        "sip:sip.telepath.local;transport=udp",
    )
    assert (b.nc, b.nc_value, b.qop, b.opaque) == (10, "0000000A", "auth", "o")


def test_round_trip_with_sipp_style_formatting_and_upper_case_nc() -> None:
    auth, _ = make()
    challenge = auth.challenge_headers()[1]
    nonce = challenge_params(challenge)["nonce"]
    ha1 = compute_ha1("MD5", "alice", REALM, USERS["alice"])
    response = digest_response(
        "MD5", ha1, nonce=nonce, method="INVITE", uri="sip:alice@127.0.0.1",
        qop="auth", nc="0000001F", cnonce="6b8b4567",
    )  # fmt: skip
    header = (
        f'digest USERNAME="alice",Realm="{REALM}",uri="sip:alice@127.0.0.1",nonce="{nonce}",'
        f'response="{response}",algorithm=md5,cnonce="6b8b4567",QOP=auth,nc=0000001F'
    )
    assert verify(auth, header, "INVITE") == AuthOutcome(AuthResult.OK, "alice", "MD5")


def test_tolerates_whitespace_escapes_unknown_params_and_empty_elements() -> None:
    header = (
        '  DIGEST\t username = "al\\"ice\\\\" ,,\r\n realm= "r" , nonce ="n",uri=sip:x@y,'
        ' response="r1", userhash=false, foo="b,a=r", ,'
    )
    creds = parse_authorization(header)
    assert (creds.username, creds.realm, creds.nonce, creds.uri, creds.response) == (
        'al"ice\\', "r", "n", "sip:x@y", "r1",
    )  # fmt: skip
    assert (creds.algorithm, creds.qop, creds.nc, creds.cnonce) == ("MD5", None, None, None)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "   ",
        "Digest",
        "Digest ",
        'Basic username="alice"',
        'Digestusername="a",realm="r",nonce="n",uri="u",response="x"',
        'Digest realm="r",nonce="n",uri="u",response="x"',  # no username
        'Digest username="a",nonce="n",uri="u",response="x"',  # no realm
        'Digest username="a",realm="r",nonce="n",uri="u",response="x',  # unterminated
        'Digest username="a",realm="r",nonce="n",uri="u",response="x\\',  # dangling escape
        'Digest username="a",username="b",realm="r",nonce="n",uri="u",response="x"',
        'Digest username="a" realm="r",nonce="n",uri="u",response="x"',  # missing comma
        'Digest username=,realm="r",nonce="n",uri="u",response="x"',
        'Digest username,realm="r",nonce="n",uri="u",response="x"',
        'Digest =a,realm="r",nonce="n",uri="u",response="x"',
        'Digest username="a",realm="r",nonce="n",uri="u",response="x",nc=0x000001',
        'Digest username="a",realm="r",nonce="n",uri="u",response="x",nc=000000001',
        'Digest username="a",realm="r",nonce="n",uri="u",response="x",nc=00000000',
        'Digest username="a",realm="r",nonce="n",uri="u",response="x",nc=1_0',
        'Digest username="a",realm="r",nonce="n",uri="u",response="x",nc=٣',
        'Digest username="a",realm="r",nonce="n",uri="u",response="x",nc="  1"',
        'Digest username="a",realm="r",nonce="n",uri="u",response="x",é="1"',
        'Digest username="a",realm="r",nonce="n",uri="u",response="x",q"op=auth',
        'Digest username="a",realm="r",nonce="n",uri="u",response="' + "x" * 9000 + '"',
    ],
)
def test_rejects_malformed_headers(header: str) -> None:
    with pytest.raises(AuthHeaderError) as caught:
        parse_authorization(header)
    assert caught.value.status_hint == 400


def test_error_messages_never_echo_credentials() -> None:
    with pytest.raises(AuthHeaderError) as caught:
        parse_authorization('Digest username="s3cr3t-user" realm="r"')
    assert "s3cr3t" not in str(caught.value)


VALID = (
    'Digest username="alice",realm="sip.telepath.local",uri="sip:alice@127.0.0.1",'
    'nonce="abc",response="0123abcd",algorithm=MD5,cnonce="6b8b4567",qop=auth,nc=00000001'
)
_ALPHABET = string.printable + '"\\=,é\x00\u2028\x85'


def _parse_or_header_error(value: str) -> None:
    try:
        creds = parse_authorization(value)
    except AuthHeaderError:
        return
    assert isinstance(creds, DigestCredentials)
    auth = DigestAuthenticator(REALM, SECRET, FakeClock())
    outcome = auth.verify(creds, method="INVITE", ha1_lookup=ha1_lookup)
    assert outcome.result in (AuthResult.FAILED, AuthResult.UNKNOWN_NONCE, AuthResult.MALFORMED)
    assert isinstance(redact_authorization(value), str)


def test_fuzz_mutations_of_a_valid_header_raise_only_auth_header_error() -> None:
    rng = random.Random(7616)
    for _ in range(3000):
        chars = list(VALID)
        for _ in range(rng.randint(1, 8)):
            op = rng.randrange(3)
            pos = rng.randrange(len(chars) + 1)
            if op == 0 and pos < len(chars):
                del chars[pos]
            elif op == 1:
                chars.insert(pos, rng.choice(_ALPHABET))
            elif pos < len(chars):
                chars[pos] = rng.choice(_ALPHABET)
        _parse_or_header_error("".join(chars))


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet=st.sampled_from(list(_ALPHABET)), max_size=200) | st.text(max_size=200))
def test_fuzz_random_text_raises_only_auth_header_error(value: str) -> None:
    _parse_or_header_error(value)
    _parse_or_header_error("Digest " + value)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(
    ["username", "realm", "nonce", "uri", "response", "nc", "qop", "cnonce", "algorithm", "x"]
), st.text(max_size=12), st.booleans()), max_size=12))  # fmt: skip
def test_fuzz_structured_params(params: list[tuple[str, str, bool]]) -> None:
    body = ",".join(
        f'{name}="{value.replace(chr(92), "").replace(chr(34), "")}"'
        if quoted
        else f"{name}={value}"
        for name, value, quoted in params
    )
    _parse_or_header_error("Digest " + body)


# -- redaction -------------------------------------------------------------------------------


def test_redact_hides_response_cnonce_and_nonce() -> None:
    redacted = redact_authorization(VALID)
    assert redacted == (
        'Digest username="alice",realm="sip.telepath.local",uri="sip:alice@127.0.0.1",'
        'nonce="<redacted>",response="<redacted>",algorithm=MD5,cnonce="<redacted>",qop=auth,'
        "nc=00000001"
    )


def test_redact_handles_bare_escaped_and_broken_values() -> None:
    auth, _ = make()
    assert auth.redact('Digest Response = abc , CNONCE="a\\"b", nonce="unterminated') == (
        'Digest Response = "<redacted>" , CNONCE="<redacted>", nonce="<redacted>"'
    )
    challenge = auth.challenge_headers()[0]
    assert challenge_params(challenge)["nonce"] not in redact_authorization(challenge)
    assert redact_authorization("no credentials here") == "no credentials here"
