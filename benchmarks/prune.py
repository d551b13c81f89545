"""Pruning a million rows while a recorder keeps writing.

    python3 benchmarks/prune.py [--rows 1000000] [--keep 50000] [--rate 500] [--rounds 3]
                                [--databases sqlite,postgresql[,mysql]]

For each database a ledger is filled once (outside the measurement) with
``--rows`` finished jobs past their retention (completed, failed and skipped
mixed, spread over four weeks) and ``--keep`` rows that must stay (recent,
pending, processing); each round prunes a fresh copy of it (a file copy on
SQLite, ``CREATE DATABASE ... TEMPLATE`` on PostgreSQL, a table copy on
MySQL).  In each round a real :class:`watchtower.Recorder` records
``--rate`` jobs a second (enqueued, started, completed: three events each)
and, once it is writing steadily, :func:`watchtower.retention.prune` runs with
the default retention and the default batch tuning.

Reported per database (median of the rounds, and the worst round): the
prune's time (including, on SQLite, handing the space back to the file
system), its batches and longest delete transaction, and the longest write
of the recorder while the prune ran (a write includes waiting for the
lock: the stall a live worker sees).  Each round checks that exactly the
expired rows went and that every recorded job landed.  The machine's load
average is printed too: on a shared machine it explains most of the spread.

Budget: a million rows in under 10 s, no recorder write over 0.5 s.

Results: benchmarks/RESULTS.md (part 3 and its notes).  PostgreSQL meets
both budgets (2-5 s).  SQLite misses the 10 s: on the second pass's machine
35-40 s with schema 1; schema 2 keys the job table by (queued_day,
message_id), so a prune's deletes stay together in that index (same
machine, alternated: 102-137 s with schema 1, 55-99 s with schema 2 on a
much slower machine).  benchmarks/prune_profile.py takes it apart.

Servers: PostgreSQL at WT_BENCH_POSTGRES (default
postgresql://postgres@127.0.0.1:5432/postgres) and MariaDB at WT_BENCH_MYSQL
(default mysql://root@127.0.0.1:3306/test); databases of the benchmark's own
are created and dropped.  SQLite in a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from harness import MYSQL_ADMIN, POSTGRES_ADMIN

DAY_MS = 86_400_000


def fill(db: Any, rows: int, keep: int) -> None:
    from tests.support.ledger_fill import insert_jobs, job_row
    from watchtower.clock import now_ms

    now = now_ms()
    oldest = now - 60 * DAY_MS  # to now - 32 days: past every default retention
    statuses = ["completed"] * 16 + ["failed"] * 3 + ["skipped"]

    def expired() -> Iterator[tuple[Any, ...]]:
        for i in range(rows):
            yield job_row(statuses[i % 20], oldest + 28 * DAY_MS * i // rows)

    def kept() -> Iterator[tuple[Any, ...]]:
        for i in range(keep):
            status = ("completed", "pending", "processing", "failed")[i % 4]
            yield job_row(status, now - DAY_MS + i if status in ("completed", "failed") else None)

    insert_jobs(db, expired())
    insert_jobs(db, kept())


def measure(kind: str, url: str, rows: int, keep: int, rate: int) -> dict[str, float]:
    """Prune the filled ledger at ``url`` while recording; returns the numbers."""
    from tests.support.ledger_fill import completed_job_events
    from watchtower import Recorder, store
    from watchtower.retention import Retention, prune

    db = store.connect(url)
    writes: list[tuple[float, float]] = []  # (end time, seconds)
    recorder = Recorder(url, flush_interval=0.25, on_write=lambda batch, seconds: writes.append(
        (time.perf_counter(), seconds)))
    stop = threading.Event()
    produced = [0]

    def produce() -> None:
        next_at = time.perf_counter()
        while not stop.is_set():
            for event in completed_job_events(uuid.uuid4().hex):
                recorder.record(event)
            produced[0] += 1
            next_at += 1.0 / rate
            delay = next_at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    try:
        while len(writes) < 4:  # the recorder is connected and writing
            time.sleep(0.05)
        load = os.getloadavg()[0]
        window_start = time.perf_counter()
        result = prune(db, Retention())
        window_end = time.perf_counter()
        time.sleep(0.5)
    finally:
        stop.set()
        producer.join()
        recorder.flush(60)
        recorder.close()
    during = [seconds for end, seconds in writes if end >= window_start and end - seconds <= window_end]
    remaining = db.execute_sql("SELECT COUNT(*) FROM watchtower_jobs WHERE queue = 'default'").fetchone()[0]
    landed = db.execute_sql("SELECT COUNT(*) FROM watchtower_jobs WHERE queue = 'live'").fetchone()[0]
    db.close()
    if result.jobs_total != rows or remaining != keep:
        raise SystemExit(f"{kind}: pruned {result.jobs_total} of {rows}, {remaining} of {keep} kept rows left")
    if landed != produced[0]:
        raise SystemExit(f"{kind}: {landed} of {produced[0]} recorded jobs landed in the ledger")
    return {
        "prune": result.seconds,
        "vacuum": result.vacuum_seconds,
        "way": result.vacuum or "-",
        "batches": result.batches,
        "longest_batch": result.longest_batch,
        "writes": len(during),
        "longest_write": max(during, default=0.0),
        "load": load,
    }


# Databases: a filled template, and fresh copies of it -----------------------


class Sqlite:
    def __init__(self, tmp: str) -> None:
        self.tmp = tmp
        self.template = f"{tmp}/template.db"
        self.rounds = 0

    def template_url(self) -> str:
        return f"sqlite:///{self.template}"

    def seal(self, db: Any) -> None:
        db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")

    def copy(self) -> tuple[str, Callable[[], None]]:
        self.rounds += 1
        path = f"{self.tmp}/round{self.rounds}.db"
        shutil.copyfile(self.template, path)
        return f"sqlite:///{path}", lambda: os.remove(path)

    def drop(self) -> None:
        pass


class Postgres:
    def __init__(self) -> None:
        from watchtower.store import check_database_url

        self.admin = check_database_url(POSTGRES_ADMIN)
        self.template = f"wtbench_{uuid.uuid4().hex[:10]}"
        self._sql(f'CREATE DATABASE "{self.template}"')

    def _sql(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(dbname=self.admin.database, autocommit=True, **self.admin.params) as conn:
            conn.execute(statement)

    def template_url(self) -> str:
        return POSTGRES_ADMIN.rsplit("/", 1)[0] + "/" + self.template

    def seal(self, db: Any) -> None:
        db.execute_sql("ANALYZE")

    def copy(self) -> tuple[str, Callable[[], None]]:
        name = f"{self.template}_{uuid.uuid4().hex[:6]}"
        self._sql(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        return POSTGRES_ADMIN.rsplit("/", 1)[0] + "/" + name, lambda: self._sql(f'DROP DATABASE "{name}" WITH (FORCE)')

    def drop(self) -> None:
        self._sql(f'DROP DATABASE IF EXISTS "{self.template}" WITH (FORCE)')


class Mysql:
    def __init__(self) -> None:
        from watchtower.store import check_database_url

        self.admin = check_database_url(MYSQL_ADMIN)
        self.template = f"wtbench_{uuid.uuid4().hex[:10]}"
        self._sql(f"CREATE DATABASE `{self.template}` CHARACTER SET utf8mb4")

    def _sql(self, *statements: str) -> None:
        import pymysql

        conn = pymysql.connect(database=self.admin.database, autocommit=True, **self.admin.params)
        try:
            with conn.cursor() as cursor:
                for statement in statements:
                    cursor.execute(statement)
        finally:
            conn.close()

    def template_url(self) -> str:
        return MYSQL_ADMIN.rsplit("/", 1)[0] + "/" + self.template

    def seal(self, db: Any) -> None:
        db.execute_sql("ANALYZE TABLE watchtower_jobs")

    def copy(self) -> tuple[str, Callable[[], None]]:
        from watchtower import store

        name = f"{self.template}_{uuid.uuid4().hex[:6]}"
        self._sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        url = MYSQL_ADMIN.rsplit("/", 1)[0] + "/" + name
        store.connect(url).close()  # the schema, with its triggers
        # Rows only: the job counts come along, the triggers stay quiet.
        self._sql(
            f"INSERT INTO `{name}`.watchtower_jobs SELECT * FROM `{self.template}`.watchtower_jobs",
            f"DELETE FROM `{name}`.watchtower_job_counts",
            f"INSERT INTO `{name}`.watchtower_job_counts SELECT * FROM `{self.template}`.watchtower_job_counts",
        )
        return url, lambda: self._sql(f"DROP DATABASE `{name}`")

    def drop(self) -> None:
        self._sql(f"DROP DATABASE IF EXISTS `{self.template}`")


def run(kind: str, rows: int, keep: int, rate: int, rounds: int) -> list[dict[str, float]]:
    from watchtower import store

    with tempfile.TemporaryDirectory(prefix="wtbench") as tmp:
        database = {"sqlite": lambda: Sqlite(tmp), "postgresql": Postgres, "mysql": Mysql}[kind]()
        try:
            db = store.connect(database.template_url())
            started = time.perf_counter()
            fill(db, rows, keep)
            database.seal(db)
            db.close()
            print(f"{kind}: filled in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
            results = []
            for _ in range(rounds):
                url, drop = database.copy()
                try:
                    results.append(measure(kind, url, rows, keep, rate))
                finally:
                    drop()
                print(f"{kind}: {results[-1]}", file=sys.stderr, flush=True)
            return results
        finally:
            database.drop()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="expired rows to prune")
    parser.add_argument("--keep", type=int, default=50_000, help="rows that must stay")
    parser.add_argument("--rate", type=int, default=500, help="jobs a second recorded meanwhile")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--databases", default="sqlite,postgresql", help="any of sqlite, postgresql, mysql")
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    results = {kind: run(kind, args.rows, args.keep, args.rate, args.rounds) for kind in args.databases.split(",")}

    print(f"\n{args.rows:,} expired rows pruned ({args.keep:,} kept) while recording {args.rate} jobs/s; "
          f"median of {args.rounds} rounds (worst round)\n")
    print("| database | prune (s) | of which vacuum (s) | vacuum | batches | longest batch (s) "
          "| longest recorder write (s) | recorder writes during prune | load average |")
    print("|---|---|---|---|---|---|---|---|---|")
    for kind, rounds in results.items():
        def cell(name: str, fmt: str, rounds: list[dict] = rounds) -> str:
            values = [r[name] for r in rounds]
            return f"{statistics.median(values):{fmt}} ({max(values):{fmt}})"

        loads = [r["load"] for r in rounds]
        ways = "/".join(sorted({r["way"] for r in rounds}))
        print(f"| {kind} | {cell('prune', '.2f')} | {cell('vacuum', '.2f')} | {ways} | {cell('batches', '.0f')} "
              f"| {cell('longest_batch', '.3f')} | {cell('longest_write', '.3f')} | {cell('writes', '.0f')} "
              f"| {min(loads):.1f}–{max(loads):.1f} |")


if __name__ == "__main__":
    main()
