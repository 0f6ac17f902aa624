"""RFC 4475 torture test messages through the SIP parser.

The corpus under ``tests/data/rfc4475`` is byte-exact (pinned by ``SHA256SUMS``). Every §3.1.1
message must parse with the right fields, every §3.1.2 message must raise
:class:`SipParseError` with the status the RFC implies, and the §3.2-§3.4 messages are held to
``expectations.toml`` as far as the parser is concerned.
"""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path
from typing import Any

import pytest

from telepath.errors import ProtocolError
from telepath.sip.errors import SipParseError
from telepath.sip.headers import parse_name_addr
from telepath.sip.message import Request, Response, _canonical_name_cached
from telepath.sip.parser import StreamFramer, parse_message
from telepath.sip.routing import call_id_of
from telepath.sip.uri import _parse_uri_cached

pytestmark = pytest.mark.unit

CORPUS = Path(__file__).resolve().parents[2] / "data" / "rfc4475"
VALID = sorted(p.stem for p in (CORPUS / "valid").glob("*.dat"))
INVALID = sorted(p.stem for p in (CORPUS / "invalid").glob("*.dat"))
SEMANTIC = sorted(p.stem for p in (CORPUS / "semantic").glob("*.dat"))
EXPECTATIONS: dict[str, dict[str, object]] = tomllib.loads(
    (CORPUS / "expectations.toml").read_text(encoding="utf-8")
)

SDP_BODY_START = b"v=0\r\no=mhandley 29739 7272939 IN IP4 "


def load(group: str, name: str) -> bytes:
    return (CORPUS / group / f"{name}.dat").read_bytes()


def request(name: str, group: str = "valid") -> Request:
    msg = parse_message(load(group, name))
    assert isinstance(msg, Request), msg
    return msg


def response(name: str, group: str = "valid") -> Response:
    msg = parse_message(load(group, name))
    assert isinstance(msg, Response), msg
    return msg


# --- the corpus itself -----------------------------------------------------------------------


def test_corpus_is_complete_and_byte_exact() -> None:
    assert (len(VALID), len(INVALID), len(SEMANTIC)) == (13, 19, 17)
    sums = {}
    for line in (CORPUS / "SHA256SUMS").read_text(encoding="ascii").splitlines():
        digest, path = line.split()
        sums[path] = digest
    assert len(sums) == 49
    for path, digest in sums.items():
        assert hashlib.sha256((CORPUS / path).read_bytes()).hexdigest() == digest, path
    assert set(EXPECTATIONS) == set(SEMANTIC)


def test_corpus_keeps_crlf_and_raw_octets() -> None:
    wsinv = load("valid", "wsinv")
    assert wsinv.count(b"\r\n") == wsinv.count(b"\n")  # every line end is CRLF
    assert b"\\\x07 NUL:\\\x00 DEL:\\\x7f" in load("valid", "intmeth")
    assert b"\x30\x82\x01\x52\x06\x09\x2a\x86" in load("valid", "mpart01")


# --- §3.1.1 valid messages -------------------------------------------------------------------


@pytest.mark.parametrize("name", VALID)
def test_valid_message_parses(name: str) -> None:
    msg = parse_message(load("valid", name))
    assert isinstance(msg, Request | Response)


def test_wsinv_short_tortuous_invite() -> None:
    req = request("wsinv")
    assert req.method == "INVITE"
    assert (req.uri.scheme, req.uri.user, req.uri.host) == (
        "sip",
        "vivekg",
        "chair-dnrc.example.com",
    )
    assert req.uri.param("unknownparam") == ""
    assert req.call_id == "wsinv.ndaksdj@192.0.2.1"
    assert (req.cseq.seq, req.cseq.method) == (9, "INVITE")
    assert int(req.headers.get("Max-Forwards") or "") == 68
    vias = req.vias
    assert [(v.transport, v.host, v.branch) for v in vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert req.to.tag == "1918181833n"
    assert req.to.uri.user == "vivekg"
    assert req.from_.tag == "98asjd8"
    assert req.from_.uri.user == "jdrosen"
    assert req.from_.display_name is not None
    assert "J Rosenberg" in req.from_.display_name
    assert req.headers.get("Subject") == ""
    assert req.headers.get("s") == ""
    assert req.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    fangled = req.headers.get("NewFangledHeader") or ""
    assert fangled.startswith("newfangled value")
    assert fangled.endswith("continued newfangled value")
    assert len(req.headers.get_all("Route")) == 1
    contacts = req.headers.get_all("m")
    assert len(contacts) == 1
    contact = parse_name_addr(contacts[0])
    assert contact.uri.user == "jdrosen"
    assert contact.display_name is not None and "Quoted string" in contact.display_name
    assert contact.params == (("newparam", "newvalue"), ("secondparam", None), ("q", "0.33"))
    assert req.content_type == "application/sdp"
    assert len(req.body) == 150
    assert req.body.startswith(SDP_BODY_START)


def test_intmeth_wide_range_of_valid_characters() -> None:
    req = request("intmeth")
    method = "!interesting-Method0123456789_*+`.%indeed'~"
    assert req.method == method
    assert req.uri.scheme == "sip"
    assert req.uri.host == "example.com"
    assert req.uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert req.uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert (req.cseq.seq, req.cseq.method) == (139122385, method)
    assert req.headers.get("Max-Forwards") == "255"
    assert req.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert req.top_via.branch == "z9hG4bK-.!%66*_+`'~"
    assert req.from_.tag == "_token~1'+`*%!-."
    assert req.from_.display_name is not None
    assert req.from_.display_name.split() == ["token1~`", "token2'+_", "token3*%!.-"]
    assert dict(req.from_.params)["fromParam''~+*_!.-%"] == '"работающий"'
    assert req.to.display_name is not None
    assert "\x07" in req.to.display_name
    assert "\x00" in req.to.display_name
    assert "\x7f" in req.to.display_name
    assert req.to.uri.host == "example.com"
    assert req.headers.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"
    assert req.body == b""


def test_esc01_valid_escapes() -> None:
    req = request("esc01")
    assert req.uri.user == "sips%3Auser%40example.com"
    assert req.uri.user_unescaped == "sips:user@example.com"
    assert req.uri.host == "example.net"
    assert req.to.uri.user_unescaped == "user"
    assert req.from_.uri.user_unescaped == "I have spaces"
    assert req.call_id == "esc01.239409asdfakjkn23onasd0-3234"  # compact "i"
    assert req.content_type == "application/sdp"  # compact "C"
    (contact,) = req.headers.get_all("Contact")
    uri = parse_name_addr(contact).uri
    assert uri.user_unescaped == "caller"
    assert uri.params == (("%6C%72", None), ("n%61me", "v%61lue%25%34%31"))
    assert len(req.body) == 150


def test_escnull_escaped_nulls_in_uris() -> None:
    req = request("escnull")
    assert req.method == "REGISTER"
    assert req.to.uri.user == "null-%00-null"
    assert req.to.uri.user_unescaped == "null-\x00-null"
    assert req.from_.uri.user_unescaped == "null-\x00-null"
    assert len(req.headers.get_all("Contact")) == 2
    assert req.body == b""


def test_esc02_percent_that_is_not_an_escape() -> None:
    req = request("esc02")
    assert req.method == "RE%47IST%45R"  # not REGISTER: % is not an escape in a method
    assert req.cseq.method == "RE%47IST%45R"
    assert req.top_via.branch == "z9hG4bK209%fzsnel234"
    assert len(req.headers.get_all("Contact")) == 2  # "C%6Fntact" is another header
    assert req.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"


def test_lwsdisp_no_lws_before_laquot() -> None:
    req = request("lwsdisp")
    assert req.from_.display_name == "caller"
    assert req.from_.tag == "323"
    assert req.from_.uri.user == "caller"


def test_longreq_long_values() -> None:
    req = request("longreq")
    assert req.to.display_name is not None
    assert "extreme" * 10 in req.to.display_name
    assert req.to.uri.port == 6000
    assert req.to.uri.param("unknownparam1") == "very" + "long" * 20 + "value"
    assert req.to.uri.param("longparam" + "name" * 25) == "shortvalue"
    assert req.from_.tag == "12" + "982" * 50 + "424"
    assert req.from_.uri.user == "amazinglylongcallername" * 5
    assert req.call_id == "longreq.one" + "really" * 20 + "longcallid"
    assert (req.cseq.seq, req.cseq.method) == (3882340, "INVITE")
    vias = req.vias
    assert len(vias) == 34
    assert [v.host for v in vias[:33]] == [f"sip{n}.example.com" for n in range(33, 0, -1)]
    assert vias[-1].received == "192.0.2.5"
    assert vias[-1].branch == "very" + "long" * 50 + "branchvalue"
    unknown = req.headers.get("Unknown-" + "Long" * 20 + "-Name") or ""
    assert unknown.startswith("unknown-" + "long" * 20 + "-value")
    (contact,) = req.headers.get_all("Contact")
    assert "amazinglylongcallername" * 5 + "@host5.example.net" in contact
    assert len(req.body) == 150


@pytest.mark.parametrize(
    "template",
    [
        b"OPTIONS sip:%s@example.com SIP/2.0\r\nCall-ID: a b\r\n\r\n",
        b"OPTIONS sip:a@example.com SIP/2.0\r\nX-%s: 1\r\nCall-ID: a b\r\n\r\n",
    ],
    ids=["request-uri", "header-name"],
)
def test_long_uris_and_header_names_are_not_kept_in_the_parse_caches(template: bytes) -> None:
    """A 60 KB Request-URI or header name parses (the size limit is the message's), but the
    caches of parsed URIs (4,096) and canonical names (1,024) kept every key whole — of a
    request then rejected too, and of names the router reads (a Call-ID that is not one word)
    in messages never parsed: ~690 MB a process once full. Only short keys are cached: the
    ones a carrier repeats."""
    _parse_uri_cached.cache_clear()
    _canonical_name_cached.cache_clear()
    sizes = []
    for data in (template % b"u", template % (b"u" * 60_000)):  # short, then long
        with pytest.raises(SipParseError, match="missing Via"):
            parse_message(data)
        assert call_id_of(data) == b"a b"
        uris, names = _parse_uri_cached.cache_info(), _canonical_name_cached.cache_info()
        sizes.append((uris.currsize, names.currsize))
    assert sizes[1] == sizes[0]  # what the short one cached, nothing more


def test_dblreq_trailing_octets_ignored() -> None:
    req = request("dblreq")
    assert req.method == "REGISTER"
    assert req.call_id == "dblreq.0ha0isndaksdj99sdfafnl3lk233412"
    assert req.body == b""
    assert b"INVITE" not in req.to_bytes()


def test_semiuri_semicolon_in_user_part() -> None:
    req = request("semiuri")
    assert req.uri.user == "user;par=u%40example.net"
    assert req.uri.host == "example.com"
    assert req.uri.params == ()
    assert len(req.headers.get_all("Accept")) == 6


def test_transports_varied_and_unknown() -> None:
    req = request("transports")
    assert [v.transport for v in req.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]
    assert req.call_id == "transports.kijh4akdnaqjkwendsasfdj"


def test_mpart01_multipart_binary_body() -> None:
    req = request("mpart01")
    assert req.method == "MESSAGE"
    assert len(req.body) == 553
    assert req.content_type == "multipart/mixed"
    assert req.body.startswith(b"--7a9cbec02ceef655\r\nContent-Type: text/plain\r\n")
    assert req.body.endswith(b"\r\n--7a9cbec02ceef655--\r\n")
    assert b"\x35\x0a\x68\xce" in req.body  # a bare LF inside the binary part survives
    assert req.body == load("valid", "mpart01")[-553:]


def test_unreason_utf8_reason_phrase() -> None:
    resp = response("unreason")
    assert resp.status == 200
    assert resp.reason == "= 2**3 * 5**2 но сто девяносто девять - простое"
    assert len(resp.body) == 154


def test_noreason_empty_reason_phrase() -> None:
    resp = response("noreason")
    assert resp.status == 100
    assert resp.reason == ""
    assert resp.call_id == "noreason.asndj203insdf99223ndf"


@pytest.mark.parametrize("version", ["sip/2.0", "Sip/2.0", "sIP/2.0"])
def test_the_sip_version_of_a_request_line_is_case_insensitive(version: str) -> None:
    """RFC 3261 §7.1: "The SIP-Version string is case-insensitive" (we send it upper-case). A
    Request-Line in lower case was no Request-Line: dropped unanswered; a Status-Line was not."""
    data = load("valid", "dblreq")
    data = data[: data.index(b"\r\n\r\n") + 4].replace(b" SIP/2.0\r\n", f" {version}\r\n".encode())
    req = parse_message(data)
    assert isinstance(req, Request) and req.method == "REGISTER"
    assert req.to_bytes().startswith(b"REGISTER sip:example.com SIP/2.0\r\n")
    with pytest.raises(SipParseError) as exc:
        parse_message(data.replace(version.encode(), version.replace("2", "7").encode(), 1))
    assert exc.value.status_hint == 505 and exc.value.request is not None


# --- §3.1.2 invalid messages -----------------------------------------------------------------

# The status a UAS answers with (RFC 4475 §3.1.2 text): 400 unless said otherwise. The two
# responses (scalarlg, bigcode) are discarded, so any 4xx/5xx hint will do.
INVALID_STATUS: dict[str, set[int]] = {name: {400} for name in INVALID}
INVALID_STATUS["badvers"] = {505}  # §3.1.2.16
INVALID_STATUS["mismatch02"] = {400, 501}  # §3.1.2.18: 501 or 400
INVALID_STATUS["scalarlg"] = set(range(400, 600))
INVALID_STATUS["bigcode"] = set(range(400, 600))


@pytest.mark.parametrize("name", INVALID)
def test_invalid_message_is_rejected(name: str) -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(load("invalid", name))
    assert isinstance(info.value, ProtocolError)
    assert 400 <= info.value.status_hint < 600
    assert info.value.status_hint in INVALID_STATUS[name], (name, info.value.status_hint)


# --- §3.2 / §3.3 / §3.4 -----------------------------------------------------------------------


@pytest.mark.parametrize("name", SEMANTIC)
def test_semantic_message_parser_outcome(name: str) -> None:
    expected = EXPECTATIONS[name]
    data = load("semantic", name)
    if expected["parse"] == "reject":
        with pytest.raises(SipParseError) as info:
            parse_message(data)
        assert info.value.status_hint == expected["status"], name
    else:
        assert isinstance(parse_message(data), Request | Response)


def test_unkscm_416_keeps_the_request_to_answer() -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(load("semantic", "unkscm"))
    assert info.value.status_hint == 416
    assert isinstance(info.value.request, Request)
    assert info.value.request.call_id == "unkscm.nasdfasser0q239nwsdfasdkl34"


def test_unksm2_unknown_schemes_in_headers() -> None:
    req = request("unksm2", "semantic")
    assert req.to.uri.scheme == "isbn"
    assert req.from_.uri.scheme == "http"
    assert req.from_.tag == "3234233"


def test_bext01_extensions_visible_for_420() -> None:
    req = request("bext01", "semantic")
    assert req.headers.get_all("Require") == ["nothingSupportsThis", "nothingSupportsThisEither"]
    assert req.headers.get_all("Proxy-Require") == [
        "noProxiesSupportThis",
        "norDoAnyProxiesSupportThis",
    ]


def test_invut_unknown_content_type_for_415() -> None:
    req = request("invut", "semantic")
    assert req.content_type == "application/unknownformat"
    assert len(req.body) == 40


def test_regaut01_unknown_authorization_scheme() -> None:
    req = request("regaut01", "semantic")
    assert req.headers.get("Authorization") == "NoOneKnowsThisScheme opaque-data=here"


def test_badbranch_bare_magic_cookie() -> None:
    assert request("badbranch", "semantic").top_via.branch == "z9hG4bK"


def test_zeromf_and_bcast() -> None:
    assert request("zeromf", "semantic").headers.get("Max-Forwards") == "0"
    bcast = response("bcast", "semantic")
    assert [v.host for v in bcast.vias] == ["192.0.2.198", "255.255.255.255"]


def test_cparam_and_regescrt_contacts() -> None:
    cparam01 = request("cparam01", "semantic")
    assert cparam01.headers.get_all("Contact") == ["sip:+19725552222@gw1.example.net;unknownparam"]
    cparam02 = request("cparam02", "semantic")
    assert cparam02.headers.get_all("Contact") == [
        "<sip:+19725552222@gw1.example.net;unknownparam>"
    ]
    regescrt = request("regescrt", "semantic")
    assert regescrt.headers.get_all("m") == [
        "<sip:user@example.com?Route=%3Csip:sip.example.com%3E>"
    ]


def test_sdp01_accept_without_sdp() -> None:
    req = request("sdp01", "semantic")
    assert req.headers.get_all("Accept") == ["text/nobodyKnowsThis"]
    assert req.content_type == "application/sdp"


def test_inv2543_rfc2543_syntax() -> None:
    req = request("inv2543", "semantic")
    assert req.top_via.branch is None
    assert req.from_.tag is None
    assert req.headers.get("Max-Forwards") is None
    assert req.body.startswith(SDP_BODY_START)


# --- streams (RFC 3261 §18.3) ----------------------------------------------------------------


def test_stream_framer_dblreq_register_is_framed_alone() -> None:
    data = load("valid", "dblreq")
    register_end = data.index(b"\r\n\r\n") + 4
    framer = StreamFramer()
    # The trailing "INVITE" is not a valid message (its body is 151 octets for a
    # Content-Length of 150): only the REGISTER is checked here.
    assert framer.feed(data[:register_end] + b"\r\n") == [data[:register_end]]
    assert framer.pending == 0


def test_stream_framer_clerr_waits_for_more() -> None:
    framer = StreamFramer()
    assert framer.feed(load("invalid", "clerr")) == []  # §3.1.2.2: wait on a stream
    assert framer.pending > 0


def test_stream_framer_ncl_negative_length_closes() -> None:
    with pytest.raises(SipParseError):
        StreamFramer().feed(load("invalid", "ncl"))


def test_stream_framer_inv2543_needs_content_length() -> None:
    with pytest.raises(SipParseError):
        StreamFramer().feed(load("semantic", "inv2543"))


def test_stream_framer_valid_corpus_roundtrip() -> None:
    names = [n for n in VALID if n != "dblreq" and b"\r\n\r\n" in load("valid", n)]
    stream = b"\r\n".join(load("valid", n) for n in names)
    framer = StreamFramer()
    out = framer.feed(stream)
    assert out == [load("valid", n) for n in names]


@pytest.mark.parametrize(
    "field", [b"Content-Length:\r\n 3", b"Content-Length\r\n\t: 3", b"l:\r\n  \r\n 3", b"l: 3"]
)
def test_stream_framer_reads_a_folded_content_length_as_the_parser_does(field: bytes) -> None:
    """§7.3.1: any field may be folded, Content-Length too. The parser read it; the framer
    found no length (or an empty one) and closed the connection."""
    message = b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: x\r\n" + field + b"\r\n\r\nabc"
    framer = StreamFramer()
    assert framer.feed(message + b"OPTIONS") == [message]
    assert framer.pending == len(b"OPTIONS")
    with pytest.raises(SipParseError) as exc:
        parse_message(message)  # no Via: what matters is the body it was read with
    assert exc.value.request is not None and exc.value.request.body == b"abc"


class _CountedBuffer(bytearray):
    """A framer's buffer that counts the octets its searches, strips and copies go over."""

    work = 0

    def find(self, sub: Any, *where: Any) -> int:
        start = where[0] if where else 0
        self.work += len(self) - start
        return super().find(sub, *where)

    def lstrip(self, chars: Any = None) -> bytearray:
        self.work += len(self)
        return super().lstrip(chars)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice):
            self.work += len(range(*key.indices(len(self))))
        return super().__getitem__(key)


def _trickled_work(message: bytes) -> int:
    """The octets gone over to frame ``message`` fed one octet at a time."""
    framer = StreamFramer()
    buffer = framer._buffer = _CountedBuffer()
    out = [m for i in range(len(message)) for m in framer.feed(message[i : i + 1])]
    assert out == [message] and framer._buffer is buffer
    return buffer.work


@pytest.mark.parametrize("part", ["head", "body"])
def test_stream_framer_work_is_linear_in_a_trickled_message(part: str) -> None:
    """§18.3 over TCP/TLS: a peer may send a message an octet at a time. Every octet copied the
    whole buffer (a strip of CRLFs not there) and searched it again from its start for the end
    of the head — then, head found, read the head again for each octet of the body: quadratic,
    ~2.6 s of CPU for one connection's 64 KB. Counted, not timed: the octets the framer goes
    over at most double when the message does."""
    size = {"head": (8_000, 0), "body": (200, 8_000)}[part]

    def message(scale: int) -> bytes:
        head, body = (n * scale for n in size)
        pad = f"X-Pad: {'p' * head}\r\n"
        start = f"OPTIONS sip:a@b SIP/2.0\r\n{pad}Content-Length: {body}\r\n\r\n"
        return start.encode() + b"b" * body

    octets = len(message(1))
    small, large = _trickled_work(message(1)), _trickled_work(message(2))
    assert small <= 8 * octets  # a few per octet fed (it was ~8,000 per octet)
    assert large <= 2 * small + 64


def test_stream_framer_hands_over_what_it_framed_before_a_broken_message() -> None:
    """A good BYE and, in the same read, a header block without Content-Length: the BYE is
    still delivered (it was lost with the rest of the read), then the stream is broken."""
    good = load("valid", "dblreq")[: load("valid", "dblreq").index(b"\r\n\r\n") + 4]
    broken = load("semantic", "inv2543")
    framer = StreamFramer()
    assert framer.feed(good + broken) == [good]
    assert isinstance(framer.error, SipParseError)
    with pytest.raises(SipParseError):
        framer.feed(b"")  # broken for good: the connection is to be closed


def test_framing_a_head_of_many_distinct_names_does_not_canonicalise_each() -> None:
    """The framer reads Content-Length as the parser does, but canonicalised every field name
    of a head to find it: 5,000 distinct ``X-n`` names (64 KB, any unauthenticated TCP peer,
    before any rate limit) cost 5,000 cache misses per message — ~20x the framing before —
    and filled the name cache with the sender's names."""
    fields = "".join(f"X-{i}: v\r\n" for i in range(5000))
    message = (
        "OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\n"
        f"{fields}Content-Length: 0\r\n\r\n"
    ).encode()
    framer = StreamFramer()
    before = _canonical_name_cached.cache_info()
    assert framer.feed(message) == [message]
    after = _canonical_name_cached.cache_info()
    assert after.misses - before.misses < 10 and after.currsize - before.currsize < 10
    # a folded or compact Content-Length is still read as the parser reads it
    for spelled in ("l: 0", "content-length:\r\n 0", "CONTENT-LENGTH : 0"):
        head = f"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\n{spelled}"
        framed = (head + "\r\n\r\n").encode()
        assert StreamFramer().feed(framed) == [framed]
