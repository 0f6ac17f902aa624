"""Trunk lifecycle: create, read, update, delete and rotate, with secrets handled at rest.

The SIP password is turned into digest HA1 values at once and discarded; provider keys, custom
headers and the outbound registration's password are sealed with the master keyring, bound to
the trunk id and column.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.exc import StaleDataError

from telepath.api import schemas
from telepath.api.errors import ApiError, not_found
from telepath.api.registration_input import RegistrationInput
from telepath.api.state import ApiState
from telepath.api.trunk_input import TrunkCreateInput
from telepath.api.trunk_registration import check_registration, set_registration
from telepath.db.base import utcnow
from telepath.db.calls_repository import NO_CALLS, CallRepository, TrunkCallStats
from telepath.db.models import Trunk, TrunkRegistration, trunk_secret_context
from telepath.db.repository import TrunkRepository
from telepath.db.trunk_directory import trunks_changed
from telepath.secrets.digest import compute_ha1
from telepath.secrets.keyring import Keyring, SecretDecryptionError
from telepath.secrets.tokens import mask_secret, new_id, new_sip_password

#: Trunk fields that decide how its INVITEs are routed and authenticated (``_set_routing``).
ROUTING_FIELDS = ("sip_auth", "inbound_numbers")


log = logging.getLogger(__name__)


def iso(ts: datetime | None) -> str | None:
    """ISO 8601 UTC with a ``Z`` suffix and second precision, as in the seed."""
    return None if ts is None else ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def start_of_day(now: datetime) -> datetime:
    """00:00 UTC of ``now``'s UTC day: where a trunk's ``metrics.calls_today`` begin."""
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def metrics_view(stats: TrunkCallStats) -> schemas.TrunkMetrics:
    """A trunk's ``metrics`` from its calls' aggregates of today."""
    return schemas.TrunkMetrics(
        calls_today=stats.calls,
        success_rate=stats.success_rate,
        avg_latency_ms=stats.avg_latency_ms,
    )


def registration_view(row: TrunkRegistration | None) -> schemas.Registration | None:
    """A trunk's outbound registration as read: its settings and last reported state, never
    the password or the contact user. A ``registered`` past its ``registered_until`` is read
    as ``unregistered``: the gateway that reported it stopped refreshing it without saying so
    (killed), or none runs (an API-only deployment), and the registrar has dropped it."""
    if row is None:
        return None
    status, contact_address = row.status, row.contact_address
    expired = row.registered_until is not None and row.registered_until < utcnow()
    if status == "registered" and expired:
        status, contact_address = "unregistered", None
    return schemas.Registration(
        registrar=row.registrar,
        username=row.username,
        auth_username=row.auth_username,
        domain=row.domain,
        outbound_proxy=row.outbound_proxy,
        expires=row.expires,
        status=status,
        status_detail=row.status_detail,
        registered_until=iso(row.registered_until),
        contact_address=contact_address,
    )


def _check_reconnect(trunk: Trunk, changed: dict[str, Any]) -> None:
    """``custom_reconnect`` with the protocol it will have: only the telepath protocol can
    resume a call on a new connection (``start.reconnect``); Twilio Media Streams has no way."""
    reconnect = changed.get("custom_reconnect", trunk.custom_reconnect)
    protocol = changed.get("custom_protocol", trunk.custom_protocol)
    if reconnect and protocol == "twilio":
        raise ApiError(
            400,
            "invalid_field",
            "custom_reconnect needs custom_protocol telepath: a Twilio Media Streams agent "
            "cannot resume a call on a new connection",
        )


def _check_combination(
    trunk: Trunk,
    changed: dict[str, Any],
    registering: bool,
    registration: RegistrationInput | None,
) -> None:
    """The checks of a change that depend on the trunk's other settings (``sip_auth``'s, which
    needs the numbers applied, is ``TrunkService._set_routing``'s)."""
    if registering:
        check_registration(trunk, registration)
    _check_reconnect(trunk, changed)


def seal(keyring: Keyring, trunk_id: str, column: str, value: str) -> str:
    """Encrypt one trunk secret."""
    return keyring.encrypt(value, trunk_secret_context(trunk_id, column))


def open_secret(keyring: Keyring, trunk_id: str, column: str, envelope: str) -> str:
    """Decrypt one trunk secret."""
    return keyring.decrypt(envelope, trunk_secret_context(trunk_id, column))


def stored_secret(keyring: Keyring, trunk_id: str, column: str, envelope: str) -> str:
    """Decrypt one trunk secret a change is checked with.

    Raises:
        ApiError: 409 ``stored_secret_unreadable`` when no key of the installation opens it (a
            database restored without its key file, a wrong ``TELEPATH_SECRET_KEY``): the
            value is to be sent again — not a 500.
    """
    try:
        return open_secret(keyring, trunk_id, column, envelope)
    except SecretDecryptionError:
        raise ApiError(
            409,
            "stored_secret_unreadable",
            f"The stored {column} cannot be decrypted with this installation's master key "
            f"(a database restored without its key file?): send {column} again with this change",
        ) from None


def set_password(trunk: Trunk, password: str) -> None:
    """Store the digest HA1 values of ``password`` for the trunk's username and realm."""
    trunk.ha1_md5 = compute_ha1("MD5", trunk.sip_username, trunk.sip_realm, password)
    trunk.ha1_sha256 = compute_ha1("SHA-256", trunk.sip_username, trunk.sip_realm, password)


class TrunkService:
    """Trunk operations for one request, scoped to one account."""

    def __init__(self, state: ApiState, session: AsyncSession, account_id: str) -> None:
        self.state = state
        self.session = session
        self.account_id = account_id
        self.repo = TrunkRepository(session)

    def sip_endpoint(self, trunk: Trunk) -> str:
        """``{sip_username}@{TELEPATH_SIP_DOMAIN}``."""
        return f"{trunk.sip_username}@{self.state.settings.sip_domain}"

    def created_view(self, trunk: Trunk) -> schemas.TrunkCreated:
        """The seed's create response."""
        return schemas.TrunkCreated(
            id=trunk.id,
            name=trunk.name,
            status=trunk.status,
            ai_provider=trunk.ai_provider,
            sip_username=trunk.sip_username,
            sip_endpoint=self.sip_endpoint(trunk),
            created_at=iso(trunk.created_at) or "",
        )

    async def views(self, trunks: Sequence[Trunk]) -> list[schemas.Trunk]:
        """The full read views of ``trunks``, with their ``metrics``.

        Decision (``reference/telepath-product.md`` §1.2 gives only the field names and types):
        "today" is the current UTC day, the trunk's call records that started since 00:00 UTC.
        ``success_rate`` is the share of those that ended without failing: a call failed when
        the call log shows it Failed or Dropped, status ``failed`` or ``disconnected``
        (``calls_repository.FAILURE_STATUSES``: an operator reads it as "did callers get a
        working agent", so an agent dropping mid-call is a failure although the call was
        answered); calls in progress have no outcome yet and are left out. With none ended it
        is 100 (no call failed), keeping the documented number type; ``calls_today`` tells the
        two apart.
        ``avg_latency_ms`` is the mean of the calls' ``ai_latency_ms`` (the agent's response
        time: what a voice agent's "latency" means to its operator), over those that measured
        one; 0 when none did, keeping the documented integer type. One grouped query for the
        whole page, scoped to the account.
        """
        stats = await CallRepository(self.session).trunk_stats(
            self.account_id, [t.id for t in trunks], start_of_day(utcnow())
        )
        return [self.view(t, stats.get(t.id, NO_CALLS)) for t in trunks]

    def view(self, trunk: Trunk, stats: TrunkCallStats) -> schemas.Trunk:
        """The full read view (secrets masked), with ``stats`` as its ``metrics``."""
        header_names: list[str] | None = None
        if trunk.custom_headers_enc:
            try:
                raw = open_secret(
                    self.state.keyring, trunk.id, "custom_headers", trunk.custom_headers_enc
                )
            except SecretDecryptionError:
                # no key of ours opens them: unknown (null), and the rest of the account still
                # reads (one such trunk made the whole list a 500); calls to it are refused
                log.warning("trunk %s: its custom headers cannot be decrypted", trunk.id)
            else:
                header_names = sorted(json.loads(raw))
        base = self.created_view(trunk).model_dump()
        return schemas.Trunk(
            **base,
            updated_at=iso(trunk.updated_at) or "",
            system_prompt=trunk.system_prompt,
            openai_api_key_hint=trunk.openai_api_key_hint,
            openai_model=trunk.openai_model,
            openai_voice=trunk.openai_voice,
            elevenlabs_api_key_hint=trunk.elevenlabs_api_key_hint,
            elevenlabs_agent_id=trunk.elevenlabs_agent_id,
            custom_endpoint=trunk.custom_endpoint,
            custom_protocol=trunk.custom_protocol,
            custom_header_names=header_names,
            custom_reconnect=bool(trunk.custom_reconnect)
            if trunk.ai_provider == "custom"
            else None,
            password_rotated_at=iso(trunk.password_rotated_at),
            sip_digest_algorithms=trunk.sip_digest_algorithms,
            allowed_addresses=(
                trunk.allowed_addresses.split(",") if trunk.allowed_addresses else None
            ),
            sip_auth="address" if trunk.sip_auth == "address" else "digest",
            inbound_numbers=trunk.inbound_numbers.split(",") if trunk.inbound_numbers else None,
            allowed_caller_numbers=(
                trunk.allowed_caller_numbers.split(",") if trunk.allowed_caller_numbers else None
            ),
            media_encryption=trunk.media_encryption,
            codecs=trunk.codecs.split(",") if trunk.codecs else None,
            forward_sip_headers=(
                trunk.forward_sip_headers.split(",") if trunk.forward_sip_headers else None
            ),
            registration=registration_view(trunk.registration),
            metrics=metrics_view(stats),
        )

    def _conflict(self, sip_username: str) -> ApiError:
        return ApiError(
            409, "conflict", f"A trunk with sip_username '{sip_username}' already exists"
        )

    async def _set_routing(self, trunk: Trunk, fields: dict[str, Any]) -> None:
        """Apply ``sip_auth`` and ``inbound_numbers`` from ``fields``, then check the result.

        Decision: a number belongs to one trunk in the whole installation, since an INVITE for
        it is routed by it; another account's number is a ``409`` like a taken username (a
        number is its carrier's customer's alone, so this reveals a misconfiguration, not a
        secret).
        """
        if "sip_auth" in fields:
            trunk.sip_auth = "address" if fields["sip_auth"] == "address" else None
        if "inbound_numbers" in fields:
            await self.repo.set_numbers(trunk, fields["inbound_numbers"] or [])
        if trunk.sip_auth == "address" and not (trunk.allowed_addresses and trunk.inbound_numbers):
            raise ApiError(
                400,
                "invalid_field",
                "sip_auth 'address' needs allowed_addresses and inbound_numbers: calls are taken "
                "without a challenge only for those numbers from those sources",
            )

    async def _check_numbers_free(self, trunk_id: str, fields: dict[str, Any]) -> None:
        """409 when another trunk serves one of the ``inbound_numbers`` in ``fields``: asked
        before this request writes or locks anything (the unique key still has the last word,
        at the commit: ``_save``)."""
        taken = await self.repo.numbers_taken(fields.get("inbound_numbers") or [], trunk_id)
        if taken:
            raise ApiError(
                409, "conflict", f"Number '{taken[0]}' is already served by another trunk"
            )

    async def _save(self, trunk: Trunk, routing: dict[str, Any]) -> None:
        """Apply the routing fields and commit; a unique key another request took meanwhile
        (a username, a number) is the documented 409, never a 500, and a trunk deleted
        meanwhile (its UPDATE matched no row) the documented 404."""
        # A rollback expires a stored trunk's attributes, and reading one then is a query
        # (MissingGreenlet outside the awaited path: a 500 for the loser of a number's race).
        trunk_id, sip_username = trunk.id, trunk.sip_username
        try:
            await self._set_routing(trunk, routing)
            await self.session.commit()
        except StaleDataError:
            await self.session.rollback()
            raise not_found("Trunk", trunk_id) from None
        except IntegrityError:
            await self.session.rollback()
            if not routing.get("inbound_numbers"):
                raise self._conflict(sip_username) from None
            raise ApiError(
                409,
                "conflict",
                f"A trunk with sip_username '{sip_username}' or one of these "
                "inbound_numbers already exists",
            ) from None

    async def _validate_provider(self, trunk: Trunk, changed: dict[str, Any]) -> None:
        """Check credentials that are new or changed, using the stored values for the rest,
        and that an ElevenLabs agent takes the trunk's system prompt (set or kept).

        The provider may take up to ``provider_timeout_s`` to answer; the request's read-only
        transaction is ended first (``_release_connection``), so no pooled connection waits
        with it (the pool is shared with the gateway's trunk lookups)."""
        validator = self.state.validator
        keyring = self.state.keyring
        if trunk.ai_provider == "openai" and (
            "openai_api_key" in changed or "openai_model" in changed
        ):
            key = changed.get("openai_api_key") or stored_secret(
                keyring, trunk.id, "openai_api_key", trunk.openai_api_key_enc or ""
            )
            model = changed.get("openai_model", trunk.openai_model)
            await self._release_connection()
            await validator.check_openai(key, model or self.state.settings.openai_model)
        elif trunk.ai_provider == "elevenlabs":
            # the prompt goes to the agent as an override, which the agent must enable: checked
            # when it is set, and when the agent (or the key reading it) changes under one
            prompt = changed["system_prompt"] if "system_prompt" in changed else trunk.system_prompt
            if not (
                "elevenlabs_api_key" in changed
                or "elevenlabs_agent_id" in changed
                or ("system_prompt" in changed and prompt)
            ):
                return
            key = changed.get("elevenlabs_api_key") or stored_secret(
                keyring, trunk.id, "elevenlabs_api_key", trunk.elevenlabs_api_key_enc or ""
            )
            agent = changed.get("elevenlabs_agent_id") or trunk.elevenlabs_agent_id or ""
            await self._release_connection()
            await validator.check_elevenlabs(key, agent, system_prompt=bool(prompt))

    async def _release_connection(self) -> None:
        """End the session's transaction, which has only read so far, returning its connection
        to the pool; the next query checks one out again. Objects read stay loaded (no expiry
        on commit). What was read is not held meanwhile either way: a change later writes only
        its own columns, and a trunk deleted meanwhile is the documented 404 (``_save``)."""
        if self.session.new or self.session.dirty or self.session.deleted:
            raise RuntimeError("the provider check must run before anything is staged")
        await self.session.commit()

    def _apply(self, trunk: Trunk, fields: dict[str, Any]) -> None:
        keyring = self.state.keyring
        for key, value in fields.items():
            if key == "openai_api_key":
                trunk.openai_api_key_enc = seal(keyring, trunk.id, key, value)
                trunk.openai_api_key_hint = mask_secret(value)
            elif key == "elevenlabs_api_key":
                trunk.elevenlabs_api_key_enc = seal(keyring, trunk.id, key, value)
                trunk.elevenlabs_api_key_hint = mask_secret(value)
            elif key == "custom_headers":
                trunk.custom_headers_enc = (
                    None if not value else seal(keyring, trunk.id, key, json.dumps(value))
                )
            elif key == "system_prompt":
                trunk.system_prompt = value or None
            else:
                setattr(trunk, key, value)

    async def create(self, data: TrunkCreateInput) -> Trunk:
        """Create a trunk after the uniqueness and provider checks."""
        if await self.repo.username_taken(data.sip_username):
            raise self._conflict(data.sip_username)
        now = utcnow()
        trunk = Trunk(
            id=new_id("conn"),
            account_id=self.account_id,
            name=data.name,
            status="active",
            ai_provider=data.ai_provider,
            sip_username=data.sip_username,
            sip_realm=self.state.settings.sip_domain,
            created_at=now,
            updated_at=now,
        )
        if data.ai_provider == "custom":
            trunk.custom_protocol = "telepath"
        set_password(trunk, data.sip_password)
        registration = data.options.pop("registration", None)
        check_registration(trunk, registration)
        _check_reconnect(trunk, data.options)
        await self._validate_provider(trunk, data.options)
        await self._check_numbers_free(trunk.id, data.options)
        routing = {k: data.options.pop(k) for k in ROUTING_FIELDS if k in data.options}
        self._apply(trunk, data.options)
        if registration is not None:
            set_registration(trunk, registration, self.state.keyring)
        self.repo.add(trunk)
        await self._save(trunk, routing)
        trunks_changed()
        return trunk

    async def get(self, trunk_id: str) -> Trunk:
        """The account's trunk, or the documented 404."""
        trunk = await self.repo.get(self.account_id, trunk_id)
        if trunk is None:
            raise not_found("Trunk", trunk_id)
        return trunk

    async def update(self, trunk_id: str, fields: dict[str, Any]) -> Trunk:
        """Apply a validated PATCH; changed credentials are re-validated first."""
        trunk = await self.get(trunk_id)
        registering = "registration" in fields  # null: remove it
        registration = fields.pop("registration", None)
        # Checked on the trunk as read, for a quick answer before a provider is asked; then
        # again on the trunk as last committed, locked until this change is saved (found by
        # review: {"custom_reconnect": true} and {"custom_protocol": "twilio"} at once each
        # passed against its own read and together stored what one request is refused).
        _check_combination(trunk, fields, registering, registration)
        await self._validate_provider(trunk, fields)
        await self._check_numbers_free(trunk.id, fields)
        trunk = await self._locked(trunk_id)
        _check_combination(trunk, fields, registering, registration)
        was_active = trunk.status == "active"
        routing = {k: fields.pop(k) for k in ROUTING_FIELDS if k in fields}
        self._apply(trunk, fields)
        if registering:
            set_registration(trunk, registration, self.state.keyring)
        trunk.updated_at = utcnow()
        await self._save(trunk, routing)
        trunks_changed()
        if was_active and trunk.status != "active":
            self._removed(trunk.id)
        return trunk

    async def _locked(self, trunk_id: str) -> Trunk:
        """The trunk as last committed, this transaction its only writer until it ends
        (``TrunkRepository.get_locked``); one deleted meanwhile is the documented 404."""
        trunk = await self.repo.get_locked(self.account_id, trunk_id)
        if trunk is None:
            await self.session.rollback()
            raise not_found("Trunk", trunk_id)
        return trunk

    async def delete(self, trunk_id: str) -> None:
        """Delete the account's trunk; when two requests delete it at once, the one whose
        DELETE finds it gone answers the documented 404."""
        await self.get(trunk_id)
        if not await self.repo.delete(self.account_id, trunk_id):
            await self.session.rollback()
            raise not_found("Trunk", trunk_id)
        await self.session.commit()
        trunks_changed()
        self._removed(trunk_id)

    def _removed(self, trunk_id: str) -> None:
        """The trunk takes no calls any more: its live calls end too (``trunk_deleted``)."""
        for listener in self.state.trunk_removed:
            listener(trunk_id)

    async def rotate_password(self, trunk_id: str) -> tuple[Trunk, str]:
        """Replace the SIP password with a generated one; the old one stops working at once.

        Decision: two rotations at once must not both answer 200, since only the password of
        the one written last would work. The write is conditional on the HA1 read (a
        compare-and-set, the same on SQLite and PostgreSQL, with no lock held while the
        request runs): the rotation that finds it already replaced writes nothing and answers
        409 ``conflict``, so its caller knows to rotate again; the other's password works. A
        trunk deleted meanwhile is the documented 404.
        """
        trunk = await self.get(trunk_id)
        read_ha1 = trunk.ha1_sha256
        password = new_sip_password()
        realm = self.state.settings.sip_domain
        now = utcnow()
        result = await self.session.execute(
            update(Trunk)
            .where(Trunk.id == trunk.id, Trunk.ha1_sha256 == read_ha1)
            .values(
                sip_realm=realm,
                ha1_md5=compute_ha1("MD5", trunk.sip_username, realm, password),
                ha1_sha256=compute_ha1("SHA-256", trunk.sip_username, realm, password),
                password_rotated_at=now,
                updated_at=now,
            )
        )  # also updates ``trunk`` in the session (synchronize_session "auto": evaluated)
        if int(result.rowcount or 0) != 1:  # type: ignore[attr-defined]
            await self.session.rollback()
            if await self.repo.get(self.account_id, trunk_id) is None:
                raise not_found("Trunk", trunk_id)
            raise ApiError(
                409,
                "conflict",
                "The SIP password was rotated by another request at the same time; "
                "rotate again to get one that works",
            )
        await self.session.commit()
        trunks_changed()
        return trunk, password
