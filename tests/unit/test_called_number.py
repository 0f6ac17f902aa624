"""The number an INVITE calls: the Request-URI's user part, or else the To URI's."""

from __future__ import annotations

import pytest

from telepath.calls.manager import _called_number, _expires, _number
from telepath.sip.message import Request
from telepath.sip.parser import parse_message
from telepath.sip.uri import parse_uri

pytestmark = pytest.mark.unit


def invite(ruri: str, to: str) -> Request:
    raw = (
        f"INVITE {ruri} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-1\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:+15551230000@192.0.2.1>;tag=1\r\n"
        f"To: {to}\r\n"
        "Call-ID: called-number-1\r\n"
        "CSeq: 1 INVITE\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    request = parse_message(raw)
    assert isinstance(request, Request)
    return request


@pytest.mark.parametrize(
    ("ruri", "to", "number"),
    [
        ("sip:+14155550100@gw.test", "<sip:+14155550100@gw.test>", "+14155550100"),
        # the Request-URI decides when both name a number (a retargeting proxy rewrites it)
        ("sip:+14155550100@gw.test", "<sip:+4930123456@gw.test>", "+14155550100"),
        # an origination URI with the trunk's username: the dialled number is in To
        ("sip:support-01@gw.test", "<sip:+14155550100@gw.test>", "+14155550100"),
        ("sip:support-01@gw.test", "<tel:+1-415-555-0100>", "+14155550100"),
        ("sip:support-01@gw.test", "<sip:support-01@gw.test>", None),
        ("sip:4155550100@gw.test", "<sip:4155550100@gw.test>", None),  # national: not E.164
    ],
)
def test_called_number(ruri: str, to: str, number: str | None) -> None:
    assert _called_number(invite(ruri, to)) == number


@pytest.mark.parametrize(
    ("uri", "recorded"),
    [
        ("sip:+1-415-555-0100@gw.test", "+14155550100"),  # as allowed_caller_numbers match it
        ("sip:14155550100@gw.test", "+14155550100"),
        ("sip:+14155550100;npdi@gw.test", "+14155550100"),
        # a national trunk prefix is never E.164: kept as sent, not given a "+"
        ("sip:02079460000@gw.test", "02079460000"),
        ("sip:0014155550100@gw.test", "0014155550100"),
        ("sip:4155550100@gw.test", "4155550100"),
        ("sip:anonymous@gw.test", "anonymous"),
        ("sip:gw.test", None),
    ],
)
def test_a_recorded_number_is_the_one_routing_and_admission_saw(
    uri: str, recorded: str | None
) -> None:
    assert _number(parse_uri(uri)) == recorded


def test_digits_are_ascii_digits() -> None:
    """``str.isdigit`` also takes "²" (which ``int()`` refuses) and other scripts' digits: a
    REGISTER's ``expires`` of such is malformed (it raised), a user part of such no number."""
    assert _expires("\u00b2", 3600) is None and _expires(" 60 ", 3600) == 60
    arabic_indic = "\u0661\u0665\u0665\u0665\u0661\u0662\u0663\u0660\u0660\u0660\u0660"
    escaped = "".join(f"%{byte:02X}" for byte in arabic_indic.encode())
    assert _number(parse_uri(f"sip:{escaped}@h")) == arabic_indic  # kept as it is, no E.164
