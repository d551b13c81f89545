"""MySQL and MariaDB: ``ON DUPLICATE KEY UPDATE``, row triggers, and index walks from the client."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import peewee

from .base import Assignments, DerivedTables, Dialect, create_missing, names

__all__ = ["MysqlDialect"]


class MysqlDialect(Dialect):
    """MySQL 8 and MariaDB 10.5 and later (InnoDB)."""

    name = "mysql"

    @contextlib.contextmanager
    def schema_lock(self, db: peewee.Database) -> Iterator[None]:
        db.execute_sql("SELECT GET_LOCK('watchtower_schema', 60)")
        try:
            yield
        finally:
            db.execute_sql("SELECT RELEASE_LOCK('watchtower_schema')")

    def on_conflict(self, table: str, key: Sequence[str], assignments: Assignments) -> str:
        """``ON DUPLICATE KEY UPDATE`` (on any unique key: ``key`` is the only one the tables upserted have).

        MySQL evaluates the assignments left to right, each seeing the
        columns already assigned: ``assignments`` must be written for that.
        """
        def old(column: str) -> str:
            return column

        def new(column: str) -> str:
            return f"VALUES({column})"

        return " ON DUPLICATE KEY UPDATE " + ", ".join(assignments(old, new))

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
        # PyMySQL folds a single-row INSERT run by executemany into
        # multi-row INSERTs itself.
        placeholders = ", ".join([db.param] * len(columns))
        sql = (
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders})"
            + self.on_conflict(table, key, assignments)
        )
        # Through Peewee's wrapper, so that driver errors arrive as Peewee's
        # (the ledger's deadlock retry and the recorder's handling of refused
        # values look for those).
        with peewee.__exception_wrapper__:  # type: ignore[attr-defined]
            db.cursor().executemany(sql, rows)

    def upsert_query(
        self, query: peewee.Insert, key: list[peewee.Field], preserve: list[peewee.Field]
    ) -> peewee.Insert:
        # Peewee refuses a conflict target on MySQL: any unique key conflicts.
        return query.on_conflict(preserve=preserve)

    def insert_ignore(self, table: str, columns: str, values: str, *, key: str) -> str:
        return f"INSERT IGNORE INTO {table} ({columns}) VALUES ({values})"

    def int_divide(self, dividend: str, divisor: str) -> str:
        return f"{dividend} DIV {divisor}"

    def drop_index(self, table: str, name: str) -> str:
        return f"DROP INDEX IF EXISTS {name} ON {table}"

    def distinct_values(self, db: peewee.Database, table: str, column: str) -> list[Any]:
        # MariaDB runs the recursive walk as a scan per step: walk from here,
        # one query a value.
        sql = f"SELECT {column} FROM {table} WHERE {column} > {db.param} ORDER BY {column} LIMIT 1"
        values: list[Any] = []
        row = db.execute_sql(f"SELECT MIN({column}) FROM {table}").fetchone()
        while row is not None and row[0] is not None:
            values.append(row[0])
            row = db.execute_sql(sql, (row[0],)).fetchone()
        return values

    def in_distinct(self, db: peewee.Database, field: peewee.Field, table: str) -> peewee.ColumnBase | None:
        values = self.distinct_values(db, table, field.column_name)
        return field.in_(values) if values else None

    def create_triggers(self, db: peewee.Database, tables: DerivedTables) -> None:
        # Each session counts into its own shard, its connection id.
        jobs, counts, rollups, hourly = tables.jobs, tables.counts, tables.rollups, tables.hourly

        def count(row: str, delta: int) -> str:
            return (
                f"INSERT INTO {counts} (shard, queue, status, count) "
                f"VALUES (CONNECTION_ID(), {row}.queue, {row}.status, {delta}) "
                "ON DUPLICATE KEY UPDATE count = count + VALUES(count)"
            )

        def hour(row: str, sign: str) -> str:
            return (
                f"INSERT INTO {hourly} (hour, queue, actor, kind, count, duration_sum) "
                f"VALUES ({row}.minute DIV 60, {row}.queue, {row}.actor, {row}.kind, {sign}{row}.count, "
                f"{sign}{row}.duration_sum) "
                "ON DUPLICATE KEY UPDATE count = count + VALUES(count), "
                "duration_sum = duration_sum + VALUES(duration_sum)"
            )

        jobs_changed = "NOT (NEW.status <=> OLD.status) OR NOT (NEW.queue <=> OLD.queue)"
        existing = names(db, "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE()")
        create_missing(db, existing, {
            f"{jobs}_count_insert": f"AFTER INSERT ON {jobs} FOR EACH ROW {count('NEW', 1)}",
            f"{jobs}_count_update": (
                f"AFTER UPDATE ON {jobs} FOR EACH ROW BEGIN IF {jobs_changed} THEN "
                f"{count('OLD', -1)}; {count('NEW', 1)}; END IF; END"
            ),
            f"{jobs}_count_delete": f"AFTER DELETE ON {jobs} FOR EACH ROW {count('OLD', -1)}",
            f"{rollups}_hourly_insert": f"AFTER INSERT ON {rollups} FOR EACH ROW {hour('NEW', '')}",
            f"{rollups}_hourly_update": (
                f"AFTER UPDATE ON {rollups} FOR EACH ROW BEGIN {hour('OLD', '-')}; {hour('NEW', '')}; END"
            ),
            f"{rollups}_hourly_delete": f"AFTER DELETE ON {rollups} FOR EACH ROW {hour('OLD', '-')}",
        })

    def compact_counts(self, db: peewee.Database, counts: str) -> None:
        # A shard is a session's connection id; one statement at a time (no
        # DELETE ... RETURNING on MySQL), under the rows' locks.
        with db.atomic():
            rows: list[Any] = db.execute_sql(
                f"SELECT shard, queue, status, count FROM {counts} WHERE shard <> 0 AND shard NOT IN "
                "(SELECT ID FROM information_schema.PROCESSLIST) FOR UPDATE"
            ).fetchall()
            totals: dict[tuple[str, str], int] = {}
            for shard, queue, status, count in rows:
                db.execute_sql(
                    f"DELETE FROM {counts} WHERE shard = %s AND queue = %s AND status = %s", (shard, queue, status)
                )
                totals[(queue, status)] = totals.get((queue, status), 0) + int(count)
            for (queue, status), count in sorted(totals.items()):
                db.execute_sql(
                    f"INSERT INTO {counts} (shard, queue, status, count) VALUES (0, %s, %s, %s) "
                    "ON DUPLICATE KEY UPDATE count = count + VALUES(count)", (queue, status, count)
                )
