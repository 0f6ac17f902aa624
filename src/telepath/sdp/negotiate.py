"""RFC 3264 offer/answer for one audio stream: G.722, PCMU or PCMA plus RFC 4733 DTMF.

Telepath accepts exactly one audio stream per call: the first ``m=audio`` line that has a
codec in common with us over a profile the call's :class:`MediaSecurity` allows — plain
``RTP/AVP``, or ``RTP/SAVP`` (SRTP, RFC 3711) with an ``a=crypto`` line we can honour
(SDES, RFC 4568; ``sdp/crypto.py``). Every other ``m=`` line is answered with port 0 (RFC 3264
§6: the answer has the same number of ``m=`` lines, in the same order, and a stream is
rejected by setting its port to zero); an offer with nothing acceptable raises
:class:`NoCommonCodec` (answer 488 with its ``warning`` header).

SRTP (RFC 4568 §6.1): the answer keeps the offered profile, repeats the tag and suite of the one
``a=crypto`` line we chose and carries our own key; each side encrypts with its own key. The
keys travel in the SDP, so the caller decides with :class:`MediaSecurity` whether this call's
signalling is protected enough to carry them (RFC 4568 §8.3: TLS) — this module only follows it.

Codecs are matched by encoding name (case-insensitively) and clock rate from the ``a=rtpmap``
lines, or from the RFC 3551 §6 static payload types 0 (PCMU), 8 (PCMA) and 9 (G722) when a
peer omits the rtpmap. We choose by *our* preference order among what the offer contains and
answer with the offer's payload type numbers (RFC 3264 §6.1: for sendrecv streams the answer
uses the offer's payload type numbers). We always send 20 ms packets (``a=ptime:20``).

Payload type numbers per direction (RFC 3264 §5.1, §6.1): the numbers in each side's SDP are
those it expects to *receive*. As the answerer we reuse the offer's, so one number per format
serves both ways; as the offerer the answer SHOULD, not MUST, keep ours, so we send with the
answer's numbers and receive with our offer's (``NegotiatedMedia.recv_payload_type``,
``recv_dtmf_payload_type``).

Media addresses: the accepted stream's ``c=`` address must be an IP address; a name (RFC 4566
§5.7 allows an FQDN) raises :class:`NoCommonCodec` with warn-code 301, "Incompatible network
address formats" (RFC 3261 §20.43). Decision: refused, not resolved, as rtpengine does —
resolving would put a DNS query of the caller's choosing, its failures and its delays, into
call set-up and into every re-offer; SIP trunks give addresses. An IP address of a version
the call's RTP socket cannot send to is accepted: the media layer sends nothing there and
latches onto the caller's RTP (linphone 5.1 gives its IPv6 address in ``c=`` even with IPv6
off, and sends its RTP over IPv4). An address that is not one host's is refused the same
way (301), since the agent's audio goes there until the caller's RTP latches: a multicast
group (224.0.0.0/4, ff00::/8; we do no multicast RTP), the limited broadcast address, and an
unspecified address other than the hold address ``0.0.0.0``/``::`` (RFC 3264 §8.4), which
Linux delivers locally — IPv4-mapped IPv6 spellings included. Loopback, private and
link-local addresses are unicast, and accepted (tests, LANs).

Session versions (RFC 3264 §8): the caller owns ``o=`` session id and version. For a new
dialog pass any id and a starting version; for a re-INVITE/UPDATE, build the answer with the
previous version and call :func:`next_session_version` to learn whether it must be bumped
(only when the answer differs from the previous one).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, replace

from telepath.rtp.codecs import SAME_AS_SEND, STATIC_PAYLOAD_TYPES, CodecName, CodecSpec
from telepath.rtp.srtp_keys import SUITES, SrtpKeys, SrtpSuite
from telepath.sdp.crypto import format_crypto, usable_crypto
from telepath.sdp.errors import (
    WARN_INCOMPATIBLE_ADDRESS_FORMAT,
    WARN_INCOMPATIBLE_MEDIA_FORMAT,
    WARN_INCOMPATIBLE_TRANSPORT,
    WARN_MEDIA_TYPE_NOT_AVAILABLE,
    NoCommonCodec,
    SdpError,
)
from telepath.sdp.model import (
    Direction,
    MediaDescription,
    Origin,
    SessionDescription,
    address_type,
    is_hold_address,
)

#: Every codec we negotiate, by its SDP encoding name (RFC 3551): the names
#: ``TELEPATH_SIP_CODECS`` and a trunk's ``codecs`` may list, in any case.
SUPPORTED_CODECS: tuple[CodecName, ...] = ("G722", "PCMU", "PCMA")

#: Our codec order when the caller configures none: wideband first.
DEFAULT_PREFERENCE: tuple[str, ...] = SUPPORTED_CODECS

#: The packetization time we send (and announce with a=ptime, RFC 4566 §6).
PTIME_MS = 20

#: The RTP clock rate of every codec we support (G.722's is 8000 too, RFC 3551 §4.5.2).
_CLOCK_RATE = 8000

#: RFC 4733 §3.2: the DTMF events 0-9, *, #, A-D (0-15) and flash (16).
DTMF_EVENTS = "0-16"

_SUPPORTED: dict[str, CodecName] = {name: name for name in SUPPORTED_CODECS}
#: RFC 919 §7: the limited broadcast address, which no c= line may give us to send to.
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
_PLAIN_RTP = "RTP/AVP"
_SECURE_RTP = "RTP/SAVP"  # RFC 3711 §12; the feedback profiles (SAVPF) are WebRTC's, not ours
#: The suite we offer (RFC 4568 §6.2.1; every SDES implementation has it).
OFFER_SUITE = SUITES["AES_CM_128_HMAC_SHA1_80"]


def _check_media_address(address: str) -> None:
    """Refuse a ``c=`` address that is a name, or no unicast address (module docstring).

    Raises:
        NoCommonCodec: warn-code 301 (answer 488, RFC 3261 §21.4.26). The message names no
            address (it is logged).
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise NoCommonCodec(
            "the media address is a name, not an IP address",
            warn_code=WARN_INCOMPATIBLE_ADDRESS_FORMAT,
            detail="a media address must be an IP address",
        ) from None
    if not _unicast(ip) and not is_hold_address(address):
        raise NoCommonCodec(
            "the media address is multicast, broadcast or unspecified",
            warn_code=WARN_INCOMPATIBLE_ADDRESS_FORMAT,
            detail="a media address must be a unicast IP address",
        )


def _unicast(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether ``ip`` is one host's address: not multicast, broadcast or unspecified (an
    IPv4-mapped IPv6 address judged by its IPv4 address, where a dual-stack socket sends)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (ip.is_multicast or ip.is_unspecified or ip == _BROADCAST)


def _rtcp_address(m: MediaDescription) -> str | None:
    """The ``a=rtcp`` line's address (RFC 3605 §2.1) when it names a unicast IP address; None
    — RTCP goes to the RTP address — when it gives none, ``0.0.0.0`` (no address), or one we
    cannot use (a name is not resolved, module docstring; no multicast or broadcast)."""
    address = m.rtcp_address
    if address is None:
        return None
    try:
        return address if _unicast(ipaddress.ip_address(address)) else None
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class MediaSecurity:
    """What one negotiation may do about SRTP; the default is plain RTP only.

    Attributes:
        key: our SRTP key material for this call, or None when SRTP cannot be used here (SRTP
            off, or signalling that would expose the keys). A suite takes its first
            ``key_length`` octets (:data:`~telepath.rtp.srtp_keys.KEY_MATERIAL` random octets
            serve every suite); a line whose suite needs more is passed over.
        required: plain ``RTP/AVP`` is refused.
        why_not: when ``key`` is None, why (the text of a 488's Warning).
        suite: mid-call, the call's suite, which cannot change (our key and libsrtp's context
            stay for the whole call): an offer's lines of other suites are passed over.
    """

    key: bytes | None = None
    required: bool = False
    why_not: str = "SRTP is not enabled"
    suite: SrtpSuite | None = None

    def takes(self, suite: SrtpSuite) -> bool:
        """Whether an offered line of ``suite`` can be answered with our key."""
        return (
            self.key is not None
            and len(self.key) >= suite.key_length
            and self.suite in (None, suite)
        )


_CAPS: dict[Direction, frozenset[str]] = {
    "sendrecv": frozenset({"send", "recv"}),
    "sendonly": frozenset({"send"}),
    "recvonly": frozenset({"recv"}),
    "inactive": frozenset(),
}
_FLIP = {"send": "recv", "recv": "send"}


@dataclass(frozen=True, slots=True)
class NegotiatedMedia:
    """What an offer/answer exchange settled for the call's audio stream.

    Attributes:
        codec: the codec, and the payload type we SEND it with (the peer's SDP number).
        dtmf_payload_type: the telephone-event/8000 payload type (RFC 4733) we send events
            with, None if absent.
        remote_address: where to send RTP (the stream's effective ``c=`` address).
        remote_port: where to send RTP; 0 means the stream is disabled.
        remote_rtcp_port: where to send RTCP: ``a=rtcp`` (RFC 3605) or else RTP port + 1
            (RFC 3550 §11); None when the stream is disabled, or on RTP port 65535 without
            ``a=rtcp`` (there is no next port: no RTCP is sent).
        direction: OUR direction (``sendonly``: we send but do not expect media, ...).
        ptime: the packetization time we send, always 20 ms.
        on_hold: the peer put us on hold (it will not receive: sendonly/inactive, or the
            RFC 2543 ``c=0.0.0.0`` form, RFC 3264 §8.4).
        srtp: the SRTP keys when the stream is ``RTP/SAVP``; None for plain RTP.
        recv_payload_type: the payload type the peer sends the codec with: the number in OUR
            SDP (RFC 3264 §5.1). It differs from ``codec.payload_type`` only when we offered
            and the answer renumbered the codec (§6.1: SHOULD, not MUST, keep ours). Default
            (:data:`SAME_AS_SEND`): ``codec.payload_type``.
        recv_dtmf_payload_type: likewise for telephone-event (None: the peer sends no
            events). Default: ``dtmf_payload_type``.
        remote_rtcp_address: the address ``a=rtcp`` names (RFC 3605 §2.1), None for the RTP
            address (:attr:`rtcp_destination` pairs them).
    """

    codec: CodecSpec
    dtmf_payload_type: int | None
    remote_address: str
    remote_port: int
    remote_rtcp_port: int | None
    direction: Direction
    ptime: int
    on_hold: bool
    srtp: SrtpKeys | None = None
    recv_payload_type: int = SAME_AS_SEND
    recv_dtmf_payload_type: int | None = SAME_AS_SEND
    remote_rtcp_address: str | None = None

    @property
    def rtcp_destination(self) -> tuple[str, int] | None:
        """Where to send RTCP: the ``a=rtcp`` address, else the RTP address, with
        :attr:`remote_rtcp_port`; None when there is no RTCP port."""
        if not self.remote_rtcp_port:
            return None
        return (self.remote_rtcp_address or self.remote_address, self.remote_rtcp_port)

    def __post_init__(self) -> None:
        """Resolve :data:`SAME_AS_SEND` once, so readers (and equality) see plain numbers."""
        if self.recv_payload_type == SAME_AS_SEND:
            object.__setattr__(self, "recv_payload_type", self.codec.payload_type)
        if self.recv_dtmf_payload_type == SAME_AS_SEND:
            object.__setattr__(self, "recv_dtmf_payload_type", self.dtmf_payload_type)

    @property
    def may_send(self) -> bool:
        """True if we should send RTP to the peer."""
        return "send" in _CAPS[self.direction]

    @property
    def may_receive(self) -> bool:
        """True if the peer may send RTP to us."""
        return "recv" in _CAPS[self.direction]


def codec_preference(preference: Sequence[str]) -> list[CodecName]:
    """``["pcma", "PCMU", "PCMA"]`` → ``["PCMA", "PCMU"]``: codec names in any case, first
    mention kept. The one check of a configured preference: ``telepath serve`` refuses to
    start on what it raises (``cli/preflight.py``), so no call meets it.

    Raises:
        ValueError: a name is not one of :data:`SUPPORTED_CODECS`, or none is given.
    """
    supported = f"(supported: {', '.join(SUPPORTED_CODECS)})"
    names: list[CodecName] = []
    for raw in preference:
        name = _SUPPORTED.get(raw.upper())
        if name is None:
            raise ValueError(f"unsupported codec {raw!r} {supported}")
        if name not in names:
            names.append(name)
    if not names:
        raise ValueError(f"no codec listed {supported}")
    return names


def _from_caps(caps: frozenset[str]) -> Direction:
    for direction, value in _CAPS.items():
        if value == caps:
            return direction
    raise AssertionError(caps)  # pragma: no cover - _CAPS covers every subset


def _reverse(direction: Direction) -> frozenset[str]:
    return frozenset(_FLIP[c] for c in _CAPS[direction])


def _is_rtp_audio(m: MediaDescription) -> bool:
    return m.media.lower() == "audio" and m.proto.upper() in (_PLAIN_RTP, _SECURE_RTP)


def _acceptable(m: MediaDescription, security: MediaSecurity) -> tuple[bool, SrtpKeys | None]:
    """Whether an offered audio stream's profile is acceptable, and its SRTP keys if secure."""
    proto = m.proto.upper()
    if proto == _PLAIN_RTP:
        return not security.required, None
    if proto != _SECURE_RTP or security.key is None:
        return False, None
    crypto = usable_crypto(m.attribute_values("crypto"), security.takes)
    if crypto is None:
        return False, None
    local_key = security.key[: crypto.suite.key_length]
    return True, SrtpKeys(crypto.suite, crypto.tag, local_key, crypto.key)


def _find_codec(
    m: MediaDescription, names: Sequence[CodecName], fallback: MediaDescription | None = None
) -> CodecSpec | None:
    """The first of ``names`` present in ``m``, with ``m``'s payload type number."""
    rtpmap = m.rtpmap()
    extra = fallback.rtpmap() if fallback is not None else {}
    pts = m.payload_types()
    for name in names:
        for pt in pts:
            encoding, clock, channels = rtpmap.get(pt) or extra.get(pt) or ("", 0, 0)
            if encoding.upper() == name and clock == _CLOCK_RATE and channels == 1:
                return CodecSpec(name, pt)
    return None


def _telephone_event(m: MediaDescription, fallback: MediaDescription | None = None) -> int | None:
    """The payload type of telephone-event/8000 in ``m`` (RFC 4733 §7.1.1), if any."""
    rtpmap = m.rtpmap()
    extra = fallback.rtpmap() if fallback is not None else {}
    for pt in m.payload_types():
        encoding, clock, _ = rtpmap.get(pt) or extra.get(pt) or ("", 0, 0)
        if encoding.lower() == "telephone-event" and clock == _CLOCK_RATE:
            return pt
    return None


def _rtcp_port(m: MediaDescription) -> int | None:
    if m.port == 0:
        return None
    if m.rtcp_port is not None:
        return m.rtcp_port
    # RFC 3550 §11: RTCP uses the next higher port. We never answer a=rtcp-mux, so a peer
    # offering it must fall back to separate ports (RFC 5761 §5.1.1).
    return m.port + 1 if m.port < 65535 else None


def _audio_section(
    port: int,
    codecs: Sequence[CodecSpec],
    dtmf_pt: int | None,
    direction: Direction,
    crypto: str | None = None,
    rtcp_port: int | None = None,
) -> MediaDescription:
    formats = [str(c.payload_type) for c in codecs]
    attributes: list[tuple[str, str | None]] = [
        ("rtpmap", f"{c.payload_type} {c.name}/{_CLOCK_RATE}") for c in codecs
    ]
    if dtmf_pt is not None:
        formats.append(str(dtmf_pt))
        attributes.append(("rtpmap", f"{dtmf_pt} telephone-event/{_CLOCK_RATE}"))
        attributes.append(("fmtp", f"{dtmf_pt} {DTMF_EVENTS}"))
    attributes.append(("ptime", str(PTIME_MS)))
    if rtcp_port is not None and rtcp_port != port + 1:
        # RFC 3605 §2.1: RTCP is not on the next port (a NAT mapped the two apart)
        attributes.append(("rtcp", str(rtcp_port)))
    attributes.append((direction, None))
    if crypto is not None:
        attributes.append(("crypto", crypto))
    return MediaDescription(
        media="audio",
        port=port,
        proto=_PLAIN_RTP if crypto is None else _SECURE_RTP,
        formats=formats,
        attributes=attributes,
    )


def _session(
    *,
    local_address: str,
    session_id: int,
    session_version: int,
    username: str,
    media: list[MediaDescription],
) -> SessionDescription:
    if not local_address or any(c in local_address for c in " \t\r\n/"):
        raise ValueError(f"invalid local address: {local_address!r}")
    addrtype = address_type(local_address)
    return SessionDescription(
        version=0,
        origin=Origin(username, session_id, session_version, "IN", addrtype, local_address),
        session_name="Telepath",
        connection_address=local_address,
        timing="0 0",  # RFC 3264 §5: t= SHOULD be 0 0 for SIP sessions
        media=media,
        connection_addrtype=addrtype,
    )


def _check_port(local_port: int) -> None:
    if not 1 <= local_port <= 65535:
        raise ValueError(f"local RTP port out of range: {local_port}")


def _no_common(
    offer: SessionDescription, names: Sequence[CodecName], security: MediaSecurity
) -> NoCommonCodec:
    live_audio = [m for m in offer.media if m.media.lower() == "audio" and m.port != 0]
    if not live_audio:
        return NoCommonCodec(
            "offer has no active audio stream", warn_code=WARN_MEDIA_TYPE_NOT_AVAILABLE
        )
    protos = {m.proto.upper() for m in live_audio}
    if not any(_acceptable(m, security)[0] for m in live_audio):
        profiles = ", ".join(sorted(protos))
        if security.required and protos <= {_PLAIN_RTP}:
            why = "plain RTP is refused here: SRTP (RTP/SAVP with a=crypto) is required"
        elif _SECURE_RTP in protos and security.key is None:
            why = security.why_not
        elif _SECURE_RTP in protos:
            if security.suite is None:
                suites = ", ".join(SUITES)
            else:
                suites = f"this call's crypto suite {security.suite.name} (it cannot change)"
            why = f"no usable a=crypto line: we take {suites}, one key, no MKI or session params"
        else:
            why = "Telepath supports RTP/AVP and RTP/SAVP"
        srtp_related = security.required or _SECURE_RTP in protos
        return NoCommonCodec(
            f"offer requires {profiles}; {why}",
            warn_code=WARN_INCOMPATIBLE_TRANSPORT,
            detail=why if srtp_related else None,
        )
    offered = sorted(
        {f"{enc}/{clock}" for m in live_audio for enc, clock, _ in m.rtpmap().values()}
    )
    return NoCommonCodec(
        f"no common audio codec: offered {', '.join(offered) or 'nothing known'}; "
        f"we support {', '.join(f'{n}/{_CLOCK_RATE}' for n in names)}",
        warn_code=WARN_INCOMPATIBLE_MEDIA_FORMAT,
    )


def _answer(
    offer: SessionDescription,
    *,
    local_address: str,
    local_port: int,
    session_id: int,
    session_version: int,
    names: Sequence[CodecName],
    username: str,
    security: MediaSecurity,
    rtcp_port: int | None = None,
) -> tuple[SessionDescription, NegotiatedMedia]:
    _check_port(local_port)
    accepted: tuple[int, CodecSpec, SrtpKeys | None] | None = None
    for index, m in enumerate(offer.media):
        if m.port == 0 or not _is_rtp_audio(m):
            continue
        ok, srtp = _acceptable(m, security)
        codec = _find_codec(m, names) if ok else None
        if codec is not None:
            accepted = index, codec, srtp
            break
    if accepted is None:
        raise _no_common(offer, names, security)
    index, codec, srtp = accepted
    offered = offer.media[index]
    remote_address = offer.media_connection_address(offered)
    if remote_address is None:
        raise SdpError("offered audio stream has no c= line (RFC 4566 §5.7)")
    _check_media_address(remote_address)
    dtmf_pt = _telephone_event(offered)
    offer_direction = offer.media_direction(offered)
    hold_address = is_hold_address(remote_address)
    # RFC 3264 §6.1: sendonly is answered recvonly, recvonly sendonly, inactive inactive.
    caps = _reverse(offer_direction)
    if hold_address:
        # RFC 3264 §8.4: c=0.0.0.0 means "do not send to me", whatever the attribute says.
        caps -= {"send"}
    direction = _from_caps(caps)

    media: list[MediaDescription] = []
    for i, m in enumerate(offer.media):
        if i == index:
            crypto = None if srtp is None else format_crypto(srtp.tag, srtp.suite, srtp.local_key)
            media.append(_audio_section(local_port, [codec], dtmf_pt, direction, crypto, rtcp_port))
        else:
            # RFC 3264 §6: rejected streams keep media, proto and formats, with port 0.
            media.append(
                MediaDescription(media=m.media, port=0, proto=m.proto, formats=list(m.formats))
            )
    answer = _session(
        local_address=local_address,
        session_id=session_id,
        session_version=session_version,
        username=username,
        media=media,
    )
    negotiated = NegotiatedMedia(
        codec=codec,
        dtmf_payload_type=dtmf_pt,
        remote_address=remote_address,
        remote_port=offered.port,
        remote_rtcp_port=_rtcp_port(offered),
        remote_rtcp_address=_rtcp_address(offered),
        direction=direction,
        ptime=PTIME_MS,
        on_hold=offer_direction in ("sendonly", "inactive") or hold_address,
        srtp=srtp,
    )
    return answer, negotiated


def negotiate_answer(
    offer: SessionDescription,
    *,
    local_address: str,
    local_port: int,
    session_id: int,
    session_version: int,
    preference: Sequence[str] = DEFAULT_PREFERENCE,
    username: str = "telepath",
    security: MediaSecurity = MediaSecurity(),
    rtcp_port: int | None = None,
) -> tuple[SessionDescription, NegotiatedMedia]:
    """Answer an initial offer (RFC 3264 §6).

    Args:
        offer: the parsed offer (INVITE or UPDATE body).
        local_address: our RTP address, written to ``c=`` and ``o=`` (IP4/IP6 by its form).
        local_port: our RTP port for the accepted stream.
        session_id: the ``o=`` session id for this dialog.
        session_version: the ``o=`` session version.
        preference: codec names in our order of preference (default G722, PCMU, PCMA).
        username: the ``o=`` username.
        security: whether SRTP may (or must) be used, with our key; default plain RTP only.
        rtcp_port: our RTCP port when it is not ``local_port + 1`` (then ``a=rtcp``, RFC
            3605); None: the next port.

    Returns:
        The answer and what it settled for the audio stream.

    Raises:
        NoCommonCodec: nothing acceptable (no audio, no acceptable profile or crypto line, no
            common codec; a name for the media address, warn-code 301): answer 488.
        SdpError: the accepted stream has no ``c=`` address: answer 400.
        ValueError: ``preference``, ``local_address`` or ``local_port`` is invalid (our bug).
    """
    return _answer(
        offer,
        local_address=local_address,
        local_port=local_port,
        session_id=session_id,
        session_version=session_version,
        names=codec_preference(preference),
        username=username,
        security=security,
        rtcp_port=rtcp_port,
    )


def negotiate_reoffer(
    offer: SessionDescription,
    *,
    current: NegotiatedMedia,
    local_address: str,
    local_port: int,
    session_id: int,
    session_version: int,
    preference: Sequence[str] = DEFAULT_PREFERENCE,
    username: str = "telepath",
    security: MediaSecurity = MediaSecurity(),
    rtcp_port: int | None = None,
) -> tuple[SessionDescription, NegotiatedMedia]:
    """Answer an offer inside an established dialog (re-INVITE or UPDATE, RFC 3264 §8).

    Handles hold/unhold (§8.4), a new remote address or port (§8.3.1), a codec change
    (§8.3.2) and a session refresh repeating the same SDP. The current codec is kept when
    the offer still contains it, so media does not switch codec needlessly; otherwise the
    usual preference applies. For an SRTP call pass ``security`` with the call's own key (RFC
    4568 §7.1.4 lets us keep it); the caller refuses a change of profile or key it cannot apply.

    An offer that disables the audio stream (§8.2: its port 0, and no audio stream live) is
    answered with port 0 on every ``m=`` line, same count and order (§6); the result has
    ``remote_port`` 0 and direction ``inactive`` and keeps the current codec, telephone-event
    type and SRTP keys, so the call keeps its media held until a later offer gives a port —
    the caller's, or ours: :func:`~telepath.sdp.create_reoffer` offers the stream live again
    from them (§8.1).

    Pass the *previous* answer's ``session_version``; then call
    :func:`next_session_version` with the previous and new answers and, when it differs,
    set ``answer.origin.session_version`` to it (RFC 3264 §8: bump only if anything changed).

    Raises:
        NoCommonCodec: the re-offer is unacceptable (a name for the media address among the
            reasons); answer 488 and keep the current session (RFC 3261 §14.2).
        SdpError: the accepted stream has no ``c=`` address.
    """
    names = codec_preference(preference)
    names = [current.codec.name, *(n for n in names if n != current.codec.name)]
    if any(_is_rtp_audio(m) for m in offer.media) and not any(
        m.port for m in offer.media if m.media.lower() == "audio"
    ):
        _check_port(local_port)
        return _disabled(
            offer,
            current,
            local_address=local_address,
            session_id=session_id,
            session_version=session_version,
            username=username,
        )
    return _answer(
        offer,
        local_address=local_address,
        local_port=local_port,
        session_id=session_id,
        session_version=session_version,
        names=names,
        username=username,
        security=security,
        rtcp_port=rtcp_port,
    )


def _disabled(
    offer: SessionDescription,
    current: NegotiatedMedia,
    *,
    local_address: str,
    session_id: int,
    session_version: int,
    username: str,
) -> tuple[SessionDescription, NegotiatedMedia]:
    """The answer to a re-offer that disables the audio stream (RFC 3264 §8.2): the same
    ``m=`` lines, in the same order, each with port 0 (§6); what the call keeps, held."""
    answer = _session(
        local_address=local_address,
        session_id=session_id,
        session_version=session_version,
        username=username,
        media=[
            MediaDescription(media=m.media, port=0, proto=m.proto, formats=list(m.formats))
            for m in offer.media
        ],
    )
    negotiated = replace(
        current,
        remote_port=0,
        remote_rtcp_port=None,
        remote_rtcp_address=None,
        direction="inactive",
        on_hold=True,
    )
    return answer, negotiated


def next_session_version(previous: SessionDescription, answer: SessionDescription) -> int:
    """The ``o=`` version ``answer`` should carry, given the ``previous`` one we sent.

    RFC 3264 §8: a new description that differs from the previous one MUST increment the
    version by one; an identical one (e.g. a session refresh) keeps it.
    """
    same_origin = replace(answer.origin, session_version=previous.origin.session_version)
    if replace(answer, origin=same_origin) == previous:
        return previous.origin.session_version
    return previous.origin.session_version + 1


def create_offer(
    *,
    local_address: str,
    local_port: int,
    session_id: int,
    session_version: int,
    preference: Sequence[str] = DEFAULT_PREFERENCE,
    dtmf_payload_type: int = 101,
    direction: Direction = "sendrecv",
    username: str = "telepath",
    srtp_key: bytes | None = None,
    srtp_suite: SrtpSuite = OFFER_SUITE,
    rtcp_port: int | None = None,
) -> SessionDescription:
    """Build an offer with our codecs in preference order plus telephone-event (RFC 3264 §5).

    Used for an INVITE without SDP (we offer in the 200 OK and the answer comes in the ACK)
    and for outbound test calls. Codecs use their RFC 3551 static payload types; DTMF uses
    ``dtmf_payload_type`` from the dynamic range 96-127 (RFC 3551 §3). With ``srtp_key`` the
    stream is ``RTP/SAVP`` with one ``a=crypto`` line: tag 1, ``srtp_suite`` (by default
    :data:`OFFER_SUITE`) and that key, which must be of the suite's length (ValueError).
    ``rtcp_port``: as for :func:`negotiate_answer`.
    """
    _check_port(local_port)
    if not 96 <= dtmf_payload_type <= 127:
        raise ValueError(f"telephone-event payload type must be 96-127: {dtmf_payload_type}")
    codecs = [CodecSpec(n, STATIC_PAYLOAD_TYPES[n]) for n in codec_preference(preference)]
    return _session(
        local_address=local_address,
        session_id=session_id,
        session_version=session_version,
        username=username,
        media=[
            _audio_section(
                local_port,
                codecs,
                dtmf_payload_type,
                direction,
                None if srtp_key is None else format_crypto(1, srtp_suite, srtp_key),
                rtcp_port,
            )
        ],
    )


def negotiated_stream(
    current: NegotiatedMedia,
    *,
    local_port: int,
    rtcp_port: int | None = None,
    direction: Direction = "sendrecv",
) -> MediaDescription:
    """The ``m=audio`` section offering the call's negotiated stream again (RFC 3264 §8.1:
    e.g. in the slot of a stream disabled with port 0): its codec and telephone-event with the
    numbers we receive them with (§5.1: an SDP's numbers are those its sender receives, so the
    answer can keep the call's codec), ``local_port``, ``direction``, and for SRTP the call's
    ``a=crypto`` line — its tag, suite and our key, which stay for the call (RFC 4568 §7.1.4).
    ``rtcp_port``: as for :func:`negotiate_answer`.

    Raises:
        ValueError: ``local_port`` is not a port (our bug).
    """
    _check_port(local_port)
    srtp = current.srtp
    return _audio_section(
        local_port,
        [CodecSpec(current.codec.name, current.recv_payload_type)],
        current.recv_dtmf_payload_type,
        direction,
        None if srtp is None else format_crypto(srtp.tag, srtp.suite, srtp.local_key),
        rtcp_port,
    )


def negotiate_offer_answer(
    offer_we_sent: SessionDescription, answer: SessionDescription
) -> NegotiatedMedia:
    """Interpret the peer's answer to our offer (ACK body, or a 200 OK to our INVITE).

    The first stream that we offered as RTP audio and the peer accepted (port != 0) is
    used, with the first payload type in the answer that is one of our codecs (RFC 3264
    §6.1: the answer lists formats in the answerer's preference order). We send the codec and
    telephone-event with the answer's numbers and receive them with our offer's (§5.1: each
    side's numbers are what it receives; §6.1: the answer need not reuse ours). An ``RTP/SAVP``
    stream's answer must keep the profile and name one of our ``a=crypto`` tags with the same
    suite and a key of its own (RFC 4568 §6.1, §7.1.3).

    Raises:
        SdpError: the answer does not match the offer's ``m=`` lines (RFC 3264 §6) or the
            accepted stream has no ``c=`` address.
        NoCommonCodec: the peer rejected every audio stream or answered none of our codecs,
            or gave a name for the media address (warn-code 301).
    """
    if len(answer.media) != len(offer_we_sent.media):
        raise SdpError(
            f"answer has {len(answer.media)} m= lines, our offer had "
            f"{len(offer_we_sent.media)} (RFC 3264 §6)"
        )
    for ours, theirs in zip(offer_we_sent.media, answer.media, strict=True):
        if ours.port == 0 or theirs.port == 0 or not _is_rtp_audio(ours):
            continue
        if theirs.media.lower() != "audio" or theirs.proto.upper() != ours.proto.upper():
            raise SdpError(f"answer changed the stream to {theirs.media} {theirs.proto}")
        srtp = _answered_keys(ours, theirs)
        offered = [c.name for c in _offered_codecs(ours)]
        codec = _first_answered_codec(theirs, ours, offered)
        if codec is None:
            continue
        remote_address = answer.media_connection_address(theirs)
        if remote_address is None:
            raise SdpError("answered audio stream has no c= line (RFC 4566 §5.7)")
        _check_media_address(remote_address)
        hold_address = is_hold_address(remote_address)
        answer_direction = answer.media_direction(theirs)
        caps = _CAPS[offer_we_sent.media_direction(ours)] & _reverse(answer_direction)
        if hold_address:
            caps -= {"send"}
        dtmf_pt = _telephone_event(theirs, ours)
        return NegotiatedMedia(
            codec=codec,
            dtmf_payload_type=dtmf_pt,
            # RFC 3264 §5.1: the peer sends with the numbers of our offer. An answer without
            # telephone-event means no events from it either (RFC 4733 §7.1.1).
            recv_payload_type=_our_number(ours, codec.name),
            recv_dtmf_payload_type=None if dtmf_pt is None else _telephone_event(ours),
            remote_address=remote_address,
            remote_port=theirs.port,
            remote_rtcp_port=_rtcp_port(theirs),
            remote_rtcp_address=_rtcp_address(theirs),
            direction=_from_caps(caps),
            ptime=PTIME_MS,
            on_hold=answer_direction in ("sendonly", "inactive") or hold_address,
            srtp=srtp,
        )
    raise NoCommonCodec("the answer accepted no audio stream with a codec we offered")


def _answered_keys(ours: MediaDescription, theirs: MediaDescription) -> SrtpKeys | None:
    """The SRTP keys of an answered ``RTP/SAVP`` stream (None for ``RTP/AVP``).

    Raises:
        SdpError: the answer names none of our tags, another suite, or an unusable key.
    """
    if ours.proto.upper() != _SECURE_RTP:
        return None
    answered = usable_crypto(theirs.attribute_values("crypto"))
    if answered is None:
        raise SdpError("the SRTP answer has no usable a=crypto line (RFC 4568 §6.1)")
    for value in ours.attribute_values("crypto"):
        offered = usable_crypto([value])
        if offered is not None and offered.tag == answered.tag:
            if offered.suite != answered.suite:
                raise SdpError("the SRTP answer changed the crypto suite of its tag")
            return SrtpKeys(answered.suite, answered.tag, offered.key, answered.key)
    raise SdpError("the SRTP answer names a crypto tag we did not offer")


def _our_number(ours: MediaDescription, name: CodecName) -> int:
    """The payload type our offer gave codec ``name`` (one the answer chose, so offered)."""
    codec = _find_codec(ours, [name])
    assert codec is not None  # _first_answered_codec only returns codecs of our offer
    return codec.payload_type


def _offered_codecs(m: MediaDescription) -> list[CodecSpec]:
    found: list[CodecSpec] = []
    for name in _SUPPORTED.values():
        codec = _find_codec(m, [name])
        if codec is not None:
            found.append(codec)
    return found


def _first_answered_codec(
    theirs: MediaDescription, ours: MediaDescription, offered: Sequence[CodecName]
) -> CodecSpec | None:
    """The first payload type in the answer that maps to a codec we offered."""
    for pt in theirs.payload_types():
        single = MediaDescription(
            media=theirs.media,
            port=theirs.port,
            proto=theirs.proto,
            formats=[str(pt)],
            attributes=theirs.attributes,
        )
        codec = _find_codec(single, offered, fallback=ours)
        if codec is not None:
            return codec
    return None
