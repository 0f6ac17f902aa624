"""Delayed offer (RFC 3261 §13.2.1): the offer Telepath puts in the 200 OK to an INVITE without
SDP, and how the caller's answer in the ACK is read (RFC 3264 §5 offer, §6 answer, §7 offerer)."""

from __future__ import annotations

import dataclasses

import pytest

from telepath.rtp.codecs import CodecSpec
from telepath.sdp import (
    NegotiatedMedia,
    NoCommonCodec,
    SdpError,
    SessionDescription,
    create_offer,
    negotiate_offer_answer,
    parse,
)

from .samples import load_sample

pytestmark = pytest.mark.unit

LOCAL = "203.0.113.5"
CONFIGURED = ("PCMU", "PCMA", "G722")  # TELEPATH_SIP_CODECS as the interop tests set it
HEAD = "v=0\r\no=caller 1 1 IN IP4 198.51.100.9\r\ns=-\r\nc=IN IP4 198.51.100.9\r\nt=0 0\r\n"


def our_offer(preference: tuple[str, ...] = CONFIGURED) -> SessionDescription:
    return create_offer(
        local_address=LOCAL,
        local_port=33002,
        session_id=4242,
        session_version=1,
        preference=preference,
    )


def test_offer_lists_every_configured_codec_in_order_with_telephone_event() -> None:
    offer = our_offer()
    text = offer.to_bytes().decode()
    assert text == (
        "v=0\r\n"
        f"o=telepath 4242 1 IN IP4 {LOCAL}\r\n"
        "s=Telepath\r\n"
        f"c=IN IP4 {LOCAL}\r\n"
        "t=0 0\r\n"
        "m=audio 33002 RTP/AVP 0 8 9 101\r\n"
        "a=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:8 PCMA/8000\r\n"
        "a=rtpmap:9 G722/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\n"
        "a=fmtp:101 0-16\r\n"
        "a=ptime:20\r\n"
        "a=sendrecv\r\n"
    )
    assert parse(offer.to_bytes()) == offer


def test_offer_follows_the_configured_order_and_address_family() -> None:
    offer = create_offer(
        local_address="2001:db8::5",
        local_port=33002,
        session_id=1,
        session_version=1,
        preference=("PCMA",),
    )
    assert offer.media[0].formats == ["8", "101"]
    assert offer.connection_address == "2001:db8::5"
    assert offer.connection_addrtype == "IP6"
    assert offer.origin.addrtype == "IP6"


def test_sipp_answer_in_the_ack_settles_on_pcmu() -> None:
    media = negotiate_offer_answer(our_offer(), parse(load_sample("sipp_uac")))
    assert media == NegotiatedMedia(
        codec=CodecSpec("PCMU", 0),
        dtmf_payload_type=None,  # the answer left telephone-event out
        remote_address="127.0.0.1",
        remote_port=6000,
        remote_rtcp_port=6001,
        direction="sendrecv",
        ptime=20,
        on_hold=False,
    )


def test_answer_may_pick_any_offered_codec_and_its_own_dtmf_payload_type() -> None:
    answer = parse(
        HEAD + "m=audio 42000 RTP/AVP 9 96\r\n"
        "c=IN IP4 198.51.100.77\r\n"
        "a=rtpmap:96 telephone-event/8000\r\na=rtcp:42005\r\n"
    )
    media = negotiate_offer_answer(our_offer(), answer)
    assert media.codec == CodecSpec("G722", 9)
    assert media.recv_payload_type == 9
    # RFC 3264 §5.1/§6.1: each side's numbers are what it receives. We send events with the
    # answer's 96; the caller sends them with our offer's 101.
    assert (media.dtmf_payload_type, media.recv_dtmf_payload_type) == (96, 101)
    assert media.remote_address == "198.51.100.77"  # media-level c= wins (RFC 4566 §5.7)
    assert (media.remote_port, media.remote_rtcp_port) == (42000, 42005)


def test_an_answer_that_renumbers_our_codec_receives_it_with_our_number() -> None:
    """RFC 3264 §6.1: the answerer SHOULD, not MUST, keep the offer's numbers. An answer that
    maps PCMU to 96 gets PCMU sent as 96, and still sends it to us as our offer's 0."""
    answer = parse(
        HEAD + "m=audio 5000 RTP/AVP 96 97\r\n"
        "a=rtpmap:96 PCMU/8000\r\na=rtpmap:97 telephone-event/8000\r\n"
    )
    media = negotiate_offer_answer(our_offer(), answer)
    assert (media.codec, media.recv_payload_type) == (CodecSpec("PCMU", 96), 0)
    assert (media.dtmf_payload_type, media.recv_dtmf_payload_type) == (97, 101)


def test_an_answer_without_telephone_event_sends_us_none() -> None:
    """RFC 4733 §7.1.1: the answer leaving telephone-event out means no events either way, though
    our offer had it."""
    media = negotiate_offer_answer(our_offer(), parse(HEAD + "m=audio 5000 RTP/AVP 0\r\n"))
    assert (media.dtmf_payload_type, media.recv_dtmf_payload_type) == (None, None)
    assert media.recv_payload_type == 0


def test_negotiated_media_receives_with_its_send_numbers_unless_told() -> None:
    """When we answer we mirror the offer's numbers (RFC 3264 §6.1): one number per format."""
    media = NegotiatedMedia(
        codec=CodecSpec("PCMA", 8),
        dtmf_payload_type=101,
        remote_address="198.51.100.9",
        remote_port=5000,
        remote_rtcp_port=5001,
        direction="sendrecv",
        ptime=20,
        on_hold=False,
    )
    assert (media.recv_payload_type, media.recv_dtmf_payload_type) == (8, 101)
    assert dataclasses.replace(media, recv_dtmf_payload_type=None).recv_dtmf_payload_type is None


def test_answer_on_hold_is_accepted_without_sending() -> None:
    answer = parse(HEAD + "m=audio 42000 RTP/AVP 0\r\na=sendonly\r\n")
    media = negotiate_offer_answer(our_offer(), answer)
    assert media.direction == "recvonly"  # RFC 3264 §6.1: they only send, so we only receive
    assert media.on_hold


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param("m=audio 42000 RTP/AVP 8\r\n", id="codec-not-offered"),
        pytest.param(
            "m=audio 42000 RTP/AVP 101\r\na=rtpmap:101 telephone-event/8000\r\n",
            id="only-telephone-event",
        ),
        pytest.param("m=audio 0 RTP/AVP 0\r\n", id="stream-rejected"),
    ],
)
def test_answer_without_a_codec_in_common_raises_no_common_codec(answer: str) -> None:
    with pytest.raises(NoCommonCodec):
        negotiate_offer_answer(our_offer(("PCMU",)), parse(HEAD + answer))


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        pytest.param("", "m= lines", id="no-m-line"),
        pytest.param(
            "m=audio 42000 RTP/AVP 0\r\nm=video 42002 RTP/AVP 31\r\n", "m= lines", id="extra-m"
        ),
        pytest.param("m=audio 42000 RTP/SAVP 0\r\n", "RTP/SAVP", id="srtp"),
    ],
)
def test_answer_not_matching_the_offer_raises_sdp_error(answer: str, match: str) -> None:
    with pytest.raises(SdpError, match=match):
        negotiate_offer_answer(our_offer(), parse(HEAD + answer))


def test_answer_without_a_connection_address_raises_sdp_error() -> None:
    no_c = "v=0\r\no=caller 1 1 IN IP4 198.51.100.9\r\ns=-\r\nt=0 0\r\nm=audio 42000 RTP/AVP 0\r\n"
    with pytest.raises(SdpError, match="c= line"):
        negotiate_offer_answer(our_offer(), parse(no_c))


@pytest.mark.parametrize("body", [b"", b"garbage", b"v=0\r\n"])
def test_empty_or_unparseable_ack_body_raises_sdp_error(body: bytes) -> None:
    with pytest.raises(SdpError):
        negotiate_offer_answer(our_offer(), parse(body))
