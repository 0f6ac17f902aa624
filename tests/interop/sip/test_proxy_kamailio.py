"""A record-routing proxy between the caller and the gateway, as a carrier's SBC or a PBX edge
is: Debian's kamailio (stateful, ``record_route()`` + ``loose_route()``) in front of the
in-process gateway, baresip dialling through it.

What must hold (RFC 3261 §12.1.1, §12.2.1.1, §16.12): the gateway keeps the Record-Route in
its 200 OK, the caller's ACK and BYE reach it through the proxy, and the gateway's own BYE (the
agent hangs up) carries the route set as Route headers and reaches the caller through the
proxy.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from telepath.cli.dialer import Dialer
from telepath.cli.gateway import Gateway
from telepath.testing.fake_custom import FakeTelepathAgent
from telepath.testing.tones import dominant_frequency, g711_to_pcm16
from tests.conftest import free_udp_port
from tests.integration.conftest import Api
from tests.interop.calls.conftest import create_trunk
from tests.interop.sip.kamailio import config, kamailio
from tests.interop.sip.test_baresip import PASSWORD, _dial, baresip_config, require_baresip
from tests.interop.sip.waits import ended_records

pytestmark = pytest.mark.interop

ROUTING = """request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (has_totag()) {{
        if (loose_route()) {{ t_relay(); exit; }}
        if (is_method("ACK")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
        sl_send_reply("404", "Not here");
        exit;
    }}
    if (is_method("CANCEL")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
    record_route();
    $du = "sip:127.0.0.1:{gateway}";
    t_relay();
}}
"""


@pytest.fixture
def settings_overrides(settings_overrides: dict[str, Any]) -> dict[str, Any]:
    return {**settings_overrides, "sip_digest_algorithms": "MD5"}  # libre 1.x: MD5 only


@pytest.fixture
async def proxy(gateway: Gateway, tmp_path: Path) -> AsyncIterator[int]:
    """kamailio on a loopback port, relaying to the gateway's UDP port; yields its port."""
    port = free_udp_port()
    cfg = config(port, ROUTING.format(gateway=gateway.server.bound["UDP"][1]))
    # ready once an OPTIONS through it is answered by the gateway
    async with kamailio(cfg, tmp_path, port, ready=b"SIP/2.0 200"):
        yield port


async def _trace(api: Api, record: dict[str, object]) -> str:
    trace: str = (await api.get(f"/v1/calls/{record['id']}")).json()["sip_trace"]
    return trace


async def test_call_through_a_record_routing_proxy_caller_hangs_up(
    api: Api, gateway: Gateway, proxy: int, tmp_path: Path
) -> None:
    require_baresip()
    config = baresip_config(tmp_path, proxy)
    async with FakeTelepathAgent(agent="silent") as agent:
        await create_trunk(api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=agent.url)
        out = await _dial(config, proxy, 2)
        assert "Call established" in out, out
        (record,) = await ended_records(api, gateway)
    assert record["disconnect_reason"] == "caller_hangup", out
    heard = g711_to_pcm16(bytes(agent.caller_audio), "pcmu")
    assert abs(dominant_frequency(heard) - 440) < 15  # media goes direct, not via the proxy
    trace = await _trace(api, record)
    # kamailio's route: <sip:127.0.0.1:PORT;lr;ftag=...> (rr's append_fromtag)
    route = rf"^Record-Route: <sip:127\.0\.0\.1:{proxy};lr[^>]*>"
    assert re.search(route, trace, re.M)  # in the INVITE
    ok = next(m for m in trace.split("--- ") if "SIP/2.0 200 OK" in m and "INVITE" in m)
    assert re.search(route, ok, re.M), ok  # and echoed in our 200 OK (§12.1.1)
    assert f"--- in UDP 127.0.0.1:{proxy}" in trace  # the BYE came through the proxy
    assert gateway.server.core.dialog_count == 0


async def test_gateway_bye_follows_the_route_set_through_the_proxy(
    api: Api, gateway: Gateway, proxy: int, tmp_path: Path
) -> None:
    require_baresip()
    config = baresip_config(tmp_path, proxy)
    async with FakeTelepathAgent(agent="tone", response_ms=300, hangup=True) as agent:
        await create_trunk(api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=agent.url)
        out = await _dial(config, proxy, 6)
        assert "Call established" in out, out
        (record,) = await ended_records(api, gateway, within_s=10)
    assert record["disconnect_reason"] == "agent_hangup", out
    trace = await _trace(api, record)
    bye = trace[trace.index("BYE sip:") :]
    # §12.2.1.1: Request-URI = the caller's Contact, Route = the record-routed proxy (loose)
    head = bye.split("\r\n\r\n", 1)[0]
    assert re.search(rf"^Route: <sip:127\.0\.0\.1:{proxy};lr[^>]*>", head, re.M), head
    assert "SIP/2.0 200 OK" in bye  # the caller answered our BYE, through the proxy
    assert gateway.server.core.dialog_count == 0


async def test_the_dialler_through_a_record_routing_proxy(
    api: Api, gateway: Gateway, proxy: int
) -> None:
    """``telepath call`` in front of the same proxy: its ACK and BYE carry the route set as
    Route headers (RFC 3261 §12.1.2, §12.2.1.1), so the proxy relays them (``loose_route``).
    Without it the BYE was refused (404 from the proxy) and the ACK never reached the gateway,
    which ended the call for want of it instead of as the caller's hang-up."""
    async with FakeTelepathAgent(agent="silent") as agent:
        await create_trunk(api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=agent.url)
        dialer = Dialer(f"sip:alice@127.0.0.1:{proxy}", username="alice", password=PASSWORD)
        result = await dialer.run(duration_s=1, tone_hz=None)
        (record,) = await ended_records(api, gateway)
    assert result.status == 200 and result.ended_by == "dialer", result.log
    assert "BYE → 200 OK" in result.log, result.log
    assert record["disconnect_reason"] == "caller_hangup"
    assert gateway.server.core.dialog_count == 0
