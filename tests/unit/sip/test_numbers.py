"""Phone numbers in URIs as canonical E.164: what routes an INVITE to a trunk's number."""

from __future__ import annotations

import pytest

from telepath.sip.numbers import canonical_number, number_of
from telepath.sip.uri import parse_uri

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("+14155550100", "+14155550100"),
        ("14155550100", "+14155550100"),  # E.164 without its "+" (eleven digits and more)
        ("+1-415-555-0100", "+14155550100"),  # RFC 3966 visual separators
        ("+1 (415) 555.0100", "+14155550100"),
        ("+14155550100;npdi;rn=+14155550000", "+14155550100"),  # tel parameters dropped
        ("+4930123456", "+4930123456"),
        ("+123456", "+123456"),  # the shortest taken
        ("+123456789012345", "+123456789012345"),  # the longest E.164 allows
        ("4155550100", None),  # ten digits without "+": a national number, not E.164
        ("030123456789", None),  # a national trunk prefix is never E.164
        ("+0301234567", None),
        ("+12345", None),
        ("+1234567890123456", None),  # sixteen digits
        ("support-01", None),
        ("+1415555010x", None),
        ("+١٤١٥٥٥٥٠١٠٠", None),  # non-ASCII digits are not a phone number here
        ("", None),
        ("+", None),
    ],
)
def test_canonical_number(text: str, number: str | None) -> None:
    assert canonical_number(text) == number


def test_the_api_form_needs_its_plus() -> None:
    assert canonical_number("+14155550100", plus_required=True) == "+14155550100"
    assert canonical_number("14155550100", plus_required=True) is None


@pytest.mark.parametrize(
    ("uri", "number"),
    [
        ("sip:+14155550100@gw.example.test", "+14155550100"),
        ("sip:%2B14155550100@gw.example.test;user=phone", "+14155550100"),  # escaped "+"
        ("sips:14155550100@gw.example.test:5061", "+14155550100"),
        ("tel:+1-415-555-0100", "+14155550100"),
        ("sip:support-01@gw.example.test", None),
        ("sip:gw.example.test", None),
    ],
)
def test_number_of_a_uri(uri: str, number: str | None) -> None:
    assert number_of(parse_uri(uri)) == number
