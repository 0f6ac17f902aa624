"""Per-trunk challenge: with the installation default (SHA-256 first, then MD5; RFC 8760 §2.4) a
trunk whose carrier only does MD5 can be set to ``sip_digest_algorithms=MD5``. Its INVITEs are
then challenged with MD5 only, so UACs that abort on a SHA-256 challenge (baresip 1.0) or read
only the first one (SIPp 3.6) can authenticate; other trunks and unknown users keep both."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from telepath.cli.gateway import Gateway
from telepath.sip.defence import SourceGuard
from telepath.sip.message import Response
from telepath.testing.fake_custom import FakeTelepathAgent
from tests.integration.conftest import Api
from tests.interop.calls.conftest import create_trunk
from tests.interop.sip.uac import (
    CallLeg,
    Uac,
    challenge_params,
    digest_authorization,
    new_branch,
    request_uri,
    sdp_offer,
)

pytestmark = pytest.mark.interop

MEDIA_PORT = 40002


@pytest.fixture
def settings_overrides(settings_overrides: dict[str, Any]) -> dict[str, Any]:
    return {**settings_overrides, "sip_digest_algorithms": "SHA-256,MD5"}  # the default


def algorithms(leg: CallLeg) -> list[str]:
    return [challenge_params(c).get("algorithm", "MD5").upper() for c in leg.challenges]


async def test_md5_trunk_is_challenged_with_md5_only(api: Api, gateway: Gateway, uac: Uac) -> None:
    async with FakeTelepathAgent(agent="silent") as agent:
        await create_trunk(
            api,
            "legacy",
            "legacy-pass-1",
            ai_provider="custom",
            custom_endpoint=agent.url,
            sip_digest_algorithms="MD5",
        )
        await create_trunk(
            api, "modern", "modern-pass-1", ai_provider="custom", custom_endpoint=agent.url
        )
        legacy, modern, unknown = (
            CallLeg(uac, "legacy"),
            CallLeg(uac, "modern"),
            CallLeg(uac, "nobody"),
        )
        for leg in (legacy, modern, unknown):
            await leg.challenge(MEDIA_PORT)
        assert algorithms(legacy) == ["MD5"]
        assert algorithms(modern) == ["SHA-256", "MD5"]
        assert algorithms(unknown) == ["SHA-256", "MD5"]
        ok = await legacy.answered(legacy.authenticated_invite("legacy-pass-1", MEDIA_PORT))
        assert ok.status == 200
        uac.send(legacy.ack())


async def test_a_trunk_s_own_challenge_is_given_only_to_its_allowed_sources(
    api: Api, gateway: Gateway, uac: Uac
) -> None:
    """The narrowed challenge tells a trunk's username from an unknown one; a trunk with
    ``allowed_addresses`` gives it only to those sources — any other gets the default challenge,
    as an unknown username does (its credentials would get 403 there anyway)."""
    async with FakeTelepathAgent(agent="silent") as agent:
        for user, allowed in (("fenced", ["192.0.2.0/24"]), ("open", None)):
            await create_trunk(
                api,
                user,
                f"{user}-pass-1",
                ai_provider="custom",
                custom_endpoint=agent.url,
                sip_digest_algorithms="MD5",
                allowed_addresses=allowed,
            )
        fenced, open_ = CallLeg(uac, "fenced"), CallLeg(uac, "open")
        for leg in (fenced, open_):
            await leg.challenge(MEDIA_PORT)
        assert algorithms(fenced) == ["SHA-256", "MD5"]  # from 127.0.0.1: not its carrier
        assert algorithms(open_) == ["MD5"]


async def test_an_algorithm_not_offered_to_the_trunk_is_refused(
    api: Api, gateway: Gateway, uac: Uac
) -> None:
    """A trunk set to SHA-256 only is challenged with SHA-256 only; an answer computed with MD5
    over that nonce (an on-path downgrade, or a UAC ignoring the challenge) is refused like a
    wrong password — it was accepted, so the setting stopped nothing."""
    async with FakeTelepathAgent(agent="silent") as agent:
        await create_trunk(
            api,
            "strict",
            "strict-pass-1",
            ai_provider="custom",
            custom_endpoint=agent.url,
            sip_digest_algorithms="SHA-256",
        )
        leg = CallLeg(uac, "strict")
        await leg.challenge(MEDIA_PORT)
        assert algorithms(leg) == ["SHA-256"]
        leg.challenges = [c.replace("algorithm=SHA-256", "algorithm=MD5") for c in leg.challenges]
        start = len(uac.received)
        uac.send(leg.authenticated_invite("strict-pass-1", MEDIA_PORT, algorithm="MD5"))
        await uac.response(403, leg.call_id, method="INVITE", after=start)
        assert gateway.manager.active_calls == 0 and agent.handshakes == []


async def invite_with_credentials_for_another_number(
    uac: Uac, user: str, password: str, status: int
) -> None:
    """An INVITE to ``user`` whose right credentials were computed for another number (the
    digest uri's user part), answered ``status``."""
    leg = CallLeg(uac, user)
    await leg.challenge(MEDIA_PORT)
    leg.cseq += 1
    chosen = challenge_params(leg.challenges[-1])
    probe = leg.build("INVITE", body=b"")
    elsewhere = request_uri(probe).replace(f"sip:{user}@", "sip:+19005550100@")
    auth = digest_authorization(
        chosen, username=user, password=password, method="INVITE", uri=elsewhere
    )
    start = len(uac.received)
    uac.send(leg.build("INVITE", headers=[("Authorization", auth)], body=sdp_offer(MEDIA_PORT)))
    await uac.response(status, leg.call_id, method="INVITE", after=start)


async def test_credentials_for_another_number_are_refused(
    api: Api, gateway: Gateway, uac: Uac
) -> None:
    """The digest's uri names what was authorised (RFC 7616 §3.4.6: the same resource as the
    Request-URI, else 400): right credentials computed for another dialled number do not place
    a call to this one. Only the user part is compared, when the uri names one — UAs differ in
    the host, port and parameters they repeat (SIPp answers with ``sip:host:port``, and the
    SIPp tests authenticate so)."""
    async with FakeTelepathAgent(agent="silent") as agent:
        await create_trunk(
            api, "alice2", "alice2-pass-1", ai_provider="custom", custom_endpoint=agent.url
        )
        await invite_with_credentials_for_another_number(uac, "alice2", "alice2-pass-1", 400)
        assert gateway.manager.active_calls == 0 and agent.handshakes == []


async def _fenced_trunk(api: Api, agent_url: str) -> None:
    """Trunk ``fenced`` (password ``fenced-pass-1``), which takes calls from 10.0.0.0/8 only:
    never from the tests' 127.0.0.1."""
    await create_trunk(
        api,
        "fenced",
        "fenced-pass-1",
        ai_provider="custom",
        custom_endpoint=agent_url,
        allowed_addresses=["10.0.0.0/8"],
    )


async def test_right_credentials_from_a_source_not_allowed_learn_nothing_more(
    api: Api, gateway: Gateway, uac: Uac
) -> None:
    """From an address the trunk does not allow, right credentials get the same 403 as wrong
    ones (no oracle) — whatever else is wrong with the request, its digest uri included (a
    400 for the uri told a password-guesser its guess was right)."""
    async with FakeTelepathAgent(agent="silent") as agent:
        await _fenced_trunk(api, agent.url)
        await invite_with_credentials_for_another_number(uac, "fenced", "fenced-pass-1", 403)
        assert agent.handshakes == []


async def test_a_reused_qop_less_answer_is_challenged_again_as_stale_and_bans_no_one(
    api: Api, gateway: Gateway, uac: Uac
) -> None:
    """A UAC answering without qop (RFC 2069 style) that reuses its last nonce and answer for
    the next call: without a nonce count, a nonce authenticates one request, so the second
    INVITE is challenged again — 401 with ``stale=true`` (RFC 7616 §3.3: the nonce is spent,
    the digest right, so the client re-signs without asking for a password), not counted as an
    authentication failure (a right password is no guess). It got 403 and a ban strike."""
    guard = gateway.manager.guard
    assert guard is not None
    guard.policy = dataclasses.replace(guard.policy, auth_failures_before_ban=1)  # one strike
    async with FakeTelepathAgent(agent="silent") as agent:
        await create_trunk(
            api, "plain", "plain-pass-1", ai_provider="custom", custom_endpoint=agent.url
        )
        first = CallLeg(uac, "plain")
        await first.challenge(MEDIA_PORT)
        chosen = challenge_params(first.challenges[0])
        auth = digest_authorization(
            chosen,
            username="plain",
            password="plain-pass-1",
            method="INVITE",
            uri=request_uri(first.build("INVITE")),
            qop=False,
        )
        first.cseq += 1
        headers = [("Authorization", auth)]
        await first.answered(first.build("INVITE", headers=headers, body=sdp_offer(MEDIA_PORT)))
        uac.send(first.ack())
        await first.bye()

        second = CallLeg(uac, "plain")
        start = len(uac.received)
        uac.send(second.build("INVITE", headers=headers, body=sdp_offer(MEDIA_PORT)))
        again = await uac.response(401, second.call_id, method="INVITE", after=start)
        challenges = again.headers.get_all("WWW-Authenticate")
        assert challenges and all("stale=true" in c for c in challenges)
        assert all(challenge_params(c)["nonce"] != chosen["nonce"] for c in challenges)
        uac.send(second.build("ACK", to_tag=again.to.tag, cseq_method="ACK"))
        assert guard.bans == 0 and not guard.is_banned("127.0.0.1")
        assert gateway.manager.counters.get("rejected_auth_failed") is None
        # it re-signs with the fresh nonce and is let in
        second.challenges = challenges
        ok = await second.answered(second.authenticated_invite("plain-pass-1", MEDIA_PORT))
        assert ok.status == 200
        uac.send(second.ack())
        await second.bye()


@pytest.mark.parametrize("nonce", ["reused", "expired"])
async def test_a_reused_right_answer_from_a_source_not_allowed_learns_nothing_more(
    api: Api, gateway: Gateway, uac: Uac, monkeypatch: pytest.MonkeyPatch, nonce: str
) -> None:
    """From an address the trunk does not allow, a right answer sent twice — or once, on a
    nonce that has expired — gets the 403 of a wrong one every time: a ``stale=true``
    challenge would tell a password guesser that its guess was right."""
    async with FakeTelepathAgent(agent="silent") as agent:
        await _fenced_trunk(api, agent.url)
        leg = CallLeg(uac, "fenced")
        await leg.challenge(MEDIA_PORT)
        auth = digest_authorization(
            challenge_params(leg.challenges[0]),
            username="fenced",
            password="fenced-pass-1",
            method="INVITE",
            uri=request_uri(leg.build("INVITE")),
            qop=False,
        )
        if nonce == "expired":
            monkeypatch.setattr(gateway.manager.auth, "_ttl_ms", 0)
            await asyncio.sleep(0.01)  # older than that
        for _ in range(2):
            leg.cseq += 1
            start = len(uac.received)
            uac.send(leg.build("INVITE", headers=[("Authorization", auth)], body=b""))
            refused = await uac.response(403, leg.call_id, method="INVITE", after=start)
            uac.send(leg.build("ACK", to_tag=refused.to.tag, cseq_method="ACK"))
        assert agent.handshakes == []


def count_failures(guard: SourceGuard, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The addresses the manager counts authentication failures toward, in order."""
    counted: list[str] = []
    record = guard.record_auth_failure

    def counting(source_ip: str) -> bool:
        counted.append(source_ip)
        return record(source_ip)

    monkeypatch.setattr(guard, "record_auth_failure", counting)
    return counted


async def _carrier_call(uac: Uac) -> Response:
    """A call on the ``carrier`` trunk with its password, answered, ACKed and hung up: the 200."""
    leg = CallLeg(uac, "carrier")
    await leg.challenge(MEDIA_PORT)
    ok = await leg.answered(leg.authenticated_invite("carrier-pass-1", MEDIA_PORT))
    uac.send(leg.ack())
    await leg.bye()
    return ok


async def _refused_from_elsewhere(fetcher: Uac, sender: Uac, password: str) -> Response:
    """``fetcher`` gets the ``carrier`` trunk's challenge; ``sender``, another address, answers
    it with a wrong ``password`` and ACKs the 403 it must get (RFC 3261 §17.1.1.3): the 403."""
    fetched = CallLeg(fetcher, "carrier")
    await fetched.challenge(MEDIA_PORT)
    retry = dataclasses.replace(fetched, uac=sender)
    start = len(sender.received)
    sender.send(retry.authenticated_invite(password, MEDIA_PORT))
    refused = await sender.response(403, retry.call_id, method="INVITE", after=start)
    sender.send(retry.build("ACK", to_tag=refused.to.tag, cseq_method="ACK"))
    return refused


async def test_a_forged_nonce_is_challenged_again_and_never_counted_toward_a_ban(
    api: Api, gateway: Gateway, uac: Uac, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A response over a nonce we never issued guesses no password: a spoofed UDP source never
    sees our challenge. It was counted as a failure — more INVITEs than the ban threshold with
    a carrier's source address and ``nonce="x"`` banned the carrier for 300 s without its ever
    being challenged. Now each is challenged again, and only a wrong answer to a nonce of ours
    counts toward a ban."""
    guard = gateway.manager.guard
    assert guard is not None
    counted = count_failures(guard, monkeypatch)
    async with FakeTelepathAgent(agent="silent") as agent:
        await create_trunk(
            api, "carrier", "carrier-pass-1", ai_provider="custom", custom_endpoint=agent.url
        )
        real = CallLeg(uac, "carrier")
        await real.challenge(MEDIA_PORT)
        forged = challenge_params(real.challenges[-1]) | {"nonce": "x"}  # the realm is public
        for _ in range(api.state.settings.sip_auth_failures_before_ban + 1):
            leg = CallLeg(uac, "carrier")
            uri = request_uri(leg.build("INVITE", body=b""))
            auth = digest_authorization(
                forged, username="carrier", password="guess", method="INVITE", uri=uri
            )
            branch = new_branch()
            uac.send(leg.build("INVITE", branch=branch, headers=[("Authorization", auth)]))
            again = await uac.response(401, leg.call_id, method="INVITE")
            assert again.headers.get_all("WWW-Authenticate")  # challenged, as with none
            uac.send(leg.build("ACK", branch=branch, to_tag=again.to.tag, cseq_method="ACK"))
        assert counted == [] and not guard.is_banned("127.0.0.1")
        start = len(uac.received)
        uac.send(real.authenticated_invite("guess", MEDIA_PORT))  # a wrong one to our nonce
        await uac.response(403, real.call_id, method="INVITE", after=start)
        assert counted == ["127.0.0.1"]
        ok = await _carrier_call(uac)
        assert ok.status == 200


async def test_a_client_whose_requests_leave_from_alternating_addresses_gets_in(
    api: Api, gateway: Gateway, uac: Uac, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A carrier's SBC cluster may send each request from another node. With nonces good only
    from the address they were sent to, its retry from the other node got a stale=true
    challenge bound to that node, its next retry left from the first again, and so on: it
    never got in, and a wrong password never got its 403 (RFC 7616 §3.3: stale=true is for a
    right digest only). A nonce is good from anywhere now, and its digest checked as usual."""
    guard = gateway.manager.guard
    assert guard is not None
    counted = count_failures(guard, monkeypatch)
    other = await Uac.open("UDP", gateway.server.bound["UDP"], host="127.0.0.2")
    try:
        async with FakeTelepathAgent(agent="silent") as agent:
            await create_trunk(
                api, "carrier", "carrier-pass-1", ai_provider="custom", custom_endpoint=agent.url
            )
            for first, second in ((uac, other), (other, uac)):
                fetched = CallLeg(first, "carrier")
                await fetched.challenge(MEDIA_PORT)
                # the same call, its retry leaving from the other node
                retry = dataclasses.replace(fetched, uac=second)
                ok = await retry.answered(retry.authenticated_invite("carrier-pass-1", MEDIA_PORT))
                assert ok.status == 200
                second.send(retry.ack())
                await retry.bye()
            assert counted == []
            # A wrong password so sent gets its 403, not stale=true again and again.
            await _refused_from_elsewhere(uac, other, "carrier-pass-2")
            assert counted == ["127.0.0.1"]
    finally:
        await other.close()


async def test_wrong_answers_count_toward_the_address_that_fetched_the_nonce(
    api: Api, gateway: Gateway, uac: Uac, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over UDP a forger can fetch a challenge from its own address and answer it wrongly under
    a carrier's source address. Each wrong answer counts toward the ban of the address the
    nonce was sent to — the forger's — not of the packet's source, so the carrier is never
    banned, and a guesser gains nothing over guessing from its own address: each answer is
    refused (403, no fresh challenge whose retry would skip admission again)."""
    guard = gateway.manager.guard
    assert guard is not None
    counted = count_failures(guard, monkeypatch)
    threshold = api.state.settings.sip_auth_failures_before_ban
    carrier = await Uac.open("UDP", gateway.server.bound["UDP"], host="127.0.0.2")
    try:
        async with FakeTelepathAgent(agent="silent") as agent:
            await create_trunk(
                api, "carrier", "carrier-pass-1", ai_provider="custom", custom_endpoint=agent.url
            )
            for attempt in range(threshold):
                # the forger, 127.0.0.1, fetches; its answer goes "from" 127.0.0.2
                refused = await _refused_from_elsewhere(uac, carrier, f"guess-{attempt}")
                assert not refused.headers.get_all("WWW-Authenticate")
            assert counted == ["127.0.0.1"] * threshold
            assert guard.is_banned("127.0.0.1") and not guard.is_banned("127.0.0.2")
            # the carrier is still served
            ok = await _carrier_call(carrier)
            assert ok.status == 200
    finally:
        await carrier.close()
