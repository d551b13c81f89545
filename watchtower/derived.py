"""Tables the database keeps from other tables by triggers: job counts and hourly rollups.

Dashboards need answers whose cost does not grow with the ledger, so two
small tables are kept up to date by the database itself, whoever writes the
source rows (the recorder's upserts, ``mark_lost``, the API, prune):

- ``watchtower_job_counts``: how many jobs each queue has in each status,
  from ``watchtower_jobs`` (insert, update, delete).  ``SELECT status,
  COUNT(*)`` over a million rows takes far longer than the stats' budget;
- ``watchtower_rollups_hourly``: the per-minute rollups added up per clock
  hour, from ``watchtower_rollups``.  A day of minute rollups is 1,440 rows
  per (queue, actor, kind), a day of hourly ones 24.

A single counter row per status would be a hot spot: every recorder batch
of every process would update it and hold its lock until commit, and two
batches touching two statuses in opposite orders would deadlock.  So each
database session counts jobs into rows of its own (``shard`` = the
session's backend pid on PostgreSQL, its connection id on MySQL; SQLite has
one writer at a time and uses shard 0) and readers add the shards up.
:func:`compact` folds the shards of sessions that have ended into shard 0.
The hourly rows are as shared as the minute rows they come from, and are
updated in the same (sorted) order.

PostgreSQL runs each trigger once per statement (transition tables), the
others once per row.  The triggers are made with the schema; a table that
is new next to existing source rows is filled once from them.
"""

from __future__ import annotations

import logging
from typing import Any

import peewee

from .models import HourlyRollup, Job, JobCount, Rollup

__all__ = ["install", "read_counts", "compact", "recount", "COMPACT_ROWS"]

logger = logging.getLogger(__name__)

JOBS = Job._meta.table_name
COUNTS = JobCount._meta.table_name
ROLLUPS = Rollup._meta.table_name
HOURLY = HourlyRollup._meta.table_name

#: Readers compact when the counts table holds more rows than this.
COMPACT_ROWS = 500

# What each trigger adds, per dialect.  ``{shard}``: this session's shard.
# Job counts: +1 for the new (queue, status), -1 for the old one.
_COUNT_UPSERT = {
    "sqlite": (
        f"INSERT INTO {COUNTS} (shard, queue, status, count) VALUES (0, {{queue}}, {{status}}, {{delta}}) "
        "ON CONFLICT (shard, queue, status) DO UPDATE SET count = count + excluded.count"
    ),
    "mysql": (
        f"INSERT INTO {COUNTS} (shard, queue, status, count) VALUES (CONNECTION_ID(), {{queue}}, {{status}}, {{delta}}) "
        "ON DUPLICATE KEY UPDATE count = count + VALUES(count)"
    ),
}
# Hourly rollups: the minute row's values added to (or taken from) its hour.
_HOURLY_UPSERT = {
    "sqlite": (
        f"INSERT INTO {HOURLY} (hour, queue, actor, kind, count, duration_sum) "
        "VALUES ({row}.minute / 60, {row}.queue, {row}.actor, {row}.kind, {sign}{row}.count, {sign}{row}.duration_sum) "
        "ON CONFLICT (hour, queue, actor, kind) DO UPDATE SET "
        "count = count + excluded.count, duration_sum = duration_sum + excluded.duration_sum"
    ),
    "mysql": (
        f"INSERT INTO {HOURLY} (hour, queue, actor, kind, count, duration_sum) "
        "VALUES ({row}.minute DIV 60, {row}.queue, {row}.actor, {row}.kind, {sign}{row}.count, {sign}{row}.duration_sum) "
        "ON DUPLICATE KEY UPDATE count = count + VALUES(count), duration_sum = duration_sum + VALUES(duration_sum)"
    ),
}


def _row_triggers(kind: str) -> dict[str, str]:
    """SQLite and MySQL: one trigger per table and operation, run for each row."""
    def count(row: str, delta: int) -> str:
        return _COUNT_UPSERT[kind].format(queue=f"{row}.queue", status=f"{row}.status", delta=delta)

    def hourly(row: str, sign: str) -> str:
        return _HOURLY_UPSERT[kind].format(row=row, sign=sign)

    if kind == "sqlite":
        jobs_changed = "NEW.status IS NOT OLD.status OR NEW.queue IS NOT OLD.queue"
        return {
            f"{JOBS}_count_insert": f"AFTER INSERT ON {JOBS} BEGIN {count('NEW', 1)}; END",
            f"{JOBS}_count_update": (
                f"AFTER UPDATE OF queue, status ON {JOBS} WHEN {jobs_changed} "
                f"BEGIN {count('OLD', -1)}; {count('NEW', 1)}; END"
            ),
            f"{JOBS}_count_delete": f"AFTER DELETE ON {JOBS} BEGIN {count('OLD', -1)}; END",
            f"{ROLLUPS}_hourly_insert": f"AFTER INSERT ON {ROLLUPS} BEGIN {hourly('NEW', '')}; END",
            f"{ROLLUPS}_hourly_update": (
                f"AFTER UPDATE ON {ROLLUPS} BEGIN {hourly('OLD', '-')}; {hourly('NEW', '')}; END"
            ),
            f"{ROLLUPS}_hourly_delete": f"AFTER DELETE ON {ROLLUPS} BEGIN {hourly('OLD', '-')}; END",
        }
    jobs_changed = "NOT (NEW.status <=> OLD.status) OR NOT (NEW.queue <=> OLD.queue)"
    return {
        f"{JOBS}_count_insert": f"AFTER INSERT ON {JOBS} FOR EACH ROW {count('NEW', 1)}",
        f"{JOBS}_count_update": (
            f"AFTER UPDATE ON {JOBS} FOR EACH ROW BEGIN IF {jobs_changed} THEN "
            f"{count('OLD', -1)}; {count('NEW', 1)}; END IF; END"
        ),
        f"{JOBS}_count_delete": f"AFTER DELETE ON {JOBS} FOR EACH ROW {count('OLD', -1)}",
        f"{ROLLUPS}_hourly_insert": f"AFTER INSERT ON {ROLLUPS} FOR EACH ROW {hourly('NEW', '')}",
        f"{ROLLUPS}_hourly_update": (
            f"AFTER UPDATE ON {ROLLUPS} FOR EACH ROW BEGIN {hourly('OLD', '-')}; {hourly('NEW', '')}; END"
        ),
        f"{ROLLUPS}_hourly_delete": f"AFTER DELETE ON {ROLLUPS} FOR EACH ROW {hourly('OLD', '-')}",
    }


# PostgreSQL: one trigger per statement, reading the transition tables.
_PG_REFERENCING = {
    "insert": "REFERENCING NEW TABLE AS new_rows",
    "update": "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows",
    "delete": "REFERENCING OLD TABLE AS old_rows",
}


def _pg_changes(columns: str, signed: str, operation: str) -> str:
    """The rows of a statement's net change: new rows added, old rows taken away."""
    parts = []
    if operation in ("insert", "update"):
        parts.append(f"SELECT {columns}, {signed.format(sign='')} FROM new_rows")
    if operation in ("update", "delete"):
        parts.append(f"SELECT {columns}, {signed.format(sign='-')} FROM old_rows")
    return " UNION ALL ".join(parts)


def _pg_bodies() -> dict[tuple[str, str], str]:
    bodies = {}
    for operation in _PG_REFERENCING:
        changes = _pg_changes("queue, status", "{sign}1 AS delta", operation)
        bodies[(JOBS, f"{JOBS}_count_{operation}")] = (
            f"INSERT INTO {COUNTS} AS c (shard, queue, status, count) "
            f"SELECT pg_backend_pid(), queue, status, SUM(delta) FROM ({changes}) AS d "
            "GROUP BY queue, status HAVING SUM(delta) <> 0 ORDER BY queue, status "
            "ON CONFLICT (shard, queue, status) DO UPDATE SET count = c.count + excluded.count"
        )
        changes = _pg_changes(
            "minute / 60 AS hour, queue, actor, kind", "{sign}count AS count, {sign}duration_sum AS duration_sum",
            operation,
        )
        # Sorted, as the minute rows were: concurrent batches lock hours in one order.
        bodies[(ROLLUPS, f"{ROLLUPS}_hourly_{operation}")] = (
            f"INSERT INTO {HOURLY} AS h (hour, queue, actor, kind, count, duration_sum) "
            f"SELECT hour, queue, actor, kind, SUM(count), SUM(duration_sum) FROM ({changes}) AS d "
            "GROUP BY hour, queue, actor, kind HAVING SUM(count) <> 0 OR SUM(duration_sum) <> 0 "
            "ORDER BY hour, queue, actor, kind "
            "ON CONFLICT (hour, queue, actor, kind) DO UPDATE SET "
            "count = h.count + excluded.count, duration_sum = h.duration_sum + excluded.duration_sum"
        )
    return bodies


def install(db: peewee.Database, kind: str, *, existed: dict[str, bool]) -> None:
    """Create the missing triggers (under the schema lock), then fill new tables.

    ``existed`` tells, per derived table name, whether it existed before
    this schema creation; a new one is filled from its source rows once.
    """
    if kind == "postgresql":
        existing = _existing(db, "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")
        with db.atomic():
            for (table, name), body in _pg_bodies().items():
                if name in existing:
                    continue
                operation = name.rsplit("_", 1)[1]
                db.execute_sql(
                    f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                    f"{body}; RETURN NULL; END $$"
                )
                db.execute_sql(
                    f"CREATE TRIGGER {name} AFTER {operation.upper()} ON {table} {_PG_REFERENCING[operation]} "
                    f"FOR EACH STATEMENT EXECUTE FUNCTION {name}()"
                )
    else:
        if kind == "sqlite":
            existing = _existing(db, "SELECT name FROM sqlite_master WHERE type = 'trigger'")
        else:
            existing = _existing(
                db, "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE()"
            )
        for name, body in _row_triggers(kind).items():
            if name not in existing:
                db.execute_sql(f"CREATE TRIGGER {name} {body}")
    if not existed.get(COUNTS, True):
        recount(db)
    if not existed.get(HOURLY, True):
        with db.atomic():
            db.execute_sql(f"DELETE FROM {HOURLY}")
            db.execute_sql(
                f"INSERT INTO {HOURLY} (hour, queue, actor, kind, count, duration_sum) "
                f"SELECT minute {'DIV' if kind == 'mysql' else '/'} 60, queue, actor, kind, SUM(count), "
                f"SUM(duration_sum) FROM {ROLLUPS} GROUP BY 1, 2, 3, 4"
            )


def _existing(db: peewee.Database, query: str) -> set[str]:
    return {name for (name,) in db.execute_sql(query).fetchall()}


def recount(db: peewee.Database) -> None:
    """Count the job table afresh into shard 0 (a full scan: first use, or a repair)."""
    with db.atomic():
        db.execute_sql(f"DELETE FROM {COUNTS}")
        db.execute_sql(
            f"INSERT INTO {COUNTS} (shard, queue, status, count) "
            f"SELECT 0, queue, status, COUNT(*) FROM {JOBS} GROUP BY queue, status"
        )


def read_counts(db: peewee.Database) -> tuple[dict[tuple[str, str], int], int]:
    """``{(queue, status): count}`` of the jobs now, and how many rows the counts table has."""
    cursor = db.execute_sql(f"SELECT queue, status, SUM(count), COUNT(*) FROM {COUNTS} GROUP BY queue, status")
    counts: dict[tuple[str, str], int] = {}
    rows = 0
    for queue, status, total, shards in cursor.fetchall():
        rows += int(shards)
        if total:
            counts[(queue, status)] = int(total)
    return counts, rows


def compact(db: peewee.Database, kind: str) -> None:
    """Fold the count shards of database sessions that have ended into shard 0."""
    if kind == "postgresql":
        db.execute_sql(
            f"WITH gone AS (DELETE FROM {COUNTS} WHERE shard <> 0 AND shard NOT IN "
            "(SELECT pid FROM pg_stat_activity WHERE pid IS NOT NULL) RETURNING queue, status, count) "
            f"INSERT INTO {COUNTS} AS c (shard, queue, status, count) "
            "SELECT 0, queue, status, SUM(count) FROM gone GROUP BY queue, status "
            "ON CONFLICT (shard, queue, status) DO UPDATE SET count = c.count + excluded.count"
        )
    elif kind == "mysql":
        with db.atomic():
            rows: list[Any] = db.execute_sql(
                f"SELECT shard, queue, status, count FROM {COUNTS} WHERE shard <> 0 AND shard NOT IN "
                "(SELECT ID FROM information_schema.PROCESSLIST) FOR UPDATE"
            ).fetchall()
            totals: dict[tuple[str, str], int] = {}
            for shard, queue, status, count in rows:
                db.execute_sql(
                    f"DELETE FROM {COUNTS} WHERE shard = %s AND queue = %s AND status = %s", (shard, queue, status)
                )
                totals[(queue, status)] = totals.get((queue, status), 0) + int(count)
            for (queue, status), count in sorted(totals.items()):
                db.execute_sql(
                    f"INSERT INTO {COUNTS} (shard, queue, status, count) VALUES (0, %s, %s, %s) "
                    "ON DUPLICATE KEY UPDATE count = count + VALUES(count)", (queue, status, count)
                )
    # SQLite has one shard; everywhere, empty rows of shard 0 can go.
    db.execute_sql(f"DELETE FROM {COUNTS} WHERE count = 0 AND shard = 0")
