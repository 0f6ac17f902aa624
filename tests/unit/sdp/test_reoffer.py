"""The offer we make inside a dialog when asked for one (RFC 3264 §8, RFC 6337 §5.1)."""

from __future__ import annotations

import copy

import pytest

from telepath.sdp import (
    MediaSecurity,
    SessionDescription,
    create_reoffer,
    negotiate_answer,
    negotiate_offer_answer,
    parse,
)

pytestmark = pytest.mark.unit

LOCAL = "203.0.113.5"
PEER = "198.51.100.1"


def offer_text(direction: str | None, *, address: str = PEER, extra: str = "") -> str:
    text = (
        f"v=0\r\no=- 1 1 IN IP4 {PEER}\r\ns=-\r\nc=IN IP4 {address}\r\nt=0 0\r\n"
        "m=audio 5000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n"
    )
    if direction is not None:
        text += f"a={direction}\r\n"
    return text + extra


def our_answer(offer: str, version: int = 2, **kwargs: object) -> SessionDescription:
    """Our answer to ``offer``, as the last SDP we sent in the dialog."""
    sd, _ = negotiate_answer(
        parse(offer),
        local_address=LOCAL,
        local_port=40000,
        session_id=777,
        session_version=version,
        **kwargs,  # type: ignore[arg-type]
    )
    return sd


def lines_but_origin(sd: SessionDescription) -> list[str]:
    return [line for line in str(sd).split("\r\n") if not line.startswith("o=")]


@pytest.mark.parametrize(
    ("held_with", "we_answered"),
    [
        ("sendonly", "recvonly"),
        ("inactive", "inactive"),
        ("recvonly", "sendonly"),  # the caller only listens: we offer to hear it again
    ],
)
def test_after_a_hold_we_offer_sendrecv_with_the_next_version(
    held_with: str, we_answered: str
) -> None:
    # RFC 6337 §5.1: an offer says what the offerer wants now, whatever the other side said
    # before; we never hold the caller, so we want sendrecv. RFC 3264 §8: it differs from the
    # last SDP we sent, so its o= version is one more.
    held = our_answer(offer_text(held_with))
    assert held.media[0].direction == we_answered
    kept = copy.deepcopy(held)
    offer = create_reoffer(held)
    assert offer.media[0].direction == "sendrecv"
    assert offer.origin.session_version == 3
    assert held == kept  # the SDP we sent is left as it was
    expected = [line.replace(f"a={we_answered}", "a=sendrecv") for line in lines_but_origin(held)]
    assert lines_but_origin(offer) == expected  # nothing else changes
    assert str(offer.origin) == str(held.origin).replace(" 2 ", " 3 ")


def test_after_an_old_style_hold_we_offer_sendrecv() -> None:
    # RFC 3264 §8.4: c=0.0.0.0 got a=recvonly from us (do not send there)
    held = our_answer(offer_text("sendrecv", address="0.0.0.0"))
    assert held.media[0].direction == "recvonly"
    offer = create_reoffer(held)
    assert offer.media[0].direction == "sendrecv"
    assert offer.origin.session_version == 3


def test_the_answer_to_our_reoffer_sets_the_direction() -> None:
    offer = create_reoffer(our_answer(offer_text("sendonly")))
    resumed = negotiate_offer_answer(offer, parse(offer_text("sendrecv")))
    assert resumed.direction == "sendrecv" and not resumed.on_hold
    still_held = negotiate_offer_answer(offer, parse(offer_text("sendonly")))
    assert still_held.direction == "recvonly" and still_held.on_hold


def test_a_sendrecv_sdp_is_offered_again_unchanged() -> None:
    # RFC 3264 §8 / RFC 4028 §10: a session refresh repeats the SDP, its version unchanged
    last = our_answer(offer_text("sendrecv"))
    assert create_reoffer(last) == last
    implicit = our_answer(offer_text(None))
    assert create_reoffer(implicit) == implicit


def test_a_session_level_direction_is_overridden_in_the_audio_stream() -> None:
    last = parse(offer_text(None).replace("t=0 0\r\n", "t=0 0\r\na=sendonly\r\n"))
    offer = create_reoffer(last)
    assert offer.media_direction(offer.media[0]) == "sendrecv"
    assert offer.origin.session_version == 2


def test_the_srtp_line_and_rejected_streams_are_kept() -> None:
    crypto = (
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"
        + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVoxMjM0\r\n"
    )
    text = (
        offer_text("sendonly").replace("RTP/AVP", "RTP/SAVP")
        + crypto
        + "m=video 6000 RTP/AVP 96\r\n"
    )
    held = our_answer(text, security=MediaSecurity(key=bytes(30)))
    offer = create_reoffer(held)
    assert [(m.media, m.port) for m in offer.media] == [("audio", 40000), ("video", 0)]
    assert offer.media[0].attribute_values("crypto") == held.media[0].attribute_values("crypto")
    assert offer.media[0].direction == "sendrecv"


def test_a_disabled_stream_stays_disabled() -> None:
    # RFC 3264 §8.2: the caller removed the stream (port 0); nothing live to give a direction
    last = parse(
        f"v=0\r\no=telepath 777 2 IN IP4 {LOCAL}\r\ns=Telepath\r\nc=IN IP4 {LOCAL}\r\nt=0 0\r\n"
        "m=audio 0 RTP/AVP 0 8 101\r\n"
    )
    assert create_reoffer(last) == last
