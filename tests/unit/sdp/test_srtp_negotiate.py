"""SDES (RFC 4568): the a=crypto attribute, and SRTP in offer/answer."""

from __future__ import annotations

import base64
import os

import pytest

from telepath.rtp.packet import pack_rtp
from telepath.rtp.srtp import SrtpContext, SrtpError
from telepath.rtp.srtp_keys import KEY_MATERIAL, SUITES, SrtpKeys
from telepath.sdp import (
    MediaSecurity,
    NegotiatedMedia,
    NoCommonCodec,
    SdpError,
    SessionDescription,
    create_offer,
    negotiate_answer,
    negotiate_offer_answer,
    negotiate_reoffer,
    parse,
)
from telepath.sdp.crypto import format_crypto, parse_crypto, usable_crypto

pytestmark = pytest.mark.unit

KEY = bytes(range(30))
THEIRS = bytes(range(100, 130))
INLINE = base64.b64encode(THEIRS).decode()
HEAD = "v=0\r\no=caller 1 1 IN IP4 198.51.100.9\r\ns=-\r\nc=IN IP4 198.51.100.9\r\nt=0 0\r\n"
ALLOW = MediaSecurity(key=KEY)


def savp(*crypto: str, port: int = 42000) -> str:
    lines = "".join(f"a=crypto:{c}\r\n" for c in crypto)
    return f"m=audio {port} RTP/SAVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n{lines}"


def answer(
    text: str, security: MediaSecurity = ALLOW
) -> tuple[SessionDescription, NegotiatedMedia]:
    return negotiate_answer(
        parse(HEAD + text),
        local_address="203.0.113.5",
        local_port=40000,
        session_id=7,
        session_version=1,
        security=security,
    )


@pytest.mark.parametrize(
    "value",
    [
        f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}",
        f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}|2^20",
        f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}|2^31",
        f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}|1048576",
        f"1  aes_cm_128_hmac_sha1_80\tinline:{INLINE} ",
    ],
)
def test_crypto_lines_we_take(value: str) -> None:
    found = parse_crypto(value)
    assert found is not None
    assert (found.tag, found.suite.name, found.key) == (1, "AES_CM_128_HMAC_SHA1_80", THEIRS)
    assert INLINE not in repr(found)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}|2^20|1:4", id="mki"),
        pytest.param(f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}|1:4", id="mki-no-lifetime"),
        pytest.param(f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}|2^10", id="short-lifetime"),
        pytest.param(f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}|1000", id="short-decimal"),
        pytest.param(f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}|x", id="bad-lifetime"),
        pytest.param(f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE};inline:{INLINE}", id="two-keys"),
        pytest.param(f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE} UNENCRYPTED_SRTP", id="param"),
        pytest.param(f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE} KDR=1", id="kdr"),
        pytest.param(f"1 F8_128_HMAC_SHA1_80 inline:{INLINE}", id="suite"),
        pytest.param(f"1 AES_256_CM_HMAC_SHA1_80 inline:{INLINE}", id="aes256"),
        pytest.param("1 AES_CM_128_HMAC_SHA1_80 inline:AAAA", id="short-key"),
        pytest.param("1 AES_CM_128_HMAC_SHA1_80 inline:!!notbase64!!", id="base64"),
        pytest.param(f"1 AES_CM_128_HMAC_SHA1_80 uri:{INLINE}", id="method"),
        pytest.param(f"x AES_CM_128_HMAC_SHA1_80 inline:{INLINE}", id="tag"),
        pytest.param("1 AES_CM_128_HMAC_SHA1_80", id="no-key"),
        pytest.param("", id="empty"),
    ],
)
def test_crypto_lines_we_skip(value: str) -> None:
    assert parse_crypto(value) is None


def test_format_round_trips_and_checks_the_key() -> None:
    suite = SUITES["AES_CM_128_HMAC_SHA1_32"]
    parsed = parse_crypto(format_crypto(5, suite, KEY))
    assert parsed is not None and (parsed.tag, parsed.suite, parsed.key) == (5, suite, KEY)
    with pytest.raises(ValueError):
        format_crypto(1, suite, KEY[:29])
    first_usable = usable_crypto(["junk", f"2 AES_CM_128_HMAC_SHA1_32 inline:{INLINE}"])
    assert first_usable is not None and first_usable.tag == 2


def test_srtp_offer_is_answered_with_the_chosen_tag_suite_and_our_key() -> None:
    sd, media = answer(
        savp(
            f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}|2^20|1:4",  # an MKI: skipped
            f"2 AES_CM_128_HMAC_SHA1_32 inline:{INLINE}",
        )
    )
    m = sd.media[0]
    assert (m.proto, m.port) == ("RTP/SAVP", 40000)
    assert m.attribute_values("crypto") == [
        f"2 AES_CM_128_HMAC_SHA1_32 inline:{base64.b64encode(KEY).decode()}"
    ]
    assert media.srtp is not None
    assert (media.srtp.tag, media.srtp.suite.name) == (2, "AES_CM_128_HMAC_SHA1_32")
    assert (media.srtp.local_key, media.srtp.remote_key) == (KEY, THEIRS)
    assert media.codec.name == "PCMU" and media.dtmf_payload_type == 101


def test_plain_offer_stays_plain_when_srtp_is_allowed() -> None:
    sd, media = answer("m=audio 42000 RTP/AVP 0\r\n")
    assert sd.media[0].proto == "RTP/AVP" and not sd.media[0].attribute_values("crypto")
    assert media.srtp is None


def test_srtp_offer_refused_without_a_key_says_why() -> None:
    why = "SRTP keys are only taken over TLS"
    with pytest.raises(NoCommonCodec) as info:
        answer(savp(f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}"), MediaSecurity(why_not=why))
    assert info.value.warn_code == 302 and why in str(info.value)


def test_srtp_offer_without_a_usable_crypto_line_is_refused() -> None:
    with pytest.raises(NoCommonCodec) as info:
        answer(savp(f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}|2^20|1:4"))
    assert info.value.warn_code == 302 and "a=crypto" in str(info.value)


def test_required_srtp_refuses_plain_rtp_and_takes_the_secure_stream() -> None:
    required = MediaSecurity(key=KEY, required=True)
    with pytest.raises(NoCommonCodec) as info:
        answer("m=audio 42000 RTP/AVP 0\r\n", required)
    assert info.value.warn_code == 302 and "required" in str(info.value)
    both = "m=audio 42000 RTP/AVP 0\r\n" + savp(
        f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}", port=42002
    )
    sd, media = answer(both, required)
    assert [(m.proto, m.port) for m in sd.media] == [("RTP/AVP", 0), ("RTP/SAVP", 40000)]
    assert media.remote_port == 42002 and media.srtp is not None


def test_reoffer_keeps_our_key_and_takes_a_new_remote_key() -> None:
    _, first = answer(savp(f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}"))
    assert first.srtp is not None
    rekeyed = base64.b64encode(bytes(30)).decode()
    sd, again = negotiate_reoffer(
        parse(HEAD + savp(f"3 AES_CM_128_HMAC_SHA1_80 inline:{rekeyed}")),
        current=first,
        local_address="203.0.113.5",
        local_port=40000,
        session_id=7,
        session_version=1,
        security=MediaSecurity(key=first.srtp.local_key),
    )
    assert again.srtp is not None
    assert (again.srtp.local_key, again.srtp.remote_key, again.srtp.tag) == (KEY, bytes(30), 3)
    assert sd.media[0].attribute_values("crypto")[0].startswith("3 AES_CM_128_HMAC_SHA1_80 ")


def test_our_srtp_offer_and_its_answer_give_each_side_the_other_s_key() -> None:
    ours, theirs = os.urandom(30), os.urandom(30)
    offer = create_offer(
        local_address="203.0.113.5",
        local_port=40000,
        session_id=1,
        session_version=1,
        preference=("PCMU",),
        srtp_key=ours,
    )
    m = offer.media[0]
    assert m.proto == "RTP/SAVP"
    assert m.attribute_values("crypto") == [
        format_crypto(1, SUITES["AES_CM_128_HMAC_SHA1_80"], ours)
    ]
    reply, their_view = negotiate_answer(
        parse(offer.to_bytes()),
        local_address="198.51.100.9",
        local_port=42000,
        session_id=2,
        session_version=1,
        security=MediaSecurity(key=theirs),
    )
    our_view = negotiate_offer_answer(offer, parse(reply.to_bytes()))
    assert our_view.srtp is not None and their_view.srtp is not None
    assert (our_view.srtp.local_key, our_view.srtp.remote_key) == (ours, theirs)
    assert (their_view.srtp.local_key, their_view.srtp.remote_key) == (theirs, ours)
    a, b = SrtpContext(our_view.srtp), SrtpContext(their_view.srtp)
    packet = pack_rtp(0, 1, 160, 99, b"\x7f" * 160, False)
    assert b.unprotect(a.protect(packet)) == packet
    assert a.unprotect(b.protect(packet)) == packet


@pytest.mark.parametrize(
    ("answer_text", "match"),
    [
        pytest.param("m=audio 42000 RTP/AVP 0\r\n", "RTP/AVP", id="downgraded"),
        pytest.param("m=audio 42000 RTP/SAVP 0\r\n", "no usable a=crypto", id="no-crypto"),
        pytest.param(savp(f"2 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}"), "did not offer", id="tag"),
        pytest.param(
            savp(f"1 AES_CM_128_HMAC_SHA1_32 inline:{INLINE}"), "changed the crypto", id="suite"
        ),
    ],
)
def test_a_bad_answer_to_our_srtp_offer_is_an_sdp_error(answer_text: str, match: str) -> None:
    offer = create_offer(
        local_address="203.0.113.5",
        local_port=40000,
        session_id=1,
        session_version=1,
        srtp_key=KEY,
    )
    with pytest.raises(SdpError, match=match):
        negotiate_offer_answer(offer, parse(HEAD + answer_text))


# AES-GCM (RFC 7714 §12): a 128- or 256-bit key and a 96-bit salt in the inline key.
GCM = {"AEAD_AES_128_GCM": 28, "AEAD_AES_256_GCM": 44}
MATERIAL = bytes(range(200, 200 + KEY_MATERIAL))  # every suite takes a prefix


@pytest.mark.parametrize(("name", "length"), GCM.items())
def test_gcm_lines_need_the_suites_own_key_length(name: str, length: int) -> None:
    key = os.urandom(length)
    parsed = parse_crypto(f"1 {name} inline:{base64.b64encode(key).decode()}")
    assert parsed is not None and (parsed.suite.name, parsed.key) == (name, key)
    assert SUITES[name].key_length == length
    for wrong in (length - 1, length + 1, 30):
        if wrong != length:
            text = base64.b64encode(os.urandom(wrong)).decode()
            assert parse_crypto(f"1 {name} inline:{text}") is None, wrong


@pytest.mark.parametrize(("name", "length"), GCM.items())
def test_gcm_offer_is_answered_with_a_key_of_its_length(name: str, length: int) -> None:
    theirs = os.urandom(length)
    sd, media = answer(
        savp(f"4 {name} inline:{base64.b64encode(theirs).decode()}"),
        MediaSecurity(key=MATERIAL),
    )
    assert media.srtp is not None
    assert (media.srtp.tag, media.srtp.suite.name) == (4, name)
    assert (media.srtp.local_key, media.srtp.remote_key) == (MATERIAL[:length], theirs)
    assert sd.media[0].attribute_values("crypto") == [
        f"4 {name} inline:{base64.b64encode(MATERIAL[:length]).decode()}"
    ]
    # The two ends' contexts agree: what one protects the other reads, tampering is caught.
    ours, peer = (
        SrtpContext(media.srtp),
        SrtpContext(SrtpKeys(media.srtp.suite, 4, theirs, MATERIAL[:length])),
    )
    packet = pack_rtp(0, 1, 160, 99, b"\x7f" * 160, False)
    protected = ours.protect(packet)
    assert len(protected) == len(packet) + 16  # the GCM tag (RFC 7714 §7.2), no HMAC
    assert peer.unprotect(protected) == packet
    tampered = protected[:20] + bytes([protected[20] ^ 1]) + protected[21:]
    with pytest.raises(SrtpError):
        SrtpContext(SrtpKeys(media.srtp.suite, 4, theirs, MATERIAL[:length])).unprotect(tampered)


def test_the_offerers_order_decides_between_suites() -> None:
    gcm = base64.b64encode(os.urandom(44)).decode()
    _, media = answer(
        savp(f"1 AEAD_AES_256_GCM inline:{gcm}", f"2 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}"),
        MediaSecurity(key=MATERIAL),
    )
    assert media.srtp is not None and media.srtp.suite.name == "AEAD_AES_256_GCM"
    # A key too short for a suite (a call's 30-octet key mid-call) passes its lines over.
    _, media = answer(
        savp(f"1 AEAD_AES_256_GCM inline:{gcm}", f"2 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}"),
        MediaSecurity(key=KEY),
    )
    assert media.srtp is not None and media.srtp.suite.name == "AES_CM_128_HMAC_SHA1_80"


def test_a_reoffer_is_answered_in_the_calls_suite_even_when_listed_second() -> None:
    _, first = answer(savp(f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}"))
    assert first.srtp is not None
    gcm = base64.b64encode(os.urandom(28)).decode()
    midcall = MediaSecurity(key=first.srtp.local_key, required=True, suite=first.srtp.suite)

    def reoffer(*crypto: str) -> NegotiatedMedia:
        return negotiate_reoffer(
            parse(HEAD + savp(*crypto)),
            current=first,
            local_address="203.0.113.5",
            local_port=40000,
            session_id=7,
            session_version=1,
            security=midcall,
        )[1]

    again = reoffer(
        f"1 AEAD_AES_128_GCM inline:{gcm}", f"2 AES_CM_128_HMAC_SHA1_80 inline:{INLINE}"
    )
    assert again.srtp is not None
    assert (again.srtp.suite, again.srtp.tag, again.srtp.local_key) == (first.srtp.suite, 2, KEY)
    with pytest.raises(NoCommonCodec, match="cannot change"):
        reoffer(f"1 AEAD_AES_128_GCM inline:{gcm}")


@pytest.mark.parametrize("name", GCM)
def test_our_offer_in_a_chosen_suite_needs_its_key_length(name: str) -> None:
    key = MATERIAL[: GCM[name]]
    offer = create_offer(
        local_address="203.0.113.5",
        local_port=40000,
        session_id=1,
        session_version=1,
        srtp_key=key,
        srtp_suite=SUITES[name],
    )
    assert offer.media[0].attribute_values("crypto") == [format_crypto(1, SUITES[name], key)]
    theirs = os.urandom(GCM[name])
    reply = savp(f"1 {name} inline:{base64.b64encode(theirs).decode()}")
    media = negotiate_offer_answer(offer, parse(HEAD + reply))
    assert media.srtp is not None and (media.srtp.local_key, media.srtp.remote_key) == (key, theirs)
    with pytest.raises(ValueError, match="octet key"):  # another suite's key is no key for it
        create_offer(
            local_address="203.0.113.5",
            local_port=40000,
            session_id=1,
            session_version=1,
            srtp_key=MATERIAL[:30],
            srtp_suite=SUITES[name],
        )
