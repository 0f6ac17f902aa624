"""SourceGuard: token buckets, auth-failure bans, allowlist and bounded memory, on a fake clock."""

from __future__ import annotations

import pytest

from telepath.clock import FakeClock
from telepath.errors import ConfigurationError
from telepath.sip.defence import DefencePolicy, SourceGuard, Verdict

pytestmark = pytest.mark.unit

A = "192.0.2.10"
B = "198.51.100.7"


def guard(**kwargs: object) -> tuple[SourceGuard, FakeClock]:
    clock = FakeClock(100.0)
    return SourceGuard(DefencePolicy(**kwargs), clock), clock  # type: ignore[arg-type]


def test_defaults() -> None:
    policy = DefencePolicy()
    assert (policy.requests_per_second, policy.burst, policy.auth_failures_before_ban) == (
        50.0,
        100,
        10,
    )
    assert (policy.auth_failure_window_s, policy.ban_seconds) == (60.0, 300.0)
    assert (policy.max_tracked_sources, policy.allowlist) == (65_536, frozenset())


def test_token_bucket_burst_then_refill_at_rate() -> None:
    g, clock = guard(requests_per_second=2.0, burst=5)
    assert [g.check_request(A) for _ in range(6)] == [Verdict.ALLOW] * 5 + [Verdict.RATE_LIMITED]
    assert g.rate_limited == 1
    clock.advance(0.49)
    assert g.check_request(A) is Verdict.RATE_LIMITED  # 0.98 tokens: not yet
    clock.advance(0.01)
    assert g.check_request(A) is Verdict.ALLOW
    assert g.check_request(A) is Verdict.RATE_LIMITED
    # A long silence refills to the burst size, never beyond it.
    clock.advance(3600.0)
    assert [g.check_request(A) for _ in range(6)] == [Verdict.ALLOW] * 5 + [Verdict.RATE_LIMITED]
    assert g.rate_limited == 4
    assert (g.bans, g.banned_requests) == (0, 0)


def test_sustained_rate_is_allowed() -> None:
    g, clock = guard(requests_per_second=10.0, burst=1)
    verdicts = []
    for _ in range(100):
        verdicts.append(g.check_request(A))
        clock.advance(0.1)
    assert verdicts == [Verdict.ALLOW] * 100


def test_buckets_are_per_source() -> None:
    g, _ = guard(requests_per_second=1.0, burst=2)
    assert [g.check_request(A) for _ in range(3)][-1] is Verdict.RATE_LIMITED
    assert [g.check_request(B) for _ in range(2)] == [Verdict.ALLOW, Verdict.ALLOW]


def test_ban_after_n_failures_within_window() -> None:
    g, clock = guard(auth_failures_before_ban=3, auth_failure_window_s=60.0, ban_seconds=300.0)
    assert g.record_auth_failure(A) is False
    clock.advance(30.0)
    assert g.record_auth_failure(A) is False
    assert not g.is_banned(A)
    clock.advance(29.0)
    assert g.record_auth_failure(A) is True
    assert g.is_banned(A) and not g.is_banned(B)
    assert g.banned() == [(A, 300.0)]
    assert g.bans == 1
    assert [g.check_request(A) for _ in range(3)] == [Verdict.BANNED] * 3
    assert g.banned_requests == 3
    assert g.check_request(B) is Verdict.ALLOW
    # Failures while banned neither re-ban nor extend the ban.
    clock.advance(100.0)
    assert g.record_auth_failure(A) is False
    assert g.banned() == [(A, 200.0)]
    assert g.bans == 1


def test_failures_outside_the_window_do_not_count() -> None:
    g, clock = guard(auth_failures_before_ban=3, auth_failure_window_s=10.0)
    assert g.record_auth_failure(A) is False
    assert g.record_auth_failure(A) is False
    clock.advance(10.0)  # both fall out of the sliding window
    assert g.record_auth_failure(A) is False
    assert g.record_auth_failure(A) is False
    assert not g.is_banned(A)
    assert g.record_auth_failure(A) is True


def test_success_resets_failures() -> None:
    g, _ = guard(auth_failures_before_ban=3)
    g.record_auth_failure(A)
    g.record_auth_failure(A)
    g.record_auth_success(A)
    assert g.record_auth_failure(A) is False
    assert g.record_auth_failure(A) is False
    assert g.record_auth_failure(A) is True
    g.record_auth_success("203.0.113.99")  # unknown source: no state created
    assert g.tracked_sources() == 1


def test_ban_expires() -> None:
    g, clock = guard(auth_failures_before_ban=2, ban_seconds=60.0, burst=1)
    g.record_auth_failure(A)
    assert g.record_auth_failure(A) is True
    clock.advance(59.5)
    assert g.check_request(A) is Verdict.BANNED
    assert g.banned() == [(A, 0.5)]
    clock.advance(0.5)
    assert not g.is_banned(A)
    assert g.banned() == []
    assert g.check_request(A) is Verdict.ALLOW
    # The failure count started afresh with the ban.
    assert g.record_auth_failure(A) is False
    assert g.record_auth_failure(A) is True
    assert g.bans == 2


def test_banned_lists_longest_remaining_first() -> None:
    g, clock = guard(auth_failures_before_ban=1, ban_seconds=100.0)
    g.record_auth_failure(A)
    clock.advance(10.0)
    g.record_auth_failure(B)
    g.record_auth_failure("10.0.0.1")
    assert g.banned() == [("10.0.0.1", 100.0), (B, 100.0), (A, 90.0)]


def test_allowlist_bypasses_everything() -> None:
    g, _ = guard(
        burst=1,
        auth_failures_before_ban=1,
        allowlist=frozenset({A, "10.1.0.0/16", "2001:db8::/32"}),
    )
    for ip in (A, "10.1.255.3", "2001:db8::5"):
        assert [g.check_request(ip) for _ in range(50)] == [Verdict.ALLOW] * 50
        assert g.record_auth_failure(ip) is False
        assert not g.is_banned(ip)
    assert g.tracked_sources() == 0
    assert (g.rate_limited, g.bans) == (0, 0)
    # Outside the networks (and non-IP strings) the limits apply.
    assert [g.check_request("10.2.0.1") for _ in range(2)][-1] is Verdict.RATE_LIMITED
    assert g.record_auth_failure("not-an-ip") is True
    assert [g.is_allowlisted(ip) for ip in (A, "10.1.0.9", "10.2.0.1", B)] == [1, 1, 0, 0]


@pytest.mark.parametrize(("rate", "seconds"), [(50.0, 1), (1.0, 1), (0.5, 2), (0.3, 4)])
def test_retry_after_is_a_tokens_refill_in_whole_seconds(rate: float, seconds: int) -> None:
    """The Retry-After of a rate-limited INVITE's 503 (RFC 3261 §21.5.4)."""
    g, _ = guard(requests_per_second=rate)
    assert g.retry_after_s() == seconds


def test_source_memory_is_bounded_least_recent_first() -> None:
    g, _ = guard(burst=1, max_tracked_sources=100)
    assert g.check_request("10.0.0.0") is Verdict.ALLOW
    assert g.check_request("10.0.0.0") is Verdict.RATE_LIMITED
    assert g.check_request("10.0.0.1") is Verdict.ALLOW
    for i in range(2, 100):
        g.check_request(f"10.0.{i // 256}.{i % 256}")
        assert g.check_request("10.0.0.1") is Verdict.RATE_LIMITED  # keeps 10.0.0.1 recent
    for i in range(1000):
        g.check_request(f"172.16.{i // 256}.{i % 256}")
        if i % 50 == 0:
            assert g.check_request("10.0.0.1") is Verdict.RATE_LIMITED
        assert g.tracked_sources() <= 100
    assert g.tracked_sources() == 100
    # The idle source was forgotten (fresh bucket); the busy one was kept (still empty).
    assert g.check_request("10.0.0.0") is Verdict.ALLOW
    assert g.check_request("10.0.0.1") is Verdict.RATE_LIMITED


def test_ban_memory_is_bounded() -> None:
    g, clock = guard(auth_failures_before_ban=1, ban_seconds=100.0, max_tracked_sources=3)
    for i in range(3):
        assert g.record_auth_failure(f"10.0.0.{i}") is True
        clock.advance(1.0)
    # Full: the ban closest to expiry (10.0.0.0) makes room.
    assert g.record_auth_failure("10.0.0.3") is True
    assert [ip for ip, _ in g.banned()] == ["10.0.0.3", "10.0.0.2", "10.0.0.1"]
    # Expired bans are dropped first.
    clock.advance(98.5)
    assert g.record_auth_failure("10.0.0.4") is True
    assert [ip for ip, _ in g.banned()] == ["10.0.0.4", "10.0.0.3", "10.0.0.2"]
    assert g.bans == 5


@pytest.mark.parametrize(
    "kwargs",
    [
        {"requests_per_second": 0.0},
        {"burst": 0},
        {"auth_failures_before_ban": 0},
        {"auth_failure_window_s": -1.0},
        {"ban_seconds": 0.0},
        {"max_tracked_sources": 0},
        {"allowlist": frozenset({"example.com"})},
    ],
)
def test_invalid_policy_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        DefencePolicy(**kwargs)  # type: ignore[arg-type]


def test_a_ban_decided_here_is_told_one_imposed_from_elsewhere_is_not() -> None:
    """SIP workers: the first process's guard decides the bans and tells the workers'
    (``on_ban``); theirs impose them, telling nobody (no echo)."""
    g, clock = guard(auth_failures_before_ban=2, ban_seconds=60, allowlist=frozenset({B}))
    told: list[tuple[str, float]] = []
    g.on_ban = lambda ip, seconds: told.append((ip, seconds))
    g.record_auth_failure(A)
    assert g.record_auth_failure(A)
    assert told == [(A, 60)]
    g.impose_ban("203.0.113.5", 30)
    assert g.is_banned("203.0.113.5") and told == [(A, 60)]
    clock.advance(30)
    assert not g.is_banned("203.0.113.5")
    g.impose_ban(B, 30)  # allowlisted: never banned
    assert not g.is_banned(B)


def test_allowlist_entries_match_however_the_address_is_written() -> None:
    """An IPv6 entry in another spelling (upper case, zeros written out) is the same address
    the socket reports; an IPv4 caller on a dual-stack (``::``) socket arrives as
    ``::ffff:a.b.c.d`` and is the IPv4 entry or network (they were matched as text: never)."""
    g, _ = guard(allowlist=frozenset({"2001:DB8:0:0::1", A, "10.1.0.0/16"}))
    assert g.is_allowlisted("2001:db8::1")
    assert g.is_allowlisted(f"::ffff:{A}")
    assert g.is_allowlisted("::ffff:10.1.2.3")
    assert not g.is_allowlisted("2001:db8::2")
    assert not g.is_allowlisted(f"::ffff:{B}")
