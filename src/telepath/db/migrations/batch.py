"""``batch_alter_table`` for the migrations: Alembic's, keeping the table's expression indexes."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

from alembic import op
from alembic.operations import BatchOperations
from sqlalchemy import Connection, text


def _expression_indexes(conn: Connection, table: str) -> dict[str, str]:
    """``table``'s indexes on an expression, by name: their ``CREATE INDEX`` statements.
    ``PRAGMA index_xinfo`` gives an expression's column as -2 (https://www.sqlite.org/pragma.html
    #pragma_index_xinfo)."""
    found = conn.execute(
        text("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = :table"),
        {"table": table},
    )
    indexes: dict[str, str] = {}
    for name, sql in found.all():
        if sql is None:  # a PRIMARY KEY or UNIQUE constraint's own index
            continue
        columns = conn.exec_driver_sql(f'PRAGMA index_xinfo("{name}")').all()
        if any(column[1] == -2 for column in columns):
            indexes[str(name)] = str(sql)
    return indexes


@contextlib.contextmanager
def batch_alter_table(table: str) -> Iterator[BatchOperations]:
    """``op.batch_alter_table(table)``. On SQLite, batch mode may rebuild the table (a copy made
    from its reflection, the DROP, a rename), and SQLAlchemy cannot reflect an index on an
    expression: the copy had none and nothing said so (``uq_trunks_sip_username_ci``, on
    ``lower(sip_username)``, was lost with every column 0012's downgrade and the others
    dropped, and "ABC" could then join "abc"). Each one the rebuild lost is created again
    from its own SQL. A migration that means to drop one does it with ``op.drop_index``
    outside this block."""
    conn = op.get_bind()
    if conn.dialect.name != "sqlite":  # ALTER TABLE in place: the indexes stay
        with op.batch_alter_table(table) as batch:
            yield batch
        return
    kept = _expression_indexes(conn, table)
    with warnings.catch_warnings():
        # the reflection's notice of the expression indexes it skips, this table's (created
        # again below) or those of a table it references (untouched)
        warnings.filterwarnings(
            "ignore", "Skipped unsupported reflection of expression-based index"
        )
        with op.batch_alter_table(table) as batch:
            yield batch
    left = _expression_indexes(conn, table)
    for name, sql in kept.items():
        if name not in left:
            op.execute(sql)
