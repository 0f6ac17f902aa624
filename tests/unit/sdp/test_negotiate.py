from __future__ import annotations

import dataclasses

import pytest

from telepath.rtp.codecs import CodecSpec
from telepath.sdp import (
    DEFAULT_PREFERENCE,
    Direction,
    NegotiatedMedia,
    NoCommonCodec,
    SdpError,
    SessionDescription,
    create_offer,
    negotiate_answer,
    negotiate_offer_answer,
    negotiate_reoffer,
    next_session_version,
    parse,
)

from .samples import load_sample

pytestmark = pytest.mark.unit

LOCAL = "203.0.113.5"


def answer(
    offer: SessionDescription | bytes | str, **kwargs: object
) -> tuple[SessionDescription, NegotiatedMedia]:
    sd = offer if isinstance(offer, SessionDescription) else parse(offer)
    return negotiate_answer(
        sd,
        local_address=LOCAL,
        local_port=40000,
        session_id=777,
        session_version=1,
        **kwargs,  # type: ignore[arg-type]
    )


def offer_text(*, direction: str | None = "sendrecv", address: str = "198.51.100.1") -> str:
    text = (
        f"v=0\r\no=- 1 1 IN IP4 198.51.100.1\r\ns=-\r\nc=IN IP4 {address}\r\nt=0 0\r\n"
        "m=audio 5000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n"
    )
    if direction is not None:
        text += f"a={direction}\r\n"
    return text


def test_default_preference() -> None:
    assert DEFAULT_PREFERENCE == ("G722", "PCMU", "PCMA")


def test_twilio_answer_is_complete_and_parseable() -> None:
    sd, media = answer(load_sample("twilio"))
    assert media == NegotiatedMedia(
        codec=CodecSpec("PCMU", 0),
        dtmf_payload_type=101,
        remote_address="54.172.60.1",
        remote_port=17940,
        remote_rtcp_port=17941,
        direction="sendrecv",
        ptime=20,
        on_hold=False,
    )
    assert str(sd) == (
        "v=0\r\n"
        "o=telepath 777 1 IN IP4 203.0.113.5\r\n"
        "s=Telepath\r\n"
        "c=IN IP4 203.0.113.5\r\n"
        "t=0 0\r\n"
        "m=audio 40000 RTP/AVP 0 101\r\n"
        "a=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\n"
        "a=fmtp:101 0-16\r\n"
        "a=ptime:20\r\n"
        "a=sendrecv\r\n"
    )
    assert parse(sd.to_bytes()) == sd


def test_g722_chosen_when_offered() -> None:
    sd, media = answer(load_sample("telnyx"))
    assert media.codec == CodecSpec("G722", 9)
    assert sd.media[0].formats == ["9", "101"]
    assert sd.media[0].rtpmap()[9] == ("G722", 8000, 1)
    assert media.remote_rtcp_port == 30125  # from a=rtcp, RFC 3605


@pytest.mark.parametrize(
    ("preference", "expected"),
    [
        (("PCMA", "PCMU", "G722"), "PCMA"),
        (("pcmu",), "PCMU"),
        (("G722", "PCMA"), "G722"),
        (("PCMU", "PCMU", "PCMA"), "PCMU"),
    ],
)
def test_preference_is_configurable(preference: tuple[str, ...], expected: str) -> None:
    _, media = answer(load_sample("telnyx"), preference=preference)
    assert media.codec.name == expected


def test_our_preference_beats_offer_order() -> None:
    # Asterisk lists PCMA first; we prefer PCMU over PCMA (no G722 offered).
    _, media = answer(load_sample("asterisk"))
    assert media.codec == CodecSpec("PCMU", 0)
    _, media = answer(load_sample("asterisk"), preference=["PCMA"])
    assert media.codec == CodecSpec("PCMA", 8)


def test_invalid_preference_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unsupported codec"):
        answer(load_sample("twilio"), preference=["opus"])
    with pytest.raises(ValueError, match="no codec listed"):
        answer(load_sample("twilio"), preference=[])


@pytest.mark.parametrize(
    ("sample", "dtmf_pt"),
    [("twilio", 101), ("freeswitch", 96), ("baresip", 126), ("ipv6", 127), ("sipp_uac", None)],
)
def test_dynamic_telephone_event_payload_type_is_echoed(sample: str, dtmf_pt: int | None) -> None:
    sd, media = answer(load_sample(sample))
    assert media.dtmf_payload_type == dtmf_pt
    m = sd.media[0]
    if dtmf_pt is None:
        assert m.formats == [str(media.codec.payload_type)]
        assert m.fmtp() == {}
    else:
        assert m.formats == [str(media.codec.payload_type), str(dtmf_pt)]
        assert m.rtpmap()[dtmf_pt] == ("telephone-event", 8000, 1)
        assert m.fmtp() == {dtmf_pt: "0-16"}


def test_freeswitch_telephone_event_48k_is_ignored() -> None:
    sd, media = answer(load_sample("freeswitch"))
    assert media.codec == CodecSpec("G722", 9)  # opus first in the offer; we skip it
    assert "103" not in sd.media[0].formats


def test_static_payload_types_without_rtpmap() -> None:
    sd, media = answer(load_sample("static_no_rtpmap"))
    assert media.codec == CodecSpec("PCMU", 0)
    assert sd.media[0].attributes[0] == ("rtpmap", "0 PCMU/8000")
    _, media = answer(load_sample("sipp_uac"), preference=["PCMA", "PCMU"])
    assert media.codec == CodecSpec("PCMU", 0)
    assert media.remote_address == "127.0.0.1"
    assert media.remote_port == 6000


def test_codec_on_nonstandard_dynamic_payload_type_uses_offer_pt() -> None:
    text = offer_text().replace("RTP/AVP 0 8 101", "RTP/AVP 100 101") + "a=rtpmap:100 pcma/8000\r\n"
    sd, media = answer(text)
    assert media.codec == CodecSpec("PCMA", 100)
    assert sd.media[0].formats == ["100", "101"]
    assert ("rtpmap", "100 PCMA/8000") in sd.media[0].attributes


def test_wrong_clock_rate_does_not_match() -> None:
    text = offer_text().replace("RTP/AVP 0 8 101", "RTP/AVP 96") + "a=rtpmap:96 PCMU/16000\r\n"
    with pytest.raises(NoCommonCodec):
        answer(text)


@pytest.mark.parametrize(
    ("offered", "ours", "on_hold"),
    [
        ("sendrecv", "sendrecv", False),
        (None, "sendrecv", False),
        ("sendonly", "recvonly", True),
        ("recvonly", "sendonly", False),
        ("inactive", "inactive", True),
    ],
)
def test_direction_mapping(offered: str | None, ours: Direction, on_hold: bool) -> None:
    sd, media = answer(offer_text(direction=offered))
    assert media.direction == ours
    assert sd.media[0].direction == ours
    assert sd.media[0].explicit_direction == ours  # always written explicitly
    assert media.on_hold is on_hold
    assert media.may_send is (ours in ("sendrecv", "sendonly"))
    assert media.may_receive is (ours in ("sendrecv", "recvonly"))


def test_session_level_direction_is_honoured() -> None:
    text = offer_text(direction=None).replace("t=0 0\r\n", "t=0 0\r\na=sendonly\r\n")
    _, media = answer(text)
    assert media.direction == "recvonly"
    assert media.on_hold


def test_hold_sample_sendonly() -> None:
    sd, media = answer(load_sample("hold_sendonly"))
    assert media.on_hold
    assert media.direction == "recvonly"
    assert sd.media[0].attributes[-1] == ("recvonly", None)


@pytest.mark.parametrize(
    ("offered", "ours"),
    [("sendrecv", "recvonly"), ("recvonly", "inactive"), ("sendonly", "recvonly")],
)
def test_hold_via_zero_address(offered: str, ours: Direction) -> None:
    # RFC 3264 §8.4 / RFC 2543: c=0.0.0.0 means "do not send to me".
    sd, media = answer(offer_text(direction=offered, address="0.0.0.0"))
    assert media.on_hold
    assert media.direction == ours
    assert media.remote_address == "0.0.0.0"
    assert sd.connection_address == LOCAL  # our own c= is unaffected


def test_cisco_hold_sample() -> None:
    _, media = answer(load_sample("hold_c0"))
    assert media.on_hold
    assert media.direction == "recvonly"
    assert media.dtmf_payload_type == 101


def test_other_streams_rejected_with_port_zero() -> None:
    offer = parse(load_sample("audio_video"))
    sd, media = answer(offer)
    assert len(sd.media) == len(offer.media) == 4
    video, audio, audio2, text = sd.media
    assert (video.media, video.port, video.proto, video.formats) == (
        "video",
        0,
        "RTP/AVP",
        ["96", "97"],
    )
    assert video.attributes == []
    assert (audio.port, audio.formats) == (40000, ["0", "101"])
    assert (audio2.media, audio2.port, audio2.formats) == ("audio", 0, ["0"])
    assert (text.media, text.port, text.formats) == ("text", 0, ["98"])
    assert media.remote_port == 7078
    assert [m.port != 0 for m in sd.media].count(True) == 1
    assert parse(str(sd)) == sd


def test_disabled_first_audio_stream_is_skipped() -> None:
    text = offer_text() + "m=audio 0 RTP/AVP 0\r\nm=audio 6000 RTP/AVP 8\r\n"
    text = text.replace("m=audio 5000 RTP/AVP 0 8 101", "m=audio 0 RTP/AVP 0 8 101")
    sd, media = answer(text)
    assert [m.port for m in sd.media] == [0, 0, 40000]
    assert media.codec == CodecSpec("PCMA", 8)
    assert media.remote_port == 6000


def test_first_audio_without_common_codec_falls_through_to_second() -> None:
    text = (
        "v=0\r\no=- 1 1 IN IP4 198.51.100.1\r\ns=-\r\nc=IN IP4 198.51.100.1\r\nt=0 0\r\n"
        "m=audio 5000 RTP/AVP 18\r\nm=audio 5002 RTP/AVP 8\r\nc=IN IP4 198.51.100.2\r\n"
    )
    sd, media = answer(text)
    assert [m.port for m in sd.media] == [0, 40000]
    assert media.remote_address == "198.51.100.2"


def test_no_common_codec_is_488_with_warning() -> None:
    with pytest.raises(NoCommonCodec) as info:
        answer(load_sample("g729_only"))
    err = info.value
    assert err.status_hint == 488
    assert isinstance(err, SdpError)
    assert err.warn_code == 305
    assert err.warning == '305 telepath "Incompatible media format"'
    assert err.warning_header("sip.example.com:5060") == (
        '305 sip.example.com:5060 "Incompatible media format"'
    )
    assert "G729/8000" in str(err)
    assert "PCMU/8000" in str(err)


def test_srtp_only_offer_is_rejected() -> None:
    with pytest.raises(NoCommonCodec) as info:
        answer(load_sample("srtp_only"))
    assert info.value.status_hint == 488
    assert info.value.warn_code == 302
    assert "RTP/SAVP" in str(info.value)
    assert "SRTP" in str(info.value)
    assert info.value.warning_header("gw") == (
        '302 gw "Incompatible transport protocol: SRTP is not enabled"'
    )


def test_srtp_stream_rejected_when_plain_alternative_exists() -> None:
    savp = load_sample("srtp_only").decode()
    text = savp + "m=audio 16386 RTP/AVP 0\r\n"
    sd, media = answer(text)
    assert [(m.proto, m.port) for m in sd.media] == [("RTP/SAVP", 0), ("RTP/AVP", 40000)]
    assert media.remote_port == 16386


@pytest.mark.parametrize(
    "text",
    [
        "v=0\r\no=- 1 1 IN IP4 198.51.100.1\r\ns=-\r\nt=0 0\r\n",
        "v=0\r\no=- 1 1 IN IP4 198.51.100.1\r\ns=-\r\nc=IN IP4 198.51.100.1\r\nt=0 0\r\n"
        "m=video 5000 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\n",
        offer_text().replace("m=audio 5000", "m=audio 0"),
    ],
    ids=["no media", "video only", "audio disabled"],
)
def test_no_audio_is_304(text: str) -> None:
    with pytest.raises(NoCommonCodec) as info:
        answer(text)
    assert info.value.warn_code == 304
    assert info.value.warning == '304 telepath "Media type not available"'


def test_missing_connection_address_is_400() -> None:
    text = offer_text().replace("c=IN IP4 198.51.100.1\r\n", "")
    with pytest.raises(SdpError) as info:
        answer(text)
    assert not isinstance(info.value, NoCommonCodec)
    assert info.value.status_hint == 400


def test_ipv6_answer() -> None:
    sd = parse(load_sample("ipv6"))
    ans, media = negotiate_answer(
        sd, local_address="2001:db8::1", local_port=30000, session_id=1, session_version=9
    )
    assert "c=IN IP6 2001:db8::1\r\n" in str(ans)
    assert ans.origin.addrtype == "IP6"
    assert ans.origin.session_version == 9
    assert media.direction == "sendonly"  # the offer was recvonly
    assert media.remote_address == "2001:db8::10"
    assert media.ptime == 20  # we always send 20 ms even if the peer asks for 30


def test_a_media_address_that_is_a_name_is_488_with_warning_301() -> None:
    """RFC 3261 §20.43 warn-code 301, "Incompatible network address formats": RFC 4566 allows
    an FQDN in c=, which we do not resolve. Accepted, under uvloop every send to it raised
    (no media timeout, a call that never ended); under asyncio each was a blocking lookup."""
    text = offer_text(address="media.example.com")
    with pytest.raises(NoCommonCodec) as info:
        answer(text)
    assert info.value.status_hint == 488
    assert info.value.warn_code == 301
    assert info.value.warning == (
        '301 telepath "Incompatible network address formats: a media address must be an IP address"'
    )
    assert "media.example.com" not in str(info.value)  # logged: no caller addresses in it


@pytest.mark.parametrize(
    "address",
    [
        "224.2.1.1/127",  # multicast (RFC 4566 §5.7: an IPv4 one carries a TTL)
        "239.255.255.250/1",
        "ff02::1",
        "ff0e::1:2",
        "::ffff:224.0.0.1",  # the same, as an IPv4-mapped IPv6 address
        "255.255.255.255",  # the limited broadcast address
        "::ffff:255.255.255.255",
        "::0",  # unspecified, but not the hold address's spelling (RFC 3264 §8.4)
        "0:0:0:0:0:0:0:0",
        "::ffff:0.0.0.0",
    ],
)
def test_a_multicast_broadcast_or_unspecified_media_address_is_488_with_warning_301(
    address: str,
) -> None:
    """We send the agent's audio to the c= address until the caller's RTP latches: to a
    multicast group or the broadcast address it would reach every host there, and an
    unspecified address that is not the hold address ``0.0.0.0``/``::`` is delivered locally
    (Linux). Refused like a name, in an offer, a re-offer or an answer."""
    with pytest.raises(NoCommonCodec) as info:
        answer(offer_text(address=address))
    assert info.value.status_hint == 488
    assert info.value.warn_code == 301
    assert info.value.warning == (
        '301 telepath "Incompatible network address formats: '
        'a media address must be a unicast IP address"'
    )
    assert address not in str(info.value)
    current = answer(offer_text())[1]
    with pytest.raises(NoCommonCodec):
        negotiate_reoffer(
            parse(offer_text(address=address)),
            current=current,
            local_address=LOCAL,
            local_port=40000,
            session_id=777,
            session_version=1,
        )
    offer = create_offer(local_address=LOCAL, local_port=41000, session_id=5, session_version=6)
    with pytest.raises(NoCommonCodec):
        negotiate_offer_answer(offer, parse(offer_text(address=address)))


@pytest.mark.parametrize(
    "address",
    [
        "2001:db8::10",
        "::ffff:198.51.100.1",
        "0.0.0.0",  # hold (RFC 3264 §8.4)
        "::",
        "127.0.0.1",  # loopback and private addresses: tests, LANs
        "10.1.2.3",
        "192.168.0.10",
        "169.254.1.1",
        "::1",
        "fd00::1",
    ],
)
def test_an_ip_address_of_either_version_is_accepted(address: str) -> None:
    """Whether our RTP socket reaches it is the media layer's question: it latches onto the
    caller's RTP instead (linphone gives its IPv6 address in c= with IPv6 off)."""
    _, media = answer(offer_text(address=address))
    assert media.remote_address == address


def test_a_re_offer_or_an_answer_naming_its_media_host_is_refused_too() -> None:
    current = answer(offer_text())[1]
    with pytest.raises(NoCommonCodec) as info:
        negotiate_reoffer(
            parse(offer_text(address="media.example.com")),
            current=current,
            local_address=LOCAL,
            local_port=40000,
            session_id=777,
            session_version=1,
        )
    assert info.value.warn_code == 301
    offer = create_offer(local_address=LOCAL, local_port=41000, session_id=5, session_version=6)
    named = parse(
        "v=0\r\no=- 1 1 IN IP4 198.51.100.9\r\ns=-\r\nc=IN IP4 media.example.com\r\n"
        "t=0 0\r\nm=audio 42000 RTP/AVP 0\r\n"
    )
    with pytest.raises(NoCommonCodec) as info:
        negotiate_offer_answer(offer, named)
    assert info.value.warn_code == 301


def test_answer_validates_local_parameters() -> None:
    offer = parse(load_sample("twilio"))
    with pytest.raises(ValueError):
        negotiate_answer(offer, local_address=LOCAL, local_port=0, session_id=1, session_version=1)
    with pytest.raises(ValueError):
        negotiate_answer(offer, local_address="", local_port=5, session_id=1, session_version=1)


def test_username_is_used_in_origin() -> None:
    sd, _ = answer(load_sample("twilio"), username="gw")
    assert str(sd.origin) == "gw 777 1 IN IP4 203.0.113.5"


# --- re-INVITE / UPDATE ------------------------------------------------------------------


def reanswer(
    offer: str | bytes, current: NegotiatedMedia, version: int = 1
) -> tuple[SessionDescription, NegotiatedMedia]:
    return negotiate_reoffer(
        parse(offer),
        current=current,
        local_address=LOCAL,
        local_port=40000,
        session_id=777,
        session_version=version,
    )


def test_reoffer_keeps_current_codec() -> None:
    _, current = answer(load_sample("telnyx"), preference=["PCMA"])
    assert current.codec.name == "PCMA"
    _, media = reanswer(load_sample("telnyx"), current)
    assert media.codec == CodecSpec("PCMA", 8)  # G722 preferred, but we keep PCMA


def test_reoffer_switches_codec_when_current_is_gone() -> None:
    _, current = answer(load_sample("telnyx"))
    assert current.codec.name == "G722"
    _, media = reanswer(load_sample("asterisk"), current)
    assert media.codec == CodecSpec("PCMU", 0)


def test_reoffer_hold_unhold_and_address_change() -> None:
    first, current = answer(load_sample("asterisk"))
    held, on_hold = reanswer(load_sample("hold_sendonly"), current)
    assert on_hold.on_hold and on_hold.direction == "recvonly"
    assert next_session_version(first, held) == 2
    resumed_text = load_sample("asterisk").replace(b"192.168.1.20", b"192.168.1.21")
    resumed, unheld = reanswer(resumed_text, on_hold, version=2)
    assert not unheld.on_hold and unheld.direction == "sendrecv"
    assert unheld.remote_address == "192.168.1.21"
    assert unheld.codec == current.codec
    # The answer is back to the original one: a change relative to the hold answer.
    held.origin.session_version = 2
    assert next_session_version(held, resumed) == 3


def test_session_refresh_keeps_version() -> None:
    first, current = answer(load_sample("twilio"))
    again, media = reanswer(load_sample("twilio"), current)
    assert media == current
    assert next_session_version(first, again) == 1
    assert again == first


def test_reoffer_without_common_codec_raises() -> None:
    _, current = answer(load_sample("twilio"))
    with pytest.raises(NoCommonCodec):
        reanswer(load_sample("g729_only"), current)


def test_reoffer_disabling_the_audio_stream_is_answered_with_port_zero() -> None:
    # RFC 3264 §8.2: a stream the offerer disables (port 0) is answered with port 0, in the same
    # m= line count and order; the call stays up. It was answered 488 (NoCommonCodec).
    first, current = answer(offer_text())
    text = offer_text().replace("m=audio 5000", "m=audio 0") + "m=video 0 RTP/AVP 96\r\n"
    disabled, media = reanswer(text, current)
    assert [(m.media, m.port, m.proto, m.formats) for m in disabled.media] == [
        ("audio", 0, "RTP/AVP", ["0", "8", "101"]),
        ("video", 0, "RTP/AVP", ["96"]),
    ]
    assert parse(str(disabled)) == disabled
    assert (media.remote_port, media.remote_rtcp_port) == (0, None)
    assert (media.codec, media.dtmf_payload_type, media.srtp) == (
        current.codec,
        current.dtmf_payload_type,
        current.srtp,
    )
    assert media.direction == "inactive" and media.on_hold
    assert not media.may_send and not media.may_receive
    assert next_session_version(first, disabled) == 2
    # A later re-offer with a port enables it again.
    resumed, again = reanswer(offer_text(), media, version=2)
    assert [m.port for m in resumed.media] == [40000]
    assert (again.remote_port, again.direction, again.on_hold) == (5000, "sendrecv", False)
    assert again.codec == current.codec


def test_reoffer_with_a_live_but_unacceptable_audio_stream_still_raises() -> None:
    _, current = answer(offer_text())
    text = offer_text().replace("m=audio 5000", "m=audio 0") + "m=audio 6000 RTP/AVP 18\r\n"
    with pytest.raises(NoCommonCodec):
        reanswer(text, current)


# --- we offer ----------------------------------------------------------------------------


def test_create_offer_default() -> None:
    sd = create_offer(local_address=LOCAL, local_port=41000, session_id=5, session_version=6)
    m = sd.media[0]
    assert m.formats == ["9", "0", "8", "101"]
    assert m.rtpmap() == {
        9: ("G722", 8000, 1),
        0: ("PCMU", 8000, 1),
        8: ("PCMA", 8000, 1),
        101: ("telephone-event", 8000, 1),
    }
    assert m.fmtp() == {101: "0-16"}
    assert m.ptime == 20
    assert m.direction == "sendrecv"
    assert sd.origin == dataclasses.replace(
        sd.origin, username="telepath", session_id=5, session_version=6
    )
    assert parse(sd.to_bytes()) == sd


def test_create_offer_options() -> None:
    sd = create_offer(
        local_address=LOCAL,
        local_port=41000,
        session_id=5,
        session_version=6,
        preference=["PCMA"],
        dtmf_payload_type=96,
        direction="sendonly",
        username="probe",
    )
    assert sd.media[0].formats == ["8", "96"]
    assert sd.media[0].direction == "sendonly"
    assert sd.origin.username == "probe"
    with pytest.raises(ValueError):
        create_offer(
            local_address=LOCAL, local_port=1, session_id=1, session_version=1, dtmf_payload_type=8
        )


def test_offer_answer_round_trip_with_ourselves() -> None:
    offer = create_offer(local_address=LOCAL, local_port=41000, session_id=5, session_version=6)
    ans, theirs = negotiate_answer(
        offer, local_address="198.51.100.9", local_port=42000, session_id=1, session_version=1
    )
    ours = negotiate_offer_answer(offer, ans)
    assert ours == dataclasses.replace(
        theirs, remote_address="198.51.100.9", remote_port=42000, remote_rtcp_port=42001
    )
    assert ours.codec == CodecSpec("G722", 9)
    assert ours.dtmf_payload_type == 101


def test_offer_answer_takes_first_answered_codec() -> None:
    offer = create_offer(local_address=LOCAL, local_port=41000, session_id=5, session_version=6)
    ans = parse(
        "v=0\r\no=- 1 1 IN IP4 198.51.100.9\r\ns=-\r\nc=IN IP4 198.51.100.9\r\nt=0 0\r\n"
        "m=audio 42000 RTP/AVP 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=recvonly\r\n"
    )
    media = negotiate_offer_answer(offer, ans)
    assert media.codec == CodecSpec("PCMA", 8)  # static PT without rtpmap in the answer
    assert media.direction == "sendonly"
    assert not media.on_hold
    assert media.dtmf_payload_type == 101


def test_offer_answer_direction_intersection_and_hold() -> None:
    offer = create_offer(
        local_address=LOCAL, local_port=41000, session_id=5, session_version=6, direction="sendonly"
    )
    ans = parse(
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n"
        "m=audio 42000 RTP/AVP 0\r\na=recvonly\r\n"
    )
    media = negotiate_offer_answer(offer, ans)
    assert media.direction == "inactive"
    assert media.on_hold


def test_offer_answer_errors() -> None:
    offer = create_offer(local_address=LOCAL, local_port=41000, session_id=5, session_version=6)
    base = "v=0\r\no=- 1 1 IN IP4 198.51.100.9\r\ns=-\r\nc=IN IP4 198.51.100.9\r\nt=0 0\r\n"
    with pytest.raises(SdpError, match="m= lines"):
        negotiate_offer_answer(offer, parse(base))
    with pytest.raises(NoCommonCodec):
        negotiate_offer_answer(offer, parse(base + "m=audio 0 RTP/AVP 0\r\n"))
    with pytest.raises(NoCommonCodec):
        negotiate_offer_answer(offer, parse(base + "m=audio 42000 RTP/AVP 18\r\n"))
    with pytest.raises(SdpError, match="RTP/SAVP"):
        negotiate_offer_answer(offer, parse(base + "m=audio 42000 RTP/SAVP 0\r\n"))


def test_rtcp_apart_from_rtp_is_announced_and_the_next_port_is_not() -> None:
    """``a=rtcp`` (RFC 3605) only when a NAT mapped RTCP elsewhere than the RTP port + 1."""
    apart = create_offer(
        local_address=LOCAL, local_port=41000, session_id=5, session_version=6, rtcp_port=52013
    )
    assert apart.media[0].rtcp_port == 52013
    assert b"a=rtcp:52013\r\n" in apart.to_bytes()
    next_port = create_offer(
        local_address=LOCAL, local_port=41000, session_id=5, session_version=6, rtcp_port=41001
    )
    assert next_port.media[0].rtcp_port is None
    sd, _ = answer(offer_text(), rtcp_port=52013)
    assert sd.media[0].rtcp_port == 52013
    assert answer(offer_text())[0].media[0].rtcp_port is None
    current = answer(offer_text())[1]
    re_sd, _ = negotiate_reoffer(
        parse(offer_text()),
        current=current,
        local_address=LOCAL,
        local_port=40000,
        session_id=777,
        session_version=1,
        rtcp_port=52013,
    )
    assert re_sd.media[0].rtcp_port == 52013


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("a=rtcp:53020 IN IP4 198.51.100.7", ("198.51.100.7", 53020)),  # RFC 3605 §2.1
        ("a=rtcp:53020 IN IP6 2001:db8::7", ("2001:db8::7", 53020)),
        ("a=rtcp:53020", ("198.51.100.1", 53020)),  # a port alone: the RTP address
        ("a=rtcp:53020 IN IP4 0.0.0.0", ("198.51.100.1", 53020)),  # no address: likewise
        ("a=rtcp:53020 IN IP4 rtcp.example.com", ("198.51.100.1", 53020)),  # not resolved
        ("a=rtcp:53020 IN IP4 224.2.1.1", ("198.51.100.1", 53020)),  # no unicast address
        (None, ("198.51.100.1", 5001)),  # RFC 3550 §11
    ],
)
def test_the_peer_s_rtcp_goes_to_the_a_rtcp_address_when_it_names_one(
    line: str | None, expected: tuple[str, int]
) -> None:
    """RFC 3605 §2.1: a=rtcp may name the RTCP address as well as its port; it was read for
    its port only, and RTCP went to that port on the RTP address. In an offer, a re-offer
    and an answer alike."""
    text = offer_text() + (f"{line}\r\n" if line else "")
    assert answer(text)[1].rtcp_destination == expected
    current = answer(offer_text())[1]
    reoffered = negotiate_reoffer(
        parse(text),
        current=current,
        local_address=LOCAL,
        local_port=40000,
        session_id=777,
        session_version=1,
    )[1]
    assert reoffered.rtcp_destination == expected
    offer = create_offer(local_address=LOCAL, local_port=41000, session_id=5, session_version=6)
    assert negotiate_offer_answer(offer, parse(text)).rtcp_destination == expected


def test_a_disabled_stream_has_no_rtcp_destination() -> None:
    current = answer(offer_text() + "a=rtcp:53020 IN IP4 198.51.100.7\r\n")[1]
    _, media = negotiate_reoffer(
        parse(offer_text().replace("m=audio 5000", "m=audio 0")),  # RFC 3264 §8.2
        current=current,
        local_address=LOCAL,
        local_port=40000,
        session_id=777,
        session_version=1,
    )
    assert media.rtcp_destination is None


def test_the_peer_s_rtcp_port_is_a_rtcp_else_the_next_port_if_there_is_one() -> None:
    """RFC 3550 §11: RTCP on the RTP port + 1; RFC 3605: a=rtcp names another. On RTP port
    65535 without a=rtcp there is no RTCP port: None (the media session then sends none)."""
    assert answer(offer_text())[1].remote_rtcp_port == 5001
    last = offer_text().replace("m=audio 5000", "m=audio 65535")
    assert answer(last)[1].remote_rtcp_port is None
    assert answer(last + "a=rtcp:40001\r\n")[1].remote_rtcp_port == 40001
