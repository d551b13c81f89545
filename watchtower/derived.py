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
others once per row; each database's triggers are written in its dialect
(:mod:`watchtower.dialects`).  The triggers are made with the schema; a
table that is new next to existing source rows is filled once from them.
"""

from __future__ import annotations

import logging

import peewee

from .dialects import DerivedTables, dialect_of
from .models import HourlyRollup, Job, JobCount, Rollup

__all__ = ["install", "read_counts", "compact", "recount", "COMPACT_ROWS", "TABLES"]

logger = logging.getLogger(__name__)

JOBS = Job._meta.table_name
COUNTS = JobCount._meta.table_name
ROLLUPS = Rollup._meta.table_name
HOURLY = HourlyRollup._meta.table_name

#: Readers compact when the counts table holds more rows than this.
COMPACT_ROWS = 500

#: The tables the triggers read and write.
TABLES = DerivedTables(jobs=JOBS, counts=COUNTS, rollups=ROLLUPS, hourly=HOURLY)


def install(db: peewee.Database, *, existed: dict[str, bool]) -> None:
    """Create the missing triggers (under the schema lock), then fill new tables.

    ``existed`` tells, per derived table name, whether it existed before
    this schema creation; a new one is filled from its source rows once.
    """
    dialect = dialect_of(db)
    dialect.create_triggers(db, TABLES)
    if not existed.get(COUNTS, True):
        recount(db)
    if not existed.get(HOURLY, True):
        with db.atomic():
            db.execute_sql(f"DELETE FROM {HOURLY}")
            db.execute_sql(
                f"INSERT INTO {HOURLY} (hour, queue, actor, kind, count, duration_sum) "
                f"SELECT {dialect.int_divide('minute', '60')}, queue, actor, kind, SUM(count), "
                f"SUM(duration_sum) FROM {ROLLUPS} GROUP BY 1, 2, 3, 4"
            )


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


def compact(db: peewee.Database) -> None:
    """Fold the count shards of database sessions that have ended into shard 0."""
    dialect_of(db).compact_counts(db, COUNTS)
    # Everywhere, empty rows of shard 0 can go.
    db.execute_sql(f"DELETE FROM {COUNTS} WHERE count = 0 AND shard = 0")
