"""Where a request inside a dialog goes (RFC 3261 §12.2.1.1): the gateway's and the test
dialler's alike."""

from __future__ import annotations

import pytest

from telepath.sip.dialog import request_target
from telepath.sip.uri import parse_uri

pytestmark = pytest.mark.unit

TARGET = parse_uri("sip:bob@192.0.2.10:5070")


def test_no_route_set_goes_to_the_remote_target() -> None:
    assert request_target(TARGET, []) == (TARGET, [])


def test_a_loose_router_first_keeps_the_remote_target_as_the_uri() -> None:
    routes = ["<sip:p1.example;lr>", "<sip:p2.example;lr;ftag=x>"]
    assert request_target(TARGET, routes) == (TARGET, routes)


def test_a_strict_router_first_becomes_the_uri() -> None:
    """§12.2.1.1: the first route (no ``lr``) is the Request-URI; the rest, then the remote
    target, are the Route values."""
    uri, routes = request_target(TARGET, ["<sip:strict.example:5080>", "<sip:p2.example;lr>"])
    assert uri == parse_uri("sip:strict.example:5080")
    assert routes == ["<sip:p2.example;lr>", "<sip:bob@192.0.2.10:5070>"]


@pytest.mark.parametrize(
    "first",
    [
        "<sip:p1.example;lrx=1>",  # another parameter whose name starts with "lr"
        "<sip:p1.example>;lr",  # an rr-param, not the URI's: §19.1.1 makes lr a URI parameter
        "<sip:p1.example;transport=tcp;lr-x>",
    ],
)
def test_only_an_lr_uri_parameter_makes_a_loose_router(first: str) -> None:
    """§12.2.1.1, §19.1.1: loose routing is the ``lr`` parameter of the route's URI."""
    uri, routes = request_target(TARGET, [first])
    assert uri == parse_uri(first[1 : first.index(">")])
    assert routes == ["<sip:bob@192.0.2.10:5070>"]


def test_lr_is_found_whatever_its_case_and_place() -> None:
    routes = ["<sip:p1.example;transport=tcp;LR>"]
    assert request_target(TARGET, routes) == (TARGET, routes)
