"""Pruning a million rows while a recorder keeps writing.

    python3 benchmarks/prune.py [--rows 1000000] [--keep 50000] [--rate 500] [--databases sqlite,postgresql]

For each database: a fresh ledger is filled (outside the measurement) with
``--rows`` finished jobs past their retention (completed, failed and skipped
mixed) and ``--keep`` rows that must stay (recent, pending, processing).
Then a real :class:`watchtower.Recorder` starts recording ``--rate`` jobs a
second (enqueued, started, completed: three events each) and, once it is
writing steadily, :func:`watchtower.prune.prune` runs with the default
retention.  Reported: the prune's time (and the part spent handing space
back on SQLite), its longest delete transaction, and the longest write of
the recorder while the prune ran (a write includes waiting for the lock:
that is the stall a live worker sees).  Afterwards the benchmark checks
that exactly the expired rows went and that every recorded job landed.

Budget (DESIGN.md): a million rows in under 10 s, no recorder write over 0.5 s.

Servers: PostgreSQL at WT_BENCH_POSTGRES (default
postgresql://postgres@127.0.0.1:5432/postgres; a database of the
benchmark's own is created and dropped).  SQLite in a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

POSTGRES_ADMIN = os.environ.get("WT_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")

DAY_MS = 86_400_000


def fill(db, rows: int, keep: int) -> None:  # type: ignore[no-untyped-def]
    from fill import insert_jobs, job_row

    from watchtower.models import now_ms

    now = now_ms()
    oldest = now - 60 * DAY_MS  # to now - 32 days
    statuses = ["completed"] * 16 + ["failed"] * 3 + ["skipped"]

    def expired():  # type: ignore[no-untyped-def]
        for i in range(rows):
            # Spread over 28 days, all before the longest cutoff (30 days).
            yield job_row(statuses[i % 20], oldest + 28 * DAY_MS * i // rows)

    def kept():  # type: ignore[no-untyped-def]
        for i in range(keep):
            status = ("completed", "pending", "processing", "failed")[i % 4]
            yield job_row(status, now - DAY_MS + i if status in ("completed", "failed") else None)

    insert_jobs(db, expired())
    insert_jobs(db, kept())


def measure(kind: str, url: str, rows: int, keep: int, rate: int, tuning: dict[str, float]) -> dict[str, float]:
    """Fill, then prune while recording; returns the numbers."""
    from fill import completed_job_events

    from watchtower import Recorder, store
    from watchtower.prune import Retention, prune

    db = store.connect(url)
    started = time.perf_counter()
    fill(db, rows, keep)
    fill_seconds = time.perf_counter() - started
    if kind == "sqlite":
        db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    elif kind == "postgresql":
        db.execute_sql("ANALYZE")

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
        before = os.path.getsize(url.split("///", 1)[1]) if kind == "sqlite" else 0
        window_start = time.perf_counter()
        result = prune(db, Retention(), **tuning)
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
    if kind == "sqlite":
        db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")  # the file shrinks at a checkpoint
    after = os.path.getsize(url.split("///", 1)[1]) if kind == "sqlite" else 0
    db.close()
    if result.jobs_total != rows or remaining != keep:
        raise SystemExit(f"{kind}: pruned {result.jobs_total} of {rows}, {remaining} of {keep} kept rows left")
    if landed != produced[0]:
        raise SystemExit(f"{kind}: {landed} of {produced[0]} recorded jobs landed in the ledger")
    return {
        "fill": fill_seconds,
        "prune": result.seconds,
        "vacuum": result.vacuum_seconds,
        "batches": result.batches,
        "longest_batch": result.longest_batch,
        "writes": len(during),
        "longest_write": max(during, default=0.0),
        "recorded": produced[0],
        "mb_before": before / 1e6,
        "mb_after": after / 1e6,
    }


def postgres_database() -> tuple[str, object]:
    import psycopg

    from watchtower.store import check_database_url

    admin = check_database_url(POSTGRES_ADMIN)
    name = f"wtbench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dbname=admin.database, autocommit=True, **admin.params) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(dbname=admin.database, autocommit=True, **admin.params) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return POSTGRES_ADMIN.rsplit("/", 1)[0] + "/" + name, drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="expired rows to prune")
    parser.add_argument("--keep", type=int, default=50_000, help="rows that must stay")
    parser.add_argument("--rate", type=int, default=500, help="jobs a second recorded meanwhile")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--batch-seconds", type=float, default=None, help="prune(batch_seconds=...), default its own")
    parser.add_argument("--pause", type=float, default=None, help="prune(pause=...), default its own")
    args = parser.parse_args()
    tuning = {name: value for name, value in (("batch_seconds", args.batch_seconds), ("pause", args.pause))
              if value is not None}
    import logging

    logging.basicConfig(level=logging.WARNING)
    results = {}
    for kind in args.databases.split(","):
        with tempfile.TemporaryDirectory(prefix="wtbench") as tmp:
            if kind == "sqlite":
                url, drop = f"sqlite:///{tmp}/ledger.db", (lambda: None)
            elif kind == "postgresql":
                url, drop = postgres_database()
            else:
                raise SystemExit(f"unknown database {kind!r}: use sqlite or postgresql")
            try:
                results[kind] = measure(kind, url, args.rows, args.keep, args.rate, tuning)
            finally:
                drop()  # type: ignore[operator]
        print(f"{kind}: {results[kind]}", file=sys.stderr, flush=True)

    print(f"\n{args.rows:,} expired rows pruned, {args.keep:,} kept, recording {args.rate} jobs/s meanwhile\n")
    print("| database | prune (s) | of which vacuum (s) | batches | longest batch (s) | recorder writes during prune "
          "| longest recorder write (s) | file MB before → after |")
    print("|---|---|---|---|---|---|---|---|")
    for kind, r in results.items():
        size = f"{r['mb_before']:.0f} → {r['mb_after']:.0f}" if kind == "sqlite" else "–"
        print(f"| {kind} | {r['prune']:.2f} | {r['vacuum']:.2f} | {r['batches']:.0f} | {r['longest_batch']:.3f} "
              f"| {r['writes']:.0f} | {r['longest_write']:.3f} | {size} |")


if __name__ == "__main__":
    main()
