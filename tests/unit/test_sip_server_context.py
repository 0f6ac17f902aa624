"""The SIP transport's shared timer runs in no call's context: it is armed from whichever call's
task last sent a message, and its events belong to any call (or none) — the call id copied
from the arming task put that call's id on other calls' log lines (README, Observability:
every line of a call carries its own id)."""

from __future__ import annotations

import asyncio

from telepath.clock import FakeClock
from telepath.log import call_id_var
from telepath.sip.message import Request
from telepath.sip.parser import parse_message
from telepath.sip.transaction import Source
from telepath.sip.ua import RequestAnswered, UaConfig, UserAgentCore
from telepath.transport.sip_server import SipServer

REGISTER = (
    b"REGISTER sip:registrar.example SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-ctx1\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:u@registrar.example>;tag=t1\r\n"
    b"To: <sip:u@registrar.example>\r\n"
    b"Call-ID: reg-ctx-1\r\n"
    b"CSeq: 1 REGISTER\r\n"
    b"Contact: <sip:u@192.0.2.1:5060>\r\n"
    b"Content-Length: 0\r\n\r\n"
)


async def test_the_sip_timer_armed_by_a_call_fires_outside_that_call() -> None:
    clock = FakeClock(0.0)
    seen: list[tuple[object, str]] = []
    server = SipServer(
        UserAgentCore(UaConfig(), clock), lambda event: seen.append((event, call_id_var.get()))
    )
    request = parse_message(REGISTER)
    assert isinstance(request, Request)

    async def a_call() -> None:
        call_id_var.set("call_A")
        server.dispatch(server.core.send_request(request, Source("UDP", ("192.0.2.9", 5060))))
        clock.advance(40.0)  # past Timer F: the timer, once it fires, times the request out

    await asyncio.get_running_loop().create_task(a_call())
    for _ in range(50):
        if seen:
            break
        await asyncio.sleep(0.01)
    [(event, call_id)] = seen
    assert isinstance(event, RequestAnswered) and event.response is None
    assert call_id == "-"
