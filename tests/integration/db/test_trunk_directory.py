"""The SIP/call-control view of trunks, read through the real API and database."""

from __future__ import annotations

import asyncio

import pytest

from telepath.db.registration_store import DbRegistrationStore
from telepath.db.trunk_directory import DbTrunkDirectory
from telepath.secrets.digest import compute_ha1
from tests.integration.api.seed import CUSTOM, OPENAI_EXAMPLE
from tests.integration.conftest import Api

pytestmark = pytest.mark.integration


async def test_lookup_decrypts_and_follows_changes(api: Api) -> None:
    directory = DbTrunkDirectory(api.state.sessions, api.state.keyring)
    assert await directory.find_by_sip_username("agent-prod-01") is None
    created = (await api.post("/v1/trunks", OPENAI_EXAMPLE)).json()
    found = await directory.find_by_sip_username("agent-prod-01")
    assert found is not None
    assert found.trunk_id == created["id"] and found.active
    assert found.openai_api_key == OPENAI_EXAMPLE["openai_api_key"]
    assert found.system_prompt == OPENAI_EXAMPLE["system_prompt"]
    assert found.realm == "sip.example.test"
    assert found.ha1_md5 == compute_ha1(
        "MD5", "agent-prod-01", "sip.example.test", OPENAI_EXAMPLE["sip_password"]
    )
    assert "sk-openai" not in repr(found)
    await api.patch(f"/v1/trunks/{created['id']}", {"status": "inactive"})
    inactive = await directory.find_by_sip_username("agent-prod-01")
    assert inactive is not None and not inactive.active
    rotated = (await api.post(f"/v1/trunks/{created['id']}/rotate-password")).json()
    after = await directory.find_by_sip_username("agent-prod-01")
    assert after is not None
    assert after.ha1_sha256 == compute_ha1(
        "SHA-256", "agent-prod-01", "sip.example.test", rotated["sip_password"]
    )
    await api.delete(f"/v1/trunks/{created['id']}")
    assert await directory.find_by_sip_username("agent-prod-01") is None


async def test_custom_headers_decrypted(api: Api) -> None:
    directory = DbTrunkDirectory(api.state.sessions, api.state.keyring)
    body = {**CUSTOM, "custom_headers": {"Authorization": "Bearer agent-token"}}
    assert (await api.post("/v1/trunks", body)).status_code == 201
    found = await directory.find_by_sip_username("CUSTOM-agent-01")
    assert found is not None
    assert found.custom_headers == {"Authorization": "Bearer agent-token"}
    assert found.custom_protocol == "telepath"
    assert found.custom_endpoint == CUSTOM["custom_endpoint"]


async def test_concurrent_misses_read_the_database_once(api: Api) -> None:
    directory = DbTrunkDirectory(api.state.sessions, api.state.keyring)
    created = (await api.post("/v1/trunks", OPENAI_EXAMPLE)).json()
    found = await asyncio.gather(
        *(directory.find_by_sip_username("agent-prod-01") for _ in range(20))
    )
    assert {f.trunk_id if f else None for f in found} == {created["id"]}
    assert directory.loads == 1
    # a change while nothing is cached: the next lookups read again, once
    await api.patch(f"/v1/trunks/{created['id']}", {"status": "inactive"})
    after = await asyncio.gather(
        *(directory.find_by_sip_username("agent-prod-01") for _ in range(5))
    )
    assert all(f is not None and not f.active for f in after)
    assert directory.loads == 2


async def test_inactive_among_names_deleted_and_inactive_trunks(api: Api) -> None:
    # The gateway's periodic question about the trunks of its live calls, never cached.
    directory = DbTrunkDirectory(api.state.sessions, api.state.keyring)
    kept = (await api.post("/v1/trunks", OPENAI_EXAMPLE)).json()["id"]
    paused = (await api.post("/v1/trunks", CUSTOM)).json()["id"]
    assert await directory.inactive_among({kept, paused}) == set()
    await api.patch(f"/v1/trunks/{paused}", {"status": "inactive"})
    assert await directory.inactive_among({kept, paused}) == {paused}
    await api.delete(f"/v1/trunks/{kept}")
    never = "trk_doesnotexist0000000000"
    assert await directory.inactive_among([kept, paused, never]) == {kept, paused, never}
    await api.patch(f"/v1/trunks/{paused}", {"status": "active"})
    assert await directory.inactive_among([paused]) == set()
    assert await directory.inactive_among([]) == set()


async def test_lookup_by_number_follows_changes_and_is_not_a_username(api: Api) -> None:
    directory = DbTrunkDirectory(api.state.sessions, api.state.keyring)
    body = {
        **OPENAI_EXAMPLE,
        "sip_auth": "address",
        "allowed_addresses": ["192.0.2.0/24"],
        "inbound_numbers": ["+14155550100"],
    }
    created = (await api.post("/v1/trunks", body)).json()
    found = await directory.find_by_number("+14155550100")
    assert found is not None and found.trunk_id == created["id"]
    assert found.inbound_numbers == frozenset({"+14155550100"}) and found.address_auth
    # The same text as a username is another lookup (cached apart), and finds nothing.
    assert await directory.find_by_sip_username("+14155550100") is None
    assert await directory.find_by_number("+14155550101") is None
    await api.patch(f"/v1/trunks/{created['id']}", {"inbound_numbers": ["+14155550101"]})
    assert await directory.find_by_number("+14155550100") is None
    moved = await directory.find_by_number("+14155550101")
    assert moved is not None and moved.trunk_id == created["id"]
    await api.delete(f"/v1/trunks/{created['id']}")
    assert await directory.find_by_number("+14155550101") is None


async def test_lookup_by_contact_follows_changes_and_is_not_a_username(api: Api) -> None:
    directory = DbTrunkDirectory(api.state.sessions, api.state.keyring)
    store = DbRegistrationStore(api.state.sessions, api.state.keyring)
    registration = {"registrar": "sip:[2001:DB8::5]:5070", "username": "u1", "password": "p"}
    created = await api.post("/v1/trunks", {**OPENAI_EXAMPLE, "registration": registration})
    trunk_id = created.json()["id"]
    [config] = await store.registrations()
    contact = config.contact_user
    found = await directory.find_by_contact(contact)
    assert found is not None and found.trunk_id == trunk_id
    assert found.registrar_host == "2001:db8::5" and found.registration_contact == contact
    assert found.registration_credentials == ("u1", "p")  # decrypted, for in-dialog challenges
    assert "'p'" not in repr(found)
    by_name = await directory.find_by_sip_username("agent-prod-01")
    assert by_name is not None and by_name.registration_contact == contact
    # Key spaces apart: the contact is no username, the username no contact.
    assert await directory.find_by_sip_username(contact) is None
    assert await directory.find_by_contact("agent-prod-01") is None
    assert await directory.find_by_contact("tpr-00000000000000000000") is None
    # A new registrar is seen at once; the contact stays.
    moved = {"registrar": "SIP:Registrar.Example:5080", "username": "u1"}
    await api.patch(f"/v1/trunks/{trunk_id}", {"registration": moved})
    after = await directory.find_by_contact(contact)
    assert after is not None and after.registrar_host == "registrar.example"
    await api.patch(f"/v1/trunks/{trunk_id}", {"registration": {**moved, "auth_username": "a1"}})
    signed = await directory.find_by_contact(contact)
    assert signed is not None and signed.registration_credentials == ("a1", "p")
    # Removed: the contact finds nothing, the trunk has no registrar any more.
    await api.patch(f"/v1/trunks/{trunk_id}", {"registration": None})
    assert await directory.find_by_contact(contact) is None
    plain = await directory.find_by_sip_username("agent-prod-01")
    assert plain is not None and plain.registrar_host is None
    assert plain.registration_credentials is None
    assert plain.registration_contact is None
    # Added back (a new contact), then the trunk deleted.
    await api.patch(f"/v1/trunks/{trunk_id}", {"registration": {**moved, "password": "p"}})
    [again] = await store.registrations()
    assert again.contact_user != contact
    readded = await directory.find_by_contact(again.contact_user)
    assert readded is not None and readded.registrar_host == "registrar.example"
    await api.delete(f"/v1/trunks/{trunk_id}")
    assert await directory.find_by_contact(again.contact_user) is None


@pytest.mark.parametrize("key", ["ab\x00cd", "tpr-\x00"])
async def test_a_name_no_trunk_can_have_is_not_looked_up(api: Api, key: str) -> None:
    """A NUL (``sip:ab%00cd@gw``, any unauthenticated INVITE) made PostgreSQL refuse the
    query: SIP 500 and a traceback per packet. No trunk can have such a name: none found."""
    directory = DbTrunkDirectory(api.state.sessions, api.state.keyring)
    assert await directory.find_by_sip_username(key) is None
    assert await directory.find_by_contact(key) is None
    assert await directory.find_by_number(key) is None
    assert await directory.find_by_sip_username("x" * 300) is None
    assert directory.loads == 0  # nor is a name no trunk can have read from the database
