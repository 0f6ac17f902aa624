"""A trunk's outbound registration (``registration``): API, storage and the store call control
reads (``DbRegistrationStore``), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text
from tests.integration.api.seed import CREATE_RESPONSE_FIELDS, CUSTOM, OPENAI_EXAMPLE
from tests.integration.api.test_trunk_create import err
from tests.integration.conftest import Api

from telepath.calls.registrations import Registrations
from telepath.clock import FakeClock
from telepath.db.models import trunk_secret_context
from telepath.db.registration_store import DbRegistrationStore
from telepath.secrets.keyring import SecretDecryptionError
from telepath.sip.message import Request, Response, make_response
from telepath.sip.parser import parse_message
from telepath.sip.ua import Output, RequestAnswered, Send, UaConfig, UserAgentCore

pytestmark = pytest.mark.integration

PASSWORD = "reg-Secret-4711"
REGISTRATION: dict[str, Any] = {
    "registrar": "SIP:Sip.Carrier.Example:5062;Transport=UDP",
    "username": "4930123456",
    "password": PASSWORD,
}
READ_BACK: dict[str, Any] = {
    "registrar": "sip:sip.carrier.example:5062;transport=udp",  # named: no NAPTR choice
    "username": "4930123456",
    "auth_username": None,
    "domain": None,
    "outbound_proxy": None,
    "expires": 300,
    "status": "pending",
    "status_detail": None,
    "registered_until": None,
    "contact_address": None,
}


async def create(api: Api, registration: dict[str, Any] | None = REGISTRATION, **over: Any) -> str:
    body = {**OPENAI_EXAMPLE, **over}
    if registration is not None:
        body["registration"] = registration
    resp = await api.post("/v1/trunks", body)
    assert resp.status_code == 201, resp.text
    trunk_id: str = resp.json()["id"]
    return trunk_id


async def registration_rows(api: Api) -> list[dict[str, Any]]:
    async with api.state.engine.connect() as conn:
        rows = await conn.execute(text("SELECT * FROM trunk_registrations ORDER BY trunk_id"))
        return [dict(r) for r in rows.mappings()]


async def read(api: Api, trunk_id: str) -> Any:
    resp = await api.get(f"/v1/trunks/{trunk_id}")
    assert resp.status_code == 200, resp.text
    return resp.json()["registration"]


def store(api: Api) -> DbRegistrationStore:
    return DbRegistrationStore(api.state.sessions, api.state.keyring)


# --- create and read -------------------------------------------------------------------------


async def test_create_and_read_back(api: Api) -> None:
    created = await api.post("/v1/trunks", {**OPENAI_EXAMPLE, "registration": REGISTRATION})
    assert created.status_code == 201, created.text
    assert set(created.json()) == CREATE_RESPONSE_FIELDS  # the seed's create response, as ever
    trunk_id = created.json()["id"]
    got = await api.get(f"/v1/trunks/{trunk_id}")
    assert got.json()["registration"] == READ_BACK
    listed = await api.get("/v1/trunks")
    assert listed.json()["trunks"][0]["registration"] == READ_BACK
    renamed = await api.patch(f"/v1/trunks/{trunk_id}", {"name": "renamed"})
    assert renamed.json()["registration"] == READ_BACK  # other changes leave it alone
    [row] = await registration_rows(api)
    assert re.fullmatch(r"tpr-[0-9a-f]{20}", row["contact_user"])
    for resp in (created, got, listed, renamed):
        assert PASSWORD not in resp.text
        assert row["contact_user"] not in resp.text
    # A trunk without one reads null, in the list too.
    plain = await create(api, None, sip_username="plain-01")
    assert await read(api, plain) is None
    assert [t["registration"] for t in (await api.get("/v1/trunks")).json()["trunks"]] == [
        None,
        READ_BACK,
    ]


async def test_every_setting(api: Api) -> None:
    body = {
        "registrar": "sip:[2001:DB8::10]",
        "username": "Alice+1.x",
        "password": "  spaces and ünïcode ",
        "auth_username": "auth-alice",
        "domain": "Carrier.EXAMPLE",
        "outbound_proxy": "SIP:Proxy.Carrier.Example:5080;LR;Transport=TCP",
        "expires": 86400,
    }
    trunk_id = await create(api, body)
    assert await read(api, trunk_id) == {
        **READ_BACK,
        "registrar": "sip:[2001:db8::10]",
        "username": "Alice+1.x",
        "auth_username": "auth-alice",
        "domain": "carrier.example",
        "outbound_proxy": "sip:proxy.carrier.example:5080;transport=tcp",  # lr: always sent
        "expires": 86400,
    }
    [config] = await store(api).registrations()
    assert config.password == "  spaces and ünïcode "
    assert config.auth_username == "auth-alice" and config.domain == "carrier.example"
    assert config.outbound_proxy == "sip:proxy.carrier.example:5080;transport=tcp"
    ipv6_domain = {**REGISTRATION, "domain": "2001:DB8::1", "expires": 60}
    changed = await api.patch(f"/v1/trunks/{trunk_id}", {"registration": ipv6_domain})
    assert changed.status_code == 200, changed.text
    assert changed.json()["registration"]["domain"] == "[2001:db8::1]"
    # over TCP: the transport kept, in canonical form
    tcp = {**REGISTRATION, "registrar": "sip:Sip.Carrier.Example;TRANSPORT=TCP"}
    over_tcp = await api.patch(f"/v1/trunks/{trunk_id}", {"registration": tcp})
    assert over_tcp.status_code == 200, over_tcp.text
    assert over_tcp.json()["registration"]["registrar"] == "sip:sip.carrier.example;transport=tcp"
    for given, kept in (
        (
            "sip:sip.carrier.example:5071;Transport=TLS",
            "sip:sip.carrier.example:5071;transport=tls",
        ),
        ("SIPS:Sip.Carrier.Example", "sips:sip.carrier.example"),
    ):
        over_tls = await api.patch(
            f"/v1/trunks/{trunk_id}", {"registration": {**REGISTRATION, "registrar": given}}
        )
        assert over_tls.status_code == 200, over_tls.text
        assert over_tls.json()["registration"]["registrar"] == kept
    # a sips: registrar's outbound proxy over TLS too (the refusals: INVALID below)
    for proxy in ("sips:proxy.carrier.example", "sip:proxy.carrier.example;transport=tls"):
        secure = {**REGISTRATION, "registrar": "sips:sip.carrier.example", "outbound_proxy": proxy}
        resp = await api.patch(f"/v1/trunks/{trunk_id}", {"registration": secure})
        assert resp.status_code == 200, resp.text
        assert resp.json()["registration"]["outbound_proxy"] == proxy
    assert changed.json()["registration"]["expires"] == 60


async def test_password_stored_sealed(api: Api) -> None:
    trunk_id = await create(api)
    [row] = await registration_rows(api)
    assert PASSWORD not in " ".join(str(v) for v in row.values())
    envelope = row["password_enc"]
    assert envelope.startswith(f"v1:{api.state.keyring.active_kid}:")
    keyring = api.state.keyring
    assert keyring.decrypt(envelope, trunk_secret_context(trunk_id, "registration_password")) == (
        PASSWORD
    )
    # Bound to its trunk and column.
    for context in (
        trunk_secret_context("conn_other", "registration_password"),
        trunk_secret_context(trunk_id, "openai_api_key"),
    ):
        with pytest.raises(SecretDecryptionError):
            keyring.decrypt(envelope, context)


# --- validation ------------------------------------------------------------------------------

BAD_REGISTRAR = (
    "registration.registrar must be a SIP URI of the registrar: sip:host or sip:host:port"
)
UDP_ONLY = (
    "registration.registrar must be a sip: URI over UDP, TCP (transport=tcp) or TLS "
    "(transport=tls, or a sips: URI)"
)
BAD_PORT = "registration.registrar has an invalid port (1-65535)"
BAD_HOST = "registration.registrar has an invalid host: a DNS name, an IPv4 address or [IPv6]"
BAD_PARAMS = (
    "registration.registrar may have no URI parameters but transport=udp, tcp or tls "
    "(none with sips:), and no headers"
)
BAD_USERNAME = (
    "registration.{} must be 1-64 of the characters SIP allows as they are in a user part: "
    "letters, digits and - _ . ! ~ * ' ( ) & = + $ , /"
)
BAD_EXPIRES = "registration.expires must be an integer from 60 to 86400"
BAD_DOMAIN = "registration.domain must be a DNS name or an IP address, without scheme, user or port"
BAD_PASSWORD = "registration.password must be 1-128 characters, without control characters"

INVALID: list[tuple[Any, str, str]] = [
    # registrar
    (
        {"registrar": "sip:alice@sip.carrier.example"},
        "invalid_field",
        "registration.registrar must not have a user part: the registrar is sip:host[:port] "
        "(RFC 3261 §10.2)",
    ),
    ({"registrar": "sips:sip.carrier.example;transport=tls"}, "invalid_field", BAD_PARAMS),
    ({"registrar": "sip:sip.carrier.example;transport=sctp"}, "invalid_field", UDP_ONLY),
    ({"registrar": "sip:sip.carrier.example;transport=ws"}, "invalid_field", UDP_ONLY),
    ({"registrar": "sip:"}, "invalid_field", BAD_REGISTRAR),
    ({"registrar": "sip::5060"}, "invalid_field", BAD_REGISTRAR),
    ({"registrar": "sip.carrier.example"}, "invalid_field", BAD_REGISTRAR),
    ({"registrar": "https://sip.carrier.example"}, "invalid_field", BAD_REGISTRAR),
    ({"registrar": "sip: sip.carrier.example"}, "invalid_field", BAD_REGISTRAR),
    ({"registrar": "sip:2001:db8::1"}, "invalid_field", BAD_REGISTRAR),  # IPv6 needs brackets
    ({"registrar": "sip:sip.carrier.example:"}, "invalid_field", BAD_PORT),
    ({"registrar": "sip:sip.carrier.example:0"}, "invalid_field", BAD_PORT),
    ({"registrar": "sip:sip.carrier.example:65536"}, "invalid_field", BAD_PORT),
    ({"registrar": "sip:sip.carrier.example:50x"}, "invalid_field", BAD_PORT),
    ({"registrar": "sip:192.0.2.300"}, "invalid_field", BAD_HOST),
    ({"registrar": "sip:[2001:db8::zz]"}, "invalid_field", BAD_HOST),
    ({"registrar": "sip:under_score.example"}, "invalid_field", BAD_HOST),
    ({"registrar": "sip:sip.carrier.example;lr"}, "invalid_field", BAD_PARAMS),
    ({"registrar": "sip:sip.carrier.example;transport=udp;maddr=x"}, "invalid_field", BAD_PARAMS),
    ({"registrar": "sip:sip.carrier.example?subject=x"}, "invalid_field", BAD_PARAMS),
    (
        {"registrar": "sip:" + "a" * 252},
        "invalid_field",
        "registration.registrar must be at most 255 characters",
    ),
    ({"registrar": None}, "missing_required_field", "registration.registrar is required"),
    ({"registrar": " "}, "missing_required_field", "registration.registrar is required"),
    ({"registrar": 5060}, "invalid_field_type", "registration.registrar must be a string"),
    # username and auth_username
    ({"username": "alice smith"}, "invalid_field", BAD_USERNAME.format("username")),
    ({"username": "alice@carrier"}, "invalid_field", BAD_USERNAME.format("username")),
    ({"username": "alice:1"}, "invalid_field", BAD_USERNAME.format("username")),
    ({"username": "<alice>"}, "invalid_field", BAD_USERNAME.format("username")),
    ({"username": 'a"b'}, "invalid_field", BAD_USERNAME.format("username")),
    ({"username": "alice;x=1"}, "invalid_field", BAD_USERNAME.format("username")),
    # these would need %-escaping in the address-of-record, or escaping in a quoted username
    ({"username": "a%41"}, "invalid_field", BAD_USERNAME.format("username")),
    ({"username": "a#b"}, "invalid_field", BAD_USERNAME.format("username")),
    ({"username": "a\\b"}, "invalid_field", BAD_USERNAME.format("username")),
    ({"username": "a?b"}, "invalid_field", BAD_USERNAME.format("username")),
    ({"username": "älice"}, "invalid_field", BAD_USERNAME.format("username")),
    ({"username": "a" * 65}, "invalid_field", BAD_USERNAME.format("username")),
    ({"username": None}, "missing_required_field", "registration.username is required"),
    ({"username": ""}, "missing_required_field", "registration.username is required"),
    ({"auth_username": ""}, "invalid_field", BAD_USERNAME.format("auth_username")),
    ({"auth_username": "a\tb"}, "invalid_field", BAD_USERNAME.format("auth_username")),
    # password
    ({"password": ""}, "invalid_field", BAD_PASSWORD),
    ({"password": "x" * 129}, "invalid_field", BAD_PASSWORD),
    ({"password": "line\nbreak"}, "invalid_field", BAD_PASSWORD),
    ({"password": 1234}, "invalid_field_type", "registration.password must be a string"),
    # domain
    ({"domain": "sip:carrier.example"}, "invalid_field", BAD_DOMAIN),
    ({"domain": "alice@carrier.example"}, "invalid_field", BAD_DOMAIN),
    ({"domain": "carrier.example:5060"}, "invalid_field", BAD_DOMAIN),
    ({"domain": ""}, "invalid_field", BAD_DOMAIN),
    # outbound_proxy: the registrar's rules, ;lr allowed
    (
        {"outbound_proxy": "sip:proxy.carrier.example;transport=sctp"},
        "invalid_field",
        UDP_ONLY.replace("registrar", "outbound_proxy"),
    ),
    (
        {"outbound_proxy": "sip:proxy@carrier.example"},
        "invalid_field",
        "registration.outbound_proxy must not have a user part: the outbound proxy is "
        "sip:host[:port]",
    ),
    (
        {"outbound_proxy": "proxy.carrier.example"},
        "invalid_field",
        "registration.outbound_proxy must be a SIP URI of the outbound proxy: sip:host or "
        "sip:host:port",
    ),
    (
        {"outbound_proxy": "sip:proxy.carrier.example;lr=1"},
        "invalid_field",
        BAD_PARAMS.replace("registrar", "outbound_proxy"),
    ),
    ({"outbound_proxy": 1}, "invalid_field_type", "registration.outbound_proxy must be a string"),
    *(
        (
            {"registrar": "sips:sip.carrier.example", "outbound_proxy": proxy},
            "invalid_field",
            "registration.outbound_proxy must be reached over TLS (a sips: URI or "
            "transport=tls) when the registrar is a sips: URI (RFC 3261 §26.2)",
        )
        for proxy in ("sip:proxy.carrier.example", "sip:proxy.carrier.example;transport=tcp")
    ),
    # expires
    ({"expires": 59}, "invalid_field", BAD_EXPIRES),
    ({"expires": 86401}, "invalid_field", BAD_EXPIRES),
    ({"expires": "300"}, "invalid_field_type", "registration.expires must be an integer"),
    ({"expires": 300.5}, "invalid_field_type", "registration.expires must be an integer"),
    ({"expires": True}, "invalid_field_type", "registration.expires must be an integer"),
    # the object
    ({"contact_user": "tpr-mine"}, "unknown_field", "Unknown field: registration.contact_user"),
    ({"status": "registered"}, "unknown_field", "Unknown field: registration.status"),
]


@pytest.mark.parametrize(("change", "code", "message"), INVALID)
async def test_invalid_registration_is_refused(
    api: Api, change: dict[str, Any], code: str, message: str
) -> None:
    body = {**REGISTRATION, **change}
    err(await api.post("/v1/trunks", {**OPENAI_EXAMPLE, "registration": body}), 400, code, message)
    assert (await api.get("/v1/trunks")).json()["trunks"] == []  # nothing created
    trunk_id = await create(api)
    before = (await api.get(f"/v1/trunks/{trunk_id}")).json()
    resp = await api.patch(f"/v1/trunks/{trunk_id}", {"registration": body, "name": "renamed"})
    err(resp, 400, code, message)
    assert (await api.get(f"/v1/trunks/{trunk_id}")).json() == before  # nothing changed
    assert [r.password for r in await store(api).registrations()] == [PASSWORD]


@pytest.mark.parametrize("value", ["sip:sip.carrier.example", ["sip:sip.carrier.example"], 1, True])
async def test_registration_must_be_an_object(api: Api, value: Any) -> None:
    body = {**OPENAI_EXAMPLE, "registration": value}
    err(
        await api.post("/v1/trunks", body),
        400,
        "invalid_field_type",
        "registration must be an object",
    )


async def test_a_new_registration_needs_its_password(api: Api) -> None:
    no_password = {k: v for k, v in REGISTRATION.items() if k != "password"}
    missing = ("missing_required_field", "registration.password is required")
    err(
        await api.post("/v1/trunks", {**OPENAI_EXAMPLE, "registration": no_password}), 400, *missing
    )
    nulled = {**REGISTRATION, "password": None}
    err(await api.post("/v1/trunks", {**OPENAI_EXAMPLE, "registration": nulled}), 400, *missing)
    assert await registration_rows(api) == []
    trunk_id = await create(api, None)
    err(await api.patch(f"/v1/trunks/{trunk_id}", {"registration": no_password}), 400, *missing)
    assert await read(api, trunk_id) is None
    added = await api.patch(f"/v1/trunks/{trunk_id}", {"registration": REGISTRATION})
    assert added.status_code == 200 and added.json()["registration"] == READ_BACK
    # Null on create: none.
    body = {**OPENAI_EXAMPLE, "sip_username": "other-01", "registration": None}
    other = await api.post("/v1/trunks", body)
    assert other.status_code == 201 and await read(api, other.json()["id"]) is None


# --- update and remove -----------------------------------------------------------------------


async def test_patch_replaces_settings_and_keeps_the_password(api: Api) -> None:
    trunk_id = await create(api, {**REGISTRATION, "auth_username": "auth-1", "domain": "a.example"})
    [row] = await registration_rows(api)
    until = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    await store(api).set_registration_status(trunk_id, "registered", None, until)
    assert (await read(api, trunk_id))["status"] == "registered"

    # The same settings again, password omitted: nothing changes, the state stays.
    same = {**REGISTRATION, "auth_username": "auth-1", "domain": "a.example"}
    del same["password"]
    kept = await api.patch(f"/v1/trunks/{trunk_id}", {"registration": same})
    assert kept.status_code == 200, kept.text
    assert kept.json()["registration"]["status"] == "registered"
    assert kept.json()["registration"]["registered_until"] == "2030-01-02T03:04:05Z"
    # ... nor with the same password given again.
    again = await api.patch(f"/v1/trunks/{trunk_id}", {"registration": REGISTRATION | same})
    assert again.json()["registration"]["status"] == "registered"

    # An object replaces the settings (auth_username and domain omitted: gone); the password
    # omitted is kept; the state is pending again.
    replaced = await api.patch(
        f"/v1/trunks/{trunk_id}",
        {"registration": {"registrar": "sip:192.0.2.10", "username": "bob", "expires": 120}},
    )
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["registration"] == {
        **READ_BACK,
        "registrar": "sip:192.0.2.10",
        "username": "bob",
        "expires": 120,
    }
    [config] = await store(api).registrations()
    assert config.password == PASSWORD and config.username == "bob"
    assert config.contact_user == row["contact_user"]  # the contact stays the trunk's

    # Registered again, then only the password changes: pending, and the new one is used.
    await store(api).set_registration_status(trunk_id, "registered", None, until, "192.0.2.1:5")
    new_password = {"registrar": "sip:192.0.2.10", "username": "bob", "expires": 120}
    new_password["password"] = "another-Secret"
    changed = await api.patch(f"/v1/trunks/{trunk_id}", {"registration": new_password})
    assert changed.json()["registration"]["status"] == "pending"
    assert changed.json()["registration"]["registered_until"] is None
    assert changed.json()["registration"]["contact_address"] is None
    assert "another-Secret" not in changed.text
    [config] = await store(api).registrations()
    assert config.password == "another-Secret"
    [after] = await registration_rows(api)
    assert after["contact_user"] == row["contact_user"]
    assert "another-Secret" not in " ".join(str(v) for v in after.values())


async def test_null_removes_it(api: Api) -> None:
    trunk_id = await create(api)
    removed = await api.patch(f"/v1/trunks/{trunk_id}", {"registration": None})
    assert removed.status_code == 200, removed.text
    assert removed.json()["registration"] is None
    assert await registration_rows(api) == []
    assert await store(api).registrations() == []
    again = await api.patch(f"/v1/trunks/{trunk_id}", {"registration": None})
    assert again.status_code == 200 and again.json()["registration"] is None
    # Added back: a new registration, with a new contact and its password required again.
    added = await api.patch(f"/v1/trunks/{trunk_id}", {"registration": REGISTRATION})
    assert added.status_code == 200 and added.json()["registration"] == READ_BACK


async def test_trunk_deletion_removes_it(api: Api) -> None:
    first = await create(api)
    second = await create(api, sip_username="second-01")
    assert (await api.delete(f"/v1/trunks/{first}")).status_code == 204
    assert [r["trunk_id"] for r in await registration_rows(api)] == [second]
    # The foreign key cascades in the database too (a trunk deleted outside the API).
    async with api.state.engine.begin() as conn:
        await conn.execute(text("DELETE FROM trunks WHERE id = :id"), {"id": second})
    assert await registration_rows(api) == []


# --- the store call control reads ------------------------------------------------------------


async def test_store_lists_active_trunks_registrations(api: Api) -> None:
    active = await create(api, {**REGISTRATION, "domain": "carrier.example", "expires": 600})
    paused = await create(api, sip_username="paused-01")
    await create(api, None, sip_username="plain-01")
    custom = {**CUSTOM, "registration": {**REGISTRATION, "password": "custom-pass"}}
    assert (await api.post("/v1/trunks", custom)).status_code == 201
    assert (await api.patch(f"/v1/trunks/{paused}", {"status": "inactive"})).status_code == 200
    configs = {c.trunk_id: c for c in await store(api).registrations()}
    assert paused not in configs and len(configs) == 2
    config = configs[active]
    assert config.registrar == "sip:sip.carrier.example:5062;transport=udp"
    assert config.username == "4930123456" and config.password == PASSWORD
    assert config.auth_username is None and config.domain == "carrier.example"
    assert config.expires == 600
    assert re.fullmatch(r"tpr-[0-9a-f]{20}", config.contact_user)
    assert PASSWORD not in repr(config)
    assert len({c.contact_user for c in configs.values()}) == 2
    await api.patch(f"/v1/trunks/{paused}", {"status": "active"})
    assert paused in {c.trunk_id for c in await store(api).registrations()}


async def test_store_reports_state_through_the_api(api: Api) -> None:
    trunk_id = await create(api)
    reports = store(api)
    await reports.set_registration_status(trunk_id, "failed", "403 Forbidden " + "x" * 300, None)
    failed = await read(api, trunk_id)
    assert failed["status"] == "failed"
    assert failed["status_detail"] == ("403 Forbidden " + "x" * 300)[:200]
    assert failed["registered_until"] is None
    until = datetime(2031, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)
    await reports.set_registration_status(trunk_id, "registered", None, until, "203.0.113.5:40001")
    registered = await read(api, trunk_id)
    assert registered == {
        **READ_BACK,
        "status": "registered",
        "registered_until": "2031-05-06T07:08:09Z",
        "contact_address": "203.0.113.5:40001",
    }
    listed = (await api.get("/v1/trunks")).json()["trunks"][0]["registration"]
    assert listed == registered
    # no address is kept past the registration: failed, or unregistered
    await reports.set_registration_status(
        trunk_id, "failed", "no response", None, "203.0.113.5:40001"
    )
    assert (await read(api, trunk_id))["contact_address"] is None
    await reports.set_registration_status(trunk_id, "registered", None, until, "203.0.113.5:1")
    await reports.set_registration_status(trunk_id, "unregistered", None, None)
    unregistered = await read(api, trunk_id)
    assert (unregistered["status"], unregistered["contact_address"]) == ("unregistered", None)
    # A trunk gone meanwhile, or never there: nothing happens.
    await reports.set_registration_status("conn_doesnotexist", "registered", None, until)
    await api.patch(f"/v1/trunks/{trunk_id}", {"registration": None})
    await reports.set_registration_status(trunk_id, "registered", None, until)
    assert await registration_rows(api) == []
    with pytest.raises(ValueError):
        await reports.set_registration_status(trunk_id, "pending", None, None)


class _Registrar:
    """What instances' registration drivers send, in one place (as one registrar would see it):
    each REGISTER in turn, and a way to answer one and wait until its state is stored."""

    def __init__(self) -> None:
        self.sent: list[Output] = []
        self.arrived = asyncio.Event()

    def send(self, outputs: list[Output]) -> None:
        self.sent.extend(outputs)
        self.arrived.set()

    async def next_register(self) -> Request:
        async with asyncio.timeout(5):
            await self.arrived.wait()
        self.arrived.clear()
        register = parse_message([o for o in self.sent if isinstance(o, Send)][-1].data)
        assert isinstance(register, Request)
        return register

    @staticmethod
    async def answered(driver: Registrations, register: Request, response: Response) -> None:
        driver.answered(RequestAnswered(register, response))
        await asyncio.gather(*driver._writes)  # the state stored


async def test_an_instance_stopping_leaves_another_instance_s_registration_shown(
    api: Api,
) -> None:
    """Every instance of a multi-instance installation registers a trunk's contact at its own
    address, and they share the trunk's one state row: an instance stopping removes its own
    binding and stores ``unregistered`` only while the row shows that binding (or none) — it
    overwrote another instance's ``registered``, and a rolling restart showed the trunk
    unregistered while it was."""
    trunk_id = await create(api, {**REGISTRATION, "registrar": "sip:127.0.0.1:5999"})
    reports = store(api)
    registrar = _Registrar()
    send, next_register, answered = registrar.send, registrar.next_register, registrar.answered

    def granted(register: Request) -> Response:
        contact = register.headers.get("Contact") or ""
        return make_response(register, 200, headers=[("Contact", f"{contact};expires=300")])

    drivers = []
    for host in ("192.0.2.2", "192.0.2.1"):  # B registers, then A
        core = UserAgentCore(UaConfig(contact_host=host), FakeClock(100.0))
        driver = Registrations(reports, core, send)
        await driver.sync()
        register = await next_register()
        await answered(driver, register, granted(register))
        drivers.append(driver)
    b, a = drivers
    assert (await read(api, trunk_id))["contact_address"] == "192.0.2.1:5060"
    closing = asyncio.create_task(b.close())
    removal = await next_register()
    assert removal.headers.get("Expires") == "0"
    await answered(b, removal, make_response(removal, 200))
    await closing
    shown = await read(api, trunk_id)
    assert (shown["status"], shown["contact_address"]) == ("registered", "192.0.2.1:5060")
    closing = asyncio.create_task(a.close())  # the last instance: its own binding is shown
    removal = await next_register()
    await answered(a, removal, make_response(removal, 200))
    await closing
    shown = await read(api, trunk_id)
    assert (shown["status"], shown["contact_address"]) == ("unregistered", None)


async def test_store_keeps_a_registrar_s_text_the_database_refuses(api: Api) -> None:
    """The registrar's reason phrase is what it sent: a NUL in it (PostgreSQL refuses one in
    any text) failed the write, and the state was not stored (found by review)."""
    trunk_id = await create(api)
    await store(api).set_registration_status(trunk_id, "failed", "403 Forb\x00idden", None)
    assert (await read(api, trunk_id))["status_detail"] == "403 Forb\ufffdidden"


async def test_store_skips_a_password_it_cannot_open(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    good = await create(api)
    bad = await create(api, sip_username="broken-01")
    # An envelope sealed for another trunk does not open as this one's.
    foreign = api.state.keyring.encrypt(
        PASSWORD, trunk_secret_context(good, "registration_password")
    )
    async with api.state.engine.begin() as conn:
        await conn.execute(
            text("UPDATE trunk_registrations SET password_enc = :e WHERE trunk_id = :id"),
            {"e": foreign, "id": bad},
        )
    with caplog.at_level(logging.ERROR, logger="telepath.db.registration_store"):
        configs = await store(api).registrations()
    assert [c.trunk_id for c in configs] == [good]
    [record] = [r for r in caplog.records if r.name == "telepath.db.registration_store"]
    assert record.levelno == logging.ERROR and bad in record.getMessage()
    assert PASSWORD not in record.getMessage() and foreign not in record.getMessage()
    assert (await read(api, bad))["status"] == "pending"  # the API still reads it


async def test_an_instance_failing_leaves_another_instance_s_registration_shown(
    api: Api,
) -> None:
    """Hosts sharing the database each register the trunk at their own address: one whose
    registrar refuses it (403) stored ``failed`` over the other's live ``registered``, its
    ``registered_until`` and ``contact_address`` nulled. A failure is now stored only while the
    row shows that instance's binding, none, or one expired."""
    trunk_id = await create(api, {**REGISTRATION, "registrar": "sip:127.0.0.1:5999"})
    reports = store(api)
    registrar = _Registrar()
    send, next_register, answered = registrar.send, registrar.next_register, registrar.answered

    drivers = []
    for host in ("192.0.2.1", "192.0.2.2"):  # A registers, then B is refused
        core = UserAgentCore(UaConfig(contact_host=host), FakeClock(100.0))
        driver = Registrations(reports, core, send)
        await driver.sync()
        register = await next_register()
        contact = register.headers.get("Contact") or ""
        granted = make_response(register, 200, headers=[("Contact", f"{contact};expires=300")])
        refused = make_response(register, 403)
        await answered(driver, register, granted if host == "192.0.2.1" else refused)
        drivers.append(driver)
    shown = await read(api, trunk_id)
    assert (shown["status"], shown["contact_address"]) == ("registered", "192.0.2.1:5060")
    assert shown["registered_until"] is not None
    for driver in drivers:
        await driver.close(0.01)  # A's removal unanswered: A's binding stays shown
    # A's binding expired (A killed): B's failure is what there is to show
    past = datetime(2001, 1, 1, tzinfo=UTC)
    await reports.set_registration_status(trunk_id, "registered", None, past, "192.0.2.1:5060")
    await reports.set_registration_status(trunk_id, "failed", "403", None, "192.0.2.2:5060")
    shown = await read(api, trunk_id)
    assert (shown["status"], shown["contact_address"]) == ("failed", None)


async def test_a_registration_past_its_expiry_is_read_as_unregistered(api: Api) -> None:
    """The row says ``registered`` until the gateway reports otherwise: after a kill -9, or
    read through an API-only deployment, it said so for ever. Past ``registered_until`` the
    API shows ``unregistered`` (no ``contact_address``: nothing is registered there)."""
    trunk_id = await create(api)
    reports = store(api)
    past = datetime(2001, 1, 1, tzinfo=UTC)
    await reports.set_registration_status(trunk_id, "registered", None, past, "203.0.113.5:1")
    shown = await read(api, trunk_id)
    assert (shown["status"], shown["contact_address"]) == ("unregistered", None)
    assert shown["registered_until"] == "2001-01-01T00:00:00Z"  # when it ran out
    listed = (await api.get("/v1/trunks")).json()["trunks"][0]["registration"]
    assert listed == shown
    future = datetime(2031, 1, 1, tzinfo=UTC)
    await reports.set_registration_status(trunk_id, "registered", None, future, "203.0.113.5:1")
    shown = await read(api, trunk_id)
    assert (shown["status"], shown["contact_address"]) == ("registered", "203.0.113.5:1")
