"""Outbound registration against a real registrar: Debian's kamailio with ``auth``, ``registrar``
and ``usrloc``, challenging every REGISTER and routing calls for the address-of-record to the
contact registered, as a carrier or a PBX does for a SIP phone.

What must hold (RFC 3261 §10.2): the gateway registers the trunk's contact with the digest
credentials of its ``registration``; the trunk shows ``registered``; a call to the
address-of-record reaches the trunk's agent through the registrar without being challenged by
the gateway; wrong credentials show ``failed`` with the registrar's answer; removing the
registration unregisters it (the registrar then knows no contact), and so does stopping.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from telepath.calls.registrations import KEEPALIVE
from telepath.cli.gateway import Gateway
from telepath.clock import MonotonicClock
from telepath.sdp import create_offer, parse
from telepath.secrets.digest import compute_ha1
from telepath.sip.auth import AuthResult, DigestAuthenticator, parse_authorization
from telepath.sip.message import Request, Response, make_response
from telepath.sip.parser import StreamFramer, parse_message
from telepath.testing.fake_custom import FakeTelepathAgent
from tests.certs import self_signed
from tests.conftest import free_udp_port
from tests.integration.conftest import Api
from tests.interop.calls.conftest import GATEWAY_SETTINGS, create_trunk
from tests.interop.calls.harness import Phone
from tests.interop.media.sipp import require_sipp
from tests.interop.sip.kamailio import config, kamailio
from tests.interop.sip.sipp_scenarios import reinvite, run_sipp, unchallenged_call
from tests.interop.sip.uac import CallLeg, Received, Uac, new_branch, sdp_offer
from tests.interop.sip.waits import ended_records

pytestmark = pytest.mark.interop

REG_PASSWORD = "carrier-secret-7"
REGISTRAR_ROUTING = """modparam("usrloc", "db_mode", 0)
modparam("registrar", "min_expires", 10)

request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (has_totag()) {{{in_dialog}
        # in-dialog: along the route set, or to the Request-URI (the caller's SIPp sends its
        # ACK and BYE here, its outbound proxy, with our contact as the Request-URI)
        loose_route();
        t_relay();
        exit;
    }}
    if (is_method("CANCEL")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
    if (is_method("REGISTER")) {{
        if (!pv_www_authenticate("$td", "{password}", "0")) {{
            www_challenge("$td", "1");
            exit;
        }}
        save("location");
        exit;
    }}
    if (is_method("OPTIONS")) {{ sl_send_reply("200", "OK"); exit; }}
    if (!lookup("location")) {{ sl_send_reply("404", "Not Registered"); exit; }}
    record_route();
    t_relay();
}}
"""


@pytest.fixture
async def registrar(tmp_path: Path) -> AsyncIterator[int]:
    """kamailio as a registrar on a loopback port, over UDP and TCP; yields its port."""
    port = free_udp_port()
    routing = REGISTRAR_ROUTING.format(password=REG_PASSWORD, in_dialog="")
    cfg = config(port, routing, modules=("usrloc", "registrar", "auth"), tcp=True)
    async with kamailio(cfg, tmp_path, port, ready=b"SIP/2.0 200"):
        yield port


async def registration_of(api: Api, trunk_id: str) -> dict[str, Any]:
    body: dict[str, Any] = (await api.get(f"/v1/trunks/{trunk_id}")).json()
    registration: dict[str, Any] = body["registration"]
    return registration


async def until_status(
    api: Api, gateway: Gateway, trunk_id: str, status: str, within_s: float = 10
) -> dict[str, Any]:
    """The trunk's registration once its status is ``status`` (the gateway told to look)."""
    assert gateway.registrations is not None
    gateway.registrations.trunks_changed()
    registration: dict[str, Any] = {}
    for _ in range(int(within_s / 0.05)):
        registration = await registration_of(api, trunk_id)
        if registration["status"] == status:
            return registration
        await asyncio.sleep(0.05)
    raise AssertionError(f"registration never {status}: {registration}")


async def routed_to(port: int) -> int:
    """The final status of a MESSAGE to ``alice`` at the registrar: its own 404 when it knows
    no contact, else the gateway's answer, relayed (MESSAGE is not a method it allows)."""
    uac = await Uac.open("UDP", ("127.0.0.1", port))
    try:
        call_id = f"probe-{new_branch()}"
        uac.send(uac.request("MESSAGE", "alice", call_id=call_id, cseq=1))
        answer = await uac.wait_for(
            lambda m: isinstance(m, Response) and m.call_id == call_id and m.status >= 200
        )
        assert isinstance(answer.message, Response)
        return answer.message.status
    finally:
        await uac.close()


def registration_body(registrar: str, password: str = REG_PASSWORD) -> dict[str, Any]:
    return {
        "registrar": registrar,
        "username": "alice",
        "password": password,
        "expires": 60,
    }


async def registration_trunk(
    api: Api, name: str, endpoint: str, registration: dict[str, Any]
) -> dict[str, Any]:
    """A custom-agent trunk with ``registration``."""
    return await create_trunk(
        api,
        name,
        "trunk-password-1",
        ai_provider="custom",
        custom_endpoint=endpoint,
        registration=registration,
    )


async def test_a_registered_trunk_takes_calls_routed_by_the_registrar(
    api: Api, gateway: Gateway, registrar: int, tmp_path: Path, phone: Phone
) -> None:
    require_sipp()
    async with FakeTelepathAgent(agent="silent") as agent:
        registration = registration_body(f"sip:127.0.0.1:{registrar}")
        trunk = await registration_trunk(api, "reg-trunk", agent.url, registration)
        registered = await until_status(api, gateway, trunk["id"], "registered")
        assert registered["status_detail"] is None
        assert registered["registered_until"] is not None
        # the caller dials the address-of-record at the registrar, which routes to our contact
        result = await run_sipp(
            unchallenged_call("alice", phone.port, hold_ms=800),
            tmp_path,
            ("127.0.0.1", registrar),
            user="unused",
            password="unused",
        )
        assert result.returncode == 0, result.stdout + result.errors
        (record,) = await ended_records(api, gateway)
        assert record["trunk_id"] == trunk["id"]
        assert record["disconnect_reason"] == "caller_hangup"
        assert "SIP/2.0 401" not in result.messages  # the gateway challenged nothing
        assert len(agent.handshakes) == 1

        # removing the registration removes the binding at the registrar
        resp = await api.patch(f"/v1/trunks/{trunk['id']}", {"registration": None})
        assert resp.status_code == 200, resp.text
        assert gateway.registrations is not None
        gateway.registrations.trunks_changed()
        for _ in range(100):
            if await routed_to(registrar) == 404:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the registrar still routes to the removed contact")
        assert gateway.registrations.count == 0


# The gateway's own in-dialog requests (From: the address-of-record) must carry credentials,
# as a carrier's proxy that authenticates everything its customers send demands.
CHALLENGE_OURS = """
        if (is_method("BYE|REFER|INVITE|UPDATE") && $fU == "alice") {{
            if (!pv_proxy_authenticate("$fd", "{password}", "0")) {{
                proxy_challenge("$fd", "1");
                exit;
            }}
            consume_credentials();
        }}"""


async def test_the_registrars_challenge_to_our_bye_is_answered_with_the_registration(
    api: Api, gateway: Gateway, tmp_path: Path, phone: Phone
) -> None:
    require_sipp()
    port = free_udp_port()
    challenge = CHALLENGE_OURS.format(password=REG_PASSWORD)
    routing = REGISTRAR_ROUTING.format(password=REG_PASSWORD, in_dialog=challenge)
    cfg = config(port, routing, modules=("usrloc", "registrar", "auth"))
    async with (
        kamailio(cfg, tmp_path, port, ready=b"SIP/2.0 200"),
        FakeTelepathAgent(agent="tone", response_ms=300, hangup=True) as agent,
    ):
        registration = registration_body(f"sip:127.0.0.1:{port}")
        trunk = await registration_trunk(api, "reg-bye", agent.url, registration)
        await until_status(api, gateway, trunk["id"], "registered")
        result = await run_sipp(
            unchallenged_call("alice", phone.port, hold_ms=0, caller_hangs_up=False),
            tmp_path,
            ("127.0.0.1", port),
            user="unused",
            password="unused",
        )
        # the caller got the agent's BYE: the registrar let it through once it was signed
        assert result.returncode == 0, result.stdout + result.errors
        (record,) = await ended_records(api, gateway)
    assert record["disconnect_reason"] == "agent_hangup"
    trace = (await api.get(f"/v1/calls/{record['id']}")).json()["sip_trace"]
    assert trace.count("BYE sip:") == 2 and "SIP/2.0 407 " in trace
    signed = trace[trace.rindex("BYE sip:") :].split("\r\n\r\n", 1)[0]
    assert "Proxy-Authorization: Digest <redacted>" in signed
    assert REG_PASSWORD not in trace
    assert gateway.server.core.counters["challenges_answered"] == 1
    assert gateway.server.core.dialog_count == 0


async def test_only_the_registrars_side_of_a_call_is_answered_with_credentials(
    api: Api, gateway: Gateway
) -> None:
    """A call to the trunk by its own digest credentials from 127.0.0.1, not the registrar's
    address (127.0.0.2, where nothing answers): a 407 to our BYE is not answered — the
    registration's credentials are the registrar's business — until allowed_addresses names
    127.0.0.1, and then it is, verifiably, with the registration's password."""
    carrier = DigestAuthenticator("carrier.example", b"k" * 32, MonotonicClock())
    uac = await Uac.open("UDP", gateway.server.bound["UDP"])
    try:
        async with FakeTelepathAgent(agent="tone", response_ms=300, hangup=True) as agent:
            registration = registration_body("sip:127.0.0.2:9")
            trunk = await registration_trunk(api, "reg-direct", agent.url, registration)
            for allowed, answered in ((False, 0), (True, 1)):
                if allowed:
                    body = {"allowed_addresses": ["127.0.0.1/32"]}
                    assert (await api.patch(f"/v1/trunks/{trunk['id']}", body)).status_code == 200
                leg = CallLeg(uac, "reg-direct")
                await leg.challenge(40010)
                await leg.answered(leg.authenticated_invite("trunk-password-1", 40010))
                uac.send(leg.ack())
                bye = await leg_request(uac, leg, "BYE")
                start = len(uac.received)
                values = carrier.challenge_headers()
                uac.send(
                    make_response(bye, 407, headers=[("Proxy-Authenticate", values[0])]).to_bytes()
                )
                if not allowed:
                    await asyncio.sleep(0.5)
                    assert not [r for r in uac.received[start:] if isinstance(r.message, Request)]
                else:
                    again = await leg_request(uac, leg, "BYE", after=start)
                    creds = parse_authorization(again.headers.get("Proxy-Authorization") or "")
                    assert creds.username == "alice"
                    outcome = carrier.verify(
                        creds,
                        method="BYE",
                        ha1_lookup=lambda user, algorithm: compute_ha1(
                            algorithm, "alice", "carrier.example", REG_PASSWORD
                        ),
                    )
                    assert outcome.result == AuthResult.OK
                    uac.send(make_response(again, 200).to_bytes())
                assert gateway.server.core.counters["challenges_answered"] == answered
            records = await ended_records(api, gateway, count=2)
        assert [r["disconnect_reason"] for r in records] == ["agent_hangup"] * 2
    finally:
        await uac.close()


async def leg_request(uac: Uac, leg: CallLeg, method: str, *, after: int = 0) -> Request:
    """The next ``method`` request the gateway sends in ``leg``'s call."""
    item = await uac.wait_for(
        lambda m: isinstance(m, Request) and m.method == method and m.call_id == leg.call_id,
        after=after,
    )
    assert isinstance(item.message, Request)
    return item.message


async def test_wrong_credentials_show_failed_and_stopping_unregisters(
    api: Api, gateway: Gateway, registrar: int
) -> None:
    async with FakeTelepathAgent(agent="silent") as agent:
        registration = registration_body(f"sip:127.0.0.1:{registrar}", "not-the-password")
        trunk = await registration_trunk(api, "reg-wrong", agent.url, registration)
        failed = await until_status(api, gateway, trunk["id"], "failed")
        assert failed["status_detail"] == "401 Unauthorized (credentials refused)"
        assert failed["registered_until"] is None
        # the right password: registered; the gateway stopping removes the binding
        body = registration_body(f"sip:127.0.0.1:{registrar}")
        resp = await api.patch(f"/v1/trunks/{trunk['id']}", {"registration": body})
        assert resp.status_code == 200, resp.text
        await until_status(api, gateway, trunk["id"], "registered")
        assert await routed_to(registrar) == 405  # the gateway's answer, through the registrar
        assert gateway.registrations is not None
        await gateway.registrations.close()
        assert await routed_to(registrar) == 404
        assert (await registration_of(api, trunk["id"]))["status"] == "unregistered"


# SIPp as a registrar that grants 2 s: the gateway must answer its challenge (RFC 2069 form
# first, qop=auth on the refresh), refresh before the binding lapses, and unregister with
# Expires: 0 when it stops. Any other order fails the scenario.
def _challenge(qop: str) -> str:
    return f"""  <send>
    <![CDATA[
      SIP/2.0 401 Unauthorized
      [last_Via:]
      [last_From:]
      [last_To:];tag=reg[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      WWW-Authenticate: Digest realm="carrier.test", nonce="n[clock_tick]x"{qop}, algorithm=MD5
      Content-Length: 0

    ]]>
  </send>
"""


def _accept(expires: int, grant: int) -> str:
    """The authenticated REGISTER (its digest checked by kamailio in the test above: SIPp's
    ``verifyauth`` refused correct answers here) with ``Expires: expires``, granted ``grant``."""
    return f"""  <recv request="REGISTER">
    <action>
      <ereg regexp="&lt;(sip:[^&gt;]*)&gt;" search_in="hdr" header="Contact:"
        assign_to="c,contact"/>
      <ereg regexp="^ *{expires}$" search_in="hdr" header="Expires:" check_it="true" assign_to="e"/>
      <ereg regexp="^ *Digest .*response=" search_in="hdr" header="Authorization:"
        check_it="true" assign_to="a"/>
    </action>
  </recv>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=reg[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <[$contact]>;expires={grant}
      Content-Length: 0

    ]]>
  </send>
"""


def registrar_scenario() -> str:
    steps = [
        '<?xml version="1.0" encoding="ISO-8859-1" ?>\n<scenario name="registrar">\n',
        '  <recv request="REGISTER"/>\n',
        _challenge(""),
        _accept(60, 2),  # 2 s: refreshed after 1 s
        '  <recv request="REGISTER" timeout="5000"/>\n',  # the refresh, about 1 s later
        _challenge(', qop="auth"'),
        _accept(60, 60),  # then not before 30 s
        '  <recv request="REGISTER" timeout="20000"/>\n',  # the unregistration
        _challenge(', qop="auth"'),
        _accept(0, 0),
        "</scenario>\n",
    ]
    return "".join(steps)


@dataclass
class SippRegistrar:
    """A SIPp registrar running one scenario: where it listens, and how it ended."""

    uri: str
    proc: asyncio.subprocess.Process
    errors: Path

    async def finished(self) -> None:
        """Wait for the scenario's end; fail unless every step happened, in order."""
        out, _ = await asyncio.wait_for(self.proc.communicate(), 20)
        detail = out.decode(errors="replace")
        if self.errors.exists():
            detail += self.errors.read_text(errors="replace")
        assert self.proc.returncode == 0, detail


@contextlib.asynccontextmanager
async def sipp_registrar(
    scenario: str, tmp_path: Path, host: str = "127.0.0.1"
) -> AsyncIterator[SippRegistrar]:
    """SIPp playing ``scenario`` as a registrar on ``host`` (killed if still running)."""
    port = free_udp_port()
    path = tmp_path / f"registrar-{port}.xml"
    path.write_text(scenario)
    errors = tmp_path / f"registrar-{port}-errors.log"
    proc = await asyncio.create_subprocess_exec(
        require_sipp(),
        *("-sf", str(path), "-m", "1", "-i", host, "-p", str(port)),
        *("-timeout", "30s", "-timeout_error", "-nostdin"),
        *("-trace_err", "-error_file", str(errors)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        await asyncio.sleep(0.3)  # SIPp binds its port
        yield SippRegistrar(f"sip:{host}:{port}", proc, errors)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_refreshes_before_expiry_and_unregisters_on_stop(
    api: Api, gateway: Gateway, tmp_path: Path
) -> None:
    async with sipp_registrar(registrar_scenario(), tmp_path) as registrar:
        registration = registration_body(registrar.uri)
        trunk = await registration_trunk(api, "reg-refresh", "ws://127.0.0.1:9/a", registration)
        first = await until_status(api, gateway, trunk["id"], "registered")
        # the 2 s binding is refreshed (SIPp's second 200) and its end moves on
        for _ in range(100):
            now = await registration_of(api, trunk["id"])
            if now["registered_until"] != first["registered_until"]:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the registration was not refreshed")
        assert now["status"] == "registered"
        assert gateway.registrations is not None
        await gateway.registrations.close()
        await registrar.finished()
    assert (await registration_of(api, trunk["id"]))["status"] == "unregistered"


def long_registrar_scenario() -> str:
    """Grants an hour, then takes the unregistration."""
    return "".join(
        [
            '<?xml version="1.0" encoding="ISO-8859-1" ?>\n<scenario name="registrar">\n',
            '  <recv request="REGISTER"/>\n',
            _challenge(""),
            _accept(60, 3600),
            '  <recv request="REGISTER" timeout="20000"/>\n',
            _challenge(""),
            _accept(0, 0),
            "</scenario>\n",
        ]
    )


async def test_the_contact_takes_calls_only_from_the_registrar_or_the_allowed_addresses(
    api: Api, gateway: Gateway, tmp_path: Path
) -> None:
    """The registrar on 127.0.0.2: an INVITE to the registered contact from 127.0.0.1 is
    challenged like any unknown one — until the trunk's allowed_addresses name 127.0.0.1."""
    uac = await Uac.open("UDP", gateway.server.bound["UDP"])
    try:
        async with sipp_registrar(long_registrar_scenario(), tmp_path, "127.0.0.2") as registrar:
            registration = registration_body(registrar.uri)
            trunk = await registration_trunk(api, "reg-source", "ws://127.0.0.1:9/a", registration)
            await until_status(api, gateway, trunk["id"], "registered")
            assert gateway.registrations is not None
            contact = gateway.registrations.contact_of(trunk["id"])
            assert contact is not None and contact.startswith("sip:tpr-")
            # from 127.0.0.1, not the registrar: challenged
            assert await first_final(CallLeg(uac, "caller", uri=contact)) == 401
            resp = await api.patch(
                f"/v1/trunks/{trunk['id']}", {"allowed_addresses": ["127.0.0.1/32"]}
            )
            assert resp.status_code == 200, resp.text
            # the registration itself is unchanged: the binding is kept, not redone
            assert (await registration_of(api, trunk["id"]))["status"] == "registered"
            # admitted without a challenge; the agent is unreachable, so a clean 480 follows
            assert await first_final(CallLeg(uac, "caller2", uri=contact)) == 480
            await gateway.registrations.close()
            await registrar.finished()
    finally:
        await uac.close()


async def first_final(leg: CallLeg) -> int:
    """Send ``leg``'s INVITE; its first final status (a failure is ACKed, §17.1.1.3)."""
    branch = new_branch()
    start = len(leg.uac.received)
    leg.uac.send(leg.build("INVITE", branch=branch, body=sdp_offer(40010)))
    item = await leg.uac.wait_for(
        lambda m: isinstance(m, Response) and m.call_id == leg.call_id and m.status >= 200,
        after=start,
    )
    assert isinstance(item.message, Response)
    if item.message.status >= 300:
        leg.uac.send(leg.build("ACK", branch=branch, to_tag=item.message.to.tag, cseq_method="ACK"))
    return item.message.status


# Behind a NAT: the gateway advertises an address the registrar cannot reach (TEST-NET-2, as a
# private address would be from a carrier), while its REGISTERs arrive from 127.0.0.1.
UNREACHABLE = "198.51.100.7"
BEHIND_NAT = {**GATEWAY_SETTINGS, "public_address": UNREACHABLE, "sip_keepalive_s": 0.1}


@pytest.mark.parametrize("settings_overrides", [BEHIND_NAT])
async def test_behind_a_nat_kamailio_routes_calls_to_the_address_it_saw(
    api: Api, gateway: Gateway, registrar: int, tmp_path: Path, phone: Phone
) -> None:
    """RFC 3581: kamailio answers with ``received``/``rport``; the gateway registers that
    address as its contact, so the registrar's requests for the address-of-record reach it —
    with the advertised contact they would go to an address nothing listens on. A call to the
    address-of-record then gets that address in our Contact (so the caller's ACK and BYE,
    routed by kamailio to it, arrive) and in our SDP (so the caller's RTP does)."""
    async with FakeTelepathAgent(agent="silent") as agent:
        registration = registration_body(f"sip:127.0.0.1:{registrar}")
        trunk = await registration_trunk(api, "reg-nat", agent.url, registration)
        await until_status(api, gateway, trunk["id"], "registered")
        assert gateway.registrations is not None
        port = gateway.server.bound["UDP"][1]
        contact = gateway.registrations.contact_of(trunk["id"])
        assert contact is not None and contact.endswith(f"@127.0.0.1:{port}"), contact
        # the API shows where the registrar sends the calls
        assert (await registration_of(api, trunk["id"]))["contact_address"] == f"127.0.0.1:{port}"
        assert await routed_to(registrar) == 405  # the gateway's answer, through the registrar
        hold = reinvite("alice", phone.port, 3, "sendonly", "recvonly")  # a re-offer's answer too
        result = await run_sipp(
            unchallenged_call("alice", phone.port, hold_ms=300, then=hold),
            tmp_path,
            ("127.0.0.1", registrar),
            user="unused",
            password="unused",
        )
        assert result.returncode == 0, result.stdout + result.errors  # the BYE was answered
        assert f"Contact: <sip:telepath@127.0.0.1:{port}>" in result.messages
        assert UNREACHABLE not in result.messages  # in no Contact, no SDP (c= and o=)
        assert "a=recvonly" in result.messages
        (record,) = await ended_records(api, gateway)
        assert record["disconnect_reason"] == "caller_hangup"
        await gateway.registrations.close()
        assert await routed_to(registrar) == 404  # the moved contact was the one removed


async def next_register(uac: Uac, after: int) -> tuple[int, Request]:
    item: Received = await uac.wait_for(
        lambda m: isinstance(m, Request) and m.method == "REGISTER", after=after
    )
    assert isinstance(item.message, Request)
    return uac.received.index(item) + 1, item.message


def grant(uac: Uac, request: Request, seen_from: tuple[str, int], contact: str) -> None:
    """A 200 OK granting ``contact`` 60 s, saying where the request came from (RFC 3581)."""
    response = make_response(
        request, 200, to_tag="reg", headers=[("Contact", f"<{contact}>;expires=60")]
    )
    response.headers.set("Via", str(response.top_via.with_received(*seen_from)))
    uac.send(response.to_bytes())


def contacts(request: Request) -> list[str]:
    return request.headers.get_all("Contact")


@pytest.mark.parametrize(
    ("settings_overrides", "nat"),
    [(BEHIND_NAT, True), ({**GATEWAY_SETTINGS, "sip_keepalive_s": 0.1}, False)],
    ids=["behind-nat", "no-nat"],
)
async def test_keep_alives_hold_a_nat_binding_open_and_only_behind_a_nat(
    api: Api, gateway: Gateway, nat: bool
) -> None:
    """A registrar on a raw socket: behind a NAT the contact moves to the address it saw, in
    one request that also removes the unreachable one, and a keep-alive (CRLF CRLF) reaches the
    registrar every ``sip_keepalive_s`` until the gateway unregisters; without a NAT, none."""
    gw_address = gateway.server.bound["UDP"]
    uac = await Uac.open("UDP", gw_address)
    try:
        registration = registration_body(f"sip:127.0.0.1:{uac.local[1]}")
        trunk = await registration_trunk(api, "reg-keep", "ws://127.0.0.1:9/a", registration)
        assert gateway.registrations is not None
        gateway.registrations.trunks_changed()
        seen, first = await next_register(uac, 0)
        advertised = UNREACHABLE if nat else "127.0.0.1"
        (ours,) = contacts(first)
        assert ours.endswith(f"@{advertised}:{gw_address[1]}>"), ours
        grant(uac, first, gw_address, ours[1:-1])
        final = ours[1:-1]
        if nat:
            seen, moved = await next_register(uac, seen)
            final = ours[1:-1].replace(UNREACHABLE, "127.0.0.1")
            assert contacts(moved) == [f"<{final}>", f"{ours};expires=0"]
            grant(uac, moved, gw_address, final)
        await until_status(api, gateway, trunk["id"], "registered")
        assert gateway.registrations.contact_of(trunk["id"]) == final
        if nat:  # one every 0.1 s: wait for three (no wall-clock bound beyond a generous one)
            for _ in range(250):
                if len(uac.unparsed) >= 3:
                    break
                await asyncio.sleep(0.02)
        else:  # none: give them the time three would take
            await asyncio.sleep(0.55)
        keepalives = len(uac.unparsed)
        assert uac.unparsed == [KEEPALIVE] * keepalives
        assert keepalives >= 3 if nat else keepalives == 0, keepalives
        assert [r.message for r in uac.received[seen:] if isinstance(r.message, Request)] == []
        # unregistering: the contact in use only; no keep-alive after it
        closing = asyncio.create_task(gateway.registrations.close())
        seen, leaving = await next_register(uac, seen)
        assert contacts(leaving) == [f"<{final}>"] and leaving.headers.get("Expires") == "0"
        grant(uac, leaving, gw_address, final)
        await closing
        sent = len(uac.unparsed)
        await asyncio.sleep(0.3)
        assert len(uac.unparsed) == sent
    finally:
        await uac.close()


@pytest.mark.parametrize("settings_overrides", [BEHIND_NAT])
async def test_a_call_to_the_contact_answers_with_the_address_it_was_sent_to(
    api: Api, gateway: Gateway
) -> None:
    """The address a call to a registered contact gives (Contact, SDP) is read from its
    Request-URI, not from this process's registrations — so it holds in SIP worker processes,
    which keep none: here the registrar never answers, and the contact at 127.0.0.1 is still
    answered from there, while the same contact at the configured address keeps it."""
    port = gateway.server.bound["UDP"][1]
    registrar = await Uac.open("UDP", gateway.server.bound["UDP"])  # never answers
    uac = await Uac.open("UDP", gateway.server.bound["UDP"])
    try:
        async with FakeTelepathAgent(agent="silent") as agent:
            registration = registration_body(f"sip:127.0.0.1:{registrar.local[1]}")
            trunk = await registration_trunk(api, "reg-ruri", agent.url, registration)
            assert gateway.registrations is not None
            gateway.registrations.trunks_changed()
            await next_register(registrar, 0)  # sent, never answered: nothing learnt
            contact = gateway.registrations.contact_of(trunk["id"])
            assert contact is not None and contact.endswith(f"@{UNREACHABLE}:{port}")
            user = contact[4:].split("@")[0]
            for host, advertised in (("127.0.0.1", "127.0.0.1"), (UNREACHABLE, UNREACHABLE)):
                leg = CallLeg(uac, f"caller-{host}", uri=f"sip:{user}@{host}:{port}")
                ok = await answered(leg)
                assert ok.headers.get("Contact") == f"<sip:telepath@{advertised}:{port}>"
                sdp = ok.body.decode()
                assert f"c=IN IP4 {advertised}" in sdp
                assert sdp.count(f"IN IP4 {advertised}") == 2  # o= and c=
                leg.to_tag = ok.to.tag
                leg.uac.send(leg.build("ACK", cseq_method="ACK"))
                leg.cseq = 2
                leg.uac.send(leg.build("BYE"))
                await uac.response(200, leg.call_id, method="BYE")
    finally:
        await uac.close()
        await registrar.close()


async def answered(leg: CallLeg) -> Response:
    """Send ``leg``'s INVITE; its 200 OK."""
    leg.uac.send(leg.build("INVITE", branch=new_branch(), body=sdp_offer(40012)))
    return await leg.uac.response(200, leg.call_id, method="INVITE")


async def did_trunk(
    api: Api, gateway: Gateway, name: str, agent_url: str, registrar: str, number: str
) -> str:
    """A custom-agent trunk registering with ``registrar`` and serving ``number``; the URI a
    carrier sends that number's calls to (the dialled number at the gateway's UDP address)."""
    await create_trunk(
        api,
        name,
        "trunk-password-1",
        ai_provider="custom",
        custom_endpoint=agent_url,
        registration=registration_body(registrar),
        inbound_numbers=[number],
    )
    return f"sip:{number}@127.0.0.1:{gateway.server.bound['UDP'][1]}"


async def test_calls_to_a_registered_trunk_s_numbers_from_its_registrar_are_its_own(
    api: Api, gateway: Gateway
) -> None:
    """A carrier that sends a registered account's calls to the contact's address with the
    dialled number in the Request-URI (not our contact user): from the registrar (127.0.0.2)
    a number of the trunk's ``inbound_numbers`` is the trunk's, unchallenged, answered with the
    address it was sent to; from elsewhere, or to another number, it is challenged."""
    gw = gateway.server.bound["UDP"]
    registrar = await Uac.open("UDP", gw, host="127.0.0.2")  # never answers: not needed
    other = await Uac.open("UDP", gw)
    try:
        async with FakeTelepathAgent(agent="silent") as agent:
            registrar_uri = f"sip:127.0.0.2:{registrar.local[1]}"
            did = await did_trunk(api, gateway, "reg-did", agent.url, registrar_uri, "+15551230001")
            leg = CallLeg(registrar, "did-caller", uri=did, to_uri=did)
            ok = await answered(leg)
            assert ok.headers.get("Contact") == f"<sip:telepath@127.0.0.1:{gw[1]}>"
            assert b"SIP/2.0 401" not in b"".join(r.raw for r in registrar.received)
            leg.to_tag = ok.to.tag
            leg.uac.send(leg.build("ACK", cseq_method="ACK"))
            leg.cseq = 2
            leg.uac.send(leg.build("BYE"))
            await registrar.response(200, leg.call_id, method="BYE")
            assert len(agent.handshakes) == 1
            # the same number from elsewhere, another number from the registrar: challenged
            elsewhere = CallLeg(other, "not-the-registrar", uri=did, to_uri=did)
            assert await first_final(elsewhere) == 401
            unknown = f"sip:+15559990000@127.0.0.1:{gw[1]}"
            stranger = CallLeg(registrar, "unknown-number", uri=unknown, to_uri=unknown)
            assert await first_final(stranger) == 401
            assert len(agent.handshakes) == 1
    finally:
        await other.close()
        await registrar.close()


async def test_a_stream_registration_s_numbers_are_not_taken_unchallenged_over_udp(
    api: Api, gateway: Gateway
) -> None:
    """A registration over TCP (or TLS): its registrar sends calls over that connection, so a
    UDP INVITE to its number from the registrar's address — which anyone can forge on UDP — is
    challenged like any unknown one instead of reaching the agent."""
    gw = gateway.server.bound["UDP"]
    forger = await Uac.open("UDP", gw, host="127.0.0.2")  # the registrar's address, on UDP
    try:
        async with FakeTelepathAgent(agent="silent") as agent:
            registrar_uri = f"sip:127.0.0.2:{forger.local[1]};transport=tcp"
            did = await did_trunk(
                api, gateway, "reg-did-tcp", agent.url, registrar_uri, "+15551230002"
            )
            forged = CallLeg(forger, "forged", uri=did, to_uri=did)
            assert await first_final(forged) == 401
            assert agent.handshakes == []
    finally:
        await forger.close()


@pytest.mark.parametrize(
    ("settings_overrides", "nat"),
    [({**GATEWAY_SETTINGS, "sip_keepalive_s": 0.1}, False), (BEHIND_NAT, True)],
    ids=["no-nat", "behind-nat"],
)
async def test_over_tcp_the_registrar_sends_calls_back_on_the_gateway_s_connection(
    api: Api, gateway: Gateway, registrar: int, nat: bool
) -> None:
    """``;transport=tcp``: the gateway opens a connection to kamailio and registers over it;
    behind a NAT the contact moves to the connection's own address, which only that connection
    reaches (RFC 5923 reuse) — kamailio's requests for the address-of-record arrive on it. A
    connection that closes is found by the keep-alive and replaced, with a new REGISTER."""
    async with FakeTelepathAgent(agent="silent") as agent:
        registration = registration_body(f"sip:127.0.0.1:{registrar};transport=tcp")
        trunk = await registration_trunk(api, "reg-tcp", agent.url, registration)
        first = await until_status(api, gateway, trunk["id"], "registered")
        assert gateway.registrations is not None
        (conn,) = gateway.server.connections.values()
        assert conn.peer == ("127.0.0.1", registrar)
        assert conn.transport is not None
        local = conn.transport.get_extra_info("sockname")[1]
        listening = gateway.server.bound["TCP"][1]
        assert first["contact_address"] == f"127.0.0.1:{local if nat else listening}"
        contact = gateway.registrations.contact_of(trunk["id"])
        assert contact is not None and contact.endswith(";transport=tcp")
        assert await routed_to(registrar) == 405  # the gateway's answer, relayed over TCP

        conn.transport.close()  # the connection drops: found, replaced, registered again
        for _ in range(100):
            again = await registration_of(api, trunk["id"])
            replaced = [
                c
                for c in gateway.server.connections.values()
                if c is not conn and c.peer == ("127.0.0.1", registrar)  # not kamailio's own
            ]
            if replaced and again["contact_address"] != (first["contact_address"] if nat else ""):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("not registered again on a new connection")
        (new,) = replaced  # the gateway's own: a new connection is opened only to register
        assert again["status"] == "registered"
        assert new.transport is not None
        if nat:  # the contact moved to the new connection's address: routed there
            assert (
                again["contact_address"]
                == f"127.0.0.1:{new.transport.get_extra_info('sockname')[1]}"
            )
        assert await routed_to(registrar) == 405
        await gateway.registrations.close()
        assert await routed_to(registrar) == 404
        # the connection was the registration's own: closed with it
        for _ in range(100):
            if not any(
                c.peer == ("127.0.0.1", registrar) for c in gateway.server.connections.values()
            ):
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the registration's connection was left open")


@dataclass
class TlsRegistrar:
    """A registrar over TLS on a raw socket: grants every REGISTER 60 s, saying where it came
    from (RFC 3581), and can send a request back on the gateway's connection."""

    port: int = 0
    requests: list[Request] = field(default_factory=list)
    answers: list[Response] = field(default_factory=list)
    writer: asyncio.StreamWriter | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        peer = writer.get_extra_info("peername")
        framer = StreamFramer()
        while data := await reader.read(65536):
            for raw in framer.feed(data):
                message = parse_message(raw)
                if isinstance(message, Response):
                    self.answers.append(message)
                else:
                    self.requests.append(message)
                    if message.method == "REGISTER":
                        contact = (message.headers.get("Contact") or "").split(">")[0] + ">"
                        response = make_response(
                            message,
                            200,
                            to_tag="reg",
                            headers=[("Contact", f"{contact};expires=60")],
                        )
                        via = response.top_via.with_received(peer[0], peer[1])
                        response.headers.set("Via", str(via))
                        writer.write(response.to_bytes())
                self.arrived.set()

    async def until(self, check: Any) -> None:
        for _ in range(200):
            if check():
                return
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), 0.05)
        raise AssertionError("the registrar never saw it")


@contextlib.asynccontextmanager
async def tls_registrar(tmp_path: Path) -> AsyncIterator[tuple[TlsRegistrar, Path]]:
    """A :class:`TlsRegistrar` with a fresh self-signed certificate for 127.0.0.1."""
    cert, key = self_signed(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key))
    registrar = TlsRegistrar()
    server = await asyncio.start_server(registrar.serve, "127.0.0.1", 0, ssl=ctx)
    registrar.port = int(server.sockets[0].getsockname()[1])
    try:
        yield registrar, cert
    finally:
        if registrar.writer is not None:
            registrar.writer.close()
        server.close()


def message_to(contact: str, port: int) -> bytes:
    """A MESSAGE to ``contact``, as a registrar routing a request would send it."""
    return (
        f"MESSAGE {contact} SIP/2.0\r\n"
        f"Via: SIP/2.0/TLS 127.0.0.1:{port};branch=z9hG4bK-tls-msg\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:carrier@127.0.0.1>;tag=c\r\n"
        f"To: <{contact}>\r\nCall-ID: tls-msg@127.0.0.1\r\nCSeq: 1 MESSAGE\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


async def test_over_tls_the_registrar_s_certificate_is_checked_and_calls_come_back_on_it(
    api: Api, gateway: Gateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sips:``: the gateway connects over TLS, verifying the registrar's certificate against
    its address — an untrusted one is a failed registration, nothing sent —, registers over
    the connection and answers a request the registrar sends back on it; stopping unregisters
    over it. A call it sends on the connection is TLS-signalled: its SRTP offer is answered."""
    async with (
        tls_registrar(tmp_path) as (registrar, cert),
        FakeTelepathAgent(agent="silent") as agent,
    ):
        registration = registration_body(f"sips:127.0.0.1:{registrar.port}")
        trunk = await registration_trunk(api, "reg-tls", agent.url, registration)
        failed = await until_status(api, gateway, trunk["id"], "failed")
        assert failed["status_detail"] == "cannot connect to 127.0.0.1 (SSLCertVerificationError)"
        assert registrar.requests == []

        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # now trusted, as a private CA would be
        changed = {**registration, "expires": 120}  # a change starts again at once
        retry = await api.patch(f"/v1/trunks/{trunk['id']}", {"registration": changed})
        assert retry.status_code == 200, retry.text
        registered = await until_status(api, gateway, trunk["id"], "registered")
        (register,) = registrar.requests
        assert register.top_via.transport == "TLS"
        assert gateway.registrations is not None
        contact = gateway.registrations.contact_of(trunk["id"])
        assert contact is not None and contact.endswith(";transport=tls")
        assert register.headers.get("Contact") == f"<{contact}>"
        assert registered["contact_address"] == contact.split("@")[1].split(";")[0]
        # a request routed back on the gateway's connection is answered on it
        assert registrar.writer is not None
        registrar.writer.write(message_to(contact, registrar.port))
        await registrar.until(lambda: registrar.answers)
        assert [a.status for a in registrar.answers] == [405]
        # a call on the connection, offering SRTP (SDES): answered with SRTP
        caller = Uac("TLS", target=("127.0.0.1", 5061), local=("127.0.0.1", registrar.port))
        user = contact[4:].split("@")[0]
        offer = create_offer(
            local_address="127.0.0.1",
            local_port=40020,
            session_id=1,
            session_version=1,
            preference=("PCMU",),
            srtp_key=os.urandom(30),
        )
        call_id = "tls-call@127.0.0.1"
        invite = caller.request(
            "INVITE", user, call_id=call_id, cseq=1, uri=contact, body=offer.to_bytes()
        )
        registrar.writer.write(invite)

        def final(method: str) -> Response | None:
            found = [a for a in registrar.answers if a.call_id == call_id and a.status >= 200]
            return next((a for a in found if a.cseq.method == method), None)

        await registrar.until(lambda: final("INVITE") is not None)
        ok = final("INVITE")
        assert ok is not None and ok.status == 200, ok
        answer = parse(ok.body)
        assert answer.media[0].proto == "RTP/SAVP" and b"a=crypto:" in ok.body
        tag = ok.to.tag
        registrar.writer.write(
            caller.request("ACK", user, call_id=call_id, cseq=1, to_tag=tag, uri=contact)
        )
        registrar.writer.write(
            caller.request("BYE", user, call_id=call_id, cseq=2, to_tag=tag, uri=contact)
        )
        await registrar.until(lambda: final("BYE") is not None)
        assert len(agent.handshakes) == 1
        await gateway.registrations.close()
        await registrar.until(lambda: len(registrar.requests) == 2)
        assert registrar.requests[1].headers.get("Expires") == "0"


async def test_an_outbound_proxy_gets_every_register_and_its_calls_are_the_trunks(
    api: Api, gateway: Gateway
) -> None:
    """``outbound_proxy``: every REGISTER goes to the proxy (127.0.0.2, a raw socket) with the
    registrar's Request-URI and ``Route: <proxy;lr>`` (RFC 3261 §8.1.2) — the registrar's own
    name is never looked up —, and a call the proxy sends to the contact is the trunk's, while
    one from elsewhere is challenged."""
    gw = gateway.server.bound["UDP"]
    proxy = await Uac.open("UDP", gw, host="127.0.0.2")
    other = await Uac.open("UDP", gw)
    try:
        hop = f"sip:127.0.0.2:{proxy.local[1]}"
        registration = {**registration_body("sip:registrar.invalid"), "outbound_proxy": hop}
        trunk = await registration_trunk(api, "reg-proxy", "ws://127.0.0.1:9/a", registration)
        assert gateway.registrations is not None
        gateway.registrations.trunks_changed()
        seen, first = await next_register(proxy, 0)
        assert str(first.uri) == "sip:registrar.invalid"
        assert first.headers.get_all("Route") == [f"<{hop};lr>"]
        assert first.to.uri.host == "registrar.invalid"
        (contact,) = contacts(first)
        grant(proxy, first, gw, contact[1:-1])
        await until_status(api, gateway, trunk["id"], "registered")
        uri = contact[1:-1]
        # admitted unchallenged (the agent is unreachable: a clean 480), and from elsewhere not
        assert await first_final(CallLeg(proxy, "via-the-proxy", uri=uri)) == 480
        assert await first_final(CallLeg(other, "from-elsewhere", uri=uri)) == 401
        closing = asyncio.create_task(gateway.registrations.close())
        _, leaving = await next_register(proxy, seen)
        assert leaving.headers.get("Expires") == "0"
        assert leaving.headers.get_all("Route") == [f"<{hop};lr>"]
        grant(proxy, leaving, gw, contact[1:-1])
        await closing
    finally:
        await proxy.close()
        await other.close()
