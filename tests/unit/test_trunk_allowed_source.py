"""TrunkConfig: a trunk's allowed_addresses against a request's source, its inbound_numbers
against the called number, and when it authenticates by address; which Request-URI users may
name a trunk."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import ip_network

import pytest

from telepath.calls.ports import TrunkConfig, may_be_sip_username

pytestmark = pytest.mark.unit


def trunk(*networks: str) -> TrunkConfig:
    return TrunkConfig(
        trunk_id="conn_1",
        account_id="acct_1",
        sip_username="carrier",
        active=True,
        realm="sip.example.test",
        ha1_md5="",
        ha1_sha256="",
        ai_provider="custom",
        allowed_networks=tuple(ip_network(n) for n in networks),
    )


@pytest.mark.parametrize(
    ("ip", "allowed"),
    [
        ("203.0.113.9", True),
        ("203.0.113.255", True),
        ("203.0.114.0", False),
        ("198.51.100.7", True),
        ("198.51.100.8", False),
        ("::ffff:203.0.113.9", True),  # a dual-stack socket's view of an IPv4 peer
        ("::ffff:192.0.2.1", False),
        ("2001:db8:1::5", True),
        ("2001:db9::5", False),
        ("not-an-ip", False),
        ("", False),
    ],
)
def test_allowed_networks(ip: str, allowed: bool) -> None:
    assert trunk("203.0.113.0/24", "198.51.100.7/32", "2001:db8::/32").allows_source(ip) is allowed


@pytest.mark.parametrize("ip", ["203.0.113.9", "::1", "not-an-ip"])
def test_no_list_allows_any_source(ip: str) -> None:
    assert trunk().allows_source(ip)


def numbered(
    *numbers: str, sip_auth: str = "digest", networks: tuple[str, ...] = ()
) -> TrunkConfig:
    return replace(trunk(*networks), inbound_numbers=frozenset(numbers), sip_auth=sip_auth)


def test_a_trunk_serves_its_numbers_or_any_when_it_lists_none() -> None:
    assert trunk().serves("+14155550100") and trunk().serves(None)
    listed = numbered("+14155550100", "+4930123456")
    assert listed.serves("+14155550100") and listed.serves("+4930123456")
    assert not listed.serves("+14155550101")
    assert not listed.serves(None)  # an INVITE naming no number is not for a numbered trunk


def test_address_auth_needs_both_lists() -> None:
    assert numbered("+14155550100", sip_auth="address", networks=("192.0.2.0/24",)).address_auth
    assert not numbered("+14155550100", sip_auth="address").address_auth  # any source: never
    assert not numbered(sip_auth="address", networks=("192.0.2.0/24",)).address_auth
    assert not numbered("+14155550100", networks=("192.0.2.0/24",)).address_auth  # digest


def test_a_trunk_takes_its_allowed_callers_or_any_when_it_lists_none() -> None:
    assert trunk().allows_caller("+15551230000") and trunk().allows_caller(None)
    listed = replace(trunk(), allowed_callers=frozenset({"+15551230000"}))
    assert listed.allows_caller("+15551230000")
    assert not listed.allows_caller("+15551230001")
    assert not listed.allows_caller(None)  # anonymous, or not a number: refused by a list


@pytest.mark.parametrize(
    ("user", "may_be"),
    [
        ("b-support", True),
        ("B-Support", True),  # usernames are case-insensitive
        ("14155550100", True),  # a number without "+" may be a username too: looked up
        ("tpr-0123456789abcdef0123", True),
        ("abc", True),
        ("a" * 30, True),
        ("+14155550100", False),  # the number itself: no username has a "+"
        ("ab", False),
        ("a" * 31, False),
        ("b.support", False),
        ("", False),
    ],
)
def test_which_request_uri_users_may_name_a_trunk(user: str, may_be: bool) -> None:
    """The API's sip_username rule: call control looks up only what could be one."""
    assert may_be_sip_username(user) is may_be
