"""The UAS core (RFC 3261 §8.2, §12, §13.3, §15, §16-less): requests in, responses and call
events out. Pure: the transport feeds bytes and time, and sends what comes back.

What the core decides on its own: transaction matching and retransmissions, 100 Trying, CANCEL
(§9.2) and a BYE on the early dialog of our 1xx (§15.1.2), in-dialog routing and CSeq checks
(§12.2.2), BYE, OPTIONS, INFO DTMF, Max-Forwards, ``Require`` (§8.2.2.3), RFC 4028 session
timers and 405/481 answers. What it hands to the application (call control) as events: a new
INVITE (authenticate, route, answer or reject), a REGISTER (authenticate and answer, §10.3),
re-offers (re-INVITE/UPDATE, to be answered with SDP), call confirmation and ends, DTMF, and
the progress of a transfer we asked for.

Session timers (RFC 4028): the caller refreshes unless it asks us to (``refresher=uas``) or
cannot (no ``Supported: timer`` behind a proxy that asked for a timer); then we refresh at half
the interval with an UPDATE when the caller's Allow lists it, else with a re-INVITE repeating
our last SDP, and send BYE when a refresh times out or gets 408/481 (§10).

Decision (documented in the README): requests we send inside a dialog (BYE, REFER, UPDATE) go to
the address the carrier's INVITE came from (the same connection on TCP/TLS), while their
Request-URI and Route headers follow §12.2.1.1. Carriers send from their SBC and often put
private or unresolvable addresses in Contact, so symmetric signalling is what works behind NAT.
"""

from __future__ import annotations

import hmac
import re
import secrets
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from telepath.clock import Clock
from telepath.sip.client_auth import Challenge, answer, answer_challenge
from telepath.sip.dialog import Dialog, DialogState, request_target
from telepath.sip.errors import SipParseError
from telepath.sip.headers import (
    SubscriptionState,
    parse_name_addr,
    parse_subscription_state,
    parse_via,
)
from telepath.sip.message import Headers, Request, Response, make_response
from telepath.sip.parser import parse_message
from telepath.sip.session_timer import (
    Timer,
    after_refresh,
    expiry_margin,
    min_se_of,
    negotiate_as_uas,
    refresh_at,
    refresh_headers,
    response_headers,
    too_short,
)
from telepath.sip.timers import SipTimers, TimerQueue
from telepath.sip.transaction import (
    MAGIC_COOKIE,
    ClientTransaction,
    InviteClientTransaction,
    ServerTransaction,
    Source,
    TxState,
    server_key,
)
from telepath.sip.ua_events import (
    CallConfirmed,
    CallEnded,
    CallEndReason,
    DtmfInfo,
    Event,
    InviteCancelled,
    InviteReceived,
    Output,
    ReferUpdate,
    RegisterReceived,
    ReinviteAcked,
    ReofferReceived,
    RequestAnswered,
    Send,
    SessionRefreshed,
)
from telepath.sip.uri import transfer_target

__all__ = [
    "ALLOW",
    "SUPPORTED",
    "CallConfirmed",
    "CallEndReason",
    "CallEnded",
    "DtmfInfo",
    "Event",
    "InviteCancelled",
    "InviteReceived",
    "Output",
    "ReferUpdate",
    "RegisterReceived",
    "ReinviteAcked",
    "RequestAnswered",
    "ReofferReceived",
    "Send",
    "SessionRefreshed",
    "UaConfig",
    "UserAgentCore",
    "new_branch",
    "new_tag",
    "redact_trace",
]

#: Methods counted by name in metrics; anything else is "OTHER" (bounded label cardinality).
KNOWN_METHODS = frozenset(
    {
        "INVITE",
        "ACK",
        "BYE",
        "CANCEL",
        "OPTIONS",
        "INFO",
        "UPDATE",
        "NOTIFY",
        "REFER",
        "PRACK",
        "REGISTER",
        "SUBSCRIBE",
        "MESSAGE",
        "PUBLISH",
    }
)
ALLOW = ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "INFO", "UPDATE", "NOTIFY", "REGISTER")
# Methods a SIP element may know of (RFC 3261 and its extensions): 405 Method Not Allowed for
# these when not in ALLOW; any other is 501 Not Implemented (§21.5.2).
_KNOWN_METHODS = frozenset((*ALLOW, "PRACK", "REFER", "SUBSCRIBE", "PUBLISH", "MESSAGE"))
SUPPORTED = ("timer",)
_TRACE_LIMIT_MESSAGES = 64
# Challenges answered per in-dialog request of ours, stale ones included (a proxy's and the
# server's, each once stale, fit); a peer cannot keep us resending.
_MAX_CHALLENGES_ANSWERED = 4
_TRACE_LIMIT_CALLS = 4096
# Every parseable request is traced (challenged INVITEs, anyone's OPTIONS): the call and message
# caps alone allowed 4096 x 64 x 4 KiB (~1 GiB) of traces under a flood.
_TRACE_BUDGET_BYTES = 64 * 1024 * 1024
# the header's value with its continuation lines (§7.3.1 folding: CRLF then SP or HTAB)
_REDACT = re.compile(r"(?im)^((?:proxy-)?authorization[ \t]*:[ \t]*)(.*(?:\r?\n[ \t].*)*)$")
# RFC 4568 §9.1: a=crypto:<tag> <suite> inline:<key||salt>[|lifetime][|MKI:len][;inline:...]
_REDACT_SDES = re.compile(r"(?i)(inline:)[A-Za-z0-9+/=]+")
# RFC 3261 §19.1.1: sip:user:password@host (NOT RECOMMENDED, allowed): a transfer target's, a
# PBX's Contact. A host's port is followed by ;, > or the end, never by @.
_URI_PASSWORD = r"(sips?:[^:@\s<>;,\"]+:)[^@\s<>;,\"]*(@)"
_REDACT_URI_PASSWORD = re.compile("(?i)" + _URI_PASSWORD)
_HAS_URI_PASSWORD = re.compile(_URI_PASSWORD.encode())  # on the lower-cased message
# Extension headers that carry credentials by their name (X-Api-Key, X-Auth-Token, …):
# their values, whole (folded lines too); not the challenges (WWW-/Proxy-Authenticate,
# Authentication-Info: a realm and a nonce, what a trace of a failed login is read for)
_CREDENTIAL_WORDS = (b"key", b"token", b"secret", b"passw", b"auth", b"credential", b"cookie")
_REDACT_CREDENTIAL_HEADER = re.compile(
    r"(?im)^((?!(?:proxy-)?authorization[ \t]*:)(?!(?:proxy-|www-)?authenticat)[!-9;-~]*"
    r"(?:key|token|secret|passw|auth|credential|cookie)[!-9;-~]*[ \t]*:[ \t]*)"
    r"(.*(?:\r?\n[ \t].*)*)$"
)
_DTMF_RELAY_SIGNAL = re.compile(r"(?im)^signal[ \t]*=[ \t]*([^ \t\r\n]+)[ \t\r]*$")
_DTMF_RELAY_DURATION = re.compile(r"(?im)^duration[ \t]*=[ \t]*([0-9]{1,6})")
_SIPFRAG_STATUS = re.compile(r"SIP/2\.0[ \t]+([1-6][0-9]{2})")
_EVENT_CODES = "0123456789*#ABCD"  # RFC 4733 §3.2: events 0-15 are these keys
# A DTMF INFO's signal: an RFC 4733 event code (8 bits), a key in either case, or "!" (a flash,
# as Asterisk writes it in application/dtmf-relay)
_DTMF_SIGNAL = re.compile(r"[0-9]{1,3}|[0-9A-Da-d*#!]")
_MAX_EVENT_CODE = 255


@dataclass(frozen=True)
class UaConfig:
    """Static settings of the UA core."""

    contact_host: str = "127.0.0.1"
    contact_ports: dict[str, int] = field(default_factory=lambda: {"UDP": 5060, "TCP": 5060})
    user_agent: str = "Telepath"
    timers: SipTimers = field(default_factory=SipTimers)
    min_se: int = 90  # RFC 4028 §4 default Min-SE
    session_expires: int = 1800  # what we ask for when the UAC supports timers
    # All SIP traces kept at once (calls not yet popped): past it, the oldest calls' go
    trace_budget_bytes: int = _TRACE_BUDGET_BYTES


def new_tag() -> str:
    """A random tag (§19.3: at least 32 bits of randomness)."""
    return secrets.token_hex(8)


def new_branch() -> str:
    """A branch with the RFC 3261 magic cookie (§8.1.1.7)."""
    return MAGIC_COOKIE + secrets.token_hex(10)


def redact_trace(text: str) -> str:
    """Remove digest credentials, SRTP master keys, URI passwords and the values of headers
    named for credentials (``X-Api-Key``, ``X-Auth-Token``…) from a SIP trace (usernames are
    kept; responses, keys, passwords and tokens are not)."""
    text = _REDACT.sub(lambda m: m.group(1) + "Digest <redacted>", text)
    text = _REDACT_CREDENTIAL_HEADER.sub(r"\1<redacted>", text)
    text = _REDACT_URI_PASSWORD.sub(r"\1<redacted>\2", text)
    return _REDACT_SDES.sub(r"\1<redacted>", text)


#: Headers :meth:`UserAgentCore._in_dialog_request` writes itself (§12.2.1.1), left out when a
#: challenged request is rebuilt; Content-Length follows the body.
_REBUILT_IN_DIALOG = frozenset(
    {"via", "max-forwards", "from", "to", "call-id", "cseq", "route", "content-length"}
)


def _accepting() -> str | None:
    """:attr:`UserAgentCore.refusing` with no application: new INVITEs are not refused."""
    return None


class UserAgentCore:
    """All SIP state of the gateway: transactions, dialogs and timers."""

    def __init__(
        self,
        config: UaConfig,
        clock: Clock,
        *,
        on_request: Callable[[str], None] | None = None,
        on_response: Callable[[int], None] | None = None,
    ) -> None:
        self.config = config
        # Observers for metrics: method of every request received, status of every response sent.
        self._observe_request = on_request
        self._observe_response = on_response
        self.clock = clock
        #: Whether the application refuses every new INVITE at once now (draining, full): the
        #: Retry-After of its 503, else None. OPTIONS outside a dialog gets that 503 too: its
        #: answer MUST be the one an INVITE would get (RFC 3261 §11.2). Inside a dialog it is
        #: answered as the dialog's re-INVITE would be: 200.
        self.refusing: Callable[[], str | None] = _accepting
        self.sip_timers = config.timers
        self.timers = TimerQueue()
        self.counters: Counter[str] = Counter()
        self._server_txs: dict[tuple[str, ...], ServerTransaction] = {}
        self._client_txs: dict[tuple[str, str], ClientTransaction] = {}
        self._client_tx_dialog: dict[ClientTransaction, Dialog] = {}
        # The challenges answered on the way to each in-dialog client transaction: how many,
        # and by header the last answered with the nonce count it was sent with.
        self._challenges_answered: dict[
            ClientTransaction, tuple[int, dict[str, tuple[Challenge, int]]]
        ] = {}
        self._standalone: set[ClientTransaction] = set()  # send_request's (outbound REGISTER)
        self._dialogs: dict[tuple[str, str, str], Dialog] = {}
        # Traces by (Call-ID, the caller's tag): a Call-ID is only as unique as the carrier
        # makes it, and anyone can send one; the caller's tag makes it one caller's dialog.
        self._traces: OrderedDict[tuple[str, str], list[str]] = OrderedDict()
        self.trace_bytes = 0  # the size of what _traces holds (characters, ~bytes)
        self._closed_traces: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._out: list[Output] = []
        self._pending_bye: set[Dialog] = set()
        self._tag_key = secrets.token_bytes(16)
        # ACKs for non-2xx finals that do not match by branch (seen from SIPp): Call-ID, From
        # tag, CSeq number and our To tag identify the INVITE transaction (RFC 2543 style).
        self._ack_fallback: dict[tuple[str, str, int, str], ServerTransaction] = {}
        # INVITE server transactions by (Call-ID, From tag, CSeq): merged requests (§8.2.2.2)
        self._invites: dict[tuple[str, str, int], ServerTransaction] = {}
        # Early dialogs (§12.1.1: a 1xx with our To tag) by dialog id, each its INVITE's server
        # transaction: the caller may end one with BYE (§15), which matches no dialog yet.
        self._early: dict[tuple[str, str, str], ServerTransaction] = {}

    # ---------------------------------------------------------------- transport-facing API

    def receive(self, data: bytes, source: Source) -> list[Output]:
        """Feed one datagram or framed stream message from ``source``."""
        try:
            message = parse_message(data)
        except SipParseError as exc:
            if not data.strip(b"\r\n"):  # a CRLF keep-alive (RFC 5626 §3.5.1, and on UDP)
                self.counters["keepalives"] += 1
                return self._take()
            self.counters["parse_errors"] += 1
            self._answer_parse_error(exc, source)
            return self._take()
        if isinstance(message, Response):
            self.counters[f"response_in_{message.status}"] += 1
            self._on_response(message)
        else:
            # any token is a method (§25.1): made-up ones share one key, or a flood of them
            # would grow the counters without bound
            method = message.method if message.method in KNOWN_METHODS else "OTHER"
            self.counters[f"request_{method}"] += 1
            if self._observe_request is not None:
                self._observe_request(method)
            self._trace(message.call_id, _from_tag(message), data, "in", source)
            _stamp_received(message, source)
            self._on_request(message, source)
        return self._take()

    def reject(
        self, data: bytes, source: Source, status: int, headers: list[tuple[str, str]]
    ) -> list[Output]:
        """Answer the request in ``data`` with ``status`` without handling it, statelessly
        (RFC 3261 §8.2.7): the transport's answer to a request it does not let in (a
        rate-limited INVITE over a stream, ``defence.py``). No transaction, no trace; what is
        not a request (or is an ACK, or cannot be parsed) gets nothing."""
        try:
            request = parse_message(data)
            if not isinstance(request, Request) or request.method == "ACK":
                return []
            _stamp_received(request, source)  # §18.2.1
            response = make_response(
                request, status, to_tag=new_tag(), headers=self._common(list(headers))
            )
        except SipParseError:
            return []
        self.send_bytes(response.to_bytes(), source)
        if self._observe_response is not None:
            self._observe_response(status)
        return self._take()

    def transport_failed(self, data: bytes) -> list[Output]:
        """The transport could not send ``data``: no connection to its next hop could be
        opened (a dialog's connection was gone and so is its peer). RFC 3261 §17.1.4: the
        client transaction of a request learns it at once and ends, its TU told as for a
        timeout (§8.1.3.1) — a BYE still ends the dialog, a REFER fails, a session refresh
        fails — instead of waiting out Timer F (32 s) for an answer that cannot come. A
        response's server transaction just lives out its timers (§17.2.4 leaves nothing
        better to do); an ACK has no transaction."""
        try:
            message = parse_message(data)
            if not isinstance(message, Request) or message.method == "ACK":
                return self._take()
            key = (message.top_via.branch or "", message.method)
        except SipParseError:
            return self._take()
        tx = self._client_txs.get(key)
        if tx is not None and tx.transport_failed():
            self.counters["client_tx_transport_errors"] += 1
        return self._take()

    def poll(self) -> list[Output]:
        """Fire the timers due now."""
        self.timers.fire_due(self.clock.now())
        return self._take()

    def next_deadline(self) -> float | None:
        """When :meth:`poll` should next be called (monotonic seconds), or None."""
        return self.timers.next_deadline()

    @property
    def dialog_count(self) -> int:
        """Live dialogs."""
        return len(self._dialogs)

    def uses_connection(self, conn: int) -> bool:
        """Whether a call signals over stream connection ``conn``: a live dialog's (where its
        INVITE came from, and where its in-dialog requests go), or a request the peer sent on
        it still being answered (an INVITE ringing while its agent connects has no dialog yet,
        and its 200 OK goes back on the connection, RFC 3261 §18.2.2)."""
        return any(dialog.source.conn == conn for dialog in self._dialogs.values()) or any(
            tx.source.conn == conn for tx in self._server_txs.values()
        )

    @property
    def transaction_count(self) -> int:
        """Live server and client transactions."""
        return len(self._server_txs) + len(self._client_txs)

    def pop_trace(self, call_id: str, caller_tag: str) -> str:
        """The SIP messages of one caller's call so far, credentials redacted, then forgotten.

        ``caller_tag`` is the caller's From tag (our dialog's remote tag): messages of another
        caller's call with the same Call-ID, or anyone's OPTIONS reusing it, are not in it.
        """
        key = (call_id, caller_tag)
        # Late retransmissions of a finished call must not start a new trace entry.
        self._closed_traces[key] = None
        if len(self._closed_traces) > _TRACE_LIMIT_CALLS:
            self._closed_traces.popitem(last=False)
        trace = self._traces.pop(key, [])
        self.trace_bytes -= sum(map(len, trace))
        return "\n".join(trace)  # each message redacted as traced

    # ---------------------------------------------------------------- application API

    def respond(
        self,
        tx: ServerTransaction,
        status: int,
        reason: str | None = None,
        *,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        contact_address: str | None = None,
    ) -> list[Output]:
        """Answer a server transaction (a rejection, a provisional, or a re-offer's answer).
        ``contact_address`` (``host:port``) goes in the Contact of a provisional response
        that makes an early dialog (the address a NAT gives us, as for :meth:`accept`)."""
        self._respond(
            tx, status, reason, headers=headers, body=body, contact_address=contact_address
        )
        return self._take()

    def _respond(
        self,
        tx: ServerTransaction,
        status: int,
        reason: str | None = None,
        *,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        contact_address: str | None = None,
    ) -> None:
        if tx.final_sent:
            # §17.2.1: discarded — e.g. the 180 of a call set-up a CANCEL already answered
            self.counters["late_responses_discarded"] += 1
            return
        extra = list(headers or [])
        if body and not any(k.lower() == "content-type" for k, _ in extra):
            extra.append(("Content-Type", "application/sdp"))
        dialog = self._dialog_of(tx.request)
        refresh = (
            dialog is not None
            and 200 <= status < 300
            and tx.request.method in ("INVITE", "UPDATE")
            and dialog.state == DialogState.CONFIRMED
        )
        if dialog is not None and 200 <= status < 300:
            # §12.1.1: per dialog
            extra = self._with_contact(extra, tx.source, dialog.secure, dialog.contact_address)
        if refresh:
            assert dialog is not None
            extra += self._renegotiate(dialog, tx.request, body)
            contacts = tx.request.headers.get_all("Contact")
            if contacts:  # §12.2.2: an accepted target refresh request moves the target
                dialog.remote_target = parse_name_addr(contacts[0]).uri
        to_tag = tx.to_tag
        if to_tag is None and status > 100:
            to_tag = tx.to_tag = self._tag_for(tx.request)
        if tx.is_invite and 100 < status < 200 and dialog is None:
            # an early dialog's (§12.1.1): the Record-Route copied, and a Contact (MUST)
            extra = _record_route(tx.request) + self._with_contact(
                extra, tx.source, _secure(tx.request), contact_address
            )
            assert to_tag is not None
            self._early[(tx.request.call_id, to_tag, _from_tag(tx.request))] = tx
        response = make_response(
            tx.request, status, reason, to_tag=to_tag, headers=self._common(extra), body=body
        )
        self._trace(tx.request.call_id, _from_tag(tx.request), response.to_bytes(), "out")
        tx.respond(response, self.clock.now())
        if self._observe_response is not None:
            self._observe_response(status)
        if tx.is_invite and status >= 300 and to_tag is not None:
            self._ack_fallback[_ack_key(tx.request, to_tag)] = tx
        if dialog is not None and status >= 200 and tx.request.method in ("INVITE", "UPDATE"):
            dialog.reoffer_pending = False
        if dialog is not None and tx.is_invite and 200 <= status < 300:
            self._start_2xx_retransmission(dialog, response, tx.request.cseq.seq)
        if refresh:
            assert dialog is not None
            self._arm_session_timer(dialog)  # §10: a 2xx to a re-INVITE/UPDATE is a refresh

    def accept(
        self,
        tx: ServerTransaction,
        body: bytes,
        *,
        headers: list[tuple[str, str]] | None = None,
        contact_address: str | None = None,
    ) -> tuple[Dialog, list[Output]]:
        """Answer a new INVITE with 200 OK and ``body``; create the dialog.

        ``contact_address`` (``host:port``) replaces the configured contact address in our
        Contact for the dialog's life (the address a NAT gives us, as the carrier knows it).

        ``body`` is the SDP answer, or our offer when the INVITE had none (§13.2.1); the
        caller's answer then arrives as :attr:`CallConfirmed.body`. Retransmissions of the
        2xx (§13.3.1.4) repeat the same bytes, so every copy carries the same offer."""
        if tx.final_sent:  # a CANCEL's 487 (or another answer) went first: check before
            raise ValueError("the INVITE was already answered")
        request = tx.request
        local_tag = tx.to_tag or self._tag_for(request)
        tx.to_tag = local_tag
        contacts = request.headers.get_all("Contact")
        remote_target = parse_name_addr(contacts[0]).uri if contacts else request.from_.uri
        dialog = Dialog(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=request.from_.tag or "",
            local_uri=f"{request.headers.get('To')};tag={local_tag}",
            remote_uri=request.headers.get("From") or "",
            remote_target=remote_target,
            route_set=request.headers.get_all("Record-Route"),
            remote_cseq=request.cseq.seq,
            source=tx.source,
            invite_cseq=request.cseq.seq,
            secure=_secure(request),
            contact_address=contact_address,
        )
        dialog.session_timer = negotiate_as_uas(
            request, min_se=self.config.min_se, default_interval=self.config.session_expires
        )
        dialog.peer_allows_update = _allows(request, "UPDATE")
        dialog.local_sdp = body
        self._dialogs[dialog.key] = dialog
        extra = _record_route(request) + self._with_contact(
            list(headers or []), tx.source, dialog.secure, dialog.contact_address
        )
        if dialog.session_timer is not None:
            extra += response_headers(dialog.session_timer)
        extra.append(("Content-Type", "application/sdp"))
        response = make_response(
            request, 200, to_tag=local_tag, headers=self._common(extra), body=body
        )
        self._trace(request.call_id, _from_tag(request), response.to_bytes(), "out")
        tx.respond(response, self.clock.now())
        if self._observe_response is not None:
            self._observe_response(200)
        self._start_2xx_retransmission(dialog, response, request.cseq.seq)
        self._arm_session_timer(dialog)
        return dialog, self._take()

    def hangup(self, dialog: Dialog) -> list[Output]:
        """Send BYE (§15.1.1); deferred until the ACK when our 2xx is not yet acknowledged."""
        self._hangup(dialog)
        return self._take()

    def _hangup(self, dialog: Dialog) -> None:
        if dialog.state != DialogState.CONFIRMED:
            return
        if not dialog.acked:
            self._pending_bye.add(dialog)  # §15: no BYE before the ACK or its timeout
            return
        dialog.state = DialogState.TERMINATING
        self._send_in_dialog(dialog, "BYE")

    def send_request(self, request: Request, dest: Source) -> list[Output]:
        """Send ``request`` outside any dialog (an outbound REGISTER, RFC 3261 §10.2) in a new
        non-INVITE client transaction (§17.1.2); its final answer, or its timeout, comes back
        as :class:`RequestAnswered`. The caller builds the whole request, Via included."""
        tx = ClientTransaction(self, request, dest, self.clock.now())
        self._client_txs[(tx.branch, request.method)] = tx
        self._standalone.add(tx)
        return self._take()

    def refer(self, dialog: Dialog, target: str) -> list[Output]:
        """Ask the carrier to transfer the caller to ``target`` (RFC 3515).

        Raises:
            ValueError: ``target`` is no sip, sips or tel URI (:func:`transfer_target`: the
                agent chose it; nothing is sent).
        """
        try:
            transfer_target(target)
        except SipParseError:
            raise ValueError("not a transfer target: a sip, sips or tel URI") from None
        if dialog.state == DialogState.CONFIRMED:
            local = parse_name_addr(dialog.local_uri)
            self._send_in_dialog(
                dialog,
                "REFER",
                [("Refer-To", f"<{target}>"), ("Referred-By", f"<{local.uri}>")],
                contact=True,
            )
        return self._take()

    # ---------------------------------------------------------------- TransactionUser

    def send_bytes(self, data: bytes, dest: Source) -> None:
        """Queue bytes for the transport."""
        self._out.append(Send(data, dest))

    def transaction_ended(self, tx: ServerTransaction | ClientTransaction, timed_out: bool) -> None:
        """Forget a finished transaction; a timed-out BYE still ends the dialog."""
        if isinstance(tx, ServerTransaction):
            if self._server_txs.get(tx.key) is tx:
                del self._server_txs[tx.key]
            if tx.is_invite and tx.to_tag is not None:
                self._ack_fallback.pop(_ack_key(tx.request, tx.to_tag), None)
            if tx.is_invite and self._invites.get(_merge_key(tx.request)) is tx:
                del self._invites[_merge_key(tx.request)]
            if tx.is_invite and tx.to_tag is not None:
                # only its own: every INVITE of a call has the same To tag (``_tag_for``), and
                # a challenged one ends after the authenticated one rang
                early = (tx.request.call_id, tx.to_tag, _from_tag(tx.request))
                if self._early.get(early) is tx:
                    del self._early[early]
            return
        self._client_txs.pop((tx.branch, tx.request.method), None)
        if tx in self._standalone:
            self._standalone.discard(tx)
            if timed_out:
                self.counters["client_tx_timeouts"] += 1
                self._out.append(RequestAnswered(tx.request, None))
            return
        dialog = self._client_tx_dialog.pop(tx, None)
        self._challenges_answered.pop(tx, None)
        if timed_out:
            self.counters["client_tx_timeouts"] += 1
            if dialog is not None and tx.request.method == "BYE":
                self._end_dialog(dialog, "bye_failed")
            elif dialog is not None and tx.request.method == "REFER":
                self._out.append(ReferUpdate(dialog, 408, True))
            elif dialog is not None and tx.request.method in ("INVITE", "UPDATE"):
                self._refresh_failed(dialog)  # RFC 4028 §10: a refresh that timed out

    def client_response(self, tx: ClientTransaction, response: Response) -> None:
        """A final response (or an INVITE's 1xx) to our BYE, REFER, refresh or REGISTER."""
        if tx in self._standalone:
            if response.status >= 200:
                self._out.append(RequestAnswered(tx.request, response))
            return
        dialog = self._client_tx_dialog.get(tx)
        if dialog is None:
            return
        if response.status in (401, 407) and self._answer_challenge(tx, dialog, response):
            return
        method = tx.request.method
        if method == "BYE" and response.status >= 200:
            self._end_dialog(dialog, "local_bye")
        elif method == "REFER" and response.status >= 200:
            self._out.append(ReferUpdate(dialog, response.status, response.status >= 300))
        elif method in ("INVITE", "UPDATE") and response.status >= 200:
            self._on_refresh_response(dialog, tx.request, response)

    # ---------------------------------------------------------------- requests

    def _on_request(self, request: Request, source: Source) -> None:
        if request.method == "ACK":
            self._on_ack(request)
            return
        key = server_key(request)
        if request.method == "CANCEL":
            self._on_cancel(request, source)
            return
        existing = self._server_txs.get(key)
        if existing is not None:
            self.counters["retransmissions_absorbed"] += 1
            existing.on_retransmission()
            return
        tx = ServerTransaction(self, request, source, self.clock.now())
        self._server_txs[key] = tx
        if request.method == "INVITE" and request.to.tag is None and self._merged(tx):
            self.counters["merged_requests"] += 1
            self._respond(tx, 482)
            return
        # Max-Forwards: 0 reaching us is processed as any other: §16.3's 483 is a proxy's,
        # which must not forward it; we forward nothing (RFC 4475 §3.3.11, OPTIONS pings)
        unsupported = [
            opt for opt in request.headers.get_all("Require") if opt.lower() not in SUPPORTED
        ]
        if unsupported:
            self._respond(tx, 420, headers=[("Unsupported", ", ".join(unsupported))])  # §8.2.2.3
            return
        if request.to.tag is not None:
            self._on_in_dialog(tx)
        else:
            self._on_out_of_dialog(tx)

    def _merged(self, tx: ServerTransaction) -> bool:
        """§8.2.2.2: the same INVITE (Call-ID, From tag, CSeq) on another branch while the first
        is still being set up (Proceeding) or answered (Accepted) — it reached us twice, over two
        paths or from a UAC that changed the branch of a retransmission. Answering both would
        make two calls with one dialog id. A first transaction already rejected (Completed, e.g.
        the 401 of a challenge) does not count: a UAC resending the authenticated INVITE with
        the same CSeq (against §22.2) still gets through.
        """
        key = _merge_key(tx.request)
        first = self._invites.get(key)
        if first is not None and first.state in (TxState.PROCEEDING, TxState.ACCEPTED):
            return True
        self._invites[key] = tx
        return False

    def _on_out_of_dialog(self, tx: ServerTransaction) -> None:
        request = tx.request
        method = request.method
        if method == "INVITE":
            self._respond(tx, 100)  # §17.2.1: at once, so the carrier stops retransmitting
            if request.body and request.content_type not in ("application/sdp", None):
                self._respond(tx, 415, headers=[("Accept", "application/sdp")])
                return
            if too_short(request, self.config.min_se):
                self._respond(tx, 422, headers=[("Min-SE", str(self.config.min_se))])
                return
            self._out.append(InviteReceived(tx))
        elif method == "OPTIONS":
            retry_after = self.refusing()
            if retry_after is not None:  # §11.2: as an INVITE would be (probes mark us down)
                self._respond(tx, 503, headers=[("Retry-After", retry_after)])
            else:
                self._respond(tx, 200, headers=[("Accept", "application/sdp")])
        elif method == "REGISTER":
            self._out.append(RegisterReceived(tx))  # the application authenticates it
        elif method in ("BYE", "INFO", "UPDATE", "NOTIFY", "PRACK"):
            self._respond(tx, 481)  # §15.1.2 / §12.2.2: no such dialog
        else:
            self._respond(tx, _not_allowed(request.method))

    def _on_in_dialog(self, tx: ServerTransaction) -> None:
        request = tx.request
        dialog = self._dialog_of(request)
        if dialog is None and request.method == "BYE" and self._on_early_bye(tx):
            return
        if dialog is None or dialog.state == DialogState.TERMINATED:
            self._respond(tx, 481)
            return
        cseq = request.cseq.seq
        if cseq <= dialog.remote_cseq:
            self._respond(tx, 500, "Out of Order CSeq")  # §12.2.2
            return
        dialog.remote_cseq = cseq
        source = tx.source
        if (
            source.conn is not None
            and source.conn != dialog.source.conn
            and source.transport == dialog.source.transport
            and source.addr[0] == dialog.source.addr[0]
        ):
            # The same peer on another connection (its proxy closed the first, or reconnected):
            # our messages in the dialog go on the one it uses now (RFC 3261 §18.1.1: a
            # connection open to the next hop), not on one that may be gone (§18.2.2).
            dialog.source = source
        method = request.method
        if method == "BYE":
            self._respond(tx, 200)
            self._end_dialog(dialog, "remote_bye")
        elif method in ("INVITE", "UPDATE"):
            if dialog.reoffer_pending:
                # RFC 3261 §14.2 (re-INVITE) and RFC 3311 §5.2 (UPDATE): we still owe an answer
                # to an offer we received: 500 with a random Retry-After of 0-10 s.
                retry = str(secrets.randbelow(11))
                self._respond(tx, 500, headers=[("Retry-After", retry)])
                return
            if method == "INVITE" and dialog.pending_2xx is not None:
                self._respond(tx, 491)  # our 2xx is not yet ACKed: the exchange is in progress
                return
            if dialog.refresh_method == "INVITE" and (method == "INVITE" or request.body):
                # §14.2, RFC 3311 §5.2: our re-INVITE's offer is outstanding: glare
                self._respond(tx, 491)
                return
            if too_short(request, self.config.min_se):
                # RFC 4028 §9-§10: a refresh is negotiated as the INVITE was
                self._respond(tx, 422, headers=[("Min-SE", str(self.config.min_se))])
                return
            if method == "INVITE":
                self._respond(tx, 100)
            dialog.reoffer_pending = True
            self._out.append(ReofferReceived(dialog, tx))
        elif method == "INFO":
            self._on_info(dialog, tx)
        elif method == "OPTIONS":
            # In a dialog OPTIONS is answered as a re-INVITE would be (§11.2), and a live call's
            # re-INVITE is served while we drain or are full: 200, never the 503 a new INVITE
            # gets then — SBCs end a session whose in-dialog keep-alive gets a non-2xx.
            self._respond(tx, 200, headers=[("Accept", "application/sdp")])
        elif method == "NOTIFY":
            self._respond(tx, 200)
            m = _SIPFRAG_STATUS.search(request.body.decode("utf-8", "replace"))
            if m and (request.headers.get("Event") or "").lower().startswith("refer"):
                status = int(m.group(1))
                sub = _subscription_state(request)
                # RFC 6665 §4.1.3: "terminated" ends the subscription, no NOTIFY follows: a 1xx
                # in it is the last word of a transfer that never got an outcome.
                final = status >= 200 or sub.state == "terminated"
                self._out.append(ReferUpdate(dialog, status, final, None if final else sub.expires))
        else:
            self._respond(tx, _not_allowed(request.method))

    def _on_early_bye(self, tx: ServerTransaction) -> bool:
        """A BYE on the early dialog of an INVITE still unanswered (RFC 3261 §15: the caller
        MAY end an early dialog with BYE): 200 to the BYE, then 487 to the INVITE (§15.1.2:
        the UAS MUST still answer the dialog's pending requests, RECOMMENDED 487), and the
        set-up is abandoned as for a CANCEL. False when it names no early dialog."""
        request = tx.request
        key = (request.call_id, request.to.tag or "", _from_tag(request))
        invite_tx = self._early.pop(key, None)
        if invite_tx is None or invite_tx.final_sent:
            return False
        self._respond(tx, 200)
        self._respond(invite_tx, 487)
        self._out.append(InviteCancelled(invite_tx))
        return True

    def _on_info(self, dialog: Dialog, tx: ServerTransaction) -> None:
        """DTMF by SIP INFO (``application/dtmf-relay``, ``application/dtmf``): a key press is
        passed on as its key. A signal that is no key (a flash, 16 or ``!``; another RFC 4733
        event) is answered 200 and dropped: the request is well-formed and understood, we only
        relay nothing for it — a 4xx would tell the peer its INFO was wrong, and some end the
        call on a failed in-dialog request. A body that names no signal is a 400."""
        request = tx.request
        ctype = request.content_type
        text = request.body.decode("utf-8", "replace")
        duration = 250
        signal: str | None = None
        if ctype == "application/dtmf-relay":
            m = _DTMF_RELAY_SIGNAL.search(text)
            signal = m.group(1) if m else None
            d = _DTMF_RELAY_DURATION.search(text)
            if d:
                duration = int(d.group(1))
        elif ctype == "application/dtmf":
            signal = text.strip()
        elif not request.body:
            self._respond(tx, 200)  # an empty INFO is a keep-alive probe (RFC 6086 §4.2.1)
            return
        else:
            self._respond(tx, 415, headers=[("Accept", "application/dtmf-relay, application/dtmf")])
            return
        if signal is None or not _is_dtmf_signal(signal):
            self._respond(tx, 400, "Bad DTMF Body")
            return
        self._respond(tx, 200)
        digit = _dtmf_key(signal)
        if digit is not None:
            self._out.append(DtmfInfo(dialog, digit, duration))

    def _on_ack(self, request: Request) -> None:
        tx = self._server_txs.get(server_key(request))
        if tx is None and request.to.tag is not None:
            tx = self._ack_fallback.get(_ack_key(request, request.to.tag))
        if tx is not None and tx.final_sent and (tx.status is not None) and (tx.status >= 300):
            tx.on_ack(self.clock.now())  # ACK for a non-2xx final is part of the transaction
            return
        dialog = self._dialog_of(request)
        if dialog is None:
            self.counters["stray_acks"] += 1  # §17.2.3: no match, no dialog: dropped
            return
        if dialog.pending_2xx is not None and request.cseq.seq == dialog.pending_2xx_cseq:
            dialog.pending_2xx = None
            self.timers.cancel(dialog, "2xx")
            self.timers.cancel(dialog, "2xx-timeout")
            sdp = request.body if request.content_type in (None, "application/sdp") else b""
            if not dialog.acked:
                dialog.acked = True
                self._out.append(CallConfirmed(dialog, sdp))
                if dialog in self._pending_bye:
                    self._pending_bye.discard(dialog)
                    self._hangup(dialog)
            else:
                self._out.append(ReinviteAcked(dialog, sdp))

    def _on_cancel(self, request: Request, source: Source) -> None:
        cancel_tx = ServerTransaction(self, request, source, self.clock.now())
        key = ("CANCEL",) + server_key(request)
        existing = self._server_txs.get(key)
        if existing is not None:
            existing.on_retransmission()
            return
        cancel_tx.key = key
        self._server_txs[key] = cancel_tx
        invite_tx = self._server_txs.get(server_key(request))
        if invite_tx is None or not invite_tx.is_invite:
            self._respond(cancel_tx, 481)  # §9.2
            return
        self._respond(cancel_tx, 200)
        if not invite_tx.final_sent:
            self._respond(invite_tx, 487)
            self._out.append(InviteCancelled(invite_tx))

    # ---------------------------------------------------------------- responses

    def _on_response(self, response: Response) -> None:
        try:
            branch = response.top_via.branch or ""
            method = response.cseq.method
        except SipParseError:
            self.counters["bad_responses"] += 1
            return
        tx = self._client_txs.get((branch, method))
        if tx is None:
            self.counters["stray_responses"] += 1
            return
        if tx not in self._standalone:  # call traces only
            # to our in-dialog request: the caller is the To (re-serialized: small)
            self._trace(response.call_id, _to_tag(response), response.to_bytes(), "in")
        tx.on_response(response, self.clock.now())

    # ---------------------------------------------------------------- dialogs

    def _dialog_of(self, request: Request) -> Dialog | None:
        try:
            to_tag = request.to.tag
            from_tag = request.from_.tag or ""
        except SipParseError:
            return None
        if to_tag is None:
            return None
        return self._dialogs.get((request.call_id, to_tag, from_tag))

    def _start_2xx_retransmission(self, dialog: Dialog, response: Response, cseq: int) -> None:
        dialog.pending_2xx = response.to_bytes()
        dialog.pending_2xx_cseq = cseq
        dialog.retransmit_interval = self.sip_timers.t1
        now = self.clock.now()
        self.timers.schedule(_DialogTimers(self, dialog), "2xx", now + self.sip_timers.t1)
        self.timers.schedule(_DialogTimers(self, dialog), "2xx-timeout", now + self.sip_timers.b)

    def on_dialog_timer(self, dialog: Dialog, name: str, now: float) -> None:
        """Dialog-level timers: 2xx retransmission and give-up (§13.3.1.4), session expiry."""
        if name == "2xx" and dialog.pending_2xx is not None:
            self.send_bytes(dialog.pending_2xx, dialog.source)
            dialog.retransmit_interval = min(2 * dialog.retransmit_interval, self.sip_timers.t2)
            self.timers.schedule(
                _DialogTimers(self, dialog), "2xx", now + dialog.retransmit_interval
            )
        elif name == "2xx-timeout" and dialog.pending_2xx is not None:
            dialog.pending_2xx = None
            self.timers.cancel(dialog, "2xx")
            # §13.3.1.4: no ACK: the UAS SHOULD end the session with a BYE — a re-INVITE's 2xx
            # (the dialog acknowledged once already) as the first INVITE's.
            if dialog.acked and dialog.state != DialogState.CONFIRMED:
                return  # a re-INVITE's, and our BYE is already out (§15)
            dialog.acked = True
            self._pending_bye.discard(dialog)
            dialog.state = DialogState.TERMINATING
            self._send_in_dialog(dialog, "BYE")
            self._end_dialog(dialog, "ack_timeout")
        elif name == "refresh" and dialog.state == DialogState.CONFIRMED:
            self._send_refresh(dialog)
        elif name == "session" and dialog.state == DialogState.CONFIRMED:
            # RFC 4028 §10: no refresh before expiry: send BYE.
            dialog.state = DialogState.TERMINATING
            self._send_in_dialog(dialog, "BYE")
            self._end_dialog(dialog, "session_expired")

    def _end_dialog(self, dialog: Dialog, reason: CallEndReason) -> None:
        if dialog.state == DialogState.TERMINATED:
            return
        dialog.state = DialogState.TERMINATED
        for name in list(dialog.timer_generation):
            self.timers.cancel(dialog, name)
        self._pending_bye.discard(dialog)
        self._dialogs.pop(dialog.key, None)
        self._out.append(CallEnded(dialog, reason))

    def _send_in_dialog(
        self,
        dialog: Dialog,
        method: str,
        headers: list[tuple[str, str]] | None = None,
        *,
        contact: bool = False,
        body: bytes = b"",
    ) -> None:
        """Build and send a request inside ``dialog`` (§12.2.1.1) in a new client transaction."""
        extra = list(headers or [])
        if contact:
            extra = self._with_contact(extra, dialog.source, dialog.secure, dialog.contact_address)
        request = self._in_dialog_request(
            dialog, method, dialog.next_cseq(), self._common(extra), body
        )
        self._trace(dialog.call_id, dialog.remote_tag, request.to_bytes(), "out")
        kind = InviteClientTransaction if method == "INVITE" else ClientTransaction
        tx = kind(self, request, dialog.source, self.clock.now())
        self._client_txs[(tx.branch, method)] = tx
        self._client_tx_dialog[tx] = dialog

    def _answer_challenge(self, tx: ClientTransaction, dialog: Dialog, response: Response) -> bool:
        """Resend a challenged in-dialog request of ours with credentials (RFC 3261 §22.2 for
        401, §22.3 for 407): same dialog, a new CSeq and branch (§8.1.3.5), the other headers
        and the body as before. True if resent; False leaves the 401/407 a final failure.

        Only dialogs given credentials (a call its trunk's registrar sent, answered with the
        registration's) are answered, and only while the request ends where it is sent: its
        remote target is the address the call came from (a carrier's B2BUA or SBC, the usual
        case). A remote target elsewhere means the carrier proxies the dialog on to another
        party — who could answer our request with a challenge of its own and collect a digest
        of the registration's password: not answered. A BYE of ours still goes again after the
        dialog ended on our side (a session that expired, a 2xx never ACKed). An answered
        challenge that comes back not ``stale`` means the credentials were refused, and at
        most four are answered per request (a proxy's and the server's
        challenges, each once stale), so a peer cannot keep us resending."""
        if dialog.credentials is None:
            return False
        if dialog.state == DialogState.TERMINATED and tx.request.method != "BYE":
            return False
        if _bare_ip(dialog.remote_target.host) != _bare_ip(dialog.source.addr[0]):
            self.counters["challenges_not_ours"] += 1
            return False
        answered, earlier = self._challenges_answered.get(tx, (0, {}))
        if answered >= _MAX_CHALLENGES_ANSWERED:
            return False
        request = tx.request
        proxy = response.status == 407
        field = "Proxy-Authorization" if proxy else "Authorization"
        username, password = dialog.credentials
        found = answer_challenge(
            response.headers.get_all("Proxy-Authenticate" if proxy else "WWW-Authenticate"),
            method=request.method,
            uri=str(request.uri),
            username=username,
            password=password,
        )
        if found is None:
            return False
        value, challenge = found
        if request.headers.get(field) is not None and not challenge.stale:
            self.counters["challenges_refused"] += 1
            return False
        # A 401 after an answered 407 (or the reverse) is the next hop's own challenge: the
        # earlier answer goes again with its nonce's next count (the same count is a replay to
        # a server that checks counts, RFC 7616 §3.4). _in_dialog_request writes the routing
        # headers afresh; this answer replaces any earlier one to its header.
        kept = {other: (known, nc + 1) for other, (known, nc) in earlier.items() if other != field}
        answers = {name.lower() for name in (*kept, field)}
        headers = [
            (k, v)
            for k, v in request.headers
            if k.lower() not in _REBUILT_IN_DIALOG and k.lower() not in answers
        ]
        for other, (known, nc) in kept.items():
            again_value = answer(
                known,
                method=request.method,
                uri=str(request.uri),
                username=username,
                password=password,
                nc=nc,
            )
            headers.append((other, again_value))
        headers.append((field, value))
        retry = self._in_dialog_request(
            dialog, request.method, dialog.next_cseq(), headers, request.body
        )
        self._trace(dialog.call_id, dialog.remote_tag, retry.to_bytes(), "out")
        kind = InviteClientTransaction if request.method == "INVITE" else ClientTransaction
        again = kind(self, retry, dialog.source, self.clock.now())
        self._client_txs[(again.branch, request.method)] = again
        self._client_tx_dialog[again] = dialog
        self._challenges_answered[again] = (answered + 1, kept | {field: (challenge, 1)})
        self.counters["challenges_answered"] += 1
        return True

    def _in_dialog_request(
        self,
        dialog: Dialog,
        method: str,
        cseq: int,
        headers: list[tuple[str, str]],
        body: bytes = b"",
    ) -> Request:
        """A request inside ``dialog`` (§12.2.1.1): target, Route set, tags, a fresh branch."""
        target, route_set = request_target(dialog.remote_target, dialog.route_set)
        transport = dialog.source.transport
        port = self.config.contact_ports.get(transport, 5060)
        h = Headers()
        h.add(
            "Via",
            f"SIP/2.0/{transport} {self.config.contact_host}:{port};branch={new_branch()};rport",
        )
        h.add("Max-Forwards", "70")
        h.add("From", dialog.local_uri)
        h.add("To", dialog.remote_uri)
        h.add("Call-ID", dialog.call_id)
        h.add("CSeq", f"{cseq} {method}")
        for route in route_set:
            h.add("Route", route)
        for k, v in headers:
            h.add(k, v)
        return Request(h, body, method, target)

    # ---------------------------------------------------------------- session timers (RFC 4028)

    def _renegotiate(self, dialog: Dialog, request: Request, body: bytes) -> list[tuple[str, str]]:
        """Our 2xx to the caller's re-INVITE/UPDATE: the timer it sets (§9) and its headers."""
        if request.headers.get("Allow") is not None:
            dialog.peer_allows_update = _allows(request, "UPDATE")
        if body:
            dialog.local_sdp = body
        dialog.session_timer = negotiate_as_uas(
            request,
            min_se=self.config.min_se,
            default_interval=self.config.session_expires,
            current=dialog.session_timer,
        )
        return [] if dialog.session_timer is None else response_headers(dialog.session_timer)

    def _arm_session_timer(self, dialog: Dialog) -> None:
        self.timers.cancel(dialog, "refresh")
        self.timers.cancel(dialog, "session")
        timer = dialog.session_timer
        if timer is None:
            return
        now = self.clock.now()
        owner = _DialogTimers(self, dialog)
        if timer.we_refresh:
            self.timers.schedule(owner, "refresh", now + refresh_at(timer.interval))
        # §10: without a refresh (ours failing, or the caller's missing) the session ends here.
        self.timers.schedule(owner, "session", now + expiry_margin(timer.interval))

    def _send_refresh(self, dialog: Dialog) -> None:
        """§10: UPDATE when the caller allows it (no offer/answer needed), else re-INVITE."""
        timer = dialog.session_timer
        if timer is None:
            return
        if (
            dialog.refresh_method is not None
            or dialog.pending_2xx is not None
            or dialog.reoffer_pending
        ):
            # an exchange is in progress (ours, or the caller's awaiting our answer or its ACK)
            self.timers.schedule(_DialogTimers(self, dialog), "refresh", self.clock.now() + 2.0)
            return
        method = "UPDATE" if dialog.peer_allows_update else "INVITE"
        headers = refresh_headers(timer.interval)
        body = b""
        if method == "INVITE":
            body = dialog.local_sdp  # RFC 3264 §8: the same session, version unchanged
            headers.append(("Content-Type", "application/sdp"))
        dialog.refresh_method = method
        dialog.refresh_asked = timer.interval
        self._send_in_dialog(dialog, method, headers, contact=True, body=body)

    def _on_refresh_response(self, dialog: Dialog, request: Request, response: Response) -> None:
        status = response.status
        cseq = request.cseq.seq
        if status < 300:
            self._refresh_target(dialog, response)
        if request.method == "INVITE" and status < 300:
            # §13.2.2.4: every 2xx is ACKed, also once we have sent BYE (the dialog ending)
            if dialog.last_ack is not None and dialog.last_ack[0] == cseq:
                self.send_bytes(dialog.last_ack[1], dialog.source)  # a retransmitted 2xx
                return
            # §13.2.2.4: the ACK carries the INVITE's credentials, if it was authenticated
            auth = [
                (k, v)
                for k, v in request.headers
                if k.lower() in ("authorization", "proxy-authorization")
            ]
            ack = self._in_dialog_request(dialog, "ACK", cseq, auth)
            dialog.last_ack = (cseq, ack.to_bytes())
            self._trace(dialog.call_id, dialog.remote_tag, dialog.last_ack[1], "out")
            self.send_bytes(dialog.last_ack[1], dialog.source)
        if dialog.state != DialogState.CONFIRMED:
            return  # no refresh of a session that is ending
        if dialog.refresh_method != request.method:
            return  # a stale response (an earlier refresh)
        dialog.refresh_method = None
        if status < 300:
            dialog.session_timer = after_refresh(
                response, dialog.refresh_asked, min_se=self.config.min_se
            )
            self._arm_session_timer(dialog)
            if request.method == "INVITE" and response.body:
                self._out.append(SessionRefreshed(dialog, response.body))
            return
        timer = dialog.session_timer
        if status == 422 and timer is not None:
            # §7.4 / §6: too short for the caller: ask again with its Min-SE
            wanted = min_se_of(response)
            if wanted is not None and wanted > dialog.refresh_asked:
                dialog.session_timer = Timer(wanted, True, timer.peer_supports)
                self._send_refresh(dialog)
                return
        if status in (405, 501) and request.method == "UPDATE":
            dialog.peer_allows_update = False  # RFC 3311 not supported after all
            self._send_refresh(dialog)
        elif status == 491:
            # §14.1: the other side's exchange won; we do not own the Call-ID: 0-2 s
            delay = secrets.randbelow(2001) / 1000
            self.timers.schedule(_DialogTimers(self, dialog), "refresh", self.clock.now() + delay)
        elif status in (408, 481):
            self._refresh_failed(dialog)
        # any other failure: the session still ends at its expiry unless refreshed (§10)

    @staticmethod
    def _refresh_target(dialog: Dialog, response: Response) -> None:
        """§12.2.1.2 (RFC 3311 §5.1 for UPDATE): a 2xx to our target refresh request (a
        refresh carries our Contact) replaces the remote target with its Contact, before the
        ACK is built; a Contact that does not parse leaves the target as it was."""
        contacts = response.headers.get_all("Contact")
        if not contacts:
            return
        try:
            dialog.remote_target = parse_name_addr(contacts[0]).uri
        except SipParseError:
            return

    def _refresh_failed(self, dialog: Dialog) -> None:
        """§10: a refresh that timed out or got 408/481 ends the session with a BYE."""
        dialog.refresh_method = None
        if dialog.state != DialogState.CONFIRMED:
            return
        dialog.state = DialogState.TERMINATING
        self._send_in_dialog(dialog, "BYE")
        self._end_dialog(dialog, "refresh_failed")

    # ---------------------------------------------------------------- helpers

    def _with_contact(
        self,
        headers: list[tuple[str, str]],
        source: Source,
        secure: bool,
        address: str | None = None,
    ) -> list[tuple[str, str]]:
        """Our Contact: a SIPS URI only when the dialog is secure (RFC 3261 §12.1.1: the
        request's Request-URI was SIPS); a ``sip:`` request over TLS gets
        ``sip:…;transport=tls``, as that UAC asked for (a SIPS Contact there is refused by
        some stacks, libre 1.x among them). ``address`` (``host:port``) replaces the
        configured host and port."""
        if address is None:
            port = self.config.contact_ports.get(source.transport, 5060)
            address = f"{self.config.contact_host}:{port}"
        transport = "" if source.transport == "UDP" else f";transport={source.transport.lower()}"
        if secure and source.transport == "TLS":
            return [*headers, ("Contact", f"<sips:telepath@{address}>")]
        return [*headers, ("Contact", f"<sip:telepath@{address}{transport}>")]

    def _common(self, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return [
            *headers,
            ("Allow", ", ".join(ALLOW)),
            ("Supported", ", ".join(SUPPORTED)),
            ("Server", self.config.user_agent),
        ]

    def _answer_parse_error(self, exc: SipParseError, source: Source) -> None:
        request = exc.request
        if not isinstance(request, Request) or request.method == "ACK":
            return  # responses and ACKs are never answered (§17.2.3, §18.1.2)
        if not _answerable(request):
            self.counters["unanswerable_requests"] += 1
            return
        _stamp_received(request, source)  # RFC 3581 §4: its answer too (a Via not parsed: as is)
        try:
            response = make_response(
                request,
                exc.status_hint,
                to_tag=new_tag(),  # §8.2.6.2: a tag on every response but a 100
                headers=[("Warning", f'399 {self.config.contact_host} "{_quote(str(exc))}"')],
            )
            self.send_bytes(response.to_bytes(), source)
            if self._observe_response is not None:
                self._observe_response(exc.status_hint)
        except SipParseError:
            return  # too broken to answer at all

    def _trace(
        self,
        call_id: str,
        caller_tag: str,
        data: bytes,
        direction: str,
        source: Source | None = None,
    ) -> None:
        key = (call_id, caller_tag)
        if not call_id or key in self._closed_traces:
            return
        trace = self._traces.get(key)
        if trace is None:
            trace = self._traces[key] = []
            if len(self._traces) > _TRACE_LIMIT_CALLS:
                self._drop_oldest_trace()
        if len(trace) < _TRACE_LIMIT_MESSAGES:
            head = data[:4096]
            text = head.decode("utf-8", "replace")
            # credentials are redacted here, per message and only where a header could carry
            # them (one C scan): the whole trace through the regex cost ~2.5 % of call set-up
            lower = head.lower()
            if (
                b"uthorization" in lower  # digest
                or b"inline:" in lower  # SDES keys in SDP
                or any(word in lower for word in _CREDENTIAL_WORDS)
                or _HAS_URI_PASSWORD.search(lower) is not None
            ):
                text = redact_trace(text)
            via = f" {source.transport} {source.addr[0]}:{source.addr[1]}" if source else ""
            entry = f"--- {direction}{via}\n{text}"
            trace.append(entry)
            self.trace_bytes += len(entry)
            while self.trace_bytes > self.config.trace_budget_bytes and len(self._traces) > 1:
                self._drop_oldest_trace()

    def _drop_oldest_trace(self) -> None:
        _, dropped = self._traces.popitem(last=False)
        self.trace_bytes -= sum(map(len, dropped))

    def _tag_for(self, request: Request) -> str:
        """Our To tag for ``request``: the same for every INVITE of one call (Call-ID + From
        tag), so a UAC that keeps the tag of a 401 challenge still matches the 2xx's dialog.
        Keyed with a per-process secret, so tags stay unguessable (§19.3)."""
        from_tag = request.headers.get("From") or ""
        # the header text keeps bytes that are not UTF-8 as surrogates (``message.py``)
        key = f"{request.call_id}\x00{from_tag}".encode("utf-8", "surrogateescape")
        digest = hmac.new(self._tag_key, key, "sha256")
        return digest.hexdigest()[:16]

    def _take(self) -> list[Output]:
        out, self._out = self._out, []
        return out


class _DialogTimers:
    """Adapter giving a Dialog the :class:`TimerOwner` shape (timers live on the dialog)."""

    __slots__ = ("core", "dialog")

    def __init__(self, core: UserAgentCore, dialog: Dialog) -> None:
        self.core = core
        self.dialog = dialog

    @property
    def timer_generation(self) -> dict[str, int]:
        return self.dialog.timer_generation

    def on_timer(self, name: str, now: float) -> None:
        self.core.on_dialog_timer(self.dialog, name, now)


def _subscription_state(request: Request) -> SubscriptionState:
    """A NOTIFY's Subscription-State (RFC 6665 §8.2.3); one that is missing or does not parse
    reads as ``active`` with no expiry (the NOTIFY is answered 200 either way: its sipfrag is
    what we act on)."""
    try:
        return parse_subscription_state(request.headers.get("Subscription-State") or "")
    except SipParseError:
        return SubscriptionState("active", None)


def _from_tag(message: Request | Response) -> str:
    """The From tag ("" when there is none or the From does not parse)."""
    try:
        return message.from_.tag or ""
    except SipParseError:
        return ""


def _to_tag(message: Request | Response) -> str:
    """The To tag ("" when there is none or the To does not parse)."""
    try:
        return message.to.tag or ""
    except SipParseError:
        return ""


def _record_route(request: Request) -> list[tuple[str, str]]:
    """The Record-Route values a response establishing a dialog copies, in order (§12.1.1:
    the caller's in-dialog requests then follow the proxies that asked to stay in the path)."""
    return [("Record-Route", value) for value in request.headers.get_all("Record-Route")]


def _secure(request: Request) -> bool:
    """§12.1.1: a dialog is secure when its INVITE's Request-URI is a SIPS URI."""
    return request.uri.scheme.lower() == "sips"


def _merge_key(request: Request) -> tuple[str, str, int]:
    return (request.call_id, request.from_.tag or "", request.cseq.seq)


def _ack_key(request: Request, to_tag: str) -> tuple[str, str, int, str]:
    return (request.call_id, request.from_.tag or "", request.cseq.seq, to_tag)


def _answerable(request: Request) -> bool:
    """Whether a response to ``request`` can be made at all. §8.2.6.2: it copies the Via,
    From, To, Call-ID and CSeq — what the UAC matches it by (§17.1.3, §8.1.3.3). Without one
    the response is no SIP message (§7.3, §20), one any parser drops, ours too: RFC 4475
    §3.3.1 hopes for a 400 to ``insuf`` (no From, To, Call-ID), which cannot be made. A Via
    that does not parse is copied as received (``badinv01`` and ``badvers`` of RFC 4475
    §3.1.2 are answered): the UAC matches by it, and the answer goes to the source."""
    headers = request.headers
    return (
        bool(request.call_id)
        and bool(headers.get_all("Via"))
        and all(headers.get(name) is not None for name in ("From", "To", "CSeq"))
    )


def _stamp_received(request: Request, source: Source) -> None:
    """RFC 3261 §18.2.1 and RFC 3581 §4: the top Via gets ``received`` (when the sent-by host
    differs from the source, or rport was asked for) and ``rport`` filled with the source
    port, so every response copied from it tells a NATed caller where it was seen from."""
    vias = request.headers.get_all("Via")
    try:
        top = parse_via(vias[0]).with_received(source.addr[0], source.addr[1])
    except (IndexError, SipParseError):
        return
    request.headers.set("Via", ", ".join([str(top), *vias[1:]]))
    request.forget_parsed()


def _allows(request: Request, method: str) -> bool:
    """Whether the Allow header of ``request`` lists ``method`` (§20.5)."""
    return any(
        m.strip().upper() == method
        for value in request.headers.get_all("Allow")
        for m in value.split(",")
    )


def _quote(text: str) -> str:
    """``text`` cut to 120 characters and escaped for a quoted-string (§25.1) — cut first: a
    cut after escaping could fall inside a quoted-pair and escape the closing quote."""
    return text[:120].replace("\\", "\\\\").replace('"', '\\"')


def _is_dtmf_signal(value: str) -> bool:
    """Whether a DTMF INFO names a signal: a key, a flash, or another RFC 4733 event (0-255)."""
    return _DTMF_SIGNAL.fullmatch(value) is not None and (
        not value.isdigit() or int(value) <= _MAX_EVENT_CODE
    )


def _dtmf_key(signal: str) -> str | None:
    """The key a DTMF INFO's signal (``_is_dtmf_signal``) names, as the bridges send it (0-9,
    ``*``, ``#``, A-D upper-case); ``None`` for a flash or another event that is no key."""
    if signal.isdigit():
        code = int(signal)
        return _EVENT_CODES[code] if code < len(_EVENT_CODES) else None
    key = signal.upper()
    return key if key in _EVENT_CODES else None


def _not_allowed(method: str) -> int:
    """405 for a method known but not taken here, 501 for one not known (§21.4.6, §21.5.2)."""
    return 405 if method in _KNOWN_METHODS else 501


def _bare_ip(host: str) -> str:
    """``host`` without IPv6 brackets, an IPv4-mapped address as IPv4, lower-case."""
    bare = host.strip("[]").lower()
    return bare[7:] if bare.startswith("::ffff:") and "." in bare else bare
