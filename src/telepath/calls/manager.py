"""Routes each INVITE to its trunk and agent, and owns every call's life.

Setup order (decision, documented in the README): authenticate → trunk → SDP → RTP ports →
``180 Ringing`` → connect the agent → ``200 OK``. The call is answered only once the agent is
reachable, so a caller never sits in dead air and an unreachable agent becomes a clean SIP
failure (480) the carrier can fail over on, instead of an answered call that drops. The cost is
the agent's connect time inside the caller's ring time; ``bench/`` measures it.

An INVITE without SDP ("delayed offer", RFC 3261 §13.2.1; Cisco CUCM sends these by default)
follows the same order, but the ``200 OK`` carries *our* offer and the caller's answer arrives
in the ACK: media starts only once that answer is read (RFC 3264 §7). An ACK without a usable
answer ends the call with BYE (§13.2.2.4 asks the UAC to do the same) and a ``failed`` record
with reason ``carrier_error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.utils
import functools
import ipaddress
import logging
import random
import secrets
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, cast

from telepath.addresses import is_private
from telepath.bridges.base import (
    AgentBridge,
    BridgeError,
    BridgeReason,
    CallMetadata,
    Codec,
    CustomConfig,
    ElevenLabsConfig,
    OpenAIConfig,
    ProviderConfig,
)
from telepath.bridges.http_client import SharedHttpClient
from telepath.bridges.registry import create_bridge
from telepath.calls.admission import LoadAdmission, TokenBucket
from telepath.calls.call import AGENT_CLOSE_S, Call, CallEnd, bridge_reason
from telepath.calls.config import CallControlConfig
from telepath.calls.diagnosis import media_report
from telepath.calls.events import (
    agent_connected_payload,
    agent_disconnected_payload,
    call_ended_payload,
    call_error_payload,
    call_started_payload,
)
from telepath.calls.model import CallRecord, CallStatus, DisconnectReason
from telepath.calls.ports import (
    CONTACT_USER_PREFIX,
    CallRecorder,
    DirectoryUnavailable,
    EventSink,
    TrunkConfig,
    TrunkDirectory,
    may_be_sip_username,
)
from telepath.calls.registrations import Registrations
from telepath.errors import TelepathError
from telepath.log import Streak, call_id_var
from telepath.metrics import Metrics
from telepath.rtp.codecs import CodecSpec
from telepath.rtp.srtp_keys import KEY_MATERIAL
from telepath.sdp import (
    MediaSecurity,
    NoCommonCodec,
    SdpError,
    SessionDescription,
    create_offer,
    create_reoffer,
    negotiate_answer,
    negotiate_offer_answer,
    negotiate_reoffer,
    parse,
)
from telepath.sdp.errors import WARN_INCOMPATIBLE_ADDRESS_FORMAT, WARN_INCOMPATIBLE_TRANSPORT
from telepath.sdp.negotiate import OFFER_SUITE, NegotiatedMedia
from telepath.secrets.tokens import new_id
from telepath.sip.auth import (
    Algorithm,
    AuthHeaderError,
    AuthResult,
    DigestAuthenticator,
    parse_authorization,
)
from telepath.sip.defence import SourceGuard
from telepath.sip.dialog import Dialog
from telepath.sip.errors import SipParseError
from telepath.sip.headers import param_value, parse_name_addr
from telepath.sip.message import Request
from telepath.sip.numbers import canonical_number, number_of
from telepath.sip.transaction import ServerTransaction
from telepath.sip.ua import (
    CallConfirmed,
    CallEnded,
    CallEndReason,
    DtmfInfo,
    Event,
    InviteCancelled,
    InviteReceived,
    ReferUpdate,
    RegisterReceived,
    ReinviteAcked,
    ReofferReceived,
    RequestAnswered,
    SessionRefreshed,
)
from telepath.sip.uri import SipUri, parse_uri
from telepath.transport.dns import SipLocator
from telepath.transport.media_session import MediaSession
from telepath.transport.ports import PortLease, RtpPortAllocator, RtpPortsExhausted
from telepath.transport.sip_server import SipServer
from telepath.transport.stun import StunClient
from telepath.transport.thread_clock import BusyClock

log = logging.getLogger(__name__)

# How often the loop thread's CPU share is read for the load admission: at 600 calls/s offered
# to a 250/s gateway, 0.5 s let the queue build (set-up 128 ms, 60 retransmissions), 0.25 s
# did not (74-104 ms, 1-5 retransmissions).
LOAD_PERIOD_S = 0.25
TRUNK_GONE = "trunk deleted or deactivated"  # the error text of its calls' end
# at the drain's end: how long call and set-up tasks still running after their close's own
# bound are awaited once cancelled, besides the BYE wait (a set-up answers 503, closes its bridge)
CANCELLED_WAIT_S = 5.0
# The challenges to admitted INVITEs remembered for their retries (_is_retry): as many as the
# digest replay table holds by default. Past it the oldest is forgotten, and its retry is then
# admitted (or refused) like a new attempt.
_CHALLENGED_MAX = 100_000


def drain_overrun_s(bye_wait_s: float) -> float:
    """The longest :meth:`CallManager.drain` runs past its drain time: the calls it ends
    close (their agent, and the answer to their BYE beside it), then those still running are
    cancelled and awaited."""
    return (AGENT_CLOSE_S + bye_wait_s) + (CANCELLED_WAIT_S + bye_wait_s)


# REGISTER (RFC 3261 §10.3 step 7): the lifetime when none is asked for, the shortest we take
# (shorter gets 423 with Min-Expires), and the longest we grant
REGISTER_DEFAULT_S = 3600
REGISTER_MIN_S = 60
REGISTER_MAX_S = 3600

BridgeFactory = Callable[[str, ProviderConfig, float], AgentBridge]


def _default_factory(provider: str, config: ProviderConfig, timeout: float) -> AgentBridge:
    return create_bridge(provider, config, connect_timeout_s=timeout)


class _Setup:
    """An INVITE being set up: from 100 Trying to 200 OK, or to the ACK after a delayed offer."""

    def __init__(self, tx: ServerTransaction) -> None:
        self.tx = tx
        self.cancelled = asyncio.Event()
        # Delayed offer only: the ACK's body (the answer to our offer) once it has arrived,
        # and why the dialog ended if it did before the call was up.
        self.ack_body: bytes | None = None
        self.sip_end: CallEndReason | None = None
        self.acked_or_ended = asyncio.Event()
        self.sip_done = asyncio.Event()
        self.shutting_down = False  # the gateway is stopping: give up waiting for the ACK
        self.digits: list[str] = []  # DTMF by INFO before the call is up (delayed offer)
        # The address a call to a trunk with a registration was sent to — behind a NAT the
        # NAT's, which the registrar learnt (calls/registrations.py): our Contact and SDP give
        # it instead of the configured address, which the carrier may not reach.
        self.nat: tuple[str, int] | None = None
        # Where a NAT maps the call's RTP socket, by STUN (TELEPATH_STUN_SERVER): measured
        # for this very socket, so it beats the registration's address for the SDP.
        self.stun: tuple[str, int] | None = None
        # A call its trunk's registrar sent: the registration's digest credentials, which
        # answer the registrar's challenges to our BYE, REFER or refresh in the dialog.
        self.credentials: tuple[str, str] | None = None
        self.dialog: Dialog | None = None  # once our 200 OK went: the call's dialog
        self.trunk_id: str | None = None  # once authenticated
        # Its trunk was deleted or deactivated meanwhile (``CallManager.trunk_removed``); set
        # with ``stopped``, which a CANCEL sets too: what the agent's connect is raced against.
        self.trunk_gone = False
        self.stopped = asyncio.Event()

    @property
    def media_address(self) -> str | None:
        """The address our SDP gives when it is not the configured one."""
        if self.stun is not None:
            return self.stun[0]
        return None if self.nat is None else self.nat[0].strip("[]")

    def confirmed(self, ack_body: bytes) -> None:
        """The ACK for our 2xx arrived (SIP event, on the loop)."""
        self.ack_body = ack_body
        self.acked_or_ended.set()

    def shutdown(self) -> None:
        """The gateway is stopping while this call waits for its ACK."""
        self.shutting_down = True
        self.acked_or_ended.set()

    def cancel(self) -> None:
        """The caller's CANCEL arrived (the SIP core has answered the INVITE 487)."""
        self.cancelled.set()
        self.stopped.set()

    def trunk_removed(self) -> None:
        """Its trunk was deleted or deactivated: not to be answered — or, answered already
        (a delayed offer's ACK awaited), to be ended."""
        self.trunk_gone = True
        self.stopped.set()
        self.acked_or_ended.set()

    def ended(self, reason: CallEndReason) -> None:
        """The dialog ended before the call was up (SIP event, on the loop)."""
        self.sip_end = reason
        self.acked_or_ended.set()
        self.sip_done.set()


@dataclass
class _Hook:
    period_s: float
    run: Callable[[], None]
    due: float = 0.0


class LagMonitor:
    """Measures event-loop lag; past the threshold new calls are shed with 503.

    The decision uses a moving average over samples, so one slow tick — a garbage collection,
    a burst of setups, a stall at start-up — does not refuse calls; lag on tick after tick does.

    The clock is a chain of ``loop.call_at`` timers, not a task that sleeps: a sleeping task
    costs a future, a timer and a task step per wake-up, and the step a second pass of the
    loop. At 20 samples a second that was the largest part of an idle gateway's CPU (measured
    with ``/proc/<pid>/task/*/schedstat`` over 15 s: 1.2 % of a core idle, 0.75 % without the
    monitor). Other periodic work (:meth:`every`) rides on the same wake-ups. While ``busy()``
    says there is nothing to protect (no call, no set-up), it samples every ``idle_interval_s``
    instead: an idle process — and every idle SIP worker — wakes 4 times a second, not 20; the
    first sample after work starts is at most that late, and the moving average follows within
    a few samples as before.
    """

    ALPHA = 0.2
    SAMPLE_CAP = 2.0  # one sample counts for at most this many thresholds

    def __init__(
        self,
        threshold_s: float,
        interval_s: float = 0.05,
        *,
        idle_interval_s: float | None = None,
        busy: Callable[[], bool] | None = None,
    ) -> None:
        self.threshold_s = threshold_s
        self.interval_s = interval_s
        self.idle_interval_s = idle_interval_s if idle_interval_s is not None else interval_s
        self.busy = busy or (lambda: True)
        self.lag_s = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._hooks: list[_Hook] = []

    @property
    def overloaded(self) -> bool:
        """True while the last measured lag is above the threshold."""
        return self.lag_s > self.threshold_s

    @property
    def next_sample_at(self) -> float | None:
        """The loop time of the next sample (None: not running)."""
        return self._handle.when() if self._handle is not None else None

    def every(self, period_s: float, hook: Callable[[], None]) -> None:
        """Also call ``hook`` about every ``period_s``, from the monitor's own wake-ups (so at
        least one sample interval apart); an exception is logged, not propagated."""
        self._hooks.append(_Hook(period_s, hook))

    def start(self) -> None:
        """Begin measuring (on the running loop; again: restarts the clock)."""
        if self._handle is not None:
            self._handle.cancel()
        loop = self._loop = asyncio.get_running_loop()
        now = loop.time()
        for hook in self._hooks:
            hook.due = now + hook.period_s - self.interval_s / 2
        self._due = now + (self.interval_s if self.busy() else self.idle_interval_s)
        self._handle = loop.call_at(self._due, self._tick)

    async def stop(self) -> None:
        """Stop measuring (idempotent)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        loop = self._loop
        assert loop is not None
        now = loop.time()
        self.sample(max(0.0, now - self._due))
        for hook in self._hooks:
            if now >= hook.due:
                hook.due = now + hook.period_s - self.interval_s / 2  # the nearest wake-up
                try:
                    hook.run()
                except Exception:  # a broken hook must not stop the lag measurement
                    log.exception("periodic check on the lag monitor failed")
        self._due = now + (self.interval_s if self.busy() else self.idle_interval_s)
        self._handle = loop.call_at(self._due, self._tick)

    def sample(self, lag_s: float) -> None:
        """Fold one measured lag into the moving average.

        One stall, however long, is one sample (the loop is free again when it is measured),
        and it is capped so that it alone cannot cross the threshold: a 1.5 s stall (a start-up
        import, a VM pause) used to shed the next calls. Lag on tick after tick still crosses it
        within a few ticks.
        """
        lag = min(lag_s, self.SAMPLE_CAP * self.threshold_s)
        self.lag_s += self.ALPHA * (lag - self.lag_s)


class CallManager:
    """Call control for the whole gateway."""

    def __init__(
        self,
        config: CallControlConfig,
        directory: TrunkDirectory,
        ports: RtpPortAllocator,
        authenticator: DigestAuthenticator,
        *,
        guard: SourceGuard | None = None,
        recorder: CallRecorder | None = None,
        events: EventSink | None = None,
        metrics: Metrics | None = None,
        bridge_factory: BridgeFactory = _default_factory,
        http: SharedHttpClient | None = None,
    ) -> None:
        self.config = config
        self.http = http  # kept-open client for providers' set-up requests (ElevenLabs)
        self.directory = directory
        self.ports = ports
        self.auth = authenticator
        self.guard = guard
        self.recorder = recorder
        self.sink = events
        self.metrics = metrics
        self.bridge_factory = bridge_factory
        self.server: SipServer | None = None
        # The trunks' outbound registrations (calls/registrations.py), when this process keeps
        # them up: the answers to their REGISTERs arrive here.
        self.registrations: Registrations | None = None
        self._registrar_addresses: dict[str, tuple[float, frozenset[str]]] = {}
        self.locator = SipLocator()  # the registrars' servers (RFC 3263); the gateway's own DNS
        self.stun: StunClient | None = None  # asked for each call's RTP mapping, when set
        self.lag = LagMonitor(
            config.overload_lag_s,
            idle_interval_s=LOAD_PERIOD_S,
            busy=lambda: bool(self.calls or self._setups or self._awaiting_ack),
        )
        self.calls: dict[str, Call] = {}
        self._recheck = Streak(log, "rechecking the trunks of live calls (they go on)")
        self._setups: dict[int, _Setup] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._announcing: dict[str, asyncio.Task[None]] = {}  # a call's start record + webhooks
        self._awaiting_ack: set[_Setup] = set()  # delayed offers answered, ACK not yet in
        self.draining = False
        self.counters: dict[str, int] = {}
        self._shed_logged_at = -1e9  # monotonic time of the last 503 log line
        self._source_refusals_logged: dict[str, float] = {}  # trunk id -> last warning
        self._shed_unlogged = 0
        # TELEPATH_SIP_MAX_CPS: new attempts a second, a second's worth of burst
        self._rate = TokenBucket(config.max_cps, 1.0, 0.0) if config.max_cps > 0 else None
        # nonce -> monotonic expiry, of the challenges sent to admitted INVITEs: their retries
        # skip admission, once each (_is_retry)
        self._challenged: OrderedDict[str, float] = OrderedDict()
        self.load: LoadAdmission | None = None
        if config.max_loop_load > 0:
            high = config.max_loop_load
            self.load = LoadAdmission(high=high, low=max(high - 0.05, high / 2))
        self._busy: BusyClock | None = None

    # ---------------------------------------------------------------- wiring

    def attach(self, server: SipServer) -> None:
        """Use ``server`` for SIP I/O."""
        self.server = server
        server.core.refusing = self._refusing_retry_after  # OPTIONS as an INVITE (§11.2)
        if self.load is not None:
            self._watch_load()
        self.lag.start()

    @property
    def active_calls(self) -> int:
        """Calls answered and not yet ended."""
        return len(self.calls)

    def on_sip_event(self, event: Event) -> None:
        """Entry point for SIP events (called synchronously by :class:`SipServer`)."""
        if isinstance(event, InviteReceived):
            if self._refused_at_once(event.tx):
                return
            setup = _Setup(event.tx)
            self._setups[id(event.tx)] = setup
            self._spawn(self._setup_call(setup))
        elif isinstance(event, RegisterReceived):
            self._spawn(self._register(event.tx))
        elif isinstance(event, RequestAnswered):
            if self.registrations is not None:
                self.registrations.answered(event)
        elif isinstance(event, InviteCancelled):
            pending = self._setups.get(id(event.tx))
            if pending is not None:
                pending.cancel()
        elif isinstance(event, CallEnded):
            if isinstance(event.dialog.app_data, _Setup):
                event.dialog.app_data.ended(event.reason)
            call = _call_of(event.dialog.app_data)
            if call is not None:
                _dialog_ended(call, event.reason)
        elif isinstance(event, ReofferReceived):
            self._on_reoffer(event)
        elif isinstance(event, DtmfInfo):
            call = _call_of(event.dialog.app_data)
            if call is not None:
                call.dtmf(event.digit)
            elif isinstance(event.dialog.app_data, _Setup):
                event.dialog.app_data.digits.append(event.digit)  # delivered once the call is up
        elif isinstance(event, ReferUpdate):
            call = _call_of(event.dialog.app_data)
            if call is not None:  # a failed transfer is counted by the call (_transfer_failed)
                call.refer_update(event.status, event.final, event.expires)
        elif isinstance(event, CallConfirmed):
            if isinstance(event.dialog.app_data, _Setup):
                event.dialog.app_data.confirmed(event.body)
        elif isinstance(event, ReinviteAcked):
            call = _call_of(event.dialog.app_data)
            if call is not None and call.offer_in_2xx:
                call.offer_in_2xx = False
                self._on_answer_in_reinvite_ack(call, event.body)
        elif isinstance(event, SessionRefreshed):
            # Our re-INVITE refresh offered the dialog's local_sdp (staged by _sent_sdp): now
            # the last SDP we sent, the base of the next o= version (RFC 3264 §8). A refused
            # refresh changed nothing (RFC 3261 §14.1), so only a 2xx makes it so.
            call = _call_of(event.dialog.app_data)
            if call is not None:
                call.answer_sdp = event.dialog.local_sdp
                call.session_version = parse(call.answer_sdp).origin.session_version
                self._on_answer_in_reinvite_ack(call, event.body)

    def _admit_new_call(self) -> bool:
        """``max_cps`` new calls per second (burst: one second's worth, at least one call)."""
        return self._rate is None or self._rate.take(asyncio.get_running_loop().time())

    def _watch_load(self) -> None:
        """Feed the loop thread's busy share (on a CPU or waiting for one: ``thread_clock``)
        to the load admission every ``LOAD_PERIOD_S``, from the lag monitor's wake-ups."""
        load = self.load
        assert load is not None
        busy = self._busy = BusyClock()  # built here: on the loop thread
        load.update(time.monotonic(), busy())

        def update() -> None:
            load.update(time.monotonic(), busy())
            if self.metrics is not None:
                self.metrics.loop_busy.set(load.busy)
                self.metrics.admission_limit.set(load.limit_cps or 0)

        self.lag.every(LOAD_PERIOD_S, update)

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    # ---------------------------------------------------------------- SIP helpers

    def _respond(
        self,
        tx: ServerTransaction,
        status: int,
        *,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        reason: str | None = None,
        contact_address: str | None = None,
    ) -> None:
        assert self.server is not None
        self.server.dispatch(
            self.server.core.respond(
                tx, status, reason, headers=headers, body=body, contact_address=contact_address
            )
        )

    def _reject(self, tx: ServerTransaction, status: int, why: str, **kw: Any) -> None:
        self._count(f"rejected_{why}")
        if status == 503:
            self._log_shed(why)
        if self.metrics is not None:
            self.metrics.calls_rejected.labels(reason=why).inc()
        self._respond(tx, status, **kw)

    def _log_shed(self, why: str) -> None:
        """One INFO line per second at most: shedding hundreds of INVITEs a second must not
        also write hundreds of log lines."""
        self._shed_unlogged += 1
        now = time.monotonic()
        if now - self._shed_logged_at < 1.0:
            return
        log.info(
            "INVITE refused with 503: %s (%d since the last line; loop lag %.0f ms, "
            "loop busy %.0f %%, admitting %s)",
            why,
            self._shed_unlogged,
            self.lag.lag_s * 1000,
            100 * self.load.busy if self.load is not None else 0,
            f"{self.load.limit_cps:.0f}/s" if self.load and self.load.limit_cps else "all",
        )
        self._shed_logged_at = now
        self._shed_unlogged = 0

    def _challenge(
        self, tx: ServerTransaction, trunk: TrunkConfig | None, *, stale: bool = False
    ) -> None:
        # A trunk may narrow the challenge (e.g. MD5 only, for UACs that abort on SHA-256) —
        # for the sources it allows only: a narrowed challenge tells its username from an
        # unknown one, so elsewhere it gets the default, as unknown ones do.
        source_ip = tx.source.addr[0]
        allowed = trunk is not None and trunk.allows_source(source_ip)
        algorithms = _algorithms(trunk) if allowed else None
        # carries this IP: a wrong answer over it counts toward its ban (sip/auth.py)
        nonce = self.auth.new_nonce(source=source_ip)
        if tx.request.method == "INVITE":
            self._challenged_invite(nonce)
        values = self.auth.challenge_headers(stale=stale, algorithms=algorithms, nonce=nonce)
        self._respond(tx, 401, headers=[("WWW-Authenticate", v) for v in values])

    def _challenged_invite(self, nonce: str) -> None:
        """Remember the nonce of a challenge to an admitted INVITE: the retry answering it
        (RFC 3261 §22.2) is that attempt going on, not a new one (``_is_retry``)."""
        now = time.monotonic()
        challenged = self._challenged
        while challenged and (
            next(iter(challenged.values())) <= now or len(challenged) >= _CHALLENGED_MAX
        ):
            challenged.popitem(last=False)  # oldest first: expired, or past the bound
        challenged[nonce] = now + self.auth.nonce_ttl_s

    def _is_retry(self, value: str) -> bool:
        """Whether ``value`` (an INVITE's Authorization) answers a challenge we sent an admitted
        INVITE, within its nonce's lifetime — once: credentials that are made up, carry
        another request's nonce (a REGISTER's), or answer a challenge again for a new call
        (nc 2, RFC 7616 §3.4) are a new attempt. Stateless nonces alone would not do: any nonce
        fetched once would let a flood of INVITEs past admission for minutes."""
        try:
            nonce = parse_authorization(value).nonce
        except AuthHeaderError:
            return False
        expires = self._challenged.pop(nonce, None)
        return expires is not None and time.monotonic() < expires

    # ---------------------------------------------------------------- setup

    def _refusing(self) -> tuple[str, str] | None:
        """Why every new INVITE is refused now, whatever it is, and the Retry-After of its 503:
        draining, or full (capacity, loop lag). The shedding that is per attempt (rate,
        backlog, load admission: an attempt a moment later may pass) is not counted here."""
        if self.draining:
            return "draining", "30"
        if len(self.calls) + len(self._setups) >= self.config.max_calls or self.lag.overloaded:
            return ("overload" if self.lag.overloaded else "capacity"), "5"
        return None

    def _refusing_retry_after(self) -> str | None:
        """The SIP core's :attr:`~telepath.sip.ua.UserAgentCore.refusing`: OPTIONS outside a
        dialog gets the 503 an INVITE would (RFC 3261 §11.2)."""
        refused = self._refusing()
        return None if refused is None else refused[1]

    def _refused_at_once(self, tx: ServerTransaction) -> bool:
        """Refuse an INVITE that cannot be taken now, before any per-call object or task.

        Past capacity most INVITEs end here, so this path must stay cheap: the queue behind it
        drains only as fast as it runs.
        """
        refused = self._refusing()
        if refused is not None:
            why, retry_after = refused
            self._reject(tx, 503, why, headers=[("Retry-After", retry_after)])
            return True
        credentials = tx.request.headers.get("Authorization")
        if credentials is not None and self._is_retry(credentials):
            return False  # an admitted attempt's authenticated retry goes on
        # A new attempt (not the retry of an admitted one) past the configured rate, while SIP
        # datagrams queue before being read, or while the loop thread is saturated: refused
        # before any work, so shedding stays cheap and the queue drains.
        if self.server is not None and self.server.backlog.overloaded:
            self._reject(tx, 503, "backlog", headers=[("Retry-After", "1")])
            return True
        if not self._admit_new_call():
            self._reject(tx, 503, "rate", headers=[("Retry-After", "1")])
            return True
        if self.load is not None and not self.load.admit(time.monotonic()):
            # the loop thread is saturated: admit what it can set up (calls/admission.py)
            self._reject(tx, 503, "load", headers=[("Retry-After", "1")])
            return True
        return False

    async def _setup_call(self, setup: _Setup) -> None:
        tx = setup.tx
        try:
            await self._setup(setup)
        except DirectoryUnavailable:
            # The database is unreachable and this trunk was not known: a temporary failure
            # the carrier can fail over on (RFC 3261 §21.5.4), not an internal error.
            if not tx.final_sent:
                self._reject(tx, 503, "database_unavailable", headers=[("Retry-After", "5")])
        except Exception:
            log.exception("call setup failed")
            if not tx.final_sent:
                self._reject(tx, 500, "internal_error")
        except asyncio.CancelledError:
            # The drain gave up on this set-up: refused as a new INVITE is then (RFC 3261
            # §21.5.4), not left without a final response.
            if not tx.final_sent:
                self._reject(tx, 503, "draining", headers=[("Retry-After", "30")])
            raise
        finally:
            self._setups.pop(id(tx), None)

    async def _setup(self, setup: _Setup) -> None:
        tx = setup.tx
        request = tx.request
        started = tx.created
        trunk = await self._authenticate(tx)
        if trunk is None or setup.cancelled.is_set():
            return
        setup.trunk_id = trunk.trunk_id
        if not trunk.active:
            self._reject(tx, 480, "trunk_inactive")
            return
        if not trunk.allows_caller(_caller_number(request)):
            # Its allowed_caller_numbers: decided once the trunk is known (authenticated), so
            # an unauthenticated INVITE learns nothing about the list.
            self._reject(tx, 403, "caller_not_allowed", reason="Caller Not Allowed")
            return
        try:
            lease = self.ports.allocate()
        except RtpPortsExhausted:
            self._reject(tx, 503, "rtp_ports", headers=[("Retry-After", "5")])
            return
        setup.nat = self._nat_address(request, trunk)
        if trunk.registration_credentials is not None and await self._from_registrar(
            trunk, tx.source.addr[0]
        ):
            # Decision: only the party we registered with gets an answer to its challenges;
            # another peer in a call to the same trunk is not sent our credentials' digest.
            setup.credentials = trunk.registration_credentials
        try:
            if self.stun is not None and not is_private(tx.source.addr[0]):
                # The NAT's mapping is for callers outside it: one on our private network
                # (a PBX on the LAN) reaches the configured address directly.
                lease.public, lease.public_rtcp = await asyncio.gather(
                    self.stun.mapping(lease.rtp_socket), self.stun.mapping(lease.rtcp_socket)
                )
                setup.stun = lease.public
            media_address = setup.media_address or self.config.media_address
            session_id = random.randint(1, 2**31)
            security = self._media_security(tx, trunk)
            if not request.body:
                # Delayed offer (RFC 3261 §13.2.1): we offer in the 200 OK, every configured
                # codec plus telephone-event on the port just leased (RFC 3264 §5), and the
                # caller answers in the ACK. SRTP only where it is required: a caller that
                # left the offer to us may well not do it.
                if security.required and security.key is None:
                    refusal = NoCommonCodec(
                        security.why_not,
                        warn_code=WARN_INCOMPATIBLE_TRANSPORT,
                        detail=security.why_not,
                    )
                    warning = refusal.warning_header("telepath")
                    self._reject(tx, 488, "no_common_codec", headers=[("Warning", warning)])
                    lease.release()
                    return
                offer = create_offer(
                    local_address=media_address,
                    local_port=lease.sdp_port,
                    rtcp_port=lease.sdp_rtcp_port,
                    session_id=session_id,
                    session_version=1,
                    preference=trunk.codecs or self.config.codecs,
                    srtp_key=(
                        security.key[: OFFER_SUITE.key_length]
                        if security.required and security.key is not None
                        else None
                    ),
                )
                await self._connect_and_answer(
                    setup, trunk, lease, offer, None, session_id, started
                )
                return
            try:
                answer, negotiated = negotiate_answer(
                    parse(request.body),
                    local_address=media_address,
                    local_port=lease.sdp_port,
                    rtcp_port=lease.sdp_rtcp_port,
                    session_id=session_id,
                    session_version=1,
                    preference=trunk.codecs or self.config.codecs,
                    security=security,
                )
            except NoCommonCodec as exc:
                warning = exc.warning_header("telepath")
                why = (
                    "unusable_media_address"  # a name, multicast... in c= (sdp/negotiate.py)
                    if exc.warn_code == WARN_INCOMPATIBLE_ADDRESS_FORMAT
                    else "no_common_codec"
                )
                self._reject(tx, 488, why, headers=[("Warning", warning)])
                lease.release()
                return
            except SdpError as exc:
                self._reject(tx, 400, "bad_sdp", reason=f"Bad SDP: {str(exc)[:60]}")
                lease.release()
                return
            await self._connect_and_answer(
                setup, trunk, lease, answer, negotiated, session_id, started
            )
        except BaseException:
            lease.release()  # idempotent; on success the media session owns the lease
            raise

    def _media_security(self, tx: ServerTransaction, trunk: TrunkConfig) -> MediaSecurity:
        """What SRTP this INVITE may negotiate: the trunk's ``media_encryption``, or else
        ``TELEPATH_SIP_SRTP`` (the trunk's choice overrides the installation's default).

        Decision: SDES keys travel in the SDP, so we take and send them only over TLS — RFC
        4568 §8.3 requires the signalling to be protected, and a key read off a UDP INVITE
        protects nothing. Over UDP or TCP an ``RTP/SAVP`` offer gets 488 saying so.
        """
        mode = _SRTP_MODES.get(trunk.media_encryption or "", self.config.srtp)
        if mode == "off":
            where = "for this trunk" if trunk.media_encryption == "disabled" else "here"
            return MediaSecurity(why_not=f"SRTP is turned off {where}")
        required = mode == "require"
        if tx.source.transport != "TLS":
            why = "SRTP keys are only exchanged over TLS signalling (RFC 4568 section 8.3)"
            return MediaSecurity(required=required, why_not=why)
        return MediaSecurity(key=secrets.token_bytes(KEY_MATERIAL), required=required)

    async def _register(self, tx: ServerTransaction) -> None:
        """A PBX registering its trunk (RFC 3261 §10.3), so that it sends calls over it: some
        (3CX, FreePBX with registration on) call a trunk that failed to register down.

        Decision: authenticate with the trunk's credentials like an INVITE, and answer with the
        contacts and lifetimes granted; no binding is stored, since the gateway never places a
        call to the PBX. The address-of-record in To is not checked against the username:
        PBXes may register a number with another authentication id.
        """
        try:
            trunk = await self._authenticate(tx, call=False)
        except DirectoryUnavailable:  # as for an INVITE: temporary, try again later
            if not tx.final_sent:
                self._respond(tx, 503, headers=[("Retry-After", "5")])
            return
        if trunk is None:
            return  # challenged or refused
        request = tx.request
        contacts = request.headers.get_all("Contact")
        expires = _expires(request.headers.get("Expires"), REGISTER_DEFAULT_S)
        if expires is None:
            self._respond(tx, 400, reason="Bad Expires")
            return
        if "*" in contacts:  # §10.3 step 6: removing every binding, and nothing else
            if len(contacts) > 1 or expires != 0:
                self._respond(tx, 400, reason="Invalid Contact *")
                return
            self._respond(tx, 200, headers=[("Date", _http_date())])
            return
        granted: list[str] = []
        for value in contacts:
            try:
                contact = parse_name_addr(value)
            except SipParseError:
                self._respond(tx, 400, reason="Bad Contact")
                return
            wanted = _expires(param_value(contact.params, "expires"), expires)
            if wanted is None:
                self._respond(tx, 400, reason="Bad Contact expires")
                return
            if 0 < wanted < REGISTER_MIN_S:  # §10.3 step 7
                self._respond(tx, 423, headers=[("Min-Expires", str(REGISTER_MIN_S))])
                return
            if wanted:
                granted.append(f"<{contact.uri}>;expires={min(wanted, REGISTER_MAX_S)}")
        headers = [("Contact", c) for c in granted] + [("Date", _http_date())]
        self._respond(tx, 200, headers=headers)
        log.info("trunk %s registered (%d contact(s))", trunk.trunk_id, len(granted))

    async def _authenticate(
        self, tx: ServerTransaction, *, call: bool = True
    ) -> TrunkConfig | None:
        """The trunk ``tx`` may use: by its credentials, or — an INVITE to a number of a trunk
        with ``sip_auth`` "address" from one of its allowed sources, or of a trunk with a
        registration from its registrar — by address; otherwise it is challenged or refused
        (counted as a rejected call unless ``call`` is False: a REGISTER is none, and always
        authenticates by digest).

        Decision: by address, a Request-URI whose user is a trunk's ``sip_username`` is only
        that trunk's call (its own number and sources) — a number routes the call by address
        only when it names no other trunk (``_names_another_trunk``). By digest, the call is
        the trunk of the ``Authorization`` username (carriers often put the DID in the
        Request-URI); the Request-URI user only picks the challenge (``_trunk_of``).
        Numbers are claimed by any account, first come, first served, and the called number
        may come from To alone: else an account listing another's number would take, with no
        challenge, the calls a carrier sends to that other account's username."""
        request = tx.request
        value = request.headers.get("Authorization")
        source_ip = tx.source.addr[0]
        called = _called_number(request) if call else None
        if call:
            registered = await self._registered_trunk(request, source_ip)
            if registered is not None:
                if not registered.serves(called):
                    self._reject(tx, 404, "number_not_served")
                    return None
                return registered
        if called is not None:
            routed = await self.directory.find_by_number(called)
            # Decision: the number picks the trunk, never the address alone — a carrier's
            # signalling addresses are shared by all its customers. From any other source the
            # INVITE is challenged like every unknown one (no oracle for which numbers exist),
            # and its credentials, right or wrong, end in the same 403.
            # A registrar that puts the dialled number in the Request-URI instead of our
            # contact user (many carriers do, to the contact's address): the trunk it
            # registered for, from the registrar, answers no challenge either.
            # (Not over UDP when its registration is over TCP/TLS: its registrar's calls come
            # over the connection, and a UDP source address can be forged.)
            if (
                routed is not None
                and (
                    (routed.address_auth and routed.allows_source(source_ip))
                    or (
                        not (routed.registration_streamed and tx.source.transport == "UDP")
                        and await self._from_registrar(routed, source_ip)
                    )
                )
                # Last, so only an INVITE that would be admitted by address pays for it
                and not await self._names_another_trunk(request, routed)
            ):
                return routed
        if value is None:
            self._challenge(tx, await self._trunk_of(request, called))
            return None
        try:
            creds = parse_authorization(value)
        except AuthHeaderError:
            # e.g. an unknown scheme (RFC 4475 regaut01): challenge again
            self._challenge(tx, await self._trunk_of(request, called))
            return None
        trunk = await self.directory.find_by_sip_username(creds.username)

        def ha1(username: str, algorithm: str) -> str | None:
            if trunk is None or trunk.sip_username.lower() != username.lower():
                return None
            if algorithm not in (_algorithms(trunk) or self.auth.algorithms):
                return None  # not offered to it (a downgrade to MD5): like a wrong password
            return trunk.ha1_sha256 if algorithm == "SHA-256" else trunk.ha1_md5

        outcome = self.auth.verify(creds, method=request.method, ha1_lookup=ha1, source=source_ip)
        if outcome.result == AuthResult.UNKNOWN_NONCE:
            # Not a guess (the sender saw no challenge of ours): challenged as if it had no
            # credentials, and not counted toward a ban — such forgeries from a carrier's
            # address would get the carrier banned.
            self._challenge(tx, await self._trunk_of(request, called))
            return None
        right = outcome.result in (AuthResult.OK, AuthResult.REPLAY, AuthResult.STALE)
        if right and trunk is not None and not trunk.allows_source(source_ip):
            # The trunk's allowed_addresses: right credentials from elsewhere get the same
            # 403 as wrong ones (no oracle), are counted, and do not count toward a ban —
            # that is for guessing, and this is usually a carrier's new address. A right answer
            # sent again, or on an expired nonce, too: the stale=true challenge below would
            # tell that it was right.
            self._warn_source_refused(trunk.trunk_id)
            if self.metrics is not None:
                self.metrics.sip_auth_failures.labels(reason="source_not_allowed").inc()
            (self._reject if call else self._refuse)(tx, 403, "source_not_allowed")
            return None
        if outcome.result == AuthResult.OK and trunk is not None:
            if not _same_user(creds.uri, request.uri):
                # RFC 7616 §3.4.6: the digest's uri is what was authorised — credentials
                # computed for another dialled number place no call to this one. Only the
                # user part, when it names one: UAs differ in the host, port and parameters
                # they repeat (SIPp gives sip:host:port). After the source check: from a
                # source not allowed, right credentials get the 403 of wrong ones whatever
                # else is wrong (no oracle).
                (self._reject if call else self._refuse)(
                    tx, 400, "auth_uri_mismatch", reason="Digest URI Mismatch"
                )
                return None
            if self.guard is not None:
                self.guard.record_auth_success(source_ip)
            if call and not trunk.serves(called):
                # Its inbound_numbers: a call to another number (or to none) is not for it.
                self._reject(tx, 404, "number_not_served")
                return None
            return trunk
        if outcome.result in (AuthResult.STALE, AuthResult.REPLAY):
            # A right digest on a nonce that is no longer good — expired, or spent (a qop-less
            # answer reused, a nonce count repeated): the nonce is invalid, the credentials
            # are not, so a fresh nonce with stale=true (RFC 7616 §3.3), no failure counted:
            # the client knows the password, and a captured answer replayed from a forged
            # source must not ban the address it names.
            self._challenge(tx, trunk, stale=True)
            return None
        refuse = self._reject if call else self._refuse
        if outcome.result == AuthResult.MALFORMED:
            refuse(tx, 400, "auth_malformed", reason="Bad Authorization")
            return None
        if self.metrics is not None:
            self.metrics.sip_auth_failures.labels(reason=outcome.result.value.lower()).inc()
        # Counted toward the ban of the address the nonce was sent to, which need not be the
        # source (sip/auth.py): over UDP a forger answering, under a carrier's source, a nonce
        # it fetched from its own address bans its own, and a guesser gains nothing by sending
        # from elsewhere. The 403 carries no fresh challenge, so no retry of it skips admission.
        counted = outcome.issuer or source_ip
        if self.guard is not None and self.guard.record_auth_failure(counted):
            log.warning("banned a SIP source after repeated authentication failures")
        refuse(tx, 403, "auth_failed")
        return None

    async def _names_another_trunk(self, request: Request, routed: TrunkConfig) -> bool:
        """Whether the Request-URI's user is the ``sip_username`` (in any case) of a trunk
        other than ``routed``, the trunk serving the called number.

        Then the number — read from To, or from a Request-URI user that is both a username
        and a number (``14155550100``) — only says what was dialled: the named trunk's own
        ``inbound_numbers`` judge it after its digest, and ``routed`` is not admitted by
        address. A Request-URI carrying the number itself (``+14155550100``, which no
        username can be) or naming no trunk is routed by the number as before — with no
        lookup at all for the former, so number-routed calls pay nothing for this and are
        still taken from a stale cache while the database is down. Otherwise it is one
        lookup served from the directory's cache — the one ``_trunk_of`` makes anyway when
        the INVITE is then challenged.
        """
        user = request.uri.user_unescaped
        name = user.split(";", 1)[0] if user else ""
        if not may_be_sip_username(name):
            return False
        named = await self.directory.find_by_sip_username(name)
        return named is not None and named.trunk_id != routed.trunk_id

    async def _registered_trunk(self, request: Request, source_ip: str) -> TrunkConfig | None:
        """The trunk whose registered contact an INVITE is sent to, when it comes from where
        that trunk's calls may: its ``allowed_addresses`` if it has any, else its registrar's
        addresses. Decision: the carrier learnt the contact from our REGISTER and sends to it
        without answering challenges (a phone's registrar does not expect to be challenged),
        so the random contact user and the source admit the call; from anywhere else the
        INVITE is challenged like every unknown one.

        Keyed on the Request-URI's user being exactly a registration's contact user (80
        random bits that the gateway draws, never an account), and never on the called
        number: so a registration cannot take an INVITE whose Request-URI names another
        trunk's username, and a number in To only has ``serves`` check it against this
        trunk's own ``inbound_numbers``. (A call from its registrar to one of its numbers
        is routed in ``_authenticate``, which lets a named trunk win.)"""
        user = request.uri.user_unescaped
        if not user or not user.startswith(CONTACT_USER_PREFIX):
            return None
        trunk = await self.directory.find_by_contact(user.split(";", 1)[0])
        if trunk is None or not await self._from_registrar(trunk, source_ip):
            return None
        return trunk

    async def _from_registrar(self, trunk: TrunkConfig, source_ip: str) -> bool:
        """True if ``trunk`` has a registration and ``source_ip`` is where its calls come from:
        its ``allowed_addresses`` if it has any, else its registrar's addresses or its outbound
        proxy's (a carrier that has its phones register through a proxy sends their calls
        through it too)."""
        if trunk.registrar_host is None:
            return False
        if trunk.allowed_networks:
            return trunk.allows_source(source_ip)
        source = _unmapped(source_ip)
        if source in await self._addresses_of(trunk.registrar_host):
            return True
        proxy = trunk.registration_proxy_host
        return proxy is not None and source in await self._addresses_of(proxy)

    def _nat_address(self, request: Request, trunk: TrunkConfig) -> tuple[str, int] | None:
        """The address a call to a trunk with a registration gives in its Contact and SDP: the
        one it was sent to (None for other trunks' calls: the configured address).

        The registrar sends a call to the contact it holds — with our contact user or the
        dialled number —, which is the address it saw our REGISTER come from when that was a
        NAT's (calls/registrations.py): so the Request-URI says where the carrier reaches us.
        Read from the request, it holds in every SIP worker process and every instance, which
        know nothing of the front's registrations. Only an IP literal is taken (an address for
        SDP, not a name). Over TCP or TLS it is the registration connection's own address
        behind a NAT, so the registrar's in-dialog requests come back on that connection."""
        uri = request.uri
        if trunk.registrar_host is None:
            return None
        try:
            ipaddress.ip_address(uri.host.strip("[]"))
        except ValueError:
            return None
        return uri.host.lower(), uri.port or 5060

    async def _addresses_of(self, host: str) -> frozenset[str]:
        """Every address ``host``'s SIP servers may send from — its own and its NAPTR/SRV
        targets' (``SipLocator.every_address``) —, kept for a minute; none if nothing
        resolves."""
        now = time.monotonic()
        cached = self._registrar_addresses.get(host)
        if cached is not None and now - cached[0] < 60.0:
            return cached[1]
        found = frozenset(_unmapped(a) for a in await self.locator.every_address(host))
        if len(self._registrar_addresses) > 1000:  # bounded: forget the oldest
            del self._registrar_addresses[next(iter(self._registrar_addresses))]
        self._registrar_addresses[host] = (now, found)
        return found

    def _warn_source_refused(self, trunk_id: str) -> None:
        """A warning per trunk per minute at most: a misconfigured carrier retries every call."""
        now = time.monotonic()
        if now - self._source_refusals_logged.get(trunk_id, -60.0) < 60.0:
            return
        self._source_refusals_logged[trunk_id] = now
        if len(self._source_refusals_logged) > 10_000:  # bounded: forget the oldest
            del self._source_refusals_logged[next(iter(self._source_refusals_logged))]
        log.warning(
            "trunk %s refused a request from a source outside its allowed_addresses "
            "(the metric telepath_sip_auth_failures_total, reason source_not_allowed, counts each)",
            trunk_id,
        )

    def _refuse(self, tx: ServerTransaction, status: int, why: str, **kw: Any) -> None:
        """Answer a request that is not a call with a failure (nothing counted as a call)."""
        self._respond(tx, status, **kw)

    async def _trunk_of(self, request: Request, called: str | None = None) -> TrunkConfig | None:
        """The trunk named by the Request-URI user (a REGISTER's: the To user, its
        address-of-record, §10.2), or else serving the ``called`` number, to choose its
        challenge (None if none)."""
        uri = request.to.uri if request.method == "REGISTER" else request.uri
        user = uri.user_unescaped
        trunk = None
        if user:
            trunk = await self.directory.find_by_sip_username(user.split(";", 1)[0])
        if trunk is None and called is not None:
            trunk = await self.directory.find_by_number(called)
        return trunk

    async def _connect_and_answer(
        self,
        setup: _Setup,
        trunk: TrunkConfig,
        lease: PortLease,
        local_sdp: SessionDescription,
        negotiated: NegotiatedMedia | None,
        session_id: int,
        started: float,
    ) -> None:
        """Connect the agent, answer 200 OK and start the call.

        ``local_sdp`` is our answer, or our offer when ``negotiated`` is None (delayed offer:
        the codec is known only once the ACK's answer is read).
        """
        tx = setup.tx
        request = tx.request
        nat = None if setup.nat is None else f"{setup.nat[0]}:{setup.nat[1]}"
        self._respond(tx, 180, contact_address=nat)
        call_id = new_id("call")
        call_id_var.set(call_id)  # every log line of this call (and its tasks) carries it
        caller = _number(request.from_.uri)
        # The dialled number as routing saw it (Request-URI, else To) — what an agent serving
        # several numbers needs; else the Request-URI's user (the trunk's username).
        called = _called_number(request) or (
            _number(request.uri) if request.uri.user else _number(request.to.uri)
        )
        law: Codec
        if negotiated is None:
            # Call transcodes if the answer picks the other
            law = _agent_law(trunk.codecs or self.config.codecs)
        else:
            law = "pcma" if negotiated.codec.name == "PCMA" else "pcmu"
        meta = CallMetadata(
            call_id=call_id,
            trunk_id=trunk.trunk_id,
            caller=caller or "",
            called=called or "",
            codec=law,
            system_prompt=trunk.system_prompt,
            sip_call_id=_valid_text(request.call_id),
            sip_headers=_forwarded_headers(request, trunk.forward_sip_headers),
        )
        record = CallRecord(
            id=call_id,
            account_id=trunk.account_id,
            trunk_id=trunk.trunk_id,
            from_number=caller,
            to_number=called,
            start_time=datetime.now(UTC),
            ai_provider=trunk.ai_provider,
        )
        if negotiated is not None:
            record.metrics.codec_used = negotiated.codec.name
        bridge = self.bridge_factory(
            trunk.ai_provider, self._provider_config(trunk), self.config.provider_timeout_s
        )
        # A G.722 call to a bridge that takes 16 kHz audio is wideband both ways (the delayed
        # offer's codec is not known yet: G.711 framing then, as before).
        wideband = (
            negotiated is not None and negotiated.codec.name == "G722" and bridge.accepts_wideband
        )
        if wideband:
            meta = dataclasses.replace(meta, wideband=True)
        try:
            await self._bring_up(
                setup,
                trunk,
                lease,
                local_sdp,
                negotiated,
                session_id,
                started,
                record,
                bridge,
                meta,
                law,
            )
        except Exception:
            if call_id not in self.calls:  # else the call owns the bridge, and ends it
                await self._setup_failed(setup, record, bridge)
            raise
        except BaseException:  # cancelled: the gateway is stopping (``drain``)
            if call_id not in self.calls:
                await _close_bridge(bridge, BridgeReason.SHUTDOWN)
            raise

    async def _bring_up(
        self,
        setup: _Setup,
        trunk: TrunkConfig,
        lease: PortLease,
        local_sdp: SessionDescription,
        negotiated: NegotiatedMedia | None,
        session_id: int,
        started: float,
        record: CallRecord,
        bridge: AgentBridge,
        meta: CallMetadata,
        law: Codec,
    ) -> None:
        """Start the agent ``bridge``, answer and start the call (its agent's part of
        :meth:`_connect_and_answer`); until the call owns the bridge, ``_setup_failed`` closes
        it if this raises."""
        tx = setup.tx
        request = tx.request
        call_id = record.id
        wideband = meta.wideband

        def playout() -> int:
            # Looked up, not captured: the bridge holds this function, and a call captured here
            # (which holds the bridge) would be a cycle that outlives the call.
            call = self.calls.get(call_id)
            return call.playout_ms() if call is not None else 0

        connect = asyncio.ensure_future(bridge.start(meta, playout))
        connect.add_done_callback(_retrieve)  # read below, unless this set-up is cancelled
        cancel_wait = asyncio.ensure_future(setup.stopped.wait())
        try:
            await asyncio.wait({connect, cancel_wait}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Neither outlives the wait, whatever ends it (the caller's CANCEL, the trunk's
            # removal, or the drain cancelling this set-up): a connect left running opens a
            # WebSocket nobody closes.
            cancel_wait.cancel()
            connect.cancel()  # (done already: nothing)
            await asyncio.wait({connect, cancel_wait})
        if setup.trunk_gone:  # before the agent answered, or after
            await self._refuse_trunk_gone(tx, bridge, lease)
            return
        if connect.cancelled() or setup.cancelled.is_set():
            # The caller's CANCEL came first, or in the same turn as the connect's end (both
            # done): the INVITE has its 487 (RFC 3261 §9.2), the call ends as cancelled, and a
            # failure to reach the agent is then no one's to hear — no 480, no failed record.
            with contextlib.suppress(Exception):
                await bridge.close()
            lease.release()
            self._count("cancelled_during_setup")
            return
        # Read the failure without raising it here: re-raised in this frame, its traceback
        # would hold this frame, whose ``connect`` holds the failure — a cycle that keeps the
        # whole refused call (record, SDP, bridge) for a full collection (test_call_memory.py).
        exc = connect.exception()
        del connect
        if exc is not None and not isinstance(exc, BridgeError | TelepathError | OSError):
            raise exc
        if exc is not None:
            with contextlib.suppress(Exception):
                await bridge.close()
            lease.release()
            reason = getattr(exc, "reason", None)
            record.status = CallStatus.FAILED
            record.end_time = datetime.now(UTC)
            record.disconnect_reason = DisconnectReason(
                reason.value if reason is not None else "connection_failed"
            )
            record.error_message = str(exc) or type(exc).__name__  # static, key-free texts
            self._reject(tx, 480, "agent_unreachable", headers=[("Retry-After", "10")])
            record.sip_trace = self._trace(request)  # after the 480, so it shows
            await self._record_failed(record)
            return
        if setup.cancelled.is_set() or tx.final_sent:
            with contextlib.suppress(Exception):
                await bridge.close()
            lease.release()
            return
        assert self.server is not None
        core = self.server.core
        server = self.server
        session_version = 1
        if negotiated is not None:
            media = await self._open_media(lease, negotiated, tx)
            if setup.cancelled.is_set() or tx.final_sent:  # a CANCEL while the ports opened
                await media.close()
                with contextlib.suppress(Exception):
                    await bridge.close()
                lease.release()
                self._count("cancelled_during_setup")
                return
            if self.draining:  # the drain began while the ports opened
                await media.close()
                await self._refuse_draining(tx, bridge, lease)
                return
            if setup.trunk_gone:  # the trunk was removed while the ports opened
                await media.close()
                await self._refuse_trunk_gone(tx, bridge, lease)
                return
            dialog = self._accept(setup, local_sdp, record, started)
        else:
            if self.draining:  # the drain began while the agent connected
                await self._refuse_draining(tx, bridge, lease)
                return
            dialog = self._accept(setup, local_sdp, record, started)
            negotiated = await self._answer_in_ack(setup, dialog, local_sdp, record, bridge, lease)
            if negotiated is None:
                return  # ended cleanly: BYE sent, bridge closed, port released, record written
            record.metrics.codec_used = negotiated.codec.name
            media = await self._open_media(lease, negotiated, tx)  # raising: _setup_failed
            # What a session refresh repeats (offerless re-INVITE, §14.2): our offer narrowed
            # to the codec in use, so a refresh cannot switch codec mid-call. It differs from
            # the offer we sent, hence version 2 (RFC 3264 §8).
            session_version = 2
            local_sdp = create_offer(
                local_address=setup.media_address or self.config.media_address,
                local_port=lease.sdp_port,
                rtcp_port=lease.sdp_rtcp_port,
                session_id=session_id,
                session_version=session_version,
                preference=(negotiated.codec.name,),
                srtp_key=None if negotiated.srtp is None else negotiated.srtp.local_key,
                srtp_suite=OFFER_SUITE if negotiated.srtp is None else negotiated.srtp.suite,
            )

        def hangup() -> None:
            server.dispatch(core.hangup(dialog))

        def refer(target: str) -> None:
            server.dispatch(core.refer(dialog, target))

        call = Call(
            record,
            media,
            bridge,
            negotiated,
            hangup_sip=hangup,
            refer_sip=refer,
            on_finished=self._finished,
            hangup_drain_max_s=self.config.hangup_drain_max_s,
            bye_wait_s=self.config.bye_wait_s,
            max_duration_s=self.config.max_call_duration_s,
            agent_law=law,
            wideband=wideband,
            on_transfer_failed=lambda: self._count("transfer_failed"),
        )
        call.invite_at = started
        call.sip_call_id = request.call_id
        call.sip_caller_tag = dialog.remote_tag
        call.session_id = session_id
        self._sent_sdp(call, dialog, local_sdp)
        call.media_address = setup.media_address
        # Weakly: the call's SIP callbacks close over the dialog, and a dialog outlives its
        # call for a while (our BYE's transaction): a strong reference back would keep the
        # whole call alive, then leave it to a full collection (test_call_memory.py).
        dialog.app_data = weakref.ref(call)
        self.calls[call_id] = call
        if setup.sip_end is not None:
            # Delayed offer: the dialog ended (the caller's BYE right after its ACK) while the
            # media opened, when its CallEnded still found the _Setup. The call comes up only
            # to end at once, as that end says — else it talks to nobody until the media
            # timeout. (The record, the agent and the webhooks follow the usual end.)
            _dialog_ended(call, setup.sip_end)
        elif setup.trunk_gone:
            # Removed after its delayed offer's ACK came in, while the media opened: it ends at
            # once, as the trunk's live calls did (``trunk_removed``).
            call.end(DisconnectReason.TRUNK_DELETED, TRUNK_GONE)
        if self.load is not None:
            self.load.answered()
        for digit in setup.digits:  # pressed between our 200 and the call being up
            call.dtmf(digit)
        if self.metrics is not None:
            self.metrics.record_call_started(call_id)
        log.info(
            "call %s answered on trunk %s (%s, %s%s)",
            call_id,
            trunk.trunk_id,
            trunk.ai_provider,
            negotiated.codec.name,
            "" if negotiated.srtp is None else f", SRTP {negotiated.srtp.suite.name}",
        )
        agent_id = {
            "elevenlabs": trunk.elevenlabs_agent_id,
            "openai": trunk.openai_model or self.config.openai_model,
        }.get(trunk.ai_provider)
        # The audio starts now; the record's first write and the start webhooks go beside it,
        # so a database that stalls (a lock, a failover) never holds up a call's media. The
        # call's end waits for them (``_finished``): the end is written and sent after the start.
        self._spawn(call.run())
        announce = asyncio.get_running_loop().create_task(self._announce(record, agent_id))
        self._announcing[call_id] = announce
        self._tasks.add(announce)
        announce.add_done_callback(self._tasks.discard)

    async def _refuse_draining(
        self, tx: ServerTransaction, bridge: AgentBridge, lease: PortLease
    ) -> None:
        """A set-up that completes once the gateway drains is refused like a new INVITE then
        (503 with Retry-After, RFC 3261 §21.5.4), not answered: the drain may already have
        ended the calls it found, and would not end this one. Its agent is told and let go."""
        self._reject(tx, 503, "draining", headers=[("Retry-After", "30")])
        await _close_bridge(bridge, BridgeReason.SHUTDOWN)
        lease.release()

    async def _refuse_trunk_gone(
        self, tx: ServerTransaction, bridge: AgentBridge, lease: PortLease
    ) -> None:
        """A set-up whose trunk was deleted or deactivated before its answer is refused as an
        INVITE to an inactive trunk is (480), not answered (leaked credentials: nothing more
        may go through that trunk); its agent is let go, and no record is written — never
        answered, as a set-up the caller cancelled."""
        if not tx.final_sent:  # (a CANCEL's 487 may have gone first)
            self._reject(tx, 480, "trunk_inactive")
        await _close_bridge(bridge, BridgeReason.TRUNK_DELETED)
        lease.release()

    async def _setup_failed(self, setup: _Setup, record: CallRecord, bridge: AgentBridge) -> None:
        """An unexpected error (a bug: not the agent's unavailability, which is a 480) between
        the agent bridge's creation and the call taking it over: the INVITE is answered 500
        (RFC 3261 §21.5.1) — or, once our 200 went (delayed offer), the call is ended with BYE
        (§15) —, the bridge closed (bounded: it may have connected, and would stay open, pinged,
        for ever) and a ``failed`` record written, reason ``unknown``."""
        assert self.server is not None
        tx = setup.tx
        if setup.dialog is not None:
            self.server.dispatch(self.server.core.hangup(setup.dialog))
        elif not tx.final_sent:
            self._reject(tx, 500, "internal_error")
        await _close_bridge(bridge, BridgeReason.UNKNOWN)
        record.status = CallStatus.FAILED
        record.end_time = datetime.now(UTC)
        record.disconnect_reason = DisconnectReason.UNKNOWN
        record.error_message = "internal error"
        record.sip_trace = self._trace(tx.request)
        if self.metrics is not None and setup.dialog is not None:  # it was answered
            self.metrics.record_call_ended(
                record.id, outcome=DisconnectReason.UNKNOWN.value, setup_ms=record.metrics.setup_ms
            )
        await self._record_failed(record)

    async def _announce(self, record: CallRecord, agent_id: str | None) -> None:
        """A call is up: its record's first write, then ``call.started`` and
        ``agent.connected``."""
        await self._safe(self._recorder_started(record))
        await self._emit(record, "call.started", call_started_payload)
        await self._emit(
            record, "agent.connected", functools.partial(agent_connected_payload, agent_id=agent_id)
        )

    async def _open_media(
        self, lease: PortLease, negotiated: NegotiatedMedia, tx: ServerTransaction
    ) -> MediaSession:
        remote = None
        if negotiated.remote_port:
            remote = (negotiated.remote_address, negotiated.remote_port)
        rtcp = negotiated.rtcp_destination  # a=rtcp (RFC 3605 §2.1), else remote_port + 1
        media = await MediaSession.open(
            lease,
            remote=remote,
            codec=CodecSpec(negotiated.codec.name, negotiated.codec.payload_type),
            dtmf_payload_type=negotiated.dtmf_payload_type,
            # when we offered, the caller sends with our offer's numbers (RFC 3264 §5.1)
            recv_payload_type=negotiated.recv_payload_type,
            recv_dtmf_payload_type=negotiated.recv_dtmf_payload_type,
            srtp=negotiated.srtp,
            signalling_ip=tx.source.addr[0],
            inactivity_timeout_s=self.config.rtp_inactivity_timeout_s,
            jitter_min_ms=self.config.jitter_min_ms,
            jitter_max_ms=self.config.jitter_max_ms,
            rtcp=rtcp,
        )
        if negotiated.on_hold:
            media.hold(True)
        media.expect_inbound(negotiated.may_receive)  # an a=recvonly caller sends nothing
        return media

    def _accept(
        self, setup: _Setup, sdp: SessionDescription, record: CallRecord, started: float
    ) -> Dialog:
        """Send 200 OK with ``sdp`` (our answer or our offer); the call counts as answered."""
        assert self.server is not None
        nat = None if setup.nat is None else f"{setup.nat[0]}:{setup.nat[1]}"
        dialog, outs = self.server.core.accept(setup.tx, sdp.to_bytes(), contact_address=nat)
        dialog.credentials = setup.credentials
        setup.dialog = dialog
        self.server.dispatch(outs)
        record.answer_time = datetime.now(UTC)
        record.metrics.setup_ms = round((asyncio.get_running_loop().time() - started) * 1000)
        return dialog

    async def _answer_in_ack(
        self,
        setup: _Setup,
        dialog: Dialog,
        offer: SessionDescription,
        record: CallRecord,
        bridge: AgentBridge,
        lease: PortLease,
    ) -> NegotiatedMedia | None:
        """Delayed offer: wait for the ACK and read its answer to our offer (RFC 3264 §7).

        The wait is bounded by the SIP core: no ACK within 64*T1 ends the dialog with BYE
        (RFC 3261 §13.3.1.4). When there is no usable answer the call is ended here — BYE,
        bridge closed, port released, a ``failed`` record written — and None is returned.
        """
        assert self.server is not None
        core = self.server.core
        dialog.app_data = setup
        self._awaiting_ack.add(setup)
        try:
            if self.draining:
                setup.shutdown()
            await setup.acked_or_ended.wait()
        except BaseException:
            self.server.dispatch(core.hangup(dialog))  # cancelled while waiting for the ACK
            raise
        finally:
            self._awaiting_ack.discard(setup)
        error: str | None = None
        reason = DisconnectReason.CARRIER_ERROR
        if setup.sip_end == "remote_bye":
            reason = DisconnectReason.CALLER_HANGUP
        elif setup.sip_end is not None:
            error = f"SIP {setup.sip_end}"  # no ACK: the core has already sent BYE
        elif setup.shutting_down and setup.ack_body is None:
            reason = DisconnectReason.SHUTDOWN  # drain: BYE, bridge closed, record written
        elif setup.trunk_gone and setup.ack_body is None:
            reason, error = DisconnectReason.TRUNK_DELETED, TRUNK_GONE  # as the drain's
        elif not setup.ack_body:
            # RFC 3261 §13.2.1: the answer MUST be in the ACK; without one there is no media.
            error = "the ACK carried no SDP answer to our offer"
        else:
            try:
                return negotiate_offer_answer(offer, parse(setup.ack_body))
            except NoCommonCodec as exc:
                error = (
                    "the SDP answer in the ACK gives no unicast IP address for its media"
                    if exc.warn_code == WARN_INCOMPATIBLE_ADDRESS_FORMAT
                    else "the SDP answer in the ACK has no codec in common with our offer"
                )
            except SdpError as exc:
                log.debug("SDP answer in ACK rejected: %s", exc)  # may quote addresses: DEBUG
                error = "the SDP answer in the ACK is malformed"
        # §13.2.2.4: a UAC that cannot use the offer answers and then sends BYE; as the UAS we
        # end such a call the same way.
        log.info("call %s ended before media started: %s", record.id, error or reason.value)
        self._count("delayed_offer_failed")
        sent_bye = setup.sip_end is None
        if sent_bye:
            self.server.dispatch(core.hangup(dialog))
        await _close_bridge(bridge, bridge_reason(reason))  # stop.reason: the record's
        lease.release()
        record.status = CallStatus.FAILED
        record.end_time = datetime.now(UTC)
        record.disconnect_reason = reason
        record.error_message = error
        if sent_bye:  # let the caller answer our BYE, so the record's SIP trace is complete
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await setup.sip_done.wait()
        record.sip_trace = self._trace_of(dialog.call_id, dialog.remote_tag)
        if self.metrics is not None:
            self.metrics.record_call_ended(
                record.id, outcome=reason.value, setup_ms=record.metrics.setup_ms
            )
        await self._record_failed(record)
        return None

    def _on_answer_in_reinvite_ack(self, call: Call, body: bytes) -> None:
        """The answer to the offer in our 2xx to an offerless re-INVITE (RFC 3264 §7, §8), or
        in the 2xx to our own re-INVITE session refresh (which offers the same SDP).

        The offer was the SDP we last sent (one codec), so the answer can move the caller's
        address or put the call on hold, not change the codec. An ACK without a usable answer
        leaves the media as it was (logged and counted): the call goes on.
        """
        try:
            if not body:
                raise SdpError("the ACK carried no answer")  # §13.2.1: it MUST
            negotiated = negotiate_offer_answer(parse(call.answer_sdp), parse(body))
        except (SdpError, NoCommonCodec) as exc:
            self._count("reinvite_answer_ignored")
            log.info("call %s: answer in the re-INVITE ACK not used", call.record.id)
            log.debug("re-INVITE ACK answer rejected: %s", exc)  # may quote addresses: DEBUG
            return
        if negotiated.codec != call.negotiated.codec or not _same_srtp(call, negotiated):
            self._count("reinvite_answer_ignored")
            return
        call.update_media(negotiated)

    def _on_reoffer(self, event: ReofferReceived) -> None:
        assert self.server is not None
        call = _call_of(event.dialog.app_data)
        request = event.request
        if call is None and isinstance(event.dialog.app_data, _Setup):
            # Delayed offer, the call not up yet: our offer in the 200 unanswered (no ACK yet:
            # RFC 3311 §5.2, an UPDATE with an offer gets 491), or answered in the ACK while
            # the media opens. An UPDATE without one (a session refresh) gets 200; a re-INVITE
            # without one 491 too: its 2xx would carry our offer (RFC 3261 §14.2), and no call
            # is there yet to take the answer in its ACK — the UAC asks again later (§14.1).
            offerless_update = request.method == "UPDATE" and not request.body
            self._respond(event.tx, 200 if offerless_update else 491)
            return
        if call is None:
            self._respond(event.tx, 481)
            return
        if not request.body:
            if request.method == "UPDATE":
                # RFC 3311 §5.2, RFC 6337 §2.1: an UPDATE without an offer is answered
                # without SDP (there is no ACK that could carry an answer to ours).
                self._respond(event.tx, 200)
                return
            # RFC 3261 §14.2 (a session refresh, or a PBX resuming the call): our 2xx carries
            # an offer and the caller's answer comes in the ACK (ReinviteAcked). The offer says
            # what we want now, sendrecv, even when the SDP we last sent answered a hold
            # (RFC 6337 §5.1), and the call's stream live again when the caller had disabled
            # it with port 0 (RFC 3264 §8.1, §8.2; create_reoffer).
            call.offer_in_2xx = True
            offer = _our_reoffer(call, parse(call.answer_sdp))
            self._respond(event.tx, 200, body=offer.to_bytes())
            self._sent_sdp(call, event.dialog, offer)
            return
        call.offer_in_2xx = False
        current = call.negotiated.srtp
        # The call keeps its profile: SRTP stays SRTP, with our key (RFC 4568 §7.1.4), and a
        # plain call is not upgraded mid-call.
        security = (
            MediaSecurity(why_not="this call was set up without SRTP")
            if current is None
            else MediaSecurity(key=current.local_key, required=True, suite=current.suite)
        )
        try:
            offer = parse(request.body)
            answer, negotiated = negotiate_reoffer(
                offer,
                current=call.negotiated,
                local_address=call.media_address or self.config.media_address,
                local_port=call.media.local_port,
                rtcp_port=call.media.local_rtcp_port,
                session_id=call.session_id,
                session_version=call.session_version,
                preference=self.config.codecs,
                security=security,
            )
        except NoCommonCodec as exc:
            self._respond(event.tx, 488, headers=[("Warning", exc.warning_header("telepath"))])
            return
        except SdpError:
            self._respond(event.tx, 400, reason="Bad SDP")
            return
        if negotiated.codec != call.negotiated.codec:
            # Changing codec mid-call would need a new media pipeline; keep ours (RFC 3264 §8.3.2
            # lets the answerer keep the current codec when it is still offered).
            self._respond(
                event.tx, 488, headers=[("Warning", '305 telepath "codec change not supported"')]
            )
            return
        if not _same_srtp(call, negotiated):
            # Our key stays for the call, and libsrtp's suite with it (SrtpContext.rekey).
            self._respond(
                event.tx,
                488,
                headers=[("Warning", '302 telepath "SRTP crypto suite change not supported"')],
            )
            return
        if answer.to_bytes() != call.answer_sdp:
            answer.origin.session_version = call.session_version + 1  # RFC 3264 §8
        call.update_media(negotiated)
        self._respond(event.tx, 200, body=answer.to_bytes())
        self._sent_sdp(call, event.dialog, answer)

    @staticmethod
    def _sent_sdp(call: Call, dialog: Dialog, sdp: SessionDescription) -> None:
        """``sdp`` went out in the call's dialog (our answer, or our offer in a 2xx): it is the
        SDP the next one's ``o=`` version counts from (RFC 3264 §8: one more if it differs).

        It also stages what our own re-INVITE session refresh will offer (RFC 4028 §10): not
        ``sdp`` as such — an answer to a hold says ``a=recvonly`` — but what we want now,
        sendrecv (:func:`~telepath.sdp.create_reoffer`, RFC 6337 §5.1), and live even when
        ``sdp`` answered the caller disabling the audio with port 0 (RFC 3264 §8.1, §8.2). The
        SIP core offers the dialog's ``local_sdp``; it sets it to the SDP of each 2xx it sends,
        so this runs after the response. The staged offer counts as sent only once a 2xx
        accepts it (``SessionRefreshed``).
        """
        call.answer_sdp = sdp.to_bytes()
        call.session_version = sdp.origin.session_version
        dialog.local_sdp = _our_reoffer(call, sdp).to_bytes()

    # ---------------------------------------------------------------- records and events

    def _provider_config(self, trunk: TrunkConfig) -> ProviderConfig:
        c = self.config
        if trunk.ai_provider == "openai":
            return OpenAIConfig(
                api_key=trunk.openai_api_key or "",
                model=trunk.openai_model or c.openai_model,
                voice=trunk.openai_voice or "marin",
                realtime_url=c.openai_realtime_url,
            )
        if trunk.ai_provider == "elevenlabs":
            return ElevenLabsConfig(
                api_key=trunk.elevenlabs_api_key,
                agent_id=trunk.elevenlabs_agent_id or "",
                api_base=c.elevenlabs_api_base,
                ws_url=c.elevenlabs_ws_url,
                http=self.http,
            )
        protocol: Literal["telepath", "twilio"] = (
            "twilio" if trunk.custom_protocol == "twilio" else "telepath"
        )
        return CustomConfig(
            endpoint=trunk.custom_endpoint or "",
            protocol=protocol,
            headers=trunk.custom_headers,
            reconnect_s=c.agent_reconnect_s if trunk.custom_reconnect else 0.0,
            allow_insecure=c.allow_insecure_agent_urls,
        )

    def _trace(self, invite: Request) -> str:
        return self._trace_of(invite.call_id, invite.from_.tag or "")

    def _trace_of(self, sip_call_id: str, caller_tag: str) -> str:
        assert self.server is not None
        return self.server.core.pop_trace(sip_call_id, caller_tag)

    async def _finished(self, call: Call, end: CallEnd) -> None:
        record = call.record
        self.calls.pop(record.id, None)
        record.sip_trace = self._trace_of(call.sip_call_id, call.sip_caller_tag)
        log.info("call %s ended: %s", record.id, end.reason.value)
        record.media = self._media_report(call)
        if self.metrics is not None:
            m = record.metrics
            self.metrics.record_call_ended(
                record.id,
                outcome=end.reason.value,
                setup_ms=m.setup_ms,
                packet_loss_percent=m.packet_loss_percent,
                jitter_ms=m.jitter_ms,
            )
            stats = call.media.stats()
            self.metrics.record_rtp_dropped(
                rejected_source=stats.rejected_source,
                unauthenticated=stats.unauthenticated,
                malformed=stats.malformed,
            )
            self.metrics.rtp_send_errors.inc(stats.send_errors)
            if call.agent_reconnects:
                self.metrics.agent_reconnects.inc(call.agent_reconnects)
            for warning in record.media["warnings"]:
                self.metrics.media_warnings.labels(code=warning["code"]).inc()
            self.metrics.gateway_latency_by("caller_to_agent").observe(stats.inbound.p50_us / 1e6)
            self.metrics.gateway_latency_by("agent_to_caller").observe(stats.outbound.p50_us / 1e6)
        announce = self._announcing.pop(record.id, None)
        if announce is not None:
            await asyncio.wait({announce})  # the start first (it never raises: ``_safe``)
        events: list[tuple[str, Callable[[CallRecord], dict[str, Any]]]] = [
            ("agent.disconnected", agent_disconnected_payload)
        ]
        if end.reason in _ERROR_REASONS:
            events.append(("call.error", call_error_payload))
        events.append(("call.ended", call_ended_payload))
        await self._record_end(record, events)

    def _media_report(self, call: Call) -> dict[str, Any]:
        negotiated, media = call.negotiated, call.media
        answered, ended = call.record.answer_time, call.record.end_time or datetime.now(UTC)
        answered_s = 0.0 if answered is None else (ended - answered).total_seconds()
        return media_report(
            media.stats(),
            local=(call.media_address or self.config.media_address, media.local_port),
            remote_sdp=(
                (negotiated.remote_address, negotiated.remote_port)
                if negotiated.remote_port
                else None
            ),
            remote_rtp=media.remote,
            srtp=None if negotiated.srtp is None else negotiated.srtp.suite.name,
            answered_s=answered_s,
            signalling=media.signalling_ip,
        )

    async def _record_failed(self, record: CallRecord) -> None:
        """The end of a call that never came up: ``call.error`` only when something went wrong
        (``_ERROR_REASONS``) — a caller hanging up before the ACK, a shutdown, is none."""
        errored = record.disconnect_reason in _ERROR_REASONS
        await self._record_end(record, [("call.error", call_error_payload)] if errored else [])

    async def _record_end(
        self,
        record: CallRecord,
        events: list[tuple[str, Callable[[CallRecord], dict[str, Any]]]],
    ) -> None:
        """The record's final state and the events that tell of it: one transaction when the
        recorder can (the outbox is durable only if no crash falls between the two)."""
        recorder, sink = self.recorder, self.sink
        if recorder is not None and sink is not None and recorder.queues_events:
            prepared = [
                sink.prepare(record.account_id, event, payload(record))
                for event, payload in events
                if sink.wants(record.account_id, event)
            ]
            await self._safe(recorder.call_ended(record, prepared))
            return
        if recorder is not None:
            await self._safe(recorder.call_ended(record))
        for event, payload in events:
            await self._emit(record, event, payload)

    async def _recorder_started(self, record: CallRecord) -> None:
        if self.recorder is not None:
            await self.recorder.call_started(record)

    async def _emit(
        self, record: CallRecord, event: str, payload: Callable[[CallRecord], dict[str, Any]]
    ) -> None:
        # the payload is built only for an account that may subscribe to the event: most have
        # no endpoint, and a call emits four events
        if self.sink is not None and self.sink.wants(record.account_id, event):
            await self._safe(self.sink.emit(record.account_id, event, payload(record)))

    @staticmethod
    async def _safe(coro: Any) -> None:
        try:
            await coro
        except Exception:
            log.exception("call record or event write failed (the call goes on)")

    def trunk_removed(self, trunk_id: str) -> int:
        """The trunk was deleted or deactivated: end its live calls with BYE and the reason
        ``trunk_deleted`` (e.g. its credentials leaked); returns how many. Its calls still
        being set up are stopped too (``_Setup.trunk_removed``): refused with 480 if not yet
        answered — a call answered once its agent connects would otherwise run on, with the
        recheck off, until the caller hangs up."""
        doomed = [c for c in self.calls.values() if c.record.trunk_id == trunk_id]
        for call in doomed:
            call.end(DisconnectReason.TRUNK_DELETED, TRUNK_GONE)
        setups = [s for s in self._setups.values() if s.trunk_id == trunk_id]
        for setup in setups:
            setup.trunk_removed()
        if doomed or setups:
            log.info(
                "trunk %s removed: ending %d live call(s), stopping %d set-up(s)",
                trunk_id,
                len(doomed),
                len(setups),
            )
        return len(doomed)

    async def recheck_trunks(self) -> int:
        """Ask the directory whether the trunks of the live calls still exist and are active,
        and end the calls of those that are not (:meth:`trunk_removed`); returns how many.

        This reaches a trunk deleted by another process — a second API instance, a gateway-only
        ``telepath serve``, an admin script — which :meth:`trunk_removed` is never told about.
        A directory that cannot answer ends nothing: only a trunk known to be gone does.
        """
        live = {call.record.trunk_id for call in self.calls.values()}
        live.update(s.trunk_id for s in self._setups.values() if s.trunk_id is not None)
        if not live:
            return 0
        try:
            gone = await self.directory.inactive_among(live)
        except Exception as exc:
            self._recheck.failed(exc)  # once per outage, not every round
            return 0
        self._recheck.worked()
        return sum(self.trunk_removed(trunk_id) for trunk_id in gone)

    async def watch_trunks(self, stop: asyncio.Event) -> None:
        """:meth:`recheck_trunks` every ``trunk_recheck_s`` until ``stop`` (0: never)."""
        while self.config.trunk_recheck_s > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.trunk_recheck_s):
                    await stop.wait()
            if stop.is_set():
                return
            await self.recheck_trunks()

    # ---------------------------------------------------------------- shutdown

    async def _tasks_done(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for every call and set-up task, those started meanwhile
        too (a set-up that completes starts its call's)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._tasks and (left := deadline - loop.time()) > 0:
            await asyncio.wait(set(self._tasks), timeout=left)

    async def drain(self, timeout_s: float) -> None:
        """Stop accepting calls (503), let live calls finish for ``timeout_s``, then end them;
        set-ups still running then are cancelled (503), and awaited."""
        self.draining = True
        if timeout_s > 0:
            await self._tasks_done(timeout_s)
        for call in list(self.calls.values()):
            call.end(DisconnectReason.SHUTDOWN)
        for setup in list(self._awaiting_ack):  # answered with our offer, no ACK yet
            setup.shutdown()
        # let the calls close their agents (up to AGENT_CLOSE_S), send BYE, wait for its
        # answer (TELEPATH_SIP_BYE_WAIT_S, up to 32 s, beside the agent's close) and write
        # their records; a call still closing after that is cancelled, which cuts its waits
        # short but not its record and call.ended (Call._close)
        await self._tasks_done(AGENT_CLOSE_S + self.config.bye_wait_s)
        left = list(self._tasks)
        for task in left:
            task.cancel()
        if left:
            log.warning(
                "%d call or set-up task(s) still running %g s after the drain ended them: "
                "cancelled (a call still writes its record)",
                len(left),
                AGENT_CLOSE_S + self.config.bye_wait_s,
            )
            # a cancelled set-up answers 503 and closes its agent's bridge (bounded)
            await asyncio.wait(left, timeout=CANCELLED_WAIT_S + self.config.bye_wait_s)
        await self.lag.stop()
        if self._busy is not None:
            self._busy.close()
            self._busy = None


def _same_user(digest_uri: str, request_uri: SipUri) -> bool:
    """Whether a digest's ``uri`` is for the Request-URI's user: the same user (unescaped), or
    none named — SIPp, for one, answers with ``sip:host:port`` whatever the Request-URI."""
    try:
        user = parse_uri(digest_uri).user_unescaped
    except SipParseError:
        return True  # not a SIP URI (a tel: one, say): no user of ours to compare
    return user is None or user == request_uri.user_unescaped


def _algorithms(trunk: TrunkConfig | None) -> tuple[Algorithm, ...] | None:
    if trunk is None or not trunk.digest_algorithms:
        return None
    chosen = tuple(a for a in trunk.digest_algorithms if a in ("SHA-256", "MD5"))
    return cast(tuple[Algorithm, ...], chosen) or None


def _agent_law(codecs: tuple[str, ...]) -> Codec:
    """The law to start an agent bridge in before the caller has chosen a codec: that of our
    first G.711 codec (a G.722 call is transcoded anyway), μ-law when there is none."""
    for name in codecs:
        if name in ("PCMU", "PCMA"):
            return "pcma" if name == "PCMA" else "pcmu"
    return "pcmu"


def _our_reoffer(call: Call, last_sent: SessionDescription) -> SessionDescription:
    """Our offer in the call's dialog (:func:`~telepath.sdp.create_reoffer`) from the SDP we
    last sent: a disabled audio stream comes back live with the call's codec, keys and RTP
    ports (RFC 3264 §8.1), so the caller's answer can resume the media."""
    return create_reoffer(
        last_sent,
        current=call.negotiated,
        local_port=call.media.local_port,
        rtcp_port=call.media.local_rtcp_port,
    )


def _same_srtp(call: Call, negotiated: NegotiatedMedia) -> bool:
    """A later offer/answer kept the call's media profile: plain RTP, or SRTP with our key and
    the suite unchanged (the peer's key may change: ``Call.update_media`` takes it)."""
    before, after = call.negotiated.srtp, negotiated.srtp
    if before is None or after is None:
        return before is after
    return before.suite == after.suite and before.local_key == after.local_key


# The reasons a call.error tells of (docs/webhooks.md): the agent unreachable or failing, the
# call's process dead. Every other end — hang-ups, transfers, limits, shutdown — is none.
_ERROR_REASONS = frozenset(
    {DisconnectReason.CONNECTION_FAILED, DisconnectReason.AI_PROVIDER_ERROR, DisconnectReason.LOST}
)

# Why the SIP dialog of a call that is up ended, as the call's disconnect reason.
_SIP_END_REASONS: dict[CallEndReason, DisconnectReason] = {
    "remote_bye": DisconnectReason.CALLER_HANGUP,
    "ack_timeout": DisconnectReason.CARRIER_ERROR,
    "session_expired": DisconnectReason.CARRIER_ERROR,
    "refresh_failed": DisconnectReason.CARRIER_ERROR,
    "bye_failed": DisconnectReason.CARRIER_ERROR,
}


def _dialog_ended(call: Call, why: CallEndReason) -> None:
    """The call's SIP dialog is over (``CallEnded``): end the call with the reason, and no
    BYE of ours — the dialog it would go in is gone (RFC 3261 §15.1.2)."""
    call.sip_ended()
    reason = _SIP_END_REASONS.get(why)
    if reason is not None:
        call.sip_hangup(reason, None if why == "remote_bye" else f"SIP {why}")


def _retrieve(task: asyncio.Future[None]) -> None:
    """Mark a task's failure as seen (it is read where it matters, or does not)."""
    if not task.cancelled():
        task.exception()


async def _close_bridge(bridge: AgentBridge, reason: BridgeReason) -> None:
    """Close an agent bridge no call owns, bounded; its failure is not the caller's."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(5):  # not wait_for: no task for this
            await bridge.close(reason)


def _valid_text(text: str) -> str:
    """Header text as valid Unicode: bytes that were not UTF-8, which the parser keeps as
    surrogate escapes, become U+FFFD — an agent's JSON (or any UTF-8) cannot carry them."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _call_of(data: object) -> Call | None:
    """The call a dialog's ``app_data`` refers to (weakly), if it is still alive."""
    if isinstance(data, weakref.ref):
        data = data()
    return data if isinstance(data, Call) else None


def _expires(text: str | None, default: int) -> int | None:
    """An Expires header or ``expires`` parameter (§20.19: delta-seconds), ``default`` when
    absent, None when malformed."""
    if text is None:
        return default
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 10:
        return None
    return int(text)


def _http_date() -> str:
    """Now as a SIP ``Date`` value (§20.17: RFC 1123 form, GMT)."""
    return email.utils.formatdate(usegmt=True)


#: A forwarded header's value is cut to this many characters.
FORWARDED_HEADER_MAX = 1024


def _forwarded_headers(request: Request, names: tuple[str, ...]) -> dict[str, str]:
    """The trunk's ``forward_sip_headers`` present in ``request``, by the configured name: the
    first value of each, control characters dropped, at most ``FORWARDED_HEADER_MAX`` long."""
    found: dict[str, str] = {}
    for name in names:
        value = request.headers.get(name)
        if value is not None:
            clean = "".join(c for c in value if c.isprintable())[:FORWARDED_HEADER_MAX]
            found[name] = clean.strip()
    return found


# A trunk's media_encryption, in TELEPATH_SIP_SRTP's words.
_SRTP_MODES = {"allowed": "allow", "required": "require", "disabled": "off"}


def _unmapped(ip: str) -> str:
    """An IPv4-mapped IPv6 address as its IPv4 address; any other as it is."""
    return ip[7:] if ip.startswith("::ffff:") and "." in ip else ip


def _caller_number(request: Request) -> str | None:
    """The E.164 number calling (the From URI's user), or None (anonymous, not a number)."""
    try:
        return number_of(request.from_.uri)
    except SipParseError:
        return None


def _called_number(request: Request) -> str | None:
    """The E.164 number an INVITE calls: the Request-URI's user part, or else the To URI's
    (a carrier sending to ``sip:<username>@host`` may name the dialled number only in To)."""
    try:
        return number_of(request.uri) or number_of(request.to.uri)
    except SipParseError:  # a To the transaction layer let through but that does not parse
        return number_of(request.uri)


def _number(uri: SipUri) -> str | None:
    """The user part as the canonical E.164 number that admission and routing see (so
    ``+1-415-555-0100`` is recorded as ``+14155550100``, which ``allowed_caller_numbers``
    matched), else the user part as sent, parameters dropped (a national ``020…``, a name:
    §19.1.6)."""
    user = uri.user_unescaped
    if not user:
        return None
    return canonical_number(user) or user.split(";", 1)[0]
