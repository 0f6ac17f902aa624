from __future__ import annotations

import pytest

from telepath.errors import ProtocolError
from telepath.sdp import MAX_SDP_SIZE, SdpError, parse
from telepath.sdp.model import MediaDescription, Origin, SessionDescription

from .samples import SAMPLE_NAMES, load_sample

pytestmark = pytest.mark.unit

MINIMAL = "v=0\r\no=- 1 2 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"


def test_samples_are_stored_with_crlf() -> None:
    assert len(SAMPLE_NAMES) >= 12
    for name in SAMPLE_NAMES:
        data = load_sample(name)
        assert data.endswith(b"\r\n"), name
        assert data.count(b"\n") == data.count(b"\r\n"), name


def test_parse_twilio_fields() -> None:
    sd = parse(load_sample("twilio"))
    assert sd.version == 0
    assert sd.origin == Origin("root", 1012874541, 1012874541, "IN", "IP4", "54.172.60.1")
    assert sd.session_name == "Twilio Media Gateway"
    assert sd.connection_address == "54.172.60.1"
    assert sd.timing == "0 0"
    assert len(sd.media) == 1
    m = sd.media[0]
    assert (m.media, m.port, m.proto, m.formats) == ("audio", 17940, "RTP/AVP", ["0", "101"])
    assert m.attributes == [
        ("rtpmap", "0 PCMU/8000"),
        ("rtpmap", "101 telephone-event/8000"),
        ("fmtp", "101 0-16"),
        ("ptime", "20"),
        ("maxptime", "150"),
        ("sendrecv", None),
    ]
    assert m.rtpmap() == {0: ("PCMU", 8000, 1), 101: ("telephone-event", 8000, 1)}
    assert m.fmtp() == {101: "0-16"}
    assert m.ptime == 20
    assert m.rtcp_port is None
    assert m.direction == "sendrecv"


def test_parse_rtcp_attribute_with_address() -> None:
    m = parse(load_sample("telnyx")).media[0]
    assert m.rtcp_port == 30125
    assert m.rtcp_address == "192.76.120.10"  # RFC 3605 §2.1
    assert parse(load_sample("twilio")).media[0].rtcp_address is None  # a port alone


def test_static_payload_types_filled_from_rfc3551() -> None:
    m = parse(load_sample("static_no_rtpmap")).media[0]
    assert m.rtpmap() == {
        18: ("G729", 8000, 1),
        8: ("PCMA", 8000, 1),
        0: ("PCMU", 8000, 1),
    }
    assert m.fmtp() == {}
    assert m.ptime is None


def test_rtpmap_channels_and_dynamic_without_rtpmap() -> None:
    m = parse(load_sample("freeswitch")).media[0]
    rtpmap = m.rtpmap()
    assert rtpmap[102] == ("opus", 48000, 2)
    assert rtpmap[96] == ("telephone-event", 8000, 1)
    assert rtpmap[103] == ("telephone-event", 48000, 1)
    assert m.fmtp()[102].startswith("useinbandfec=1;")
    bare = MediaDescription("audio", 4000, "RTP/AVP", ["96", "0"])
    assert bare.rtpmap() == {0: ("PCMU", 8000, 1)}  # 96 has no rtpmap: unknown


def test_media_level_connection_and_ipv6() -> None:
    sd = parse(load_sample("ipv6"))
    assert sd.connection_address is None
    m = sd.media[0]
    assert m.connection_address == "2001:db8::10"
    assert m.connection_addrtype == "IP6"
    assert sd.media_connection_address(m) == "2001:db8::10"
    assert m.ptime == 30
    assert sd.media_direction(m) == "recvonly"


def test_session_level_direction_applies_when_media_has_none() -> None:
    text = MINIMAL + (
        "a=sendonly\r\nm=audio 5000 RTP/AVP 0\r\nm=audio 5002 RTP/AVP 0\r\na=inactive\r\n"
    )
    sd = parse(text)
    first, second = sd.media
    assert first.direction == "sendrecv"  # the media-level view alone
    assert sd.media_direction(first) == "sendonly"
    assert sd.media_direction(second) == "inactive"
    assert sd.media_connection_address(first) == "192.0.2.1"


def test_multi_stream_sample() -> None:
    sd = parse(load_sample("audio_video"))
    assert [m.media for m in sd.media] == ["video", "audio", "audio", "text"]
    assert sd.attributes[0][0] == "rtcp-xr"
    assert sd.media[1].rtpmap() == {
        0: ("PCMU", 8000, 1),
        8: ("PCMA", 8000, 1),
        101: ("telephone-event", 8000, 1),
    }


def test_lf_only_and_trailing_whitespace_are_tolerated() -> None:
    crlf = load_sample("asterisk")
    lf = crlf.replace(b"\r\n", b"\n")
    spaced = crlf.replace(b"\r\n", b"  \t\r\n") + b"\r\n\r\n"
    assert parse(lf) == parse(crlf)
    assert parse(spaced) == parse(crlf)
    assert parse(crlf.decode()) == parse(crlf)


def test_missing_t_line_is_tolerated() -> None:
    sd = parse("v=0\no=- 1 1 IN IP4 192.0.2.1\ns=x\nc=IN IP4 192.0.2.1\nm=audio 1 RTP/AVP 0\n")
    assert sd.timing == "0 0"
    assert sd.session_name == "x"


def test_empty_session_name_round_trips_as_space() -> None:
    sd = parse("v=0\no=- 1 1 IN IP4 192.0.2.1\ns= \nt=0 0\n")
    assert sd.session_name == ""
    assert "\r\ns= \r\n" in str(sd)
    assert sd.media == []


def test_multicast_ttl_and_extra_lines_round_trip() -> None:
    text = (
        "v=0\r\no=jdoe 2890844526 2890842807 IN IP4 10.47.16.5\r\ns=SDP Seminar\r\n"
        "i=A Seminar on the session description protocol\r\n"
        "u=http://www.example.com/seminars/sdp.pdf\r\ne=j.doe@example.com (Jane Doe)\r\n"
        "p=+1 617 555-6011\r\nc=IN IP4 224.2.17.12/127\r\nb=CT:128\r\n"
        "t=2873397496 2873404696\r\nr=7d 1h 0 25h\r\nz=2882844526 -1h 2898848070 0\r\n"
        "k=prompt\r\na=recvonly\r\nm=audio 49170/2 RTP/AVP 0\r\ni=main audio\r\n"
        "b=AS:64\r\nk=prompt\r\nm=video 51372 RTP/AVP 99\r\na=rtpmap:99 h263-1998/90000\r\n"
    )
    sd = parse(text)
    assert sd.connection_address == "224.2.17.12"
    assert sd.connection_ttl == "127"
    assert sd.extra_time_lines == [("r", "7d 1h 0 25h")]
    assert sd.media[0].number_of_ports == 2
    assert sd.media[0].bandwidths == ["AS:64"]
    # RFC 4566 §5's own example comes back byte for byte.
    assert str(sd) == text


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_round_trip_samples(name: str) -> None:
    data = load_sample(name)
    sd = parse(data)
    assert sd.to_bytes() == data  # samples are already in canonical §5 order
    assert parse(str(sd)) == sd


def test_serialization_order_follows_rfc4566() -> None:
    sd = SessionDescription(
        version=0,
        origin=Origin("-", 1, 1, "IN", "IP4", "192.0.2.1"),
        session_name="x",
        connection_address="192.0.2.1",
        attributes=[("sendrecv", None)],
        media=[
            MediaDescription(
                "audio",
                4000,
                "RTP/AVP",
                ["0"],
                connection_address="192.0.2.2",
                attributes=[("rtpmap", "0 PCMU/8000")],
                bandwidths=["AS:80"],
                information="voice",
            )
        ],
        bandwidths=["AS:100"],
        information="info",
    )
    kinds = [line[0] for line in str(sd).split("\r\n") if line]
    assert kinds == ["v", "o", "s", "i", "c", "b", "t", "a", "m", "i", "c", "b", "a"]
    assert str(sd).endswith("a=rtpmap:0 PCMU/8000\r\n")
    assert "\n" not in str(sd).replace("\r\n", "")


def test_latin1_body_is_decoded() -> None:
    data = MINIMAL.replace("s=-", "s=Caf\xe9").encode("latin-1")
    assert parse(data).session_name == "Caf\xe9"


BAD = {
    "empty": "",
    "whitespace only": " \r\n\r\n",
    "no v first": "o=- 1 1 IN IP4 192.0.2.1\r\nv=0\r\ns=-\r\nt=0 0\r\n",
    "bad version": "v=1\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\n",
    "no origin": "v=0\r\ns=-\r\nt=0 0\r\n",
    "origin short": "v=0\r\no=- 1 1 IN IP4\r\ns=-\r\nt=0 0\r\n",
    "origin id not numeric": "v=0\r\no=- abc 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\n",
    "origin unicode digits": "v=0\r\no=- \u0661 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\n",
    "no session name": "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nt=0 0\r\n",
    "duplicate s": MINIMAL + "s=again\r\n",
    "duplicate o": MINIMAL + "o=- 1 1 IN IP4 192.0.2.1\r\n",
    "unknown type": MINIMAL + "y=0123456789\r\n",
    "uppercase type": MINIMAL + "M=audio 1 RTP/AVP 0\r\n",
    "no equals": MINIMAL + "m audio 1 RTP/AVP 0\r\n",
    "bad connection": MINIMAL.replace("c=IN IP4 192.0.2.1", "c=IN IP4"),
    "bad connection ttl": MINIMAL.replace("192.0.2.1\r\nt", "192.0.2.1/\r\nt"),
    "bad timing": MINIMAL.replace("t=0 0", "t=now"),
    "r before t": "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nr=7d 1h 0\r\nt=0 0\r\n",
    "media no formats": MINIMAL + "m=audio 4000 RTP/AVP\r\n",
    "media port text": MINIMAL + "m=audio port RTP/AVP 0\r\n",
    "media port range": MINIMAL + "m=audio 70000 RTP/AVP 0\r\n",
    "media zero ports": MINIMAL + "m=audio 4000/0 RTP/AVP 0\r\n",
    "payload type 128": MINIMAL + "m=audio 4000 RTP/AVP 128\r\n",
    "payload type name": MINIMAL + "m=audio 4000 RTP/AVP PCMU\r\n",
    "session line after m": MINIMAL + "m=audio 4000 RTP/AVP 0\r\ns=late\r\n",
    "duplicate media c": MINIMAL
    + "m=audio 4000 RTP/AVP 0\r\nc=IN IP4 192.0.2.3\r\nc=IN IP4 192.0.2.4\r\n",
    "bad rtpmap": MINIMAL + "m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU\r\n",
    "bad rtcp": MINIMAL + "m=audio 4000 RTP/AVP 0\r\na=rtcp:99999\r\n",
    "empty attribute name": MINIMAL + "a=:x\r\n",
    "nul": MINIMAL + "a=x\x00y\r\n",
    "bare cr": MINIMAL + "a=x\ry\r\n",
}


@pytest.mark.parametrize("text", list(BAD.values()), ids=list(BAD))
def test_malformed_input_raises_sdp_error_400(text: str) -> None:
    with pytest.raises(SdpError) as info:
        parse(text)
    assert info.value.status_hint == 400
    assert isinstance(info.value, ProtocolError)
    assert str(info.value)


def test_size_bound() -> None:
    padding = "a=x-pad:" + "x" * 100 + "\r\n"
    big = MINIMAL + padding * (MAX_SDP_SIZE // len(padding) + 1)
    with pytest.raises(SdpError, match="exceeds"):
        parse(big)
    with pytest.raises(SdpError, match="exceeds"):
        parse(big.encode())
    assert MAX_SDP_SIZE == 64 * 1024
    fits = MINIMAL + padding * 100
    assert len(parse(fits).attributes) == 100
