"""Declarative base and column types shared by every table."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, MetaData, String, Table
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

# Deterministic constraint names so Alembic migrations are identical on SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Base class of all ORM models."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as naive UTC and always returned timezone-aware (UTC).

    SQLite has no time zones; storing naive UTC everywhere keeps both back ends identical.
    """

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


def utcnow() -> datetime:
    """Return the current UTC time, truncated to whole milliseconds."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


# What no text column takes: NUL (PostgreSQL refuses it in any text) and unpaired surrogates
# (no UTF-8 encoding: neither driver can send them).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable_text(text: str, length: int | None = None) -> str:
    """``text`` as a text column takes it: NUL and unpaired surrogates replaced by U+FFFD (as
    undecodable bytes are elsewhere), then cut to ``length`` characters (PostgreSQL's
    VARCHAR(n) counts characters, as Python does once no surrogate is left)."""
    if "\x00" in text or not text.isascii():
        text = _UNSTORABLE.sub("\ufffd", text)
    return text if length is None else text[:length]


@functools.cache
def _text_columns(table: Table) -> dict[str, int | None]:
    """Name -> length (None: unbounded) of ``table``'s text columns. Keys (a primary or a
    foreign key) are left out: ids are ours and exact — one cut would be filed under another."""
    return {
        column.name: column.type.length
        for column in table.columns
        if isinstance(column.type, String) and not column.primary_key and not column.foreign_keys
    }


def fit_row(table: Table, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` for a row of ``table`` with every string made to fit its column
    (:func:`storable_text`), lengths read from the table's own definition.

    For values that come from outside — a caller's From and To, a SIP trace, an agent's error
    text: a value the database refuses fails the whole write, and with it what shares the
    transaction (found by review: a 150-character From user lost the call record and its
    ``call.ended`` on PostgreSQL, which enforces VARCHAR lengths where SQLite does not)."""
    columns = _text_columns(table)
    fitted = dict(values)
    for name, value in values.items():
        if isinstance(value, str) and name in columns:
            fitted[name] = storable_text(value, columns[name])
    return fitted
