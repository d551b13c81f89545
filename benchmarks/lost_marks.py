"""What looking for lost marks costs a ledger batch: the check alone, against the whole write.

    python3 benchmarks/lost_marks.py [--rounds 200]

Every batch the recorder writes is checked for finishing events of workers
that have lost marks (``watchtower.ledger._undo_false_losses``): one indexed
query that finds nothing almost always.  This times that check inside a
transaction, and ``write_batch`` of the same kind of batch (50 and 1000
``completed`` events of one worker), on SQLite and PostgreSQL; medians.

PostgreSQL at WT_BENCH_POSTGRES (default postgresql://postgres@127.0.0.1:5432/postgres),
where a database of the benchmark's own is created and dropped.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid

from harness import POSTGRES_ADMIN

from watchtower import ledger, store
from watchtower.dialects import dialect_of
from watchtower.events import JobEvent, Kind


def batch(size: int) -> list[JobEvent]:
    at = time.time_ns() // 1000
    return [
        JobEvent(message_id=str(uuid.uuid4()), kind=Kind.COMPLETED, attempt=1, at=at + n, queue="q", actor="a",
                 connection="redis", queued_at=at // 1000, worker_id="w-1", started_at=at // 1000,
                 finished_at=at // 1000, duration=0.01)
        for n in range(size)
    ]


def measure(url: str, rounds: int) -> None:
    db = store.connect(url)
    try:
        for size in (50, 1000):
            events = batch(size)
            checks = []
            for _ in range(rounds):
                with db.atomic():
                    started = time.perf_counter()
                    ledger._undo_false_losses(db, events)
                    checks.append(time.perf_counter() - started)
            writes = []
            for _ in range(max(5, rounds // 10)):
                fresh = batch(size)
                started = time.perf_counter()
                ledger.write_batch(db, fresh)
                writes.append(time.perf_counter() - started)
            check, write = statistics.median(checks), statistics.median(writes)
            print(f"{dialect_of(db).name:10} batch of {size:4}: check {check * 1e6:6.0f} us, "
                  f"write_batch {write * 1e3:6.2f} ms, check / write {check / write:.3f}")
    finally:
        db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    measure(f"sqlite:///{tempfile.mkdtemp(prefix='wt-marks-')}/ledger.db", args.rounds)
    import psycopg

    admin = store.check_database_url(POSTGRES_ADMIN)
    name = f"wtbench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dbname=admin.database, autocommit=True, **admin.params) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        measure(f"{POSTGRES_ADMIN.rsplit('/', 1)[0]}/{name}", args.rounds)
    finally:
        with psycopg.connect(dbname=admin.database, autocommit=True, **admin.params) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
