"""Server and client transactions (RFC 3261 §17), with RFC 6026's Accepted state.

State names follow the RFC figures (Figure 7 INVITE server, Figure 8 non-INVITE server,
Figure 5 INVITE client, Figure 6 non-INVITE client). Timers are scheduled in the core's
:class:`TimerQueue`; sends and outcomes go to a :class:`TransactionUser` (the UA core), so nothing
here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from telepath.sip.message import Headers, Request, Response
from telepath.sip.timers import SipTimers, TimerQueue

MAGIC_COOKIE = "z9hG4bK"  # RFC 3261 §8.1.1.7


@dataclass(frozen=True, slots=True)
class Source:
    """Where a message came from / goes to: transport name, address, stream connection id."""

    transport: str  # "UDP" | "TCP" | "TLS"
    addr: tuple[str, int]
    conn: int | None = None

    @property
    def reliable(self) -> bool:
        """True for stream transports (no retransmission timers, §17.1.1.2)."""
        return self.transport != "UDP"


class TransactionUser(Protocol):
    """What transactions need from the UA core."""

    timers: TimerQueue
    sip_timers: SipTimers

    def send_bytes(self, data: bytes, dest: Source) -> None:
        """Queue ``data`` for ``dest``."""
        ...

    def transaction_ended(self, tx: ServerTransaction | ClientTransaction, timed_out: bool) -> None:
        """``tx`` reached Terminated (``timed_out``: Timer H/F fired)."""
        ...

    def client_response(self, tx: ClientTransaction, response: Response) -> None:
        """A response for a client transaction, passed up once per status (retransmits absorbed)."""
        ...


class TxState(StrEnum):
    """RFC 3261 §17 transaction states (+ RFC 6026 Accepted)."""

    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


def server_key(request: Request) -> tuple[str, ...]:
    """§17.2.3 matching key: branch + sent-by + method (ACK and CANCEL map to INVITE's)."""
    via = request.top_via
    method = "INVITE" if request.method in ("ACK", "CANCEL") else request.method
    branch = via.branch or ""
    sent_by = f"{via.host}:{via.port or ''}".lower()
    if branch.startswith(MAGIC_COOKIE):
        return (branch, sent_by, method)
    # RFC 2543 peers (§17.2.3 last paragraphs): Request-URI, tags, Call-ID, CSeq, top Via.
    from_tag = request.from_.tag or ""
    return (
        "2543",
        str(request.uri) if request.method != "ACK" else "",
        from_tag,
        request.call_id,
        str(request.cseq.seq),
        sent_by,
        method,
    )


class ServerTransaction:
    """An INVITE or non-INVITE server transaction."""

    def __init__(self, tu: TransactionUser, request: Request, source: Source, now: float) -> None:
        self.tu = tu
        self.request = request
        self.source = source
        self.key = server_key(request)
        self.is_invite = request.method == "INVITE"
        self.state = TxState.PROCEEDING if self.is_invite else TxState.TRYING
        self.timer_generation: dict[str, int] = {}
        # The last response as sent, and its status: the parsed Response is not kept (a
        # transaction lingers 32 s after it, RFC 3261 §17.2.2 / RFC 6026, and only these are
        # needed to answer retransmissions and match the ACK).
        self.status: int | None = None
        self._wire: bytes | None = None
        self._interval = tu.sip_timers.t1
        self.created = now
        self.to_tag: str | None = None

    @property
    def final_sent(self) -> bool:
        """True once a final response went out."""
        return self.state not in (TxState.TRYING, TxState.PROCEEDING)

    def respond(self, response: Response, now: float) -> None:
        """Send ``response`` and move the state machine (Figure 7 / Figure 8). Anything after
        the final response is discarded (§17.2.1): its retransmissions repeat the final one."""
        if self.final_sent:
            return
        timers = self.tu.sip_timers
        self.status = response.status
        self._wire = response.to_bytes()
        self.tu.send_bytes(self._wire, self.source)
        if response.status < 200:
            if self.state == TxState.TRYING:
                self.state = TxState.PROCEEDING
            return
        q = self.tu.timers
        if self.is_invite and response.status < 300:
            # RFC 6026 §7.1: Accepted; the TU retransmits the 2xx; Timer L ends this state.
            self.state = TxState.ACCEPTED
            q.schedule(self, "L", now + timers.b)
        elif self.is_invite:
            self.state = TxState.COMPLETED
            if not self.source.reliable:
                q.schedule(self, "G", now + self._interval)
            q.schedule(self, "H", now + timers.b)
        else:
            self.state = TxState.COMPLETED
            q.schedule(self, "J", now + (0 if self.source.reliable else timers.b))

    def on_retransmission(self) -> None:
        """A retransmitted request: resend the last response (§17.2.1, §17.2.2)."""
        if self.state == TxState.ACCEPTED:
            return  # RFC 6026 §8.5: absorbed; the 2xx is retransmitted by the TU
        if self._wire is not None and self.state in (TxState.PROCEEDING, TxState.COMPLETED):
            self.tu.send_bytes(self._wire, self.source)

    def on_ack(self, now: float) -> None:
        """ACK for a non-2xx final: Completed → Confirmed, Timer I (§17.2.1)."""
        if self.state != TxState.COMPLETED:
            return
        q = self.tu.timers
        q.cancel(self, "G")
        q.cancel(self, "H")
        self.state = TxState.CONFIRMED
        q.schedule(self, "I", now + (0 if self.source.reliable else self.tu.sip_timers.t4))

    def on_timer(self, name: str, now: float) -> None:
        """Timers G (retransmit), H (no ACK), I, J, L (end)."""
        if name == "G" and self.state == TxState.COMPLETED and self._wire is not None:
            self.tu.send_bytes(self._wire, self.source)
            self._interval = min(2 * self._interval, self.tu.sip_timers.t2)
            self.tu.timers.schedule(self, "G", now + self._interval)
            return
        timed_out = name == "H"
        self.terminate()
        self.tu.transaction_ended(self, timed_out)

    def terminate(self) -> None:
        """Go to Terminated and drop every timer."""
        self.state = TxState.TERMINATED
        for name in list(self.timer_generation):
            self.tu.timers.cancel(self, name)


class ClientTransaction:
    """A non-INVITE client transaction (Figure 6): our BYE, REFER, NOTIFY answers, OPTIONS."""

    def __init__(self, tu: TransactionUser, request: Request, dest: Source, now: float) -> None:
        self.tu = tu
        self.request = request
        self.dest = dest
        self.branch = request.top_via.branch or ""
        self.state = TxState.TRYING
        self.timer_generation: dict[str, int] = {}
        self._wire = request.to_bytes()
        self._interval = tu.sip_timers.t1
        self.response: Response | None = None
        tu.send_bytes(self._wire, dest)
        self._start(now)

    def _start(self, now: float) -> None:
        if not self.dest.reliable:
            self.tu.timers.schedule(self, "E", now + self._interval)
        self.tu.timers.schedule(self, "F", now + self.tu.sip_timers.b)

    def on_response(self, response: Response, now: float) -> None:
        """A response matched by branch and CSeq method (§17.1.3)."""
        if self.state in (TxState.COMPLETED, TxState.TERMINATED):
            return  # retransmitted final: absorbed
        if response.status < 200:
            if self.state == TxState.TRYING:
                self.state = TxState.PROCEEDING
                self.tu.client_response(self, response)
            return
        self.response = response
        self.tu.timers.cancel(self, "E")
        self.tu.timers.cancel(self, "F")
        self.state = TxState.COMPLETED
        self.tu.client_response(self, response)
        delay = 0 if self.dest.reliable else self.tu.sip_timers.t4
        self.tu.timers.schedule(self, "K", now + delay)

    def on_timer(self, name: str, now: float) -> None:
        """Timers E (retransmit), F (timeout), K (end)."""
        if name == "E" and self.state in (TxState.TRYING, TxState.PROCEEDING):
            self.tu.send_bytes(self._wire, self.dest)
            base = self.tu.sip_timers.t2 if self.state == TxState.PROCEEDING else 2 * self._interval
            self._interval = min(base, self.tu.sip_timers.t2)
            self.tu.timers.schedule(self, "E", now + self._interval)
            return
        self._end(timed_out=name == "F")

    def transport_failed(self) -> bool:
        """The transport could not send the request (§17.1.4): straight to Terminated, the TU
        told as for a timeout — only while no final response came (a retransmission failing
        after the answer came another way reports nothing). Returns whether it ended."""
        if self.state not in (TxState.TRYING, TxState.PROCEEDING, TxState.CALLING):
            return False
        self._end(timed_out=True)
        return True

    def _end(self, *, timed_out: bool) -> None:
        self.state = TxState.TERMINATED
        for timer in list(self.timer_generation):
            self.tu.timers.cancel(self, timer)
        self.tu.transaction_ended(self, timed_out)


class InviteClientTransaction(ClientTransaction):
    """An INVITE client transaction (Figure 5, with RFC 6026 §7.2's Accepted state): our
    re-INVITE session refreshes.

    Every 2xx (retransmissions included) goes to the TU, which acknowledges it (§13.2.2.4: the
    ACK for a 2xx is the TU's, not the transaction's). A 3xx-6xx is acknowledged here, on the
    same branch (§17.1.1.3), and its retransmissions re-acknowledged until Timer D. Timer B
    also bounds Proceeding: a refresh that got a 1xx but no final answer in 64*T1 has failed,
    which RFC 3261 leaves to the TU (Timer C exists only for proxies, §16.6).
    """

    _ack: bytes | None = None

    def _start(self, now: float) -> None:
        self.state = TxState.CALLING
        if not self.dest.reliable:
            self.tu.timers.schedule(self, "A", now + self._interval)
        self.tu.timers.schedule(self, "B", now + self.tu.sip_timers.b)

    def on_response(self, response: Response, now: float) -> None:
        """1xx → Proceeding; 2xx → Accepted (each passed up); 3xx-6xx → ACK, Completed."""
        q = self.tu.timers
        if self.state == TxState.TERMINATED:
            return
        if response.status < 200:
            if self.state == TxState.CALLING:
                q.cancel(self, "A")
                self.state = TxState.PROCEEDING
                self.tu.client_response(self, response)
            return
        if response.status < 300:
            if self.state in (TxState.CALLING, TxState.PROCEEDING):
                q.cancel(self, "A")
                q.cancel(self, "B")
                self.state = TxState.ACCEPTED
                self.response = response
                q.schedule(self, "M", now + self.tu.sip_timers.b)  # RFC 6026 §7.2: 64*T1
            if self.state == TxState.ACCEPTED:
                self.tu.client_response(self, response)
            return
        if self.state == TxState.COMPLETED and self._ack is not None:
            self.tu.send_bytes(self._ack, self.dest)  # retransmitted final: ACK again
            return
        if self.state not in (TxState.CALLING, TxState.PROCEEDING):
            return
        q.cancel(self, "A")
        q.cancel(self, "B")
        self.state = TxState.COMPLETED
        self.response = response
        self._ack = _ack_for_non_2xx(self.request, response).to_bytes()
        self.tu.send_bytes(self._ack, self.dest)
        self.tu.client_response(self, response)
        q.schedule(self, "D", now + (0 if self.dest.reliable else 32.0))

    def on_timer(self, name: str, now: float) -> None:
        """Timers A (retransmit, doubling without cap §17.1.1.2), B (timeout), D, M (end)."""
        if name == "A" and self.state == TxState.CALLING:
            self.tu.send_bytes(self._wire, self.dest)
            self._interval *= 2
            self.tu.timers.schedule(self, "A", now + self._interval)
            return
        self._end(timed_out=name == "B")


def _ack_for_non_2xx(request: Request, response: Response) -> Request:
    """§17.1.1.3: the ACK a client transaction sends for a 3xx-6xx to its INVITE."""
    h = Headers()
    h.add("Via", request.headers.get_all("Via")[0])
    h.add("Max-Forwards", "70")
    h.add("From", request.headers.get("From") or "")
    h.add("To", response.headers.get("To") or "")
    h.add("Call-ID", request.call_id)
    h.add("CSeq", f"{request.cseq.seq} ACK")
    for route in request.headers.get_all("Route"):
        h.add("Route", route)
    return Request(h, b"", "ACK", request.uri)
