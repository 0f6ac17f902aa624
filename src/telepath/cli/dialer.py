"""``telepath call``: a small SIP test dialler (a UAC) for checking a trunk without a carrier.

It places one call with digest authentication (SHA-256 when offered, else MD5), plays a tone or
a WAV file as the caller, records what the agent says to a WAV file, hangs up after
``duration`` seconds (or when the agent hangs up) and prints a summary. An INVITE that had a
provisional response but no answer within ``ring_timeout_s`` is cancelled (RFC 3261 §9.1). The
ACK and the BYE follow the 2xx's route set (§12.1.2), so a record-routing proxy in front of the
gateway stays on their path.
Built from the same pure SIP/SDP cores and the same :class:`MediaSession` as the gateway, so it
exercises real code.

Transport from the target URI (RFC 3261 §19.1, §18): UDP by default, ``;transport=tcp`` for TCP,
``sips:`` or ``;transport=tls`` for TLS (port 5061 unless given; the gateway's certificate is
verified against the system's trust store, or ``ca_file``, for the URI's host). A host name is
located as RFC 3263 says (``transport/dns.py``: NAPTR — which may choose the transport —, SRV,
then A records; ``TELEPATH_DNS_SERVERS`` as for the gateway). Over a stream nothing is
retransmitted (§17.1.1.2) and every message of the call uses the one connection.

``srtp``: the offer is ``RTP/SAVP`` with an SDES key (RFC 4568) and the media SRTP; only over
TLS, as the gateway takes SDES keys nowhere else. ``srtp_suite`` picks the offered suite
(AES_CM_128_HMAC_SHA1_80 by default, every SDES peer has it; the AES-GCM ones of RFC 7714 to
check a peer that should take them).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from telepath.cli.call_audio import caller_audio
from telepath.cli.sip_link import Link, open_link, source_address, transport_of
from telepath.rtp.codecs import CodecSpec
from telepath.rtp.srtp_keys import SUITES
from telepath.sdp import SdpError, SessionDescription, create_offer, negotiate_offer_answer, parse
from telepath.sdp.negotiate import OFFER_SUITE
from telepath.sip.client_auth import answer_challenge
from telepath.sip.dialog import request_target
from telepath.sip.errors import SipParseError
from telepath.sip.headers import parse_name_addr
from telepath.sip.message import Headers, Request, Response, make_response
from telepath.sip.uri import SipUri, parse_uri, uri_host
from telepath.transport.dns import SipLocator
from telepath.transport.media_session import AudioReceived, MediaEnded, MediaSession
from telepath.transport.ports import PortLease, RtpPortAllocator

#: How long to wait for the answer once the gateway rings (a 1xx came), from the INVITE; the
#: call is cancelled then (RFC 3261 §9.1). A person lets a phone ring about this long.
RING_TIMEOUT_S = 60.0
#: After a CANCEL, how long to wait for the INVITE's final response: 64*T1 (RFC 3261 §9.1:
#: without one by then the client considers the INVITE cancelled, its transaction destroyed).
CANCEL_WAIT_S = 64 * 0.5
#: Stopped (Ctrl-C) while the INVITE rings, how long to wait for its final response after the
#: CANCEL: long enough for a gateway that answers at once, short for someone leaving.
STOP_WAIT_S = 5.0


class RingTimeout(TimeoutError):
    """The INVITE rang (a provisional response) but had no final response in time."""


@dataclass
class DialResult:
    """What happened on the call."""

    status: int = 0
    reason: str = ""
    setup_ms: float | None = None
    codec: str | None = None
    srtp: str | None = None  # the SRTP suite the call used, None for plain RTP
    received_ms: float = 0.0
    ended_by: str = ""
    cancelled: bool = False  # rang past ring_timeout_s: CANCEL sent (§9.1)
    error: str | None = None  # why an answered call could not go on (then hung up)
    recorded: bytes = b""
    log: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Dialog:
    """Where the call's requests go once a 2xx has set it up: the ACK and the BYE."""

    to_tag: str | None
    target: SipUri  # their Request-URI
    routes: list[str]  # their Route values

    @classmethod
    def of(cls, answer: Response, fallback: SipUri) -> _Dialog:
        """The dialog ``answer`` (a 2xx) sets up (RFC 3261 §12.1.2): its To tag, its Contact as
        the remote target, and its Record-Route reversed as the route set — a proxy in front of
        the gateway record-routes to stay on the dialog's path, and one routing by Route
        (loose routing) refuses or misroutes requests without it. The Request-URI and Route
        follow §12.2.1.1 as the gateway's own do (a strict router becomes the URI)."""
        contacts = answer.headers.get_all("Contact")
        remote_target = parse_name_addr(contacts[0]).uri if contacts else fallback
        route_set = answer.headers.get_all("Record-Route")[::-1]
        target, routes = request_target(remote_target, route_set)
        return cls(answer.to.tag, target, routes)


class Dialer:
    """One outbound test call."""

    def __init__(
        self,
        target: str,
        *,
        username: str,
        password: str | None,
        local_ip: str | None = None,
        caller: str = "+15550000000",
        rtp_ports: tuple[int, int] = (40000, 40998),
        ca_file: Path | None = None,
        srtp: bool = False,
        srtp_suite: str = OFFER_SUITE.name,
        locator: SipLocator | None = None,
    ) -> None:
        self.uri: SipUri = parse_uri(target)
        if not self.uri.is_sip:  # http:, tel: … parse (opaque, or a number): no host to call
            raise SipParseError(f"not a sip: or sips: URI: {target[:80]!r}")
        self.locator = locator or SipLocator()
        self.transport = transport_of(self.uri)
        if srtp and self.transport != "TLS":
            raise ValueError("SRTP needs a TLS target (sips: or ;transport=tls)")
        if srtp_suite not in SUITES:
            raise ValueError(f"unknown SRTP suite {srtp_suite!r}: one of {', '.join(SUITES)}")
        self.srtp = srtp
        self.srtp_suite = SUITES[srtp_suite]
        self.ca_file = ca_file
        self.username = username
        self.password = password
        # Our address for SIP and RTP: as given, else the one the route to the gateway leaves
        # by (found per server in _connect). Bound to loopback the dialler could not even send
        # to a remote gateway, and its Via, Contact and SDP would send the answers nowhere.
        self.local_ip_override = local_ip
        self.local_ip = local_ip or "127.0.0.1"
        self.caller = caller
        self.rtp_ports = rtp_ports
        self.call_id = secrets.token_hex(12) + "@telepath-dialer"
        self.from_tag = secrets.token_hex(6)
        self.cseq = 0
        self.result = DialResult()
        # The INVITE in progress had a provisional response: it may be cancelled (§9.1).
        self.rang = False

    async def _connect(self) -> Link:
        """The link to the gateway, located as RFC 3263 says (NAPTR, SRV, then the host's
        addresses; a literal address or an explicit port directly): over TCP or TLS the first
        server that takes the connection; over UDP the first server (one call: no failover on
        a timeout). A NAPTR record may choose the transport of a URI that names none."""
        try:
            targets = await self.locator.locate(self.uri)
        except ValueError as exc:
            raise OSError(str(exc)) from None
        if not targets:
            raise OSError(f"cannot resolve {self.uri.host}")
        failure: OSError | None = None
        for target in targets:
            if self.srtp and target.transport != "TLS":
                continue  # SRTP keys go over TLS only
            try:
                self.local_ip = self.local_ip_override or source_address(target.host)
                link = await open_link(target, self.uri.host, self.local_ip, self.ca_file)
            except OSError as exc:  # no route, refused, TLS failed: the next server
                failure = exc
                continue
            self.transport = target.transport
            return link
        raise failure or OSError(f"no TLS server for {self.uri.host}")

    def _request(
        self,
        method: str,
        local_port: int,
        *,
        uri: SipUri | None = None,
        branch: str | None = None,
        to_tag: str | None = None,
        body: bytes = b"",
        auth: tuple[str, str] | None = None,
        cseq: int | None = None,
        routes: Sequence[str] = (),
    ) -> Request:
        h = Headers()
        branch = branch or "z9hG4bK" + secrets.token_hex(8)
        host = uri_host(self.local_ip)  # §25.1: an IPv6 address in brackets
        h.add("Via", f"SIP/2.0/{self.transport} {host}:{local_port};branch={branch};rport")
        h.add("Max-Forwards", "70")
        for route in routes:
            h.add("Route", route)
        h.add("From", f"<sip:{self.caller}@{host}>;tag={self.from_tag}")
        # §19.1.1: userinfo is optional; a target without one is called at its host
        user = f"{self.uri.user}@" if self.uri.user is not None else ""
        to = f"<sip:{user}{self.uri.host_port}>"
        h.add("To", to + (f";tag={to_tag}" if to_tag else ""))
        h.add("Call-ID", self.call_id)
        h.add("CSeq", f"{cseq if cseq is not None else self.cseq} {method}")
        h.add("Contact", f"<{self._contact(local_port)}>")
        h.add("User-Agent", "telepath-dialer")
        if auth is not None:  # (header, credentials)
            h.add(*auth)
        if body:
            h.add("Content-Type", "application/sdp")
        return Request(h, body, method, uri or self.uri)

    def _contact(self, local_port: int) -> str:
        host = uri_host(self.local_ip)  # §25.1: an IPv6 address in brackets
        if self.transport == "TLS":
            return f"sips:dialer@{host}:{local_port}"
        suffix = ";transport=tcp" if self.transport == "TCP" else ""
        return f"sip:dialer@{host}:{local_port}{suffix}"

    async def run(
        self,
        *,
        duration_s: float,
        tone_hz: float | None = 440.0,
        play: Path | None = None,
        timeout_s: float = 15.0,
        ring_timeout_s: float = RING_TIMEOUT_S,
    ) -> DialResult:
        """Place the call; returns when it has ended.

        ``timeout_s`` bounds the connection and the wait for the gateway's first response to
        the INVITE; once it has answered provisionally (1xx: it rings, the agent connects), the
        wait for the answer is ``ring_timeout_s`` from the INVITE, after which the call is
        cancelled (``result.cancelled``).
        """
        loop = asyncio.get_running_loop()
        result = self.result
        audio = caller_audio(duration_s, tone_hz, play)  # before dialling: raises CallOptionError
        sip = await asyncio.wait_for(self._connect(), timeout_s)
        local_port = sip.local_port
        allocator = RtpPortAllocator(*self.rtp_ports, host=self.local_ip)
        lease = allocator.allocate()
        try:
            offer = create_offer(
                local_address=self.local_ip,
                local_port=lease.port,
                session_id=random.randint(1, 2**31),
                session_version=1,
                preference=("PCMU", "PCMA"),
                srtp_key=secrets.token_bytes(self.srtp_suite.key_length) if self.srtp else None,
                srtp_suite=self.srtp_suite,
            )
            started = loop.time()
            answer, auth = await self._place(
                sip, local_port, offer.to_bytes(), timeout_s, ring_timeout_s
            )
            if answer is None:
                return result
            dialog, ack = self._acknowledge(sip, local_port, answer, auth)
            try:
                # a 200 that crossed our CANCEL, or one we cannot route in, is only ended, below
                if not result.cancelled and result.error is None:
                    result.setup_ms = (loop.time() - started) * 1000
                    await self._talk(sip, lease, offer, answer, audio, duration_s, ack)
            except SdpError as exc:
                result.setup_ms = None
                result.error = f"the gateway's SDP answer is unusable: {exc}"
            except BaseException:
                # An error or Ctrl-C while the call is up: it is ended all the same (RFC 3261
                # §15), or the gateway keeps it, and its agent, until its media timeout.
                await self._bye(sip, local_port, dialog)
                raise
            if result.ended_by != "agent":
                # RFC 3261 §15: we end the call — the duration is over, a 200 crossed our
                # CANCEL (§9.1: a CANCEL does nothing to an answered request), or the SDP
                # answer is unusable (§13.2.2.4: acknowledged, then BYE at once).
                await self._bye(sip, local_port, dialog)
            return result
        finally:
            lease.release()  # idempotent: the media session, if one opened, released it
            sip.close()

    def _acknowledge(
        self, sip: Link, local_port: int, answer: Response, auth: tuple[str, str] | None
    ) -> tuple[_Dialog, Request]:
        """Send the ACK for ``answer``, the INVITE's 2xx; the dialog it set up and the ACK.

        RFC 3261 §13.2.2.4: the ACK for a 2xx is a request of its own, end to end, and "MUST
        contain the same credentials as the INVITE" (a proxy authenticating every request would
        refuse it otherwise). The ACK for a non-2xx needs none: it is part of the INVITE's
        transaction, hop by hop (§17.1.1.3).
        """
        try:
            dialog = _Dialog.of(answer, self.uri)
        except SipParseError as exc:
            # §12.1.2: no route set (nor remote target) can be made of a Contact or Record-Route
            # that does not parse (§20.10, §20.30); the 2xx is acknowledged all the same, to the
            # INVITE's URI, and the call ended at once (run: no media, then BYE).
            dialog = _Dialog(answer.to.tag, self.uri, [])
            self.result.error = f"the gateway's 2xx has no usable Contact or Record-Route: {exc}"
        ack = self._request(
            "ACK",
            local_port,
            uri=dialog.target,
            to_tag=dialog.to_tag,
            cseq=self.cseq,
            auth=auth,
            routes=dialog.routes,
        )
        sip.send(ack.to_bytes())
        return dialog, ack

    def _acknowledge_failure(
        self, sip: Link, local_port: int, branch: str, final: Response
    ) -> None:
        """Send the ACK for the INVITE's non-2xx ``final``, in its transaction (§17.1.1.3)."""
        ack = self._request("ACK", local_port, branch=branch, to_tag=final.to.tag, cseq=self.cseq)
        sip.send(ack.to_bytes())

    async def _talk(
        self,
        sip: Link,
        lease: PortLease,
        offer: SessionDescription,
        answer: Response,
        audio: tuple[bytes, int] | None,
        duration_s: float,
        ack: Request,
    ) -> None:
        """Media both ways until the duration is over or the gateway hangs up; ``ack`` is
        sent again for each retransmission of the 2xx it acknowledged."""
        result = self.result
        media = await self._open_media(lease, offer, answer)
        try:
            if audio is not None:
                media.play_pcm(*audio)
            recorded = bytearray()
            result.ended_by = await self._converse(sip, media, recorded, duration_s, ack)
            result.recorded = bytes(recorded)
            result.received_ms = len(recorded) / 16
        finally:
            await media.close()

    async def _open_media(
        self, lease: PortLease, offer: SessionDescription, answer: Response
    ) -> MediaSession:
        """The call's media as the offer and the gateway's answer agree (raises SdpError)."""
        negotiated = negotiate_offer_answer(offer, parse(answer.body))
        self.result.codec = negotiated.codec.name
        self.result.srtp = None if negotiated.srtp is None else negotiated.srtp.suite.name
        return await MediaSession.open(
            lease,
            remote=(negotiated.remote_address, negotiated.remote_port),
            codec=CodecSpec(negotiated.codec.name, negotiated.codec.payload_type),
            dtmf_payload_type=negotiated.dtmf_payload_type,
            # we offered: the gateway sends with our offer's numbers (RFC 3264 §5.1)
            recv_payload_type=negotiated.recv_payload_type,
            recv_dtmf_payload_type=negotiated.recv_dtmf_payload_type,
            inactivity_timeout_s=0,
            srtp=negotiated.srtp,
        )

    async def _place(
        self, sip: Link, local_port: int, sdp: bytes, timeout_s: float, ring_timeout_s: float
    ) -> tuple[Response | None, tuple[str, str] | None]:
        """Send the INVITE, answering one digest challenge, cancelling it when it rings too
        long. The 2xx that answered it (None: the call failed, the result says why) and the
        credentials the INVITE carried."""
        result = self.result
        auth: tuple[str, str] | None = None
        for _attempt in range(3):
            self.cseq += 1
            branch = "z9hG4bK" + secrets.token_hex(8)
            invite = self._request("INVITE", local_port, branch=branch, body=sdp, auth=auth)
            self.rang = False
            try:
                final = await self._transact(sip, invite, timeout_s, ring_timeout_s=ring_timeout_s)
            except asyncio.CancelledError:
                if self.rang:  # §9.1: no CANCEL before a provisional response
                    await self._stop_ringing(sip, local_port, invite, branch, auth)
                raise
            except RingTimeout:
                # RFC 3261 §9.1: the INVITE had a provisional response, so it is cancelled
                # rather than abandoned (the gateway would answer a call nobody acknowledges);
                # what ends the INVITE is its own final response: 487, or a 200 that crossed.
                result.cancelled = True
                result.log.append(f"no answer {ring_timeout_s:g} s after the INVITE: CANCEL")
                final = await self._transact(
                    sip, cancel_of(invite), CANCEL_WAIT_S, answer_to="INVITE"
                )
            result.status, result.reason = final.status, final.reason
            result.log.append(f"INVITE → {final.status} {final.reason}")
            if final.status >= 300:
                self._acknowledge_failure(sip, local_port, branch, final)
            if 200 <= final.status < 300:
                return final, auth
            if final.status not in (401, 407) or auth is not None or result.cancelled:
                break
            if self.password is None:  # e.g. meant for a trunk with sip_auth address
                result.log.append("the gateway asks for a digest password (--password)")
                break
            name = "WWW-Authenticate" if final.status == 401 else "Proxy-Authenticate"
            answered = answer_challenge(
                final.headers.get_all(name),
                method="INVITE",
                uri=str(self.uri),
                username=self.username,
                password=self.password,
            )
            if answered is None:
                result.log.append("the gateway's challenge uses no algorithm we support")
                break
            # RFC 3261 §22.2: a 401 is answered in Authorization; §22.3: a 407 (a proxy's
            # challenge) in Proxy-Authorization, which is the header a proxy reads.
            header = "Authorization" if final.status == 401 else "Proxy-Authorization"
            auth = (header, answered[0])
        return None, auth

    async def _stop_ringing(
        self,
        sip: Link,
        local_port: int,
        invite: Request,
        branch: str,
        auth: tuple[str, str] | None,
    ) -> None:
        """Stopped (Ctrl-C) while ``invite`` rings: cancel it (RFC 3261 §9.1) on the way out, as
        the ring timeout does, or the gateway answers a call nobody acknowledges and keeps it,
        and its agent, until it gives up on the ACK. Its final response is waited for
        :data:`STOP_WAIT_S` at most and acknowledged: a 487 in its transaction, a 200 that
        crossed the CANCEL end to end, then hung up (§15)."""
        self.result.cancelled = True
        self.result.log.append("stopped while the INVITE rang: CANCEL")
        try:
            final = await self._transact(sip, cancel_of(invite), STOP_WAIT_S, answer_to="INVITE")
        except TimeoutError:
            return
        self.result.status, self.result.reason = final.status, final.reason
        self.result.log.append(f"INVITE → {final.status} {final.reason}")
        if final.status >= 300:
            self._acknowledge_failure(sip, local_port, branch, final)
        else:
            dialog, _ack = self._acknowledge(sip, local_port, final, auth)
            await self._bye(sip, local_port, dialog)

    async def _bye(self, sip: Link, local_port: int, dialog: _Dialog) -> None:
        """End the call (RFC 3261 §15.1.1); its answer is logged, waited for 5 s at most."""
        self.cseq += 1
        bye = self._request(
            "BYE", local_port, uri=dialog.target, to_tag=dialog.to_tag, routes=dialog.routes
        )
        with contextlib.suppress(TimeoutError):
            final = await self._transact(sip, bye, 5)
            self.result.log.append(f"BYE → {final.status} {final.reason}")

    async def _transact(
        self,
        sip: Link,
        request: Request,
        timeout_s: float,
        *,
        ring_timeout_s: float | None = None,
        answer_to: str | None = None,
    ) -> Response:
        """Send ``request`` until it is answered — retransmitted over UDP (RFC 3261 Timer A/E
        style) until a response comes, sent once over a stream (§17.1.1.2) — and return the
        final response to ``answer_to`` with the same CSeq number: the request's own method by
        default, ``INVITE`` for a CANCEL (what ends the call is the INVITE's answer, §9.1).

        Raises:
            TimeoutError: no final response within ``timeout_s``.
            RingTimeout: with ``ring_timeout_s``: a provisional response came, and no final one
                ``ring_timeout_s`` after the request was sent.
        """
        wanted = answer_to or request.method
        data = request.to_bytes()
        loop = asyncio.get_running_loop()
        sent = loop.time()
        deadline = sent + timeout_s
        rang = False
        interval = 0.5
        answered = sip.reliable  # nothing to retransmit over a stream
        sip.send(data)
        next_retransmit = sent + interval
        while True:
            remaining = min(deadline, next_retransmit) - loop.time()
            try:
                msg = await asyncio.wait_for(sip.queue.get(), max(0.01, remaining))
            except TimeoutError:
                if loop.time() >= deadline:
                    if rang:
                        raise RingTimeout from None
                    raise
                if not answered:
                    sip.send(data)
                interval = min(interval * 2, 4.0)
                next_retransmit = loop.time() + interval
                continue
            if not isinstance(msg, Response) or msg.call_id != self.call_id:
                continue
            if msg.cseq.seq != request.cseq.seq:
                continue
            if msg.cseq.method == request.method:
                answered = True
            if msg.cseq.method != wanted:
                continue
            if msg.status >= 200:
                return msg
            if request.method == "INVITE":
                self.rang = True
            if ring_timeout_s is not None and not rang:
                rang = True  # it rings: the answer may take as long as ring_timeout_s
                deadline = sent + ring_timeout_s

    async def _converse(
        self,
        sip: Link,
        media: MediaSession,
        recorded: bytearray,
        duration_s: float,
        ack: Request,
    ) -> str:
        loop = asyncio.get_running_loop()

        async def record() -> None:
            async for event in media.events():
                if isinstance(event, AudioReceived):
                    recorded.extend(event.pcm if event.sample_rate == 8000 else b"")
                elif isinstance(event, MediaEnded):
                    return

        async def watch_bye() -> str:
            while True:
                msg = await sip.queue.get()
                if isinstance(msg, Request) and msg.method == "BYE":
                    sip.send(make_response(msg, 200).to_bytes())
                    return "agent"
                if isinstance(msg, Response) and acknowledges(ack, msg):
                    # RFC 3261 §13.2.2.4: an ACK for each 2xx received. The gateway sends its
                    # 200 again until an ACK comes (§13.3.1.4): ours was lost, so the same
                    # again — unanswered, the gateway ends the call at 64*T1.
                    sip.send(ack.to_bytes())

        rec = loop.create_task(record())
        bye = loop.create_task(watch_bye())
        try:
            done, _ = await asyncio.wait({bye}, timeout=duration_s)
            return "agent" if bye in done else "dialer"
        finally:
            bye.cancel()
            rec.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await rec


def acknowledges(ack: Request, response: Response) -> bool:
    """Whether ``response`` is a 2xx that ``ack`` acknowledges: the INVITE's answer (its Call-ID
    and CSeq number) from the same dialog (its To tag) — a retransmission of the 2xx."""
    return (
        200 <= response.status < 300
        and response.call_id == ack.call_id
        and (response.cseq.seq, response.cseq.method) == (ack.cseq.seq, "INVITE")
        and response.to.tag == ack.to.tag
    )


def cancel_of(invite: Request) -> Request:
    """The CANCEL for ``invite`` (RFC 3261 §9.1): its Request-URI, Call-ID, To, From and CSeq
    number, method CANCEL, and a single Via equal to its top Via — the same branch, by which
    the server matches the CANCEL to the INVITE's transaction. No body, no Contact."""
    h = Headers()
    h.add("Via", invite.headers.get_all("Via")[0])
    h.add("Max-Forwards", "70")
    for name in ("From", "To", "Call-ID"):
        h.add(name, invite.headers.get(name) or "")
    h.add("CSeq", f"{invite.cseq.seq} CANCEL")
    h.add("User-Agent", "telepath-dialer")
    return Request(h, b"", "CANCEL", invite.uri)
