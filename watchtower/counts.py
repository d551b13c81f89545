"""Exact job counts per queue and status, kept by the database itself.

``SELECT status, COUNT(*) FROM watchtower_jobs GROUP BY status`` reads the
whole table: at a million rows it takes far longer than the stats' 50 ms
budget.  So triggers on ``watchtower_jobs`` keep ``watchtower_job_counts``
up to date on every insert, update and delete, whoever writes (the
recorder's upserts, ``mark_lost``, the API's retries, prune), and a read
adds up a few rows.

A single counter row per status would be a hot spot: every recorder batch
of every process would update it and hold its lock until commit, and two
batches touching two statuses in opposite orders would deadlock.  So each
database session counts into rows of its own (``shard`` = the session's
backend pid on PostgreSQL, its connection id on MySQL; SQLite has a single
writer and uses shard 0) and readers add the shards up.  :func:`compact`
folds the rows of sessions that have ended into shard 0, in one statement
(PostgreSQL) or one transaction (MySQL), so the table stays small.

PostgreSQL counts once per statement (transition tables), the others once
per row.  The triggers are created with the schema; a database whose job
table predates the counts table is counted once, then kept by triggers.
"""

from __future__ import annotations

import logging
from typing import Any

import peewee

from .models import Job, JobCount

__all__ = ["install", "read", "compact", "recount", "COMPACT_ROWS"]

logger = logging.getLogger(__name__)

JOBS = Job._meta.table_name
COUNTS = JobCount._meta.table_name

#: Readers compact when the counts table holds more rows than this.
COMPACT_ROWS = 500

_SQLITE = [
    f"""CREATE TRIGGER IF NOT EXISTS {JOBS}_count_insert AFTER INSERT ON {JOBS} BEGIN
        INSERT INTO {COUNTS} (shard, queue, status, count) VALUES (0, NEW.queue, NEW.status, 1)
        ON CONFLICT (shard, queue, status) DO UPDATE SET count = count + 1;
    END""",
    f"""CREATE TRIGGER IF NOT EXISTS {JOBS}_count_update AFTER UPDATE OF queue, status ON {JOBS}
    WHEN NEW.status IS NOT OLD.status OR NEW.queue IS NOT OLD.queue BEGIN
        INSERT INTO {COUNTS} (shard, queue, status, count) VALUES (0, OLD.queue, OLD.status, -1)
        ON CONFLICT (shard, queue, status) DO UPDATE SET count = count - 1;
        INSERT INTO {COUNTS} (shard, queue, status, count) VALUES (0, NEW.queue, NEW.status, 1)
        ON CONFLICT (shard, queue, status) DO UPDATE SET count = count + 1;
    END""",
    f"""CREATE TRIGGER IF NOT EXISTS {JOBS}_count_delete AFTER DELETE ON {JOBS} BEGIN
        INSERT INTO {COUNTS} (shard, queue, status, count) VALUES (0, OLD.queue, OLD.status, -1)
        ON CONFLICT (shard, queue, status) DO UPDATE SET count = count - 1;
    END""",
]

# One function per operation; each adds the statement's net change per
# (queue, status) to this session's shard.
_PG_ADD = (
    f"INSERT INTO {COUNTS} AS c (shard, queue, status, count) "
    "SELECT pg_backend_pid(), queue, status, SUM(delta) FROM ({rows}) AS d GROUP BY queue, status "
    "HAVING SUM(delta) <> 0 "
    "ON CONFLICT (shard, queue, status) DO UPDATE SET count = c.count + excluded.count"
)
_PG_ROWS = {
    "insert": "SELECT queue, status, 1 AS delta FROM new_rows",
    "update": "SELECT queue, status, 1 AS delta FROM new_rows UNION ALL SELECT queue, status, -1 FROM old_rows",
    "delete": "SELECT queue, status, -1 AS delta FROM old_rows",
}
_PG_REFERENCING = {
    "insert": "REFERENCING NEW TABLE AS new_rows",
    "update": "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows",
    "delete": "REFERENCING OLD TABLE AS old_rows",
}


def _pg_statements(existing: set[str]) -> list[str]:
    statements = []
    for operation, rows in _PG_ROWS.items():
        name = f"{JOBS}_count_{operation}"
        if name in existing:
            continue
        statements.append(
            f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            + _PG_ADD.format(rows=rows) + "; RETURN NULL; END $$"
        )
        statements.append(
            f"CREATE TRIGGER {name} AFTER {operation.upper()} ON {JOBS} {_PG_REFERENCING[operation]} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {name}()"
        )
    return statements


def _mysql_add(queue: str, status: str, delta: int) -> str:
    return (
        f"INSERT INTO {COUNTS} (shard, queue, status, count) VALUES (CONNECTION_ID(), {queue}, {status}, {delta}) "
        f"ON DUPLICATE KEY UPDATE count = count + ({delta})"
    )


_MYSQL = {
    f"{JOBS}_count_insert": f"AFTER INSERT ON {JOBS} FOR EACH ROW " + _mysql_add("NEW.queue", "NEW.status", 1),
    f"{JOBS}_count_update": (
        f"AFTER UPDATE ON {JOBS} FOR EACH ROW BEGIN "
        "IF NOT (NEW.status <=> OLD.status) OR NOT (NEW.queue <=> OLD.queue) THEN "
        + _mysql_add("OLD.queue", "OLD.status", -1) + "; "
        + _mysql_add("NEW.queue", "NEW.status", 1) + "; "
        "END IF; END"
    ),
    f"{JOBS}_count_delete": f"AFTER DELETE ON {JOBS} FOR EACH ROW " + _mysql_add("OLD.queue", "OLD.status", -1),
}


def install(db: peewee.Database, kind: str, *, counts_existed: bool) -> None:
    """Create the counting triggers that are missing (under the schema lock).

    When the counts table is new but jobs already exist (a ledger made
    before the table was), count them once.
    """
    if kind == "sqlite":
        for statement in _SQLITE:
            db.execute_sql(statement)
    elif kind == "postgresql":
        cursor = db.execute_sql(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal", (JOBS,)
        )
        existing = {name for (name,) in cursor.fetchall()}
        with db.atomic():
            for statement in _pg_statements(existing):
                db.execute_sql(statement)
    else:
        cursor = db.execute_sql(
            "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS "
            "WHERE EVENT_OBJECT_SCHEMA = DATABASE() AND EVENT_OBJECT_TABLE = %s", (JOBS,)
        )
        existing = {name for (name,) in cursor.fetchall()}
        for name, body in _MYSQL.items():
            if name not in existing:
                db.execute_sql(f"CREATE TRIGGER {name} {body}")
    if not counts_existed:
        recount(db)


def recount(db: peewee.Database) -> None:
    """Count the job table afresh into shard 0 (a full scan: repair, or first use)."""
    with db.atomic():
        db.execute_sql(f"DELETE FROM {COUNTS}")
        db.execute_sql(
            f"INSERT INTO {COUNTS} (shard, queue, status, count) "
            f"SELECT 0, queue, status, COUNT(*) FROM {JOBS} GROUP BY queue, status"
        )


def read(db: peewee.Database) -> tuple[dict[tuple[str, str], int], int]:
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
    """Fold the shards of database sessions that have ended into shard 0."""
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
            for (queue, status), count in totals.items():
                db.execute_sql(
                    f"INSERT INTO {COUNTS} (shard, queue, status, count) VALUES (0, %s, %s, %s) "
                    "ON DUPLICATE KEY UPDATE count = count + VALUES(count)", (queue, status, count)
                )
    # SQLite: one writer, one shard; nothing to fold.
    db.execute_sql(f"DELETE FROM {COUNTS} WHERE count = 0 AND shard = 0")
