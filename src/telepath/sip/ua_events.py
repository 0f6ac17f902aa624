"""What the UA core hands out (RFC 3261 terms): bytes to send, and call events for the
application — a new INVITE, its cancellation, confirmation (the ACK), the end of the dialog,
re-offers, session refreshes, DTMF by INFO, transfer progress and the answers to our own
out-of-dialog requests. Frozen dataclasses: the class
is the meaning."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from telepath.sip.dialog import Dialog
from telepath.sip.message import Request, Response
from telepath.sip.transaction import ServerTransaction, Source


@dataclass(frozen=True, slots=True)
class Send:
    """Bytes to send to ``dest``."""

    data: bytes
    dest: Source


@dataclass(frozen=True, slots=True)
class InviteReceived:
    """A new INVITE (no To tag): authenticate it, then :meth:`UserAgentCore.respond` or
    :meth:`UserAgentCore.accept`. 100 Trying has already been sent."""

    tx: ServerTransaction

    @property
    def request(self) -> Request:
        """The INVITE."""
        return self.tx.request


@dataclass(frozen=True, slots=True)
class InviteCancelled:
    """The caller sent CANCEL (§9.2), or BYE on the early dialog of our 1xx (§15.1.2), before
    our final answer; 487 has been sent."""

    tx: ServerTransaction


@dataclass(frozen=True, slots=True)
class CallConfirmed:
    """The ACK for our 2xx arrived (§13.3.1.4).

    ``body`` is the ACK's SDP (empty when it has none, or a body of another type). It matters
    when the INVITE had no offer and our 2xx carried one: the answer MUST then be in the ACK
    (§13.2.1), and a UAC that cannot accept our offer still answers and then sends BYE
    (§13.2.2.4)."""

    dialog: Dialog
    body: bytes = b""


CallEndReason = Literal[
    "remote_bye", "local_bye", "ack_timeout", "session_expired", "refresh_failed", "bye_failed"
]


@dataclass(frozen=True, slots=True)
class CallEnded:
    """The dialog is over."""

    dialog: Dialog
    reason: CallEndReason


@dataclass(frozen=True, slots=True)
class ReinviteAcked:
    """The ACK for our 2xx to a re-INVITE arrived, with ``body`` its SDP (empty if none).

    It matters when the re-INVITE had no offer and our 2xx carried one: the answer is in this
    ACK (§14.2, §13.2.1)."""

    dialog: Dialog
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class SessionRefreshed:
    """The 2xx to our re-INVITE session refresh, with ``body`` its SDP: the caller's answer to
    the SDP we last sent (RFC 4028 §10, RFC 3264 §8), which may move its media address."""

    dialog: Dialog
    body: bytes


@dataclass(frozen=True, slots=True)
class ReofferReceived:
    """A re-INVITE or UPDATE in the dialog (hold, address/codec change, session refresh).

    Answer with :meth:`UserAgentCore.respond` (2xx with SDP, or 488); a body-less re-INVITE
    needs an offer in the 2xx (§14.2)."""

    dialog: Dialog
    tx: ServerTransaction

    @property
    def request(self) -> Request:
        """The re-INVITE/UPDATE."""
        return self.tx.request


@dataclass(frozen=True, slots=True)
class DtmfInfo:
    """A digit from SIP INFO (``application/dtmf-relay`` or ``application/dtmf``)."""

    dialog: Dialog
    digit: str
    duration_ms: int


@dataclass(frozen=True, slots=True)
class ReferUpdate:
    """Progress of a transfer we asked for: the REFER's response, then NOTIFY sipfrag status.
    ``final`` when the sipfrag is a final status, or the subscription ended (no outcome follows)."""

    dialog: Dialog
    status: int
    final: bool
    #: A NOTIFY's ``expires`` (RFC 6665 §8.2.3): how long its subscription lives, when given.
    expires: int | None = None


@dataclass(frozen=True, slots=True)
class RegisterReceived:
    """A REGISTER (RFC 3261 §10.3) from a PBX that registers its trunk: authenticate it, then
    answer it. No binding is kept: the gateway never calls out."""

    tx: ServerTransaction


@dataclass(frozen=True, slots=True)
class RequestAnswered:
    """The final answer to a request we sent outside any dialog (an outbound REGISTER,
    :meth:`UserAgentCore.send_request`); ``response`` None: no answer in time (Timer F)."""

    request: Request
    response: Response | None


Event = (
    InviteReceived
    | RegisterReceived
    | RequestAnswered
    | InviteCancelled
    | CallConfirmed
    | CallEnded
    | ReofferReceived
    | ReinviteAcked
    | SessionRefreshed
    | DtmfInfo
    | ReferUpdate
)
Output = Send | Event
