"""One outbound registration as a client (RFC 3261 §10.2): REGISTER requests out, their answers
in, what to do next out. Pure: no sockets, no clock of its own (times are passed in and
returned as delays), no randomness but the injected one.

Telepath registers a trunk's contact with the user's carrier or PBX, so calls reach it where
the carrier learnt it — behind NAT too, the NAT binding being the one the REGISTER opened.

Decisions, where RFC 3261 leaves a choice:

- One Call-ID per registration for its whole life, CSeq + 1 per request (§10.2.4 SHOULD), so
  refreshes replace the binding rather than add one.
- The contact is ``sip:<contact_user>@host:port`` with the interval in an ``Expires`` header;
  unregistering sends ``Expires: 0`` for that contact only, never ``*`` (other bindings of the
  same address-of-record — the user's phones — are not ours to remove).
- Digest challenges (401/407) are answered by ``sip/client_auth.py``; a second challenge of the
  same kind is a refusal (wrong password), unless it says ``stale=true`` (§22.4: re-sign, no
  fault). An outbound proxy's 407 and then the registrar's 401 are both answered (§22.3), the
  resend carrying the two, the earlier with its nonce's next count; at most four per request.
- The interval granted is the ``expires`` parameter of our contact in the 2xx, else its
  ``Expires`` header, else the one asked for (§10.2.4) — and never more than that: a registrar
  may only shorten it (§10.3 step 7). The refresh is due 60 s before it ends or half-way for
  intervals under two minutes — time for Timer F's 32 s of retransmissions.
- 423 Interval Too Brief: once more with its ``Min-Expires`` (§10.3 step 7), up to a day.
- NAT (RFC 3581): every REGISTER asks for ``rport``. When a 2xx's top Via says the registrar saw
  the request come from another address (``received``) or, over UDP, port (``rport``) than our
  contact's, we are behind a NAT, and that address is the one calls can reach us at: the
  binding is redone at once with the contact moved there, the old contact removed in the same
  request (``;expires=0``, §10.2.1 allows several contacts). At most once per refresh, so a
  registrar behind a NAT of its own cannot keep us re-registering. The Via keeps our own address
  (RFC 3581 §3 asks the client for an empty ``rport`` only). :attr:`Registration.behind_nat`
  tells the caller to keep the NAT binding open between refreshes (keep-alives).
- Failures (timeouts, 4xx-6xx, 3xx — redirects are not followed) are retried with RFC 5626
  §4.5's back-off: ``min(600 s, 30 s × 2^(failures-1))``, times a random 50-100 %; a 503 or
  500 with ``Retry-After`` waits that long instead.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from telepath.sip.client_auth import Challenge, answer_challenge
from telepath.sip.client_auth import answer as client_answer
from telepath.sip.errors import SipParseError
from telepath.sip.headers import (
    delta_seconds,
    param_value,
    parse_name_addr,
    parse_retry_after,
    split_list,
)
from telepath.sip.message import Headers, Request, Response
from telepath.sip.uri import SipUri

__all__ = ["Failed", "Outcome", "Registered", "Registration", "Resend", "Unregistered"]

MAX_EXPIRES = 86400
BACKOFF_BASE_S = 30.0
BACKOFF_MAX_S = 600.0
USER_AGENT = "Telepath"
# Challenges answered per request, stale ones included: a registrar that keeps saying
# "stale" is not answered forever (two realms, each once stale, fit).
_MAX_ANSWERS = 4


@dataclass(frozen=True, slots=True)
class Resend:
    """Send this REGISTER now (an answer to a challenge, or a longer interval after a 423)."""

    request: Request


@dataclass(frozen=True, slots=True)
class Registered:
    """The registrar took the binding for ``expires`` s; refresh in ``refresh_in`` s."""

    expires: int
    refresh_in: float


@dataclass(frozen=True, slots=True)
class Failed:
    """The attempt failed (``detail`` says why, e.g. ``403 Forbidden``); retry in ``retry_in`` s.

    ``reason_phrase``: the registrar's own words within ``detail`` (any text: some carriers put
    the account's user, often its number, there), left out of :attr:`safe_detail`."""

    detail: str
    retry_in: float
    reason_phrase: str = field(default="", compare=False)

    @property
    def safe_detail(self) -> str:
        """``detail`` without the registrar's reason phrase: what logs at INFO and above get."""
        if not self.reason_phrase:
            return self.detail
        return self.detail.replace(self.reason_phrase, "(reason phrase)")


@dataclass(frozen=True, slots=True)
class Unregistered:
    """The binding was removed (the answer to ``Expires: 0``, or its failure: we stop anyway)."""


Outcome = Resend | Registered | Failed | Unregistered


class Registration:
    """The REGISTER transactions of one binding.

    Args:
        registrar: the registrar's URI (the Request-URI, §10.2: no user part).
        aor: the address-of-record (``sip:user@domain``), in To and From.
        contact: our contact URI (``sip:<contact_user>@host:port``).
        via: ``SIP/2.0/UDP host:port`` — the Via sent-by, a branch is added per request.
        auth_username, password: digest credentials.
        expires: the interval to ask for.
        call_id: defaults to a random one.
        rng: ``random.random``-like, for the back-off's jitter.
        route: an outbound proxy's URI: every request carries ``Route: <route;lr>`` (RFC 3261
            §8.1.2, a preloaded route set of one loose router) and is sent there.
    """

    def __init__(
        self,
        *,
        registrar: SipUri,
        aor: str,
        contact: str,
        via: str,
        auth_username: str,
        password: str,
        expires: int,
        call_id: str | None = None,
        rng: Callable[[], float] = random.random,
        route: str | None = None,
    ) -> None:
        self.registrar = registrar
        self.route = route
        self.aor = aor
        self.contact = contact
        self.via = via
        self._auth_username = auth_username
        self._password = password
        self.expires = expires
        self.call_id = call_id or f"{secrets.token_hex(12)}@telepath"
        self._from_tag = secrets.token_hex(6)
        self._rng = rng
        self._cseq = 0
        self._current: Request | None = None
        # The challenges answered for the current request, by header (a proxy's 407 and the
        # registrar's 401 may both come), each with the nonce count last sent; and how many.
        self._answered: dict[str, tuple[Challenge, int]] = {}
        self._answers = 0
        self._unregistering = False
        self._moved = False  # the contact was moved to a NAT's address since the last register()
        self.behind_nat = False  # the registrar saw us at another address than our contact's
        self.failures = 0  # consecutive failed attempts (the back-off's exponent)

    def __repr__(self) -> str:  # never the password
        return f"Registration(aor={self.aor!r}, registrar={str(self.registrar)!r})"

    # ------------------------------------------------------------------ requests

    def register(self) -> Request:
        """A REGISTER for the binding (the first, or a refresh)."""
        self._unregistering = False
        self._moved = False
        return self._new(self.expires, None)

    def unregister(self) -> Request:
        """A REGISTER removing the binding (``Expires: 0``, §10.2.2)."""
        self._unregistering = True
        return self._new(0, None)

    def is_current(self, request: Request) -> bool:
        """True if ``request`` is the one whose answer is awaited (not a stale one)."""
        return self._current is not None and request.cseq.seq == self._current.cseq.seq

    def _new(
        self,
        expires: int,
        authorization: list[tuple[str, str]] | None,
        *,
        remove: str | None = None,
    ) -> Request:
        if authorization is None:
            self._answered, self._answers = {}, 0
        if remove is None and authorization is not None and self._current is not None:
            remove = self._removing(self._current)  # an answer to a challenge: the same request
        self._cseq += 1
        h = Headers()
        h.add("Via", f"{self.via};branch=z9hG4bK{secrets.token_hex(10)};rport")
        h.add("Max-Forwards", "70")
        if self.route is not None:
            h.add("Route", f"<{self.route};lr>")
        h.add("From", f"<{self.aor}>;tag={self._from_tag}")
        h.add("To", f"<{self.aor}>")
        h.add("Call-ID", self.call_id)
        h.add("CSeq", f"{self._cseq} REGISTER")
        h.add("Contact", f"<{self.contact}>")
        if remove is not None:
            h.add("Contact", f"<{remove}>;expires=0")
        h.add("Expires", str(expires))
        h.add("User-Agent", USER_AGENT)
        for header in authorization or ():
            h.add(*header)
        request = Request(h, b"", "REGISTER", self.registrar)
        self._current = request
        return request

    # ------------------------------------------------------------------ answers

    def on_response(self, response: Response) -> Outcome:
        """What the final ``response`` to the current request means."""
        assert self._current is not None
        request = self._current
        expires = int(request.headers.get("Expires") or 0)
        status = response.status
        if 200 <= status < 300:
            if self._unregistering:
                return Unregistered()
            public = _seen_at(response)
            if public is not None and self._moved_from(public):
                self.behind_nat = True
                if not self._moved:  # once per refresh: see the module docstring
                    self._moved = True
                    old, self.contact = self.contact, _moved_to(self.contact, *public)
                    return Resend(self._new(expires, None, remove=old))
            granted = self._granted(response, expires)
            if granted <= 0:  # a failure like any other: the back-off grows (RFC 5626 §4.5)
                return self._fail("the registrar granted no time")
            self.failures = 0
            return Registered(granted, refresh_delay(granted))
        if status in (401, 407):
            return self._on_challenge(response, expires)
        if status == 423 and not self._unregistering:
            minimum = _int(response.headers.get("Min-Expires"))
            if minimum is not None and expires < minimum <= MAX_EXPIRES:
                self.expires = minimum
                return Resend(self._new(minimum, None))
        if self._unregistering:
            return Unregistered()
        retry_after = _retry_after(response)
        if status in (500, 503) and retry_after is not None and retry_after > 0:
            self.failures += 1
            return Failed(
                f"{status} {response.reason}", float(min(retry_after, 3600)), response.reason
            )
        return self._fail(f"{status} {response.reason}", response.reason)

    def on_timeout(self) -> Outcome:
        """No final answer within Timer F."""
        if self._unregistering:
            return Unregistered()
        return self._fail("no response")

    def _on_challenge(self, response: Response, expires: int) -> Outcome:
        proxy = response.status == 407
        name = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
        answer = answer_challenge(
            response.headers.get_all(name),
            method="REGISTER",
            uri=str(self.registrar),
            username=self._auth_username,
            password=self._password,
        )
        if answer is None:
            return self._after_unregister() or self._fail(
                f"{response.status} challenge with no supported digest algorithm"
            )
        value, challenge = answer
        field = "Proxy-Authorization" if proxy else "Authorization"
        if field in self._answered and not challenge.stale:
            return self._after_unregister() or self._fail(
                f"{response.status} {response.reason} (credentials refused)", response.reason
            )
        if self._answers >= _MAX_ANSWERS:
            return self._after_unregister() or self._fail(
                f"{response.status} {response.reason} (challenged {self._answers} times)",
                response.reason,
            )
        # RFC 3261 §22.3: a 401 after an answered 407 (or the reverse) is the next hop's own
        # challenge; the resend carries both answers, the earlier with its nonce's next count
        # (a stale one replaces its header's earlier answer)
        answered = {
            other: (known, nc + 1)
            for other, (known, nc) in self._answered.items()
            if other != field
        }
        headers = [(other, self._answer(known, nc)) for other, (known, nc) in answered.items()]
        answered[field] = (challenge, 1)
        headers.append((field, value))
        resend = self._new(expires, headers)
        self._answered, self._answers = answered, self._answers + 1
        return Resend(resend)

    def _answer(self, challenge: Challenge, nc: int) -> str:
        return client_answer(
            challenge,
            method="REGISTER",
            uri=str(self.registrar),
            username=self._auth_username,
            password=self._password,
            nc=nc,
        )

    def _moved_from(self, public: tuple[str, int]) -> bool:
        """True if the registrar saw us at ``public``, not at our contact: over UDP another
        address or port; over a connection (TCP) another address — its source port is always
        a fresh one, not the contact's listening port, with or without a NAT — or, once behind
        a NAT (the contact then being the connection's address), another port: a new
        connection's."""
        here = _host_port(self.contact)
        if self.via.upper().startswith("SIP/2.0/UDP"):
            return public != here
        return public[0] != here[0] or (self.behind_nat and public[1] != here[1])

    @staticmethod
    def _removing(request: Request) -> str | None:
        """The contact ``request`` removes alongside ours (``;expires=0``), if any."""
        values = request.headers.get_all("Contact")
        if len(values) < 2:
            return None
        return str(parse_name_addr(values[1]).uri)

    def _after_unregister(self) -> Outcome | None:
        return Unregistered() if self._unregistering else None

    def _granted(self, response: Response, asked: int) -> int:
        """The interval the 2xx grants our contact (§10.2.4)."""
        mine = _contact_uri(self.contact)
        candidates: list[tuple[bool, int]] = []  # (the very URI, granted)
        for value in response.headers.get_all("Contact"):
            for item in split_list(value):
                try:
                    contact = parse_name_addr(item)
                except SipParseError:
                    continue
                granted = _int(param_value(contact.params, "expires"))
                if granted is not None and _same_contact(contact.uri, mine):
                    exact = (contact.uri.host, contact.uri.port) == (mine.host, mine.port)
                    candidates.append((exact, granted))
        if candidates:  # a binding just moved away from may still be listed: ours first
            granted = max(candidates, key=lambda c: c[0])[1]
        else:
            header = _int(response.headers.get("Expires"))
            granted = header if header is not None else asked
        # §10.3 step 7: the registrar MAY choose less than asked, not more; an interval longer
        # than asked (10**12 s) would also put the refresh past any date the driver can hold
        return min(granted, asked)

    def _fail(self, detail: str, reason_phrase: str = "") -> Failed:
        self.failures += 1
        return Failed(detail, backoff_delay(self.failures, self._rng), reason_phrase)


def refresh_delay(granted: int) -> float:
    """When to refresh a binding granted for ``granted`` s (see the module docstring)."""
    return float(granted - 60) if granted >= 120 else granted / 2


def backoff_delay(failures: int, rng: Callable[[], float] = random.random) -> float:
    """RFC 5626 §4.5: ``min(max, base × 2^(failures-1))`` times a random 50-100 %."""
    ceiling = min(BACKOFF_MAX_S, BACKOFF_BASE_S * float(2 ** max(0, failures - 1)))
    return ceiling * (0.5 + 0.5 * rng())


def _int(text: str | None) -> int | None:
    """A decimal number of a header (delta-seconds, a port), or None; 2**32-1 at most."""
    if text is None or not (text.strip().isascii() and text.strip().isdigit()):
        return None  # str.isdigit takes "²", which int() does not
    return delta_seconds(text.strip())


def _retry_after(response: Response) -> int | None:
    """The seconds of ``response``'s Retry-After, or None (none, or not one)."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return parse_retry_after(value)
    except SipParseError:
        return None


def _contact_uri(contact: str) -> SipUri:
    return parse_name_addr(f"<{contact}>").uri


def _seen_at(response: Response) -> tuple[str, int] | None:
    """Where the registrar saw our request come from (RFC 3581 §4: the top Via's ``received``
    and ``rport``), or None when it says nothing about it."""
    try:
        via = response.top_via
    except SipParseError:
        return None
    received, rport = via.received, _int(via.rport)
    if received is not None:
        try:
            ipaddress.ip_address(received)
        except ValueError:  # §4: the source IP address; anything else: trust none of it
            return None
    if received is None and rport is None:
        return None
    host = received if received is not None else via.host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address, as a URI's host is written
    port = rport if rport is not None and 0 < rport <= 65535 else (via.port or 5060)
    return host.lower(), port


def _host_port(contact: str) -> tuple[str, int]:
    uri = _contact_uri(contact)
    return uri.host.lower(), uri.port or 5060


def _moved_to(contact: str, host: str, port: int) -> str:
    """``contact`` (``sip:user@host:port;params``) with its host and port replaced."""
    return str(dataclasses.replace(_contact_uri(contact), host=host, port=port))


def _same_contact(a: SipUri, b: SipUri) -> bool:
    """Our contact in a registrar's list: a NAT-aware registrar may rewrite its host and port
    to the address the REGISTER came from, so the user part — random per trunk — decides."""
    return (a.user or "") == (b.user or "") and a.scheme in ("sip", "sips")
