"""The offer we make inside an established dialog: what we want now, not what we last answered.

Two places ask us for an offer mid-call: the 2xx to an offerless re-INVITE (RFC 3261 §14.2,
how PBXs and B2BUAs resume a call or complete a transfer) and our own re-INVITE session
refresh (RFC 4028 §10). Both start from the SDP we last sent (RFC 3264 §8: a new offer keeps
the previous one's ``m=`` lines, order, ports and formats) — but that SDP may be an *answer*
to the caller putting us on hold, ``a=recvonly`` (or ``sendonly``/``inactive``). Repeated as an
offer, it would tell the caller we only want to receive: the only valid answers are then
sendonly or inactive (RFC 3264 §6.1), and the agent is never heard again.

RFC 6337 §5.1: an offer states the direction the offerer wants now, whatever the other side
indicated before — also an offer in the 2xx to an offerless INVITE. Telepath never holds the
caller itself (it has no own-hold state), so it always wants ``sendrecv``; the caller's answer
(``sendrecv``, or ``sendonly`` while it still holds) then sets the direction.

The SDP we last sent may also answer the caller *disabling* the audio (``m=audio 0``, RFC 3264
§8.2): every ``m=`` line has port 0 (§6). Repeated as an offer, the answer would have to keep
port 0 too (§6: a stream offered with port 0 MUST be answered with port 0) and the call's audio
could never come back through our offers. RFC 3264 §8.1 lets an offerer reuse the slot of a
stream disabled with port 0 (the new description replaces the old one in place), so we offer
the call's stream there again, live: its codec and telephone-event as negotiated, our RTP port,
``sendrecv``, and for SRTP the call's ``a=crypto`` line (its tag, suite and our key, which stay
for the call: RFC 4568 §7.1.4).
"""

from __future__ import annotations

from dataclasses import replace

from telepath.sdp.model import DIRECTIONS, MediaDescription, SessionDescription
from telepath.sdp.negotiate import NegotiatedMedia, negotiated_stream

_RTP_PROFILES = ("RTP/AVP", "RTP/SAVP")


def create_reoffer(
    previous: SessionDescription,
    *,
    current: NegotiatedMedia | None = None,
    local_port: int = 0,
    rtcp_port: int | None = None,
) -> SessionDescription:
    """Our offer in an established dialog, from ``previous``, the last SDP we sent.

    Its live RTP audio stream is marked ``a=sendrecv`` (RFC 6337 §5.1: what we want now);
    everything else is kept — ``m=`` lines, ports, formats, ``a=crypto``, rejected streams.
    ``previous`` is not changed.

    When ``previous`` has no live audio stream (the caller disabled it, RFC 3264 §8.2) and
    ``current``, the call's negotiated media, is given, the first RTP audio ``m=`` line is
    replaced in its slot (§8.1) by the call's stream, live: ``local_port`` (and ``rtcp_port``
    as for :func:`~telepath.sdp.negotiate_answer`), the codec and telephone-event with the
    numbers we receive them with (§5.1), ``a=sendrecv``, and for SRTP the call's ``a=crypto``.
    Without ``current`` a disabled stream stays disabled (there is nothing to offer it with).

    Returns:
        ``previous`` itself when it already offers sendrecv (a session refresh repeats its SDP
        with the same ``o=`` version); otherwise a new description whose ``o=`` version is one
        more (RFC 3264 §8: a changed description MUST increment it by one).

    Raises:
        ValueError: ``current`` is given and ``local_port`` is not a port (our bug).
    """
    media = [_sendrecv(previous, m) for m in previous.media]
    if current is not None:
        # checked even with nothing to revive, so a missing port shows before it matters
        stream = negotiated_stream(current, local_port=local_port, rtcp_port=rtcp_port)
        media = _revived(media, stream)
    if all(new is old for new, old in zip(media, previous.media, strict=True)):
        return previous
    version = previous.origin.session_version + 1
    return replace(previous, media=media, origin=replace(previous.origin, session_version=version))


def _sendrecv(session: SessionDescription, m: MediaDescription) -> MediaDescription:
    """``m`` asking for media both ways if it is a live RTP audio stream not already doing so."""
    live_audio = m.port != 0 and m.media.lower() == "audio" and m.proto.upper() in _RTP_PROFILES
    if not live_audio or session.media_direction(m) == "sendrecv":
        return m
    if m.explicit_direction is None:
        # only a session-level attribute said otherwise: the media level overrides it (RFC 4566
        # §6 / RFC 3264 §5.1)
        return replace(m, attributes=[*m.attributes, ("sendrecv", None)])
    attributes = [
        ("sendrecv", None) if value is None and name in DIRECTIONS else (name, value)
        for name, value in m.attributes
    ]
    return replace(m, attributes=attributes)


def _revived(media: list[MediaDescription], stream: MediaDescription) -> list[MediaDescription]:
    """``media`` with ``stream`` (the call's, sendrecv: RFC 6337 §5.1) live again in the slot
    of the first RTP audio stream, when every audio stream is disabled (RFC 3264 §8.1)."""
    if any(m.port for m in media if m.media.lower() == "audio"):
        return media  # the audio is live (or held with a port): nothing to revive
    for index, m in enumerate(media):
        if m.media.lower() == "audio" and m.proto.upper() in _RTP_PROFILES:
            return [*media[:index], stream, *media[index + 1 :]]
    return media  # no RTP audio slot to reuse
