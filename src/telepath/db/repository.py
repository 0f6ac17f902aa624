"""Queries over accounts, API keys and trunks. Every trunk query is scoped to an account."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from telepath.db.base import utcnow
from telepath.db.models import Account, ApiKey, Trunk, TrunkNumber, TrunkRegistration
from telepath.secrets.tokens import hash_api_key, new_api_key, new_id

DEFAULT_ACCOUNT_NAME = "default"


@dataclass(frozen=True)
class IssuedKey:
    """A freshly created API key: the plaintext exists only in this object."""

    key: ApiKey
    account: Account
    plaintext: str


class AccountRepository:
    """Accounts and their API keys."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def count(self) -> int:
        """Number of accounts in the installation."""
        return int(await self.session.scalar(select(func.count()).select_from(Account)) or 0)

    async def lock(self, account_id: str) -> None:
        """Make this transaction the account's only writer of account-wide limits until it
        ends, so that a count checked next stays true until the commit.

        A no-op UPDATE of the account's row: on PostgreSQL it takes the row's lock (FOR NO KEY
        UPDATE, which does not block inserts of rows that reference the account), and on
        SQLite, which has no row locks, it begins the transaction with the database's write
        lock. A concurrent caller waits here, then counts what the first one committed.
        """
        await self.session.execute(
            update(Account)
            .where(Account.id == account_id)
            .values(name=Account.name)
            .execution_options(synchronize_session=False)
        )

    async def get_or_create(self, name: str) -> Account:
        """Return the account called ``name``, creating it if needed."""
        account = await self.session.scalar(select(Account).where(Account.name == name))
        if account is None:
            account = Account(id=new_id("acct"), name=name, created_at=utcnow())
            self.session.add(account)
            await self.session.flush()
        return account

    async def issue_key(self, account_name: str, key_name: str) -> IssuedKey:
        """Create a key for ``account_name`` (created if missing); only its hash is stored."""
        account = await self.get_or_create(account_name)
        plaintext = new_api_key()
        key = ApiKey(
            id=new_id("key"),
            account_id=account.id,
            name=key_name,
            key_hash=hash_api_key(plaintext),
            hint=plaintext[:12] + "...",
            created_at=utcnow(),
        )
        self.session.add(key)
        await self.session.flush()
        return IssuedKey(key=key, account=account, plaintext=plaintext)

    async def authenticate(self, plaintext: str) -> ApiKey | None:
        """Return the live key matching ``plaintext``, or None (unknown or revoked)."""
        key = await self.session.scalar(
            select(ApiKey).where(ApiKey.key_hash == hash_api_key(plaintext))
        )
        if key is None or key.revoked_at is not None:
            return None
        return key

    async def touch(self, key_id: str, when: datetime) -> None:
        """Record that a key was used."""
        await self.session.execute(
            update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=when)
        )

    async def list_keys(self) -> Sequence[tuple[ApiKey, Account]]:
        """Every key with its account, oldest first."""
        rows = await self.session.execute(
            select(ApiKey, Account)
            .join(Account, Account.id == ApiKey.account_id)
            .order_by(ApiKey.created_at, ApiKey.id)
        )
        return [(k, a) for k, a in rows]

    async def revoke(self, key_id: str) -> bool:
        """Revoke a key by id; False when no live key has that id."""
        result = await self.session.execute(
            update(ApiKey)
            .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


class TrunkRepository:
    """Trunk persistence, always within one account (except SIP lookups by username)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, account_id: str, trunk_id: str) -> Trunk | None:
        """The account's trunk with this id, or None (another account's trunk is None too)."""
        return await self.session.scalar(
            select(Trunk).where(Trunk.id == trunk_id, Trunk.account_id == account_id)
        )

    async def username_taken(self, sip_username: str) -> bool:
        """Whether any trunk in the installation uses this SIP username (case-insensitive)."""
        found = await self.session.scalar(
            select(Trunk.id).where(func.lower(Trunk.sip_username) == sip_username.lower())
        )
        return found is not None

    async def by_sip_username(self, sip_username: str) -> Trunk | None:
        """The trunk that owns a SIP username, for the SIP layer's digest lookups."""
        return await self.session.scalar(
            select(Trunk).where(func.lower(Trunk.sip_username) == sip_username.lower())
        )

    async def by_number(self, number: str) -> Trunk | None:
        """The trunk serving a called number (canonical E.164), for routing an INVITE by it."""
        return await self.session.scalar(
            select(Trunk)
            .join(TrunkNumber, TrunkNumber.trunk_id == Trunk.id)
            .where(TrunkNumber.number == number)
        )

    async def by_contact(self, contact_user: str) -> Trunk | None:
        """The trunk whose outbound registration registered ``contact_user``, for routing an
        INVITE sent to that contact."""
        return await self.session.scalar(
            select(Trunk)
            .join(TrunkRegistration, TrunkRegistration.trunk_id == Trunk.id)
            .where(TrunkRegistration.contact_user == contact_user)
        )

    async def numbers_taken(self, numbers: Collection[str], trunk_id: str) -> list[str]:
        """Those of ``numbers`` another trunk (of any account) already serves, sorted."""
        if not numbers:
            return []
        rows = await self.session.scalars(
            select(TrunkNumber.number).where(
                TrunkNumber.number.in_(list(numbers)), TrunkNumber.trunk_id != trunk_id
            )
        )
        return sorted(rows)

    async def lock(self, trunk_id: str) -> None:
        """Make this transaction the trunk's only writer until it ends.

        A no-op UPDATE of the trunk's row, as ``AccountRepository.lock``: on PostgreSQL the
        row's lock (FOR NO KEY UPDATE: rows referencing the trunk may still be inserted), on
        SQLite the database's write lock. A concurrent caller waits here, then reads what the
        first one committed.
        """
        await self.session.execute(
            update(Trunk)
            .where(Trunk.id == trunk_id)
            .values(name=Trunk.name)
            .execution_options(synchronize_session=False)
        )

    async def get_locked(self, account_id: str, trunk_id: str) -> Trunk | None:
        """The account's trunk as last committed, with this transaction its only writer until
        it ends (``lock``), or None when it is gone: a change checked against it is checked
        against what it will be saved over, not a read another change committed over since.

        The session's copy of the trunk (and its registration) is overwritten with the row
        (``populate_existing``), so nothing may be staged on it yet.
        """
        await self.lock(trunk_id)
        return await self.session.scalar(
            select(Trunk)
            .where(Trunk.id == trunk_id, Trunk.account_id == account_id)
            .execution_options(populate_existing=True)
        )

    async def numbers_of(self, trunk_id: str) -> set[str]:
        """The numbers the routing index holds for the trunk."""
        rows = await self.session.scalars(
            select(TrunkNumber.number).where(TrunkNumber.trunk_id == trunk_id)
        )
        return set(rows)

    async def set_numbers(self, trunk: Trunk, numbers: Sequence[str]) -> None:
        """Make ``numbers`` the trunk's inbound numbers, in the column and the routing index.

        The trunk is locked first (``lock``), so that two changes at once apply one after the
        other: each removes what the other committed, and the routing index ends as the column
        says. Without it, PATCH [B] and PATCH [C] both removed only the number they had read
        and left {B, C} routed to the trunk, with B no longer listed. Every row of the trunk not
        in ``numbers`` is deleted, not only those read. Only the difference is written (a number
        kept stays the same row), so a change never deletes and re-inserts one key in one flush.
        A number another trunk holds makes the commit raise ``IntegrityError``.
        """
        await self.session.flush()  # a new trunk's row exists before rows that refer to it
        await self.lock(trunk.id)
        await self.session.execute(
            delete(TrunkNumber).where(
                TrunkNumber.trunk_id == trunk.id, TrunkNumber.number.not_in(list(numbers))
            )
        )
        held = await self.numbers_of(trunk.id)
        self.session.add_all(
            TrunkNumber(number=n, trunk_id=trunk.id) for n in numbers if n not in held
        )
        trunk.inbound_numbers = ",".join(numbers) or None

    async def active_ids(self, trunk_ids: Collection[str]) -> set[str]:
        """Which of ``trunk_ids`` exist and are active (any account: the gateway's question)."""
        rows = await self.session.scalars(
            select(Trunk.id).where(Trunk.id.in_(list(trunk_ids)), Trunk.status == "active")
        )
        return set(rows)

    async def list(
        self, account_id: str, *, status: str | None, limit: int, offset: int
    ) -> tuple[Sequence[Trunk], int]:
        """A page of the account's trunks (newest first) and the total matching count."""
        where = [Trunk.account_id == account_id]
        if status is not None:
            where.append(Trunk.status == status)
        total = await self.session.scalar(select(func.count()).select_from(Trunk).where(*where))
        rows = await self.session.scalars(
            select(Trunk)
            .where(*where)
            .order_by(Trunk.created_at.desc(), Trunk.id.desc())
            .limit(limit)
            .offset(offset)
        )
        return rows.all(), int(total or 0)

    async def all_trunks(self) -> Sequence[Trunk]:
        """Every trunk of every account (for maintenance commands such as key rotation)."""
        return (await self.session.scalars(select(Trunk).order_by(Trunk.id))).all()

    def add(self, trunk: Trunk) -> None:
        """Stage a new trunk."""
        self.session.add(trunk)

    async def delete(self, account_id: str, trunk_id: str) -> bool:
        """Delete the account's trunk (its numbers and registration go with it: ON DELETE
        CASCADE); False when there was none, e.g. another request deleted it meanwhile.

        One DELETE whose matched count is the answer: the ORM's delete of a loaded trunk that
        another request had just deleted matched no row, warned, and answered 204 as well.
        """
        result = await self.session.execute(
            delete(Trunk)
            .where(Trunk.id == trunk_id, Trunk.account_id == account_id)
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]
