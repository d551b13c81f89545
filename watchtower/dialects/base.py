"""What every database the ledger runs on provides, written once in the form most of them share.

A :class:`Dialect` holds the SQL that differs between SQLite, PostgreSQL
and MySQL/MariaDB, so that the rest of Watchtower asks its database's
dialect instead of testing which database it is (Peewee keeps its own
differences the same way, on its ``Database`` subclasses).  The methods
here are the spelling SQLite and PostgreSQL share (``ON CONFLICT``, the
recursive index walk); :mod:`watchtower.dialects.sqlite`,
:mod:`~watchtower.dialects.postgresql` and :mod:`~watchtower.dialects.mysql`
override what their database does differently.

Table names come in as arguments: this package imports no models, so
that the models can ask it.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import peewee

__all__ = ["Dialect", "DerivedTables", "Speller", "Assignments", "like", "driver", "create_missing", "names"]

#: Spells a column of the row already stored (``old``) or of the row being inserted (``new``).
Speller = Callable[[str], str]
#: Given the spellers ``old`` and ``new``, the ``column = expression`` assignments of an upsert.
Assignments = Callable[[Speller, Speller], Sequence[str]]


@dataclass(frozen=True)
class DerivedTables:
    """The tables the count and rollup triggers read and write (see :mod:`watchtower.derived`)."""

    jobs: str
    counts: str
    rollups: str
    hourly: str


class Dialect:
    """One database's SQL for what the ledger does; the base spells what SQLite and PostgreSQL share."""

    #: ``sqlite``, ``postgresql`` or ``mysql``: the ``kind`` of a checked database URL.
    name = ""

    #: Seconds a prune's delete batch should hold its locks, and seconds of pause after it.
    #: PostgreSQL and MySQL lock only the rows a batch deletes.
    prune_tuning: tuple[float, float] = (0.2, 0.0)

    #: Whether pages freed by deletes stay with the file until handed back
    #: (SQLite's free list; see :mod:`watchtower.retention.space`).
    keeps_free_pages = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    # Transactions ----------------------------------------------------------

    def transaction(self, db: peewee.Database) -> AbstractContextManager[Any]:
        """A transaction that will write: one short statement or a batch of them."""
        return db.atomic()

    def write_transaction(self, db: peewee.Database) -> AbstractContextManager[Any]:
        """The transaction of a recorder's batch (SQLite asks for its write lock more eagerly)."""
        return self.transaction(db)

    def schema_lock(self, db: peewee.Database) -> AbstractContextManager[None]:
        """A database-wide lock around schema creation, for many processes starting at once."""
        raise NotImplementedError

    # Upserts ---------------------------------------------------------------

    def on_conflict(self, table: str, key: Sequence[str], assignments: Assignments) -> str:
        """The clause that turns ``INSERT INTO table ...`` into an upsert on the unique ``key``."""
        def old(column: str) -> str:
            return f"{table}.{column}"

        def new(column: str) -> str:
            return f"excluded.{column}"

        return f" ON CONFLICT ({', '.join(key)}) DO UPDATE SET " + ", ".join(assignments(old, new))

    def upsert_rows(
        self,
        db: peewee.Database,
        table: str,
        columns: Sequence[str],
        rows: Sequence[tuple[Any, ...]],
        *,
        key: Sequence[str],
        assignments: Assignments,
        types: dict[str, str],
    ) -> None:
        """Insert ``rows`` (tuples in ``columns`` order), or update them on a ``key`` conflict, in few statements.

        ``types``: the SQL type of the columns that are not text (PostgreSQL
        sends each column as one typed array).
        """
        raise NotImplementedError

    def upsert_query(
        self, query: peewee.Insert, key: list[peewee.Field], preserve: list[peewee.Field]
    ) -> peewee.Insert:
        """Peewee's ``query`` made an upsert: on a conflict on ``key``, the row takes the new ``preserve`` values."""
        return query.on_conflict(conflict_target=key, preserve=preserve)

    def insert_ignore(self, table: str, columns: str, values: str, *, key: str) -> str:
        """``INSERT INTO table (columns) VALUES (values)`` that does nothing when a row with its ``key`` exists."""
        return f"INSERT INTO {table} ({columns}) VALUES ({values}) ON CONFLICT ({key}) DO NOTHING"

    # Expressions -----------------------------------------------------------

    def int_divide(self, dividend: str, divisor: str) -> str:
        """Integer division of two integer expressions."""
        return f"{dividend} / {divisor}"

    def drop_index(self, table: str, name: str) -> str:
        """The statement that drops index ``name`` of ``table`` if it exists."""
        return f"DROP INDEX IF EXISTS {name}"

    def contains_ascii_folded(self, column: peewee.ColumnBase, text: str) -> peewee.ColumnBase:
        """``column`` contains ``text``, ignoring the case of ASCII letters (``text``'s wildcards taken literally).

        LIKE does so on SQLite, and on MySQL under its default
        (case-insensitive) collations.
        """
        return like(column, "LIKE", text)

    def contains_folded(
        self, db: peewee.Database, table: str, column: peewee.Field, text: str
    ) -> peewee.ColumnBase | None:
        """``column`` (a short, indexed text column of few distinct values) contains ``text`` ignoring case.

        None when no value can match.  This spelling folds ASCII letters only,
        as :meth:`contains_ascii_folded` does.
        """
        return self.contains_ascii_folded(column, text)

    # Index walks -----------------------------------------------------------

    def distinct_values(self, db: peewee.Database, table: str, column: str) -> list[Any]:
        """Every distinct non-NULL value of ``column``, in order, at one index seek per value.

        ``column`` must lead an index of ``table``: the cost follows the
        number of distinct values, not of rows.
        """
        return [row[0] for row in db.execute_sql(_distinct_walk(table, column)).fetchall()]

    def in_distinct(self, db: peewee.Database, field: peewee.Field, table: str) -> peewee.ColumnBase | None:
        """``field IN`` (every distinct value of its column, walked as :meth:`distinct_values` does).

        None when the table has no values (nothing can match).  Here the
        walk is a subquery of the same statement.
        """
        return peewee.Expression(field, peewee.OP.IN, peewee.SQL(f"({_distinct_walk(table, field.column_name)})"))

    # Count and rollup triggers ---------------------------------------------

    def create_triggers(self, db: peewee.Database, tables: DerivedTables) -> None:
        """Create the count and rollup triggers of :mod:`watchtower.derived` that do not exist yet."""
        raise NotImplementedError

    def compact_counts(self, db: peewee.Database, counts: str) -> None:
        """Fold the count shards of database sessions that have ended into shard 0 (one shard here: nothing)."""

    # Pruning ---------------------------------------------------------------

    @contextlib.contextmanager
    def pruning(self, db: peewee.Database) -> Iterator[None]:
        """Per-connection tuning while a prune runs (none here)."""
        yield

    def between_batches(self, db: peewee.Database) -> None:
        """Work a prune does between two delete batches, outside any transaction (none here)."""


def driver(db: peewee.Database) -> str:
    """The name of the DB-API driver ``db`` uses, as a database URL names it: ``psycopg``, ``pymysql``...

    The one :mod:`watchtower.store` chose, or for a database made elsewhere
    (by a host app), the one its connection comes from.
    """
    name = getattr(db, "driver", None)
    if isinstance(name, str):
        return name
    if isinstance(db, peewee.SqliteDatabase):
        return "sqlite3"
    module = type(db.connection()).__module__.split(".")[0]
    return {"MySQLdb": "mysqldb"}.get(module, module)


def create_missing(db: peewee.Database, existing: set[str], triggers: dict[str, str]) -> None:
    """``CREATE TRIGGER name body`` for each of ``triggers`` not in ``existing``."""
    for name, body in triggers.items():
        if name not in existing:
            db.execute_sql(f"CREATE TRIGGER {name} {body}")


def names(db: peewee.Database, query: str) -> set[str]:
    """The first column of every row ``query`` returns."""
    return {name for (name,) in db.execute_sql(query).fetchall()}


@functools.cache
def _distinct_walk(table: str, column: str) -> str:
    """A statement of every distinct value of ``column``, in order: a recursive walk of its index.

    Each step is one seek in an index that starts with ``column``.
    """
    return (
        f"WITH RECURSIVE walk (value) AS ("
        f" SELECT MIN({column}) FROM {table}"
        f" UNION ALL SELECT (SELECT j.{column} FROM {table} AS j WHERE j.{column} > walk.value"
        f" ORDER BY j.{column} LIMIT 1) FROM walk WHERE walk.value IS NOT NULL"
        f") SELECT value FROM walk WHERE value IS NOT NULL"
    )


def like(column: peewee.Node, operator: str, text: str) -> peewee.ColumnBase:
    """``column LIKE '%text%'`` with the text's own wildcards taken literally ('!' escapes)."""
    literal = text.replace("!", "!!").replace("%", "!%").replace("_", "!_")
    return peewee.NodeList((column, peewee.SQL(operator), f"%{literal}%", peewee.SQL("ESCAPE '!'")), parens=True)
