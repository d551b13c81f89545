"""SQLite: one writer at a time for the whole file, and a file that keeps the pages deletes free."""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator, Sequence
from typing import Any

import peewee

from .base import Assignments, DerivedTables, Dialect, create_missing, names

__all__ = ["SqliteDialect", "SQLITE_BUSY_TIMEOUT", "SQLITE_LOCK_POLL", "CACHE_KIB"]

#: How long a writer waits for the lock before giving up, in seconds.
#: Long, because the recorder's writes are short and off the jobs' threads.
SQLITE_BUSY_TIMEOUT = 30.0

#: Seconds between two asks for the write lock while another connection holds it.
SQLITE_LOCK_POLL = 0.005

#: The pruning connection's page cache, in KiB, while it prunes.
CACHE_KIB = 65_536

# Rows per upsert statement: 17 columns each, well under its 32766 parameters.
_CHUNK = 500


class SqliteDialect(Dialect):
    """SQLite 3.24 and later (``ON CONFLICT`` upserts), in WAL mode."""

    name = "sqlite"
    # The whole database is locked for a batch: short batches, and a pause
    # that lets waiting writers in: shorter batches cut how long a
    # recorder's write waits behind a prune at about the same total time
    # (benchmarks/RESULTS.md, third pass).  SQLite's busy handler retries a
    # waiting writer at most 50 ms apart during its first 0.2 s of waiting.
    prune_tuning = (0.12, 0.05)
    keeps_free_pages = True

    def transaction(self, db: peewee.Database) -> Any:
        # BEGIN IMMEDIATE: the write lock at the start, not at the first
        # write, so that two writers never deadlock upgrading a read lock.
        return db.atomic("IMMEDIATE")

    @contextlib.contextmanager
    def write_transaction(self, db: peewee.Database) -> Iterator[None]:
        """``BEGIN IMMEDIATE``, the lock asked for every SQLITE_LOCK_POLL seconds.

        SQLite's own busy handler sleeps longer and longer while it waits (100
        ms a try after the first 0.2 s), so a recorder waiting behind a prune,
        which hands the lock over for 50 ms between its batches, could sleep
        through several of those openings.  Asking every few milliseconds
        takes the first one.  Gives up after the usual busy timeout, as SQLite
        would.
        """
        with contextlib.ExitStack() as stack:
            stack.push(_begin_immediate(db))
            yield

    @contextlib.contextmanager
    def schema_lock(self, db: peewee.Database) -> Iterator[None]:
        with db.atomic("IMMEDIATE"):
            yield

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
        # Multi-row statements, so that one sqlite3_step (run without the
        # GIL) writes a whole chunk; row-by-row executemany hands the GIL
        # back and forth once per row and slows the jobs' threads.
        tail = self.on_conflict(table, key, assignments)
        placeholders = "(" + ", ".join([db.param] * len(columns)) + ")"
        head = f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
        for start in range(0, len(rows), _CHUNK):
            chunk = rows[start:start + _CHUNK]
            db.execute_sql(head + ", ".join([placeholders] * len(chunk)) + tail,
                           list(itertools.chain.from_iterable(chunk)))

    def insert_ignore(self, table: str, columns: str, values: str, *, key: str) -> str:
        return f"INSERT OR IGNORE INTO {table} ({columns}) VALUES ({values})"

    def create_triggers(self, db: peewee.Database, tables: DerivedTables) -> None:
        # One writer at a time: every session counts into shard 0.
        jobs, counts, rollups, hourly = tables.jobs, tables.counts, tables.rollups, tables.hourly

        def count(row: str, delta: int) -> str:
            return (
                f"INSERT INTO {counts} (shard, queue, status, count) VALUES (0, {row}.queue, {row}.status, {delta}) "
                "ON CONFLICT (shard, queue, status) DO UPDATE SET count = count + excluded.count"
            )

        def hour(row: str, sign: str) -> str:
            return (
                f"INSERT INTO {hourly} (hour, queue, actor, kind, count, duration_sum) "
                f"VALUES ({row}.minute / 60, {row}.queue, {row}.actor, {row}.kind, {sign}{row}.count, "
                f"{sign}{row}.duration_sum) "
                "ON CONFLICT (hour, queue, actor, kind) DO UPDATE SET "
                "count = count + excluded.count, duration_sum = duration_sum + excluded.duration_sum"
            )

        jobs_changed = "NEW.status IS NOT OLD.status OR NEW.queue IS NOT OLD.queue"
        create_missing(db, names(db, "SELECT name FROM sqlite_master WHERE type = 'trigger'"), {
            f"{jobs}_count_insert": f"AFTER INSERT ON {jobs} BEGIN {count('NEW', 1)}; END",
            f"{jobs}_count_update": (
                f"AFTER UPDATE OF queue, status ON {jobs} WHEN {jobs_changed} "
                f"BEGIN {count('OLD', -1)}; {count('NEW', 1)}; END"
            ),
            f"{jobs}_count_delete": f"AFTER DELETE ON {jobs} BEGIN {count('OLD', -1)}; END",
            f"{rollups}_hourly_insert": f"AFTER INSERT ON {rollups} BEGIN {hour('NEW', '')}; END",
            f"{rollups}_hourly_update": f"AFTER UPDATE ON {rollups} BEGIN {hour('OLD', '-')}; {hour('NEW', '')}; END",
            f"{rollups}_hourly_delete": f"AFTER DELETE ON {rollups} BEGIN {hour('OLD', '-')}; END",
        })

    @contextlib.contextmanager
    def pruning(self, db: peewee.Database) -> Iterator[None]:
        """A larger page cache, and no automatic checkpoint at commit, while a prune runs.

        The cache holds the many index pages a batch touches.  The pruner
        checkpoints between batches itself (:meth:`between_batches`), so a
        batch's timing is the time it held the write lock, and the checkpoint
        (which holds no write lock) counts towards the pause that lets other
        writers in.
        """
        cache = int(db.execute_sql("PRAGMA cache_size").fetchone()[0])
        checkpoint = int(db.execute_sql("PRAGMA wal_autocheckpoint").fetchone()[0])
        db.execute_sql(f"PRAGMA cache_size = -{CACHE_KIB}")
        db.execute_sql("PRAGMA wal_autocheckpoint = 0")
        try:
            yield
        finally:
            db.execute_sql(f"PRAGMA cache_size = {cache}")
            db.execute_sql(f"PRAGMA wal_autocheckpoint = {checkpoint}")
            db.execute_sql("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def between_batches(self, db: peewee.Database) -> None:
        """Copy the batch's pages from the WAL into the file now, outside the write lock."""
        db.execute_sql("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


def _begin_immediate(db: peewee.Database) -> Any:
    """An entered ``BEGIN IMMEDIATE`` transaction (see :meth:`SqliteDialect.write_transaction`)."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT
    db.execute_sql("PRAGMA busy_timeout = 1")
    try:
        while True:
            atomic = db.atomic("IMMEDIATE")
            try:
                atomic.__enter__()
                return atomic
            except peewee.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() >= deadline:
                    raise
            time.sleep(SQLITE_LOCK_POLL)
    finally:
        db.execute_sql(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT * 1000)}")
