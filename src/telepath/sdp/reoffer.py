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
"""

from __future__ import annotations

from dataclasses import replace

from telepath.sdp.model import DIRECTIONS, MediaDescription, SessionDescription

_RTP_PROFILES = ("RTP/AVP", "RTP/SAVP")


def create_reoffer(previous: SessionDescription) -> SessionDescription:
    """Our offer in an established dialog, from ``previous``, the last SDP we sent.

    Its live RTP audio stream is marked ``a=sendrecv`` (RFC 6337 §5.1: what we want now);
    everything else is kept — ``m=`` lines, ports, formats, ``a=crypto``, rejected streams —
    so a stream the caller disabled (port 0, RFC 3264 §8.2) stays disabled. ``previous`` is not
    changed.

    Returns:
        ``previous`` itself when it already offers sendrecv (a session refresh repeats its SDP
        with the same ``o=`` version); otherwise a new description whose ``o=`` version is one
        more (RFC 3264 §8: a changed description MUST increment it by one).
    """
    media = [_sendrecv(previous, m) for m in previous.media]
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
