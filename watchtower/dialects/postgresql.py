"""PostgreSQL: row locks, statement-level triggers, and arrays for bulk writes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import peewee

from .base import Assignments, DerivedTables, Dialect, driver, like, names

__all__ = ["PostgresqlDialect"]

# The advisory lock key that keeps schema creation to one session at a time.
_SCHEMA_LOCK = 727274

# One trigger per statement, reading its transition tables.
_REFERENCING = {
    "insert": "REFERENCING NEW TABLE AS new_rows",
    "update": "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows",
    "delete": "REFERENCING OLD TABLE AS old_rows",
}


class PostgresqlDialect(Dialect):
    """PostgreSQL 10 and later (transition tables)."""

    name = "postgresql"

    @contextlib.contextmanager
    def schema_lock(self, db: peewee.Database) -> Iterator[None]:
        db.execute_sql(f"SELECT pg_advisory_lock({_SCHEMA_LOCK})")
        try:
            yield
        finally:
            db.execute_sql(f"SELECT pg_advisory_unlock({_SCHEMA_LOCK})")

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
        # One array per column: the statement text stays the same whatever
        # the batch size, so the driver parses it once (a multi-row VALUES
        # list of thousands of placeholders cost more than the write itself).
        # psycopg 3's %b sends the arrays in binary: no per-element quoting
        # of the text.  psycopg2 has no %b: it writes each list as an
        # ARRAY[...] literal into the statement.
        placeholder = "%b" if driver(db) == "psycopg" else "%s"
        arrays = ", ".join(f"{placeholder}::{types.get(column, 'text')}[]" for column in columns)
        sql = (
            f"INSERT INTO {table} ({', '.join(columns)}) SELECT * FROM unnest({arrays})"
            + self.on_conflict(table, key, assignments)
        )
        db.execute_sql(sql, [list(column) for column in zip(*rows, strict=True)])

    def contains_ascii_folded(self, column: peewee.ColumnBase, text: str) -> peewee.ColumnBase:
        # ILIKE under the "C" collation folds ASCII letters alone, at a
        # fraction of the cost of the database's own collation, whose ILIKE
        # lowercases each value through the locale before matching
        # (benchmarks/RESULTS.md, fourth pass, has the numbers).
        return like(peewee.NodeList((column, peewee.SQL('COLLATE "C"'))), "ILIKE", text)

    def contains_folded(
        self, db: peewee.Database, table: str, column: peewee.Field, text: str
    ) -> peewee.ColumnBase | None:
        # Values may be any Unicode: rather than lowercase every row's value
        # through the locale, pick the matching ones among the few distinct
        # values, folded as Python folds them.
        needle = text.casefold()
        matching = [value for value in self.distinct_values(db, table, column.column_name)
                    if needle in value.casefold()]
        return column.in_(matching) if matching else None

    def create_triggers(self, db: peewee.Database, tables: DerivedTables) -> None:
        existing = names(db, "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")
        with db.atomic():
            for (table, name), body in _trigger_bodies(tables).items():
                if name in existing:
                    continue
                operation = name.rsplit("_", 1)[1]
                db.execute_sql(
                    f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                    f"{body}; RETURN NULL; END $$"
                )
                db.execute_sql(
                    f"CREATE TRIGGER {name} AFTER {operation.upper()} ON {table} {_REFERENCING[operation]} "
                    f"FOR EACH STATEMENT EXECUTE FUNCTION {name}()"
                )

    def compact_counts(self, db: peewee.Database, counts: str) -> None:
        # A shard is a session's backend pid.
        db.execute_sql(
            f"WITH gone AS (DELETE FROM {counts} WHERE shard <> 0 AND shard NOT IN "
            "(SELECT pid FROM pg_stat_activity WHERE pid IS NOT NULL) RETURNING queue, status, count) "
            f"INSERT INTO {counts} AS c (shard, queue, status, count) "
            "SELECT 0, queue, status, SUM(count) FROM gone GROUP BY queue, status "
            "ON CONFLICT (shard, queue, status) DO UPDATE SET count = c.count + excluded.count"
        )


def _changes(columns: str, signed: str, operation: str) -> str:
    """The rows of a statement's net change: new rows added, old rows taken away."""
    parts = []
    if operation in ("insert", "update"):
        parts.append(f"SELECT {columns}, {signed.format(sign='')} FROM new_rows")
    if operation in ("update", "delete"):
        parts.append(f"SELECT {columns}, {signed.format(sign='-')} FROM old_rows")
    return " UNION ALL ".join(parts)


def _trigger_bodies(tables: DerivedTables) -> dict[tuple[str, str], str]:
    """``{(table, trigger name): the body of its function}``; each session counts into its own shard."""
    jobs, counts, rollups, hourly = tables.jobs, tables.counts, tables.rollups, tables.hourly
    bodies = {}
    for operation in _REFERENCING:
        changes = _changes("queue, status", "{sign}1 AS delta", operation)
        bodies[(jobs, f"{jobs}_count_{operation}")] = (
            f"INSERT INTO {counts} AS c (shard, queue, status, count) "
            f"SELECT pg_backend_pid(), queue, status, SUM(delta) FROM ({changes}) AS d "
            "GROUP BY queue, status HAVING SUM(delta) <> 0 ORDER BY queue, status "
            "ON CONFLICT (shard, queue, status) DO UPDATE SET count = c.count + excluded.count"
        )
        changes = _changes(
            "minute / 60 AS hour, queue, actor, kind", "{sign}count AS count, {sign}duration_sum AS duration_sum",
            operation,
        )
        # Sorted, as the minute rows were: concurrent batches lock hours in one order.
        bodies[(rollups, f"{rollups}_hourly_{operation}")] = (
            f"INSERT INTO {hourly} AS h (hour, queue, actor, kind, count, duration_sum) "
            f"SELECT hour, queue, actor, kind, SUM(count), SUM(duration_sum) FROM ({changes}) AS d "
            "GROUP BY hour, queue, actor, kind HAVING SUM(count) <> 0 OR SUM(duration_sum) <> 0 "
            "ORDER BY hour, queue, actor, kind "
            "ON CONFLICT (hour, queue, actor, kind) DO UPDATE SET "
            "count = h.count + excluded.count, duration_sum = h.duration_sum + excluded.duration_sum"
        )
    return bodies
