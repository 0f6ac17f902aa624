"""Telepath's SDP layer: parse, serialize and negotiate session descriptions.

Pure and synchronous (no I/O): RFC 4566 syntax in :mod:`.parser` and :mod:`.model`, RFC 3264
offer/answer for a single G.722/PCMU/PCMA audio stream plus RFC 4733 telephone-event in
:mod:`.negotiate`; the offer we make mid-dialog in :mod:`.reoffer`. Failures raise
:class:`SdpError` (400) or :class:`NoCommonCodec` (488).
"""

from telepath.sdp.errors import NoCommonCodec, SdpError
from telepath.sdp.model import (
    Direction,
    MediaDescription,
    Origin,
    SessionDescription,
)
from telepath.sdp.negotiate import (
    DEFAULT_PREFERENCE,
    MediaSecurity,
    NegotiatedMedia,
    create_offer,
    negotiate_answer,
    negotiate_offer_answer,
    negotiate_reoffer,
    next_session_version,
)
from telepath.sdp.parser import MAX_SDP_SIZE, parse
from telepath.sdp.reoffer import create_reoffer

__all__ = [
    "DEFAULT_PREFERENCE",
    "MAX_SDP_SIZE",
    "Direction",
    "MediaDescription",
    "MediaSecurity",
    "NegotiatedMedia",
    "NoCommonCodec",
    "Origin",
    "SdpError",
    "SessionDescription",
    "create_offer",
    "create_reoffer",
    "negotiate_answer",
    "negotiate_offer_answer",
    "negotiate_reoffer",
    "next_session_version",
    "parse",
]
