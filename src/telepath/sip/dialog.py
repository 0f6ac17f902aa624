"""A UAS dialog (RFC 3261 §12): identifiers, route set, CSeq spaces and the 2xx retransmission
and session-timer state that belong to it."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from telepath.sip.headers import parse_name_addr
from telepath.sip.session_timer import Timer
from telepath.sip.transaction import Source
from telepath.sip.uri import SipUri


class DialogState(StrEnum):
    """§12: a confirmed dialog's states. An early one (our 180 carries our To tag, §12.1.1) has
    no :class:`Dialog`, made only at the 2xx: the UA ends the INVITE (487) on a BYE sent in it
    (§15, ``ua.py``)."""

    CONFIRMED = "confirmed"
    TERMINATING = "terminating"  # our BYE is in flight
    TERMINATED = "terminated"


@dataclass(eq=False)
class Dialog:
    """One dialog created by a 2xx to an INVITE (§12.1.1)."""

    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: str  # To header of the INVITE, with our tag
    remote_uri: str  # From header of the INVITE
    remote_target: SipUri  # Contact of the INVITE (§12.1.1)
    route_set: list[str]  # Record-Route of the INVITE, in order (§12.1.1)
    remote_cseq: int
    source: Source  # where the carrier's signalling comes from; in-dialog requests go there
    invite_cseq: int
    local_cseq: int = 1
    secure: bool = False  # §12.1.1: the INVITE's Request-URI was SIPS (our Contact is SIPS too)
    # host:port our Contact gives instead of the configured one (a NAT's address, learnt by an
    # outbound registration: where the carrier reaches us)
    contact_address: str | None = None
    # Digest username and password answering a 401/407 to our own requests in this dialog
    # (RFC 3261 §22.2-22.3); None: such a challenge ends the request like any other failure.
    credentials: tuple[str, str] | None = field(default=None, repr=False)
    state: DialogState = DialogState.CONFIRMED
    acked: bool = False
    timer_generation: dict[str, int] = field(default_factory=dict)
    # 2xx retransmission (§13.3.1.4): the last 2xx sent to an INVITE and its CSeq
    pending_2xx: bytes | None = None
    pending_2xx_cseq: int = 0
    retransmit_interval: float = 0.0
    reoffer_pending: bool = False  # a re-INVITE/UPDATE awaits the application's answer
    # session timer (RFC 4028) as last negotiated, and our own refreshes when we are refresher
    session_timer: Timer | None = None
    peer_allows_update: bool = False  # the caller's Allow listed UPDATE (RFC 3311 §5.1)
    local_sdp: bytes = b""  # the SDP of our last 2xx: what a re-INVITE refresh offers again
    refresh_method: str | None = None  # our refresh in flight ("UPDATE" / "INVITE"), if any
    refresh_asked: int = 0  # the interval that refresh asked for
    last_ack: tuple[int, bytes] | None = None  # our ACK to a 2xx of our re-INVITE (CSeq, wire)
    app_data: object = None

    @property
    def key(self) -> tuple[str, str, str]:
        """(Call-ID, local tag, remote tag): the dialog id of §12."""
        return (self.call_id, self.local_tag, self.remote_tag)

    def next_cseq(self) -> int:
        """The CSeq for our next request in this dialog (§12.2.1.1)."""
        self.local_cseq += 1
        return self.local_cseq


def request_target(remote_target: SipUri, route_set: list[str]) -> tuple[SipUri, list[str]]:
    """The Request-URI and the Route values of a request inside a dialog (RFC 3261 §12.2.1.1),
    the UAS's (the gateway's BYE) and the UAC's (the test dialler's ACK and BYE) alike.

    ``route_set`` is in the order the request passes the proxies: the INVITE's Record-Route
    for a UAS, the 2xx's reversed for a UAC (§12.1.1, §12.1.2). A loose router first (``lr``):
    the request goes to the remote target, the route set as Route. A strict router first: it
    becomes the Request-URI, and the remote target is appended to the rest as the last Route.
    """
    routes = list(route_set)
    if not routes:
        return remote_target, routes
    first = parse_name_addr(routes[0]).uri
    if first.param("lr") is None:  # §19.1.1: lr is a URI parameter (not `;lrx`, nor an rr-param)
        return first, routes[1:] + [f"<{remote_target}>"]
    return remote_target, routes
