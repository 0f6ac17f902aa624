"""REGISTER from a PBX that registers its trunk (RFC 3261 §10.3): challenged and answered with
the trunk's credentials, lifetimes bounded, ``Contact: *`` removal, and the refusals."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest

from telepath.cli.gateway import Gateway
from telepath.sip.message import Response
from tests.integration.conftest import Api
from tests.interop.calls.conftest import create_trunk
from tests.interop.sip.test_baresip import baresip_config, require_baresip
from tests.interop.sip.uac import Uac, challenge_params, digest_authorization, new_branch

pytestmark = pytest.mark.interop

PASSWORD = "pbx-register-1"


class Registration:
    """One PBX's registration attempts, as a raw UAC sends them."""

    def __init__(self, uac: Uac, user: str) -> None:
        self.uac = uac
        self.user = user
        self.call_id = secrets.token_hex(8) + "@pbx"
        self.cseq = 0
        host, port = uac.target
        self.uri = f"sip:{host}:{port}"

    def _register(self, headers: list[tuple[str, str]]) -> bytes:
        self.cseq += 1
        lhost, lport = self.uac.local
        host, port = self.uac.target
        aor = f"<sip:{self.user}@{host}:{port}>"
        lines = [
            f"REGISTER {self.uri} SIP/2.0",
            f"Via: SIP/2.0/UDP {lhost}:{lport};branch={new_branch()};rport",
            "Max-Forwards: 70",
            f"From: {aor};tag=pbx1",
            f"To: {aor}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq} REGISTER",
            *(f"{k}: {v}" for k, v in headers),
            "Content-Length: 0",
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def send(
        self, headers: list[tuple[str, str]], password: str = PASSWORD, *, status: int = 200
    ) -> Response:
        """REGISTER, answer the 401, return the final response (expected ``status``)."""
        start = len(self.uac.received)
        self.uac.send(self._register(headers))
        challenge = await self.uac.response(401, self.call_id, after=start)
        params = challenge_params(challenge.headers.get_all("WWW-Authenticate")[0])
        auth = digest_authorization(
            params, username=self.user, password=password, method="REGISTER", uri=self.uri
        )
        start = len(self.uac.received)
        self.uac.send(self._register([*headers, ("Authorization", auth)]))
        return await self.uac.response(status, self.call_id, after=start)


async def test_a_pbx_registers_its_trunk(api: Api, uac: Uac) -> None:
    await create_trunk(api, "pbx-1", PASSWORD, ai_provider="custom", custom_endpoint="ws://x/a")
    registration = Registration(uac, "pbx-1")
    lhost, lport = uac.local
    contact = f"<sip:pbx-1@{lhost}:{lport}>"

    ok = await registration.send([("Contact", contact), ("Expires", "600")])
    assert ok.headers.get_all("Contact") == [f"<sip:pbx-1@{lhost}:{lport}>;expires=600"]
    assert (ok.headers.get("Date") or "").endswith("GMT")

    # a longer lifetime than we grant is shortened (§10.3 step 7); the contact's own wins
    longer = await registration.send([("Contact", f"{contact};expires=86400")])
    assert longer.headers.get_all("Contact") == [f"<sip:pbx-1@{lhost}:{lport}>;expires=3600"]

    too_short = await registration.send([("Contact", contact), ("Expires", "10")], status=423)
    assert too_short.headers.get("Min-Expires") == "60"

    removed = await registration.send([("Contact", "*"), ("Expires", "0")])
    assert removed.headers.get_all("Contact") == []
    bad_star = await registration.send([("Contact", "*"), ("Expires", "60")], status=400)
    assert bad_star.status == 400

    # nothing of it is a call
    assert (await api.get("/v1/calls")).json()["calls"] == []


async def test_a_wrong_password_or_an_unknown_user_is_refused(api: Api, uac: Uac) -> None:
    await create_trunk(api, "pbx-2", PASSWORD, ai_provider="custom", custom_endpoint="ws://x/a")
    lhost, lport = uac.local
    contact = [("Contact", f"<sip:pbx-2@{lhost}:{lport}>")]
    wrong = await Registration(uac, "pbx-2").send(contact, "not-the-password", status=403)
    assert wrong.status == 403
    unknown = await Registration(uac, "nobody").send(contact, PASSWORD, status=403)
    assert unknown.status == 403
    metrics = api.state.metrics.render().decode()
    assert 'telepath_calls_rejected_total{reason="auth_failed"}' not in metrics  # not calls
    assert 'telepath_sip_auth_failures_total{reason="failed"} 2.0' in metrics


async def test_baresip_registers_to_an_md5_only_trunk(
    api: Api, gateway: Gateway, tmp_path: Path
) -> None:
    """A real UA registering: baresip (which aborts on any SHA-256 challenge) gets the trunk's
    MD5-only challenge — chosen by the To user, as a REGISTER's Request-URI has none."""
    baresip = require_baresip()
    port = gateway.server.bound["UDP"][1]
    config = baresip_config(tmp_path, port, password=PASSWORD, regint=600)
    await create_trunk(
        api,
        "alice",
        PASSWORD,
        ai_provider="custom",
        custom_endpoint="ws://127.0.0.1:9/agent",
        sip_digest_algorithms="MD5",
    )
    proc = await asyncio.create_subprocess_exec(
        baresip,
        "-f",
        str(config),
        "-t",
        "3",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    text = out.decode(errors="replace")
    assert "200 OK" in text and "1 binding" in text, text
    assert gateway.server.core.counters["request_REGISTER"] >= 2  # challenged, then accepted
