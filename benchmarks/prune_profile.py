"""Where a SQLite prune of a million rows spends its time.

    python3 benchmarks/prune_profile.py [--rows 1000000] [--keep 50000]

benchmarks/prune.py measures the prune as users get it; this script takes
it apart, on copies of one filled SQLite ledger (filled as prune.py fills
it), with no recorder running:

- ``as shipped``: :func:`watchtower.retention.prune` with its defaults, its time
  split into the delete transactions, the steps back between them (the
  checkpoint of what a batch wrote, and the pause that lets a waiting
  writer in) and handing the space back (here one VACUUM of what is left);
- ``incremental vacuum``: the space handed back in incremental steps
  whatever is left (``WHOLE_VACUUM_BATCHES = 0``), as before the whole
  VACUUM was an option;
- ``no count trigger``: the same with the per-row trigger that keeps
  ``watchtower_job_counts`` dropped first;
- ``unique key on message_id alone (schema 1)``: the job table's unique
  index on ``message_id`` (random ids) in place of ``(queued_day,
  message_id)``, as the ledger's schema 1 had it;
- ``512 MiB page cache``: the pruning connection's SQLite page cache eight
  times the shipped 64 MiB;
- ``0.5 s batches``: batches four times as long as the shipped 0.12 s
  (fewer, larger transactions; a live writer would wait up to that long).

Each variant prunes a fresh copy of the same file.  The table is printed as
Markdown.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from typing import Any

_JOBS = "watchtower_jobs"
VARIANTS: tuple[tuple[str, tuple[str, ...], dict[str, Any]], ...] = (
    ("as shipped", (), {}),
    ("incremental vacuum", (), {"whole_vacuum_batches": 0.0}),
    ("no count trigger", (f"DROP TRIGGER {_JOBS}_count_delete",), {}),
    ("unique key on message_id alone (schema 1)", (
        f"DROP INDEX {_JOBS}_queued_day_message_id", f"CREATE UNIQUE INDEX {_JOBS}_message_id ON {_JOBS} (message_id)",
    ), {}),
    ("512 MiB page cache", (), {"cache_kib": 524_288}),
    ("0.5 s batches", (), {"batch_seconds": 0.5}),
)


def timed_prune(url: str, prepare: tuple[str, ...], options: dict[str, Any]) -> dict[str, float]:
    """Prune the ledger at ``url``; the total and its parts, in seconds."""
    from watchtower import store
    from watchtower.dialects import sqlite
    from watchtower.retention import Retention, engine, space

    db = store.connect(url)
    options = dict(options)
    shipped_cache, shipped_whole = sqlite.CACHE_KIB, space.WHOLE_VACUUM_BATCHES
    sqlite.CACHE_KIB = options.pop("cache_kib", shipped_cache)
    space.WHOLE_VACUUM_BATCHES = options.pop("whole_vacuum_batches", shipped_whole)
    for statement in prepare:
        db.execute_sql(statement)
    parts = {"transactions": 0.0, "steps back": 0.0}
    vacuuming = [False]  # the vacuum steps back too: its time is its own
    originals = (engine.BatchLoop.transaction, engine.BatchLoop.step_back, space.give_back)
    transaction, step_back, vacuum = originals

    def timed(name: str, method: Any) -> Any:
        def wrapper(*args: Any) -> Any:
            started = time.perf_counter()
            try:
                return method(*args)
            finally:
                if not vacuuming[0]:
                    parts[name] += time.perf_counter() - started
        return wrapper

    def timed_vacuum(*args: Any) -> None:
        vacuuming[0] = True
        try:
            vacuum(*args)
        finally:
            vacuuming[0] = False

    engine.BatchLoop.transaction = timed("transactions", transaction)  # type: ignore[method-assign]
    engine.BatchLoop.step_back = timed("steps back", step_back)  # type: ignore[method-assign]
    space.give_back = timed_vacuum
    try:
        started = time.perf_counter()
        result = engine.prune(db, Retention(), **options)
        total = time.perf_counter() - started
    finally:
        engine.BatchLoop.transaction, engine.BatchLoop.step_back, space.give_back = originals
        sqlite.CACHE_KIB, space.WHOLE_VACUUM_BATCHES = shipped_cache, shipped_whole
        db.close()
    return {
        "total": total,
        "transactions": parts["transactions"],
        "steps back": parts["steps back"],
        "vacuum": result.vacuum_seconds,
        "way": result.vacuum or "none",
        "batches": result.batches,
        "longest": result.longest_batch,
        "jobs": result.jobs_total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keep", type=int, default=50_000)
    parser.add_argument("--only", action="append", help="run only the variants whose name contains this")
    args = parser.parse_args()

    import prune as bench  # benchmarks/prune.py: the same ledger

    from watchtower import store

    with tempfile.TemporaryDirectory() as tmp:
        template = f"{tmp}/template.db"
        db = store.connect(f"sqlite:///{template}")
        started = time.perf_counter()
        bench.fill(db, args.rows, args.keep)
        db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()
        print(f"  filled {args.rows:,} + {args.keep:,} rows in {time.perf_counter() - started:.0f}s",
              file=sys.stderr, flush=True)
        rows = []
        for name, prepare, options in VARIANTS:
            if args.only and not any(part in name for part in args.only):
                continue
            path = f"{tmp}/copy.db"
            shutil.copyfile(template, path)
            numbers = timed_prune(f"sqlite:///{path}", prepare, options)
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(path + suffix):
                    os.remove(path + suffix)
            if numbers["jobs"] != args.rows:
                raise SystemExit(f"{name}: pruned {numbers['jobs']} of {args.rows} rows")
            rows.append((name, numbers))
            print(f"  {name}: {numbers['total']:.1f}s", file=sys.stderr, flush=True)

    print(f"\n{args.rows:,} expired rows pruned from SQLite ({args.keep:,} kept), no recorder running; seconds\n")
    print("| variant | total | delete transactions | steps back (checkpoint + pause) | space back (how) | batches "
          "| longest batch |")
    print("|---|---|---|---|---|---|---|")
    for name, n in rows:
        print(f"| {name} | {n['total']:.1f} | {n['transactions']:.1f} | {n['steps back']:.1f} "
              f"| {n['vacuum']:.1f} ({n['way']}) | {n['batches']:.0f} | {n['longest']:.3f} |")


if __name__ == "__main__":
    main()
