"""A finished call is freed by reference counting alone: no reference cycle among its objects.

Why it matters: an object graph that only the cyclic collector can free survives until a full
(generation 2) collection, and a full collection stops the event loop for as long as it takes
to scan every live object. Measured before this test existed, at 100 call set-ups per second:
each call left ~110 objects in cycles, kept them for ~30 s, and full collections of 0.5 million
objects stopped every live call's audio for 430–540 ms every ~6 s.

Each test places a real call (SIPp, digest auth, the provider's local fake) with the cyclic
collector off, lets it end one way or another, and then requires (1) that the call, its media
session, its bridge and the agent socket are gone, and (2) that a collection finds none of our
objects in cycles — naming the first cycles it finds when it does.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from telepath.cli.gateway import Gateway
from telepath.testing.fake_custom import FakeTelepathAgent
from telepath.testing.fake_elevenlabs import FakeElevenLabs
from telepath.testing.fake_openai import FakeOpenAIRealtime
from tests.integration.conftest import Api
from tests.interop.calls.conftest import configure, create_trunk, provider_trunk
from tests.interop.calls.cycles import collector_off, cyclic_garbage, describe, referrers
from tests.interop.calls.harness import (
    Phone,
    forget_seen_calls,
    free_tcp_port,
    place_call,
    rejected_call,
    run_sipp,
    settled,
)

pytestmark = pytest.mark.interop

PASSWORD = "correct-horse-9"


def _refs(placed_call: Any) -> dict[str, weakref.ref[Any]]:
    call = placed_call.call
    refs = {
        "call": weakref.ref(call),
        "media session": weakref.ref(call.media),
        "bridge": weakref.ref(call.bridge),
        "call record": weakref.ref(call.record),
    }
    socket = getattr(call.bridge, "_ws", None)
    if socket is not None:
        refs["agent socket"] = weakref.ref(socket)
    return refs


async def _call_is_freed(gateway: Gateway, tmp: Path, *, tone_s: float = 1.0, **place: Any) -> None:
    """Place a call with the collector off, let it end, and require it gone without it."""
    with collector_off():
        placed = await place_call(gateway, tmp, "alice", PASSWORD, **place)
        refs = _refs(placed)
        forget_seen_calls(gateway)
        result = await placed.tone_until_end(tone_s)
        assert result.returncode == 0, result.stdout + result.errors
        del placed
        await _assert_freed(gateway, refs)


async def _assert_freed(gateway: Gateway, refs: dict[str, weakref.ref[Any]]) -> None:
    await settled(gateway)
    alive = [name for name, ref in refs.items() if ref() is not None]  # before any collection
    garbage = cyclic_garbage()
    assert not garbage, f"in reference cycles after the call ({alive}):\n" + describe(garbage)
    assert not alive, f"still referenced after the call ended: {alive}\n" + "\n".join(
        f"{name} held by: {referrers(ref())}" for name, ref in refs.items() if ref() is not None
    )


@pytest.mark.parametrize("ending", ["caller", "agent"])
async def test_custom_agent_call_is_freed(
    api: Api, gateway: Gateway, tmp_path: Path, ending: str
) -> None:
    hangup = ending == "agent"  # after its 300 ms greeting
    async with FakeTelepathAgent(agent="tone", response_ms=300, hangup=hangup) as fake:
        await create_trunk(api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=fake.url)
        await _call_is_freed(
            gateway,
            tmp_path,
            hold_ms=1500 if ending == "caller" else 3000,
            caller_hangs_up=ending == "caller",
        )


def _openai() -> AbstractAsyncContextManager[Any]:
    return FakeOpenAIRealtime(agent="tone", response_ms=300)


def _elevenlabs() -> AbstractAsyncContextManager[Any]:
    return FakeElevenLabs(agent="tone", response_ms=300)


@pytest.mark.parametrize("make_fake", [_openai, _elevenlabs], ids=["openai", "elevenlabs"])
async def test_provider_call_is_freed(
    api: Api,
    gateway: Gateway,
    tmp_path: Path,
    make_fake: Callable[[], AbstractAsyncContextManager[Any]],
) -> None:
    async with make_fake() as fake:
        await provider_trunk(api, gateway, fake, PASSWORD)
        await _call_is_freed(gateway, tmp_path, hold_ms=1500)


@pytest.mark.parametrize("failure", ["drop", "close", "error"])
async def test_call_ended_by_a_provider_failure_is_freed(
    api: Api, gateway: Gateway, tmp_path: Path, failure: str
) -> None:
    async with FakeTelepathAgent(agent="silent", after_start=failure) as fake:
        await create_trunk(api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=fake.url)
        await _call_is_freed(gateway, tmp_path, hold_ms=2000, caller_hangs_up=False)


async def test_call_ended_by_media_timeout_is_freed(
    api: Api, gateway: Gateway, tmp_path: Path
) -> None:
    configure(gateway, rtp_inactivity_timeout_s=1.0)
    async with FakeTelepathAgent(agent="silent") as fake:
        await create_trunk(api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=fake.url)
        await _call_is_freed(gateway, tmp_path, hold_ms=3000, caller_hangs_up=False, tone_s=0.5)


@pytest.mark.parametrize("how", ["http_401", "closed_port", "wrong_password"])
async def test_refused_call_leaves_no_cycles(
    api: Api, gateway: Gateway, tmp_path: Path, how: str
) -> None:
    # Failed set-ups are what a flood or a broken agent produces at high rate: none of them
    # may leave work for the cyclic collector either.
    async with FakeTelepathAgent(reject_status=401) as fake:
        url = fake.url if how == "http_401" else f"ws://127.0.0.1:{free_tcp_port()}/agent"
        await create_trunk(api, "alice", PASSWORD, ai_provider="custom", custom_endpoint=url)
        with collector_off():
            phone = await Phone().open()
            password = "not-the-password" if how == "wrong_password" else PASSWORD
            status = 403 if how == "wrong_password" else 480
            for _ in range(3):
                result = await run_sipp(
                    rejected_call("alice", phone.port, status),
                    tmp_path,
                    gateway.server.bound["UDP"],
                    user="alice",
                    password=password,
                )
                assert result.returncode == 0, result.stdout + result.errors
            await phone.close()
            await settled(gateway)
            garbage = cyclic_garbage()
            assert not garbage, "in reference cycles after refused calls:\n" + describe(garbage)
