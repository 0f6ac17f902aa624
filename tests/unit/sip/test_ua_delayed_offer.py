"""An INVITE without SDP (RFC 3261 §13.2.1 "delayed offer"): our offer goes in the 2xx, every
retransmission of it repeats the same offer, and the caller's answer is handed up with the ACK."""

from __future__ import annotations

import pytest

from telepath.clock import FakeClock
from telepath.sip.ua import CallConfirmed, InviteReceived, UaConfig, UserAgentCore
from tests.unit.sip.test_ua import SDP, SRC, events, request, sent

pytestmark = pytest.mark.unit

CT = "Content-Type: application/sdp\r\n"

OFFER = (
    b"v=0\r\no=telepath 7 1 IN IP4 203.0.113.5\r\ns=Telepath\r\nc=IN IP4 203.0.113.5\r\n"
    b"t=0 0\r\nm=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n"
)


@pytest.fixture
def core() -> tuple[UserAgentCore, FakeClock]:
    clock = FakeClock(100.0)
    return UserAgentCore(UaConfig(contact_host="203.0.113.5"), clock), clock


def _offerless_invite(ua: UserAgentCore) -> InviteReceived:
    out = ua.receive(request(), SRC)  # no body, no Content-Type
    assert [r.status for r in sent(out)] == [100]
    (ev,) = events(out)
    assert isinstance(ev, InviteReceived)
    assert ev.request.body == b""
    return ev


def test_2xx_retransmissions_repeat_the_offer_until_the_ack_brings_the_answer(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    ua, clock = core
    ev = _offerless_invite(ua)
    dialog, out = ua.accept(ev.tx, OFFER)
    (first,) = sent(out)
    assert first.status == 200 and first.body == OFFER
    assert first.content_type == "application/sdp"
    retransmitted = []
    for _ in range(3):  # §13.3.1.4: T1, 2*T1, 4*T1 (capped at T2)
        clock.advance(2.0)
        retransmitted += sent(ua.poll())
    assert len(retransmitted) == 3
    assert all(r.status == 200 and r.body == OFFER for r in retransmitted)

    ack = request("ACK", branch="z9hG4bK-ack", to_tag=dialog.local_tag, body=SDP, extra=CT)
    out = ua.receive(ack, SRC)
    assert events(out) == [CallConfirmed(dialog, SDP)]
    clock.advance(10.0)
    assert sent(ua.poll()) == []  # the ACK stopped the retransmissions
    # A repeated ACK (answering a late 2xx copy) does not confirm the call twice.
    assert events(ua.receive(ack, SRC)) == []


def test_ack_without_content_type_still_carries_its_sdp(
    core: tuple[UserAgentCore, FakeClock],
) -> None:
    ua, _ = core
    dialog, _ = ua.accept(_offerless_invite(ua).tx, OFFER)
    out = ua.receive(request("ACK", branch="z9hG4bK-ack", to_tag=dialog.local_tag, body=SDP), SRC)
    assert events(out) == [CallConfirmed(dialog, SDP)]


@pytest.mark.parametrize(
    ("body", "extra"),
    [
        pytest.param(b"", "", id="no-body"),
        pytest.param(b"Signal=5\r\n", "Content-Type: application/dtmf-relay\r\n", id="not-sdp"),
    ],
)
def test_ack_without_an_sdp_answer_confirms_with_an_empty_body(
    core: tuple[UserAgentCore, FakeClock], body: bytes, extra: str
) -> None:
    ua, _ = core
    dialog, _ = ua.accept(_offerless_invite(ua).tx, OFFER)
    ack = request("ACK", branch="z9hG4bK-ack", to_tag=dialog.local_tag, body=body, extra=extra)
    out = ua.receive(ack, SRC)
    assert events(out) == [CallConfirmed(dialog, b"")]
