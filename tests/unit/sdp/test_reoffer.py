"""The offer we make inside a dialog when asked for one (RFC 3264 §8, RFC 6337 §5.1)."""

from __future__ import annotations

import copy

import pytest

from telepath.sdp import (
    MediaSecurity,
    NegotiatedMedia,
    SessionDescription,
    create_reoffer,
    negotiate_answer,
    negotiate_offer_answer,
    negotiate_reoffer,
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


def test_a_disabled_stream_stays_disabled_without_the_call_s_stream() -> None:
    # RFC 3264 §8.2: the caller removed the stream (port 0); with no port and codec to offer
    # it with, nothing live to give a direction
    last = parse(
        f"v=0\r\no=telepath 777 2 IN IP4 {LOCAL}\r\ns=Telepath\r\nc=IN IP4 {LOCAL}\r\nt=0 0\r\n"
        "m=audio 0 RTP/AVP 0 8 101\r\n"
    )
    assert create_reoffer(last) == last


CRYPTO = "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVoxMjM0\r\n"


def disabled_call(text: str, **kwargs: object) -> tuple[SessionDescription, NegotiatedMedia]:
    """A call answered with ``text`` then re-offered with its audio port 0 (RFC 3264 §8.2):
    our port-0 answer (version 3) and what the call keeps, held."""
    answer, current = negotiate_answer(
        parse(text),
        local_address=LOCAL,
        local_port=40000,
        session_id=777,
        session_version=2,
        **kwargs,  # type: ignore[arg-type]
    )
    disabled, held = negotiate_reoffer(
        parse(text.replace("m=audio 5000 ", "m=audio 0 ")),
        current=current,
        local_address=LOCAL,
        local_port=40000,
        session_id=777,
        session_version=3,
        **kwargs,  # type: ignore[arg-type]
    )
    assert [m.port for m in disabled.media] == [0] * len(disabled.media)
    assert held.remote_port == 0
    return disabled, held


def test_a_disabled_stream_is_offered_live_again_with_the_call_s_port_and_codec() -> None:
    # The caller disabled the audio (m=audio 0); our next offer (the 2xx to an offerless
    # re-INVITE, a session refresh) must not repeat port 0: the caller's answer would have to
    # keep it (RFC 3264 §6) and the call's audio could never come back. §8.1 lets an offerer
    # reuse a disabled stream's slot: it offers the call's stream again, sendrecv (RFC 6337
    # §5.1), with the call's port, codec and telephone-event numbers.
    text = offer_text("sendrecv").replace("RTP/AVP 0 8 101", "RTP/AVP 8 101")  # PCMA
    text += "m=video 6000 RTP/AVP 96\r\n"
    disabled, held = disabled_call(text, rtcp_port=40011)
    kept = copy.deepcopy(disabled)
    offer = create_reoffer(disabled, current=held, local_port=40000, rtcp_port=40011)
    assert disabled == kept  # the SDP we sent is left as it was
    assert offer.origin.session_version == 4  # it differs: RFC 3264 §8
    audio, video = offer.media
    assert (audio.media, audio.port, audio.proto, audio.formats) == (
        "audio",
        40000,
        "RTP/AVP",
        ["8", "101"],
    )
    assert audio.rtpmap() == {8: ("PCMA", 8000, 1), 101: ("telephone-event", 8000, 1)}
    assert audio.attribute_values("rtcp") == ["40011"]
    assert offer.media_direction(audio) == "sendrecv"
    assert offer.media_connection_address(audio) == LOCAL
    assert (video.media, video.port) == ("video", 0)  # still rejected
    # the caller's answer giving a port resumes the stream, with the codec the call has
    answer = offer_text("sendrecv") + "m=video 0 RTP/AVP 96\r\n"
    resumed = negotiate_offer_answer(offer, parse(answer))
    assert (resumed.remote_port, resumed.direction, resumed.on_hold) == (5000, "sendrecv", False)
    assert resumed.codec == held.codec
    assert resumed.dtmf_payload_type == held.dtmf_payload_type == 101
    # and offered again, it stays as it is (a session refresh repeats it: RFC 4028 §10)
    assert create_reoffer(offer, current=resumed, local_port=40000, rtcp_port=40011) == offer


def test_a_disabled_srtp_stream_is_offered_again_with_the_call_s_key() -> None:
    # RFC 4568 §7.1.4: the call keeps its key and suite; the revived stream is RTP/SAVP with
    # the a=crypto line of the call (tag, suite, our key), as create_reoffer keeps it live
    text = offer_text("sendrecv").replace("RTP/AVP", "RTP/SAVP") + CRYPTO
    key = bytes(range(30))
    live = our_answer(text, security=MediaSecurity(key=key))
    disabled, held = disabled_call(text, security=MediaSecurity(key=key, required=True))
    assert held.srtp is not None
    offer = create_reoffer(disabled, current=held, local_port=40000)
    (audio,) = offer.media
    assert (audio.port, audio.proto) == (40000, "RTP/SAVP")
    assert audio.attribute_values("crypto") == live.media[0].attribute_values("crypto")
    resumed = negotiate_offer_answer(offer, parse(text))
    assert resumed.srtp is not None
    assert (resumed.srtp.suite, resumed.srtp.local_key) == (held.srtp.suite, held.srtp.local_key)


def test_a_disabled_stream_is_revived_only_with_a_port() -> None:
    disabled, held = disabled_call(offer_text("sendrecv"))
    with pytest.raises(ValueError, match="port"):
        create_reoffer(disabled, current=held, local_port=0)
