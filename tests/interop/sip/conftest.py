"""Fixtures for the SIP front-door tests: the in-process gateway on real sockets (UDP, TCP and,
when a test asks for it, TLS), an SQLite store and the API to create trunks.

Unlike ``tests/interop/calls``, the gateway here does not need SIPp (raw-socket, TLS and baresip
tests use it too); SIPp tests call ``require_sipp`` themselves. RTP ports come from a range of
their own so these tests can run beside the call tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from telepath.cli.gateway import Gateway, start_gateway
from tests.integration.conftest import Api, api, settings  # noqa: F401  (fixtures)
from tests.interop.calls.conftest import (  # noqa: F401  (fixtures)
    database_url,  # SQLite only
    receiver,  # a webhook receiver
)
from tests.interop.calls.harness import Phone
from tests.interop.sip.raw_streams import Stream
from tests.interop.sip.uac import Uac


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {
        "sip_host": "127.0.0.1",
        "sip_port": 0,
        "rtp_port_min": 33000,
        "rtp_port_max": 34998,
        "allow_insecure_agent_urls": True,
        "allow_insecure_webhook_urls": True,
        "sip_codecs": "PCMU,PCMA,G722",
        "rtp_inactivity_timeout_s": 6.0,
        "provider_timeout_s": 5.0,
        "webhook_backoff_base_s": 0.2,
        # SIPp 3.6 answers only the first challenge and only does MD5 (see sip/auth.py); tests
        # of the default order (SHA-256 first, RFC 8760 §2.4) override this.
        "sip_digest_algorithms": "MD5,SHA-256",
        # The loop thread is shared with the test code here, so its CPU share is not the
        # gateway's load (test_load_admission.py turns it on).
        "sip_max_loop_load": 0,
    }


@pytest.fixture
async def gateway(api: Api) -> AsyncIterator[Gateway]:  # noqa: F811
    gw = await start_gateway(api.state.settings, api.state)
    try:
        yield gw
    finally:
        await gw.stop(0)


async def _client(gateway: Gateway, transport: str) -> AsyncIterator[Uac]:
    client = await Uac.open(transport, gateway.server.bound[transport])
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def uac(gateway: Gateway) -> AsyncIterator[Uac]:
    """A raw UDP SIP client aimed at the gateway."""
    async for client in _client(gateway, "UDP"):
        yield client


@pytest.fixture
async def tcp(gateway: Gateway) -> AsyncIterator[Uac]:
    """A raw SIP client over one TCP connection to the gateway."""
    async for client in _client(gateway, "TCP"):
        yield client


@pytest.fixture
async def phone() -> AsyncIterator[Phone]:
    """The caller's RTP endpoint (the media port SIPp's SDP points at)."""
    p = await Phone().open()
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture
async def streams() -> AsyncIterator[list[Stream]]:
    """The raw connections a test opens (``raw_streams.connect``), closed at its end."""
    opened: list[Stream] = []
    yield opened
    for _, writer in opened:
        writer.close()
