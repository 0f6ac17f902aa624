"""Per-source flood and brute-force defence for SIP (the idea of Kamailio's pike + fail2ban). Pure.

:class:`SourceGuard` keeps, per source IP, a token bucket for request rate and a sliding window of
authentication failures; too many failures in the window ban the source for a while. Time comes
from an injected :class:`~telepath.clock.Clock`; there is no I/O and no timer: state is updated
lazily when a source is seen.

What the transport does with a verdict
--------------------------------------
Only requests are counted (:meth:`SourceGuard.check_request`), and not ACKs: a response or an
ACK finishes what was admitted (the answer to our BYE, the ACK our 200 OK waits for), is never
answered (no reflection) and does no work beyond matching. They only meet the ban
(:meth:`SourceGuard.is_banned`).

* ``ALLOW``: hand the message to the SIP parser.
* ``BANNED``: drop silently, before parsing, on every transport, and close a TCP/TLS connection
  (one is refused at accept too). Answering would tell a scanner it found a SIP server and feed
  its loop. (With SIP workers, the first process counts every process's authentication
  failures and decides the bans, which every worker applies (:meth:`SourceGuard.impose_ban`,
  ``cli/workers.py``); the first process closes a banned source's connection at its next
  message, whichever process's call it carries, and refuses new ones at accept.)
* ``RATE_LIMITED`` over **UDP**: drop silently, INVITEs included. UDP sources are trivially
  spoofed, so any answer is traffic reflected at whoever's address was forged, and answering a
  flood costs us as much as the flood. A real client's INVITE is retransmitted by Timer A
  (RFC 3261 §17.1.1.2) at 0.5 s, 1 s, 2 s, ..., by which time its bucket has refilled. Carriers that
  legitimately burst above the limit belong on the allowlist, and real capacity limits are
  answered by call control (503/486), not here.
* ``RATE_LIMITED`` over **TCP/TLS**: the source has completed a handshake, so it is not spoofed,
  and nothing sent over a stream is sent again (§17.1.1.2): an INVITE is answered
  ``503 Service Unavailable`` with ``Retry-After`` (RFC 3261 §21.5.4; a token's refill time,
  :meth:`SourceGuard.retry_after_s`) so a trunk fails over instead of waiting Timer B; a BYE is
  handled (dropped, it would leave the call up on our side for good); other requests are
  dropped.

Feed :meth:`SourceGuard.record_auth_failure` with the digest outcome ``FAILED``
(:mod:`telepath.sip.auth`), for the address its nonce was sent to, not ``STALE`` or ``REPLAY``
(a correct digest on an old or spent nonce) nor a first request without credentials (every
client sends one), and :meth:`SourceGuard.record_auth_success` with ``OK``.

Caveat: with UDP, a source address can be forged. Answers over a nonce we never issued are not
counted (``UNKNOWN_NONCE``), and a ``FAILED`` one is counted toward the address its nonce was
sent to (:attr:`~telepath.sip.auth.AuthOutcome.issuer`), not the request's source: a forger
that fetched a nonce from its own address and spends it under an innocent one counts toward its
own ban. Only a nonce sent to the innocent address counts toward that address, and a forger
cannot read one — unless it is on the path to the innocent address. Allowlist the addresses
that matter (trunk providers, monitoring).

Memory is bounded by :attr:`DefencePolicy.max_tracked_sources`, for sources and for bans
separately: the least recently seen source is forgotten first, and a full ban table drops expired
bans, then the ban closest to expiry.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from telepath.clock import Clock
from telepath.errors import ConfigurationError

__all__ = ["DefencePolicy", "SourceGuard", "Verdict"]

# Float slack so a client sending at exactly the allowed rate is not limited by rounding
# (e.g. 100.1 - 100.0 = 0.0999...).
_TOKEN_EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class DefencePolicy:
    """Limits for :class:`SourceGuard`.

    Parameters:
        requests_per_second: sustained request rate per source (token refill rate).
        burst: bucket size: requests a quiet source may send at once.
        auth_failures_before_ban: failures within ``auth_failure_window_s`` that ban a source.
        auth_failure_window_s: length of the sliding failure window.
        ban_seconds: how long a ban lasts.
        max_tracked_sources: most sources (and, separately, bans) kept in memory.
        allowlist: addresses (``"192.0.2.7"``) or networks (``"192.0.2.0/24"``) that bypass
            every check and are never counted.
    """

    requests_per_second: float = 50.0
    burst: int = 100
    auth_failures_before_ban: int = 10
    auth_failure_window_s: float = 60.0
    ban_seconds: float = 300.0
    max_tracked_sources: int = 65_536
    allowlist: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.requests_per_second <= 0 or self.burst < 1:
            raise ConfigurationError("requests_per_second must be > 0 and burst >= 1")
        if self.auth_failures_before_ban < 1 or self.auth_failure_window_s <= 0:
            raise ConfigurationError("auth_failures_before_ban and the failure window must be > 0")
        if self.ban_seconds <= 0 or self.max_tracked_sources < 1:
            raise ConfigurationError("ban_seconds and max_tracked_sources must be > 0")
        for entry in self.allowlist:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ConfigurationError(
                    f"allowlist entry {entry!r} is not an IP or network"
                ) from None


class Verdict(StrEnum):
    """What to do with a request from a source (see the module docstring)."""

    ALLOW = "allow"
    RATE_LIMITED = "rate_limited"
    BANNED = "banned"


class _Source:
    """Per-source state: a token bucket and recent authentication failures."""

    __slots__ = ("failures", "last", "tokens")

    def __init__(self, tokens: float, now: float, max_failures: int) -> None:
        self.tokens = tokens
        self.last = now
        self.failures: deque[float] = deque(maxlen=max_failures)


class SourceGuard:
    """Rate limiting and brute-force bans per source IP.

    Args:
        policy: the limits.
        clock: monotonic time in seconds.

    Attributes:
        rate_limited: requests answered ``RATE_LIMITED`` so far.
        banned_requests: requests answered ``BANNED`` so far.
        bans: bans imposed so far.
    """

    def __init__(self, policy: DefencePolicy, clock: Clock) -> None:
        self.policy = policy
        self._clock = clock
        self._sources: OrderedDict[str, _Source] = OrderedDict()
        self._bans: dict[str, float] = {}  # ip -> banned until (clock time)
        # as the socket layer writes addresses (lower case, zeros compressed)
        self._allow_exact = frozenset(
            str(ipaddress.ip_address(e)) for e in policy.allowlist if "/" not in e
        )
        self._allow_nets = tuple(
            ipaddress.ip_network(e, strict=False) for e in policy.allowlist if "/" in e
        )
        self.rate_limited = 0
        self.banned_requests = 0
        self.bans = 0
        # told of each ban this guard decides (ip, seconds): SIP workers share it (cli/workers.py)
        self.on_ban: Callable[[str, float], None] | None = None

    def _allowlisted(self, ip: str) -> bool:
        if ip in self._allow_exact:
            return True
        if not self._allow_nets and not self._allow_exact:
            return False
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # an IPv4 caller on a dual-stack socket
        return str(address) in self._allow_exact or any(address in net for net in self._allow_nets)

    def _ban_active(self, ip: str, now: float) -> bool:
        until = self._bans.get(ip)
        if until is None:
            return False
        if until > now:
            return True
        del self._bans[ip]
        return False

    def _source(self, ip: str, now: float) -> _Source:
        """Return the state for ``ip``, creating it (and evicting the least recent) as needed."""
        source = self._sources.get(ip)
        if source is not None:
            self._sources.move_to_end(ip)
            return source
        source = _Source(float(self.policy.burst), now, self.policy.auth_failures_before_ban)
        self._sources[ip] = source
        if len(self._sources) > self.policy.max_tracked_sources:
            self._sources.popitem(last=False)
        return source

    def check_request(self, source_ip: str) -> Verdict:
        """Account one request from ``source_ip`` and return what to do with it."""
        if self._allowlisted(source_ip):
            return Verdict.ALLOW
        now = self._clock.now()
        if self._ban_active(source_ip, now):
            self.banned_requests += 1
            return Verdict.BANNED
        source = self._source(source_ip, now)
        elapsed = max(0.0, now - source.last)
        source.last = now
        source.tokens = min(
            float(self.policy.burst), source.tokens + elapsed * self.policy.requests_per_second
        )
        if source.tokens >= 1.0 - _TOKEN_EPSILON:
            source.tokens -= 1.0
            return Verdict.ALLOW
        self.rate_limited += 1
        return Verdict.RATE_LIMITED

    def record_auth_failure(self, source_ip: str) -> bool:
        """Count a failed authentication; return ``True`` if this failure banned the source."""
        if self._allowlisted(source_ip):
            return False
        now = self._clock.now()
        if self._ban_active(source_ip, now):
            return False
        failures = self._source(source_ip, now).failures
        window_start = now - self.policy.auth_failure_window_s
        while failures and failures[0] <= window_start:
            failures.popleft()
        failures.append(now)
        if len(failures) < self.policy.auth_failures_before_ban:
            return False
        failures.clear()
        self._ban(source_ip, now, self.policy.ban_seconds)
        if self.on_ban is not None:
            self.on_ban(source_ip, self.policy.ban_seconds)
        return True

    def impose_ban(self, source_ip: str, seconds: float) -> None:
        """Ban ``source_ip`` for ``seconds`` on another guard's decision (``on_ban`` is not told).

        With SIP workers the first process counts every process's failures and tells the
        others of its bans (``cli/workers.py``). Allowlisted sources are never banned.
        """
        if seconds <= 0 or self._allowlisted(source_ip):
            return
        source = self._sources.get(source_ip)
        if source is not None:
            source.failures.clear()
        self._ban(source_ip, self._clock.now(), seconds)

    def _ban(self, ip: str, now: float, seconds: float) -> None:
        if ip not in self._bans and len(self._bans) >= self.policy.max_tracked_sources:
            for expired in [b for b, until in self._bans.items() if until <= now]:
                del self._bans[expired]
            if len(self._bans) >= self.policy.max_tracked_sources:
                del self._bans[min(self._bans, key=self._bans.__getitem__)]
        self._bans[ip] = now + seconds
        self.bans += 1

    def record_auth_success(self, source_ip: str) -> None:
        """Forget the failures of ``source_ip`` (a bad password followed by a good one is fine)."""
        source = self._sources.get(source_ip)
        if source is not None:
            source.failures.clear()

    def is_allowlisted(self, source_ip: str) -> bool:
        """Return whether ``source_ip`` is on the allowlist (never limited nor banned)."""
        return self._allowlisted(source_ip)

    def is_banned(self, source_ip: str) -> bool:
        """Return whether ``source_ip`` is banned right now (allowlisted sources never are)."""
        if not self._bans or self._allowlisted(source_ip):
            return False
        return self._ban_active(source_ip, self._clock.now())

    def retry_after_s(self) -> int:
        """Whole seconds after which a limited source has a token again: the ``Retry-After``
        of a rate-limited INVITE's 503 (RFC 3261 §21.5.4)."""
        return max(1, math.ceil(1 / self.policy.requests_per_second - _TOKEN_EPSILON))

    def banned(self) -> list[tuple[str, float]]:
        """Return ``(ip, seconds remaining)`` for every active ban, longest remaining first."""
        now = self._clock.now()
        for expired in [ip for ip, until in self._bans.items() if until <= now]:
            del self._bans[expired]
        return sorted(
            ((ip, until - now) for ip, until in self._bans.items()), key=lambda b: (-b[1], b[0])
        )

    def tracked_sources(self) -> int:
        """Return how many sources have rate/failure state (for metrics and tests)."""
        return len(self._sources)
