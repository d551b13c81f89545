"""How long the schema 1 -> 2 migration takes on a large ledger.

    python3 benchmarks/migrate.py [--rows 1000000] [--databases sqlite,postgresql]

Each database is filled with ``--rows`` jobs (as benchmarks/prune.py fills
it), reshaped the way schema version 1 made the job table (unique index on
``message_id``, no ``queued_day``), and then opened with
:func:`watchtower.store.connect`, which migrates it: the time of that call
is printed, with a check that every row got its day and that the key is the
new one.  The migration runs once per ledger, when the first process of the
new release starts (README: "What a job row means").
"""

from __future__ import annotations

import argparse
import tempfile
import time

import harness  # noqa: F401  (puts the repository root on sys.path, for tests.support)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--databases", default="sqlite,postgresql", help="any of sqlite, postgresql, mysql")
    args = parser.parse_args()

    import prune as bench  # the same ledgers and servers

    from tests.support.ledger_fill import as_version_1
    from watchtower import store
    from watchtower.clock import day_of
    from watchtower.models import Job, Meta

    print(f"\n{args.rows:,} job rows migrated from schema 1 to 2\n")
    print("| database | seconds | rows with their day |")
    print("|---|---|---|")
    for kind in args.databases.split(","):
        with tempfile.TemporaryDirectory(prefix="wtbench") as tmp:
            database = {"sqlite": lambda: bench.Sqlite(tmp), "postgresql": bench.Postgres, "mysql": bench.Mysql}[kind]()
            try:
                url = database.template_url()
                db = store.connect(url)
                bench.fill(db, args.rows, 0)
                as_version_1(db, kind)
                database.seal(db)
                db.close()
                started = time.perf_counter()
                db = store.connect(url)
                seconds = time.perf_counter() - started
                if Meta.get(Meta.key == "schema_version").value != "2":
                    raise SystemExit(f"{kind}: not migrated")
                right = sum(1 for queued_at, day in Job.select(Job.queued_at, Job.queued_day).tuples()
                            if day == day_of(int(queued_at.timestamp() * 1000)))
                db.close()
            finally:
                database.drop()
        print(f"| {kind} | {seconds:.1f} | {right:,} of {args.rows:,} |", flush=True)


if __name__ == "__main__":
    main()
