"""MetricsCollector's answer times at 10,000 and at 1,000,000 job rows.

    python3 benchmarks/collector.py [--small 10000] [--large 1000000] [--runs 50] [--databases sqlite,postgresql]

For each database and size, a fresh ledger is filled fast (SQLite:
``executemany``; PostgreSQL: ``generate_series``), never through the
recorder: jobs (90% completed, 5% failed, 3% pending, 1% processing, 1%
skipped) on 3 queues x 2 actors, the per-minute rollups those jobs imply
(enqueued, started, completed, failed, skipped), and 16 worker rows.

Both ledgers are one system with a short and a long history: the last 24
hours hold the same ``--small`` jobs in each (spread at random over the
day), and the large ledger has the rest spread over the 6 days before.
So the windows the collector reads (the last 10 minutes, hour, 24 hours)
hold the same activity at both sizes, and the ratio shows what the table's
size costs.  (Spreading both over a week instead makes the large ledger's
last hour 100 times busier: the rollup rows read then grow with that
activity, up to 60 minutes x queues x actors x kinds, whatever the table's
size.)  The counting triggers are live while the rows go in, as in
production.  Both ledgers exist at once, and each method is called
``--runs`` times in 5 blocks in which the two take turns (each block after
two warm-up calls), so that the machine's drift falls on both; the table
gives p50 / p95 in milliseconds and the ratio of the large to the small
p50.  Budget: under 50 ms at one million rows, ratio at most 1.5.

PostgreSQL at WT_BENCH_POSTGRES (default postgresql://postgres@127.0.0.1:5432/postgres),
where a database of the benchmark's own is created and dropped.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from harness import POSTGRES_ADMIN

METHODS = (
    "get_stats", "get_hourly_throughput", "get_queue_depths",
    "get_average_durations", "get_recent_throughput", "get_worker_stats",
)
QUEUES = ("default", "emails", "reports")
DAYS = 7
NOW_MS = int(time.time() * 1000)
DAY_MS = 86_400_000
SPAN_MS = DAYS * DAY_MS
#: The two ledgers take turns this many times (each block a share of the runs).
BLOCKS = 5
# (status, share): the mix of a week's ledger.
MIX = (("completed", 0.90), ("failed", 0.05), ("pending", 0.03), ("processing", 0.01), ("skipped", 0.01))


@contextmanager
def ledger(kind: str) -> Iterator[str]:
    """The URL of a new, empty database of ``kind``, removed afterwards."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as directory:
            yield f"sqlite:///{directory}/bench.db"
        return
    import psycopg

    from watchtower.store import check_database_url

    admin = check_database_url(POSTGRES_ADMIN)
    name = f"wtbench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dbname=admin.database, autocommit=True, **admin.params) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{POSTGRES_ADMIN.rsplit('/', 1)[0]}/{name}"
    finally:
        from watchtower import models

        if models.database.obj is not None:
            models.database.obj.close()
        with psycopg.connect(dbname=admin.database, autocommit=True, **admin.params) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def fill_sqlite(db, rows: int, recent: int) -> None:
    rng = random.Random(7)
    statuses = [status for status, share in MIX for _ in range(int(share * 100))]

    def job(n: int) -> tuple:
        status = statuses[n % 100]
        queue = QUEUES[n % 3]
        # The first ``recent`` jobs in the last day, the others in the 6 before.
        queued = NOW_MS - (rng.randrange(DAY_MS) if n < recent else DAY_MS + rng.randrange(SPAN_MS - DAY_MS))
        started = queued + rng.randrange(1, 2000) if status != "pending" else None
        finished = started + rng.randrange(1, 30_000) if status in ("completed", "failed", "skipped") else None
        return (f"m{n:09d}", queue, f"{queue}_task_{n % 2}", "redis", "{}", status, "w1", 1,
                queued, started, finished, 3, 0, queued // DAY_MS)

    sql = (
        "INSERT INTO watchtower_jobs (message_id, queue, actor, connection, payload, status, worker_id, attempts, "
        "queued_at, started_at, completed_at, progress, progress_at, queued_day) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    with db.atomic():
        for start in range(0, rows, 50_000):
            db.cursor().executemany(sql, [job(n) for n in range(start, min(rows, start + 50_000))])


def fill_postgresql(db, rows: int, recent: int) -> None:
    # One statement; the status follows the same 100-slot mix as SQLite's.
    cases = []
    upper = 0
    for status, share in MIX:
        upper += int(share * 100)
        cases.append(f"WHEN n %% 100 < {upper} THEN '{status}'")
    db.execute_sql(f"""
        INSERT INTO watchtower_jobs (message_id, queue, actor, connection, payload, status, worker_id, attempts,
                                     queued_at, started_at, completed_at, progress, progress_at, queued_day)
        SELECT 'm' || lpad(n::text, 9, '0'), q, q || '_task_' || (n %% 2), 'redis', '{{}}', s, 'w1', 1,
               queued,
               CASE WHEN s <> 'pending' THEN queued + 1 + (n * 7919) %% 2000 END,
               CASE WHEN s IN ('completed', 'failed', 'skipped') THEN queued + 2001 + (n * 104729) %% 30000 END,
               3, 0, queued / {DAY_MS}
        FROM (
            SELECT n, (ARRAY['default', 'emails', 'reports'])[n %% 3 + 1] AS q,
                   CASE {' '.join(cases)} END AS s,
                   {NOW_MS} - CASE WHEN n < {recent} THEN (random() * {DAY_MS})::bigint
                                   ELSE {DAY_MS} + (random() * {SPAN_MS - DAY_MS})::bigint END AS queued
            FROM generate_series(0::bigint, {rows - 1}) AS n
        ) AS g
    """)


def fill(url: str, kind: str, rows: int, recent: int) -> None:
    """Fill ``url`` with ``rows`` jobs, ``recent`` of them in the last 24 hours (see the module's text)."""
    from watchtower.store import connect

    db = connect(url)
    started = time.perf_counter()
    (fill_sqlite if kind == "sqlite" else fill_postgresql)(db, rows, min(rows, recent))
    # The rollups these jobs imply, per minute of each event, written in
    # time order as the recorder writes them.
    parts = []
    for kind_name, column, where in (
        ("enqueued", "queued_at", "1 = 1"),
        ("started", "started_at", "started_at IS NOT NULL"),
        ("completed", "completed_at", "status = 'completed'"),
        ("failed", "completed_at", "status = 'failed'"),
        ("skipped", "completed_at", "status = 'skipped'"),
    ):
        duration = "SUM(completed_at - started_at) / 1000.0" if kind_name in ("completed", "failed") else "0"
        parts.append(
            f"SELECT {column} / 60000 AS minute, queue, actor, '{kind_name}' AS kind, COUNT(*) AS count, "
            f"{duration} AS duration_sum FROM watchtower_jobs WHERE {where} GROUP BY {column} / 60000, queue, actor"
        )
    with db.atomic():
        db.execute_sql(
            "INSERT INTO watchtower_rollups (minute, queue, actor, kind, count, duration_sum) "
            f"SELECT * FROM ({' UNION ALL '.join(parts)}) AS r ORDER BY minute, queue, actor, kind"
        )
        for n in range(16):
            status = ("running", "running", "running", "paused")[n % 4]
            db.execute_sql(
                f"INSERT INTO watchtower_workers (worker_id, supervisor, hostname, status, restarts, jobs_processed, "
                f"jobs_failed, queues, options) "
                f"VALUES ({db.param}, 'default', 'bench', {db.param}, 0, 0, 0, '[]', '{{}}')",
                (f"w{n}", status),
            )
    # Settle as a live database would be: statistics current, nothing left
    # for autovacuum to do during the measurement.
    db.execute_sql("VACUUM ANALYZE" if kind == "postgresql" else "ANALYZE")
    print(f"  {kind}: {rows:,} rows loaded in {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)
    db.close()


def timings(url: str, runs: int) -> dict[str, list[float]]:
    """``runs`` times (ms) of every method, after two warm-up calls."""
    from watchtower import MetricsCollector

    collector = MetricsCollector(url)
    results = {}
    for method in METHODS:
        call: Callable[[], object] = getattr(collector, method)
        call(), call()  # warm-up: connection, caches
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            call()
            times.append((time.perf_counter() - started) * 1000)
        results[method] = times
    collector.db.close()
    return results


@contextmanager
def ledger_pair(kind: str, small: int, large: int,
                then: Callable[[str], None] | None = None) -> Iterator[dict[int, str]]:
    """Two filled ledgers of ``kind`` at once, {size: url}, both holding the
    same last day (``then(url)`` after each fill).
    """
    with ledger(kind) as small_url, ledger(kind) as large_url:
        urls = {small: small_url, large: large_url}
        for size, url in urls.items():
            fill(url, kind, size, recent=small)
            if then is not None:
                then(url)
        yield urls


def alternate(urls: dict[int, str], runs: int, timed: Callable[[str, int], dict[str, list[float]]]
              ) -> dict[int, dict[str, tuple[float, float]]]:
    """p50 and p95 per ledger size and name: ``runs`` timings in BLOCKS blocks, the sizes taking turns.

    Taking turns block by block spreads the machine's drift (other load, CPU
    frequency) over both sizes, so that their ratio does not carry it.
    """
    times: dict[int, dict[str, list[float]]] = {size: {} for size in urls}
    for block in range(BLOCKS):
        share = runs // BLOCKS + (1 if block < runs % BLOCKS else 0)
        for size, url in urls.items():
            for name, values in timed(url, share).items():
                times[size].setdefault(name, []).extend(values)
    return {size: {name: p50_p95(values) for name, values in named.items()} for size, named in times.items()}


def p50_p95(values: list[float]) -> tuple[float, float]:
    values = sorted(values)
    return statistics.median(values), values[min(len(values) - 1, int(len(values) * 0.95))]


Row = tuple[str, str, tuple[float, float], tuple[float, float], float]


def compared(results: dict[int, dict[str, tuple[float, float]]], names: Iterable[str], kind: str,
             small: int, large: int) -> list[Row]:
    """Table rows of ``names``: (name, database, small p50/p95, large p50/p95, large/small p50)."""
    rows = []
    for name in names:
        at_small, at_large = results[small][name], results[large][name]
        rows.append((name, kind, at_small, at_large, at_large[0] / at_small[0] if at_small[0] else float("inf")))
    return rows


def print_table(first: str, rows: list[Row], small: int, large: int) -> None:
    """``rows`` as the Markdown table run.py reads (its first column headed ``first``)."""
    print(f"\n| {first} | database | {small:,} rows p50 / p95 (ms) | {large:,} rows p50 / p95 (ms) | ratio (p50) |")
    print("|---|---|---|---|---|")
    for name, kind, at_small, at_large, ratio in rows:
        print(f"| {name} | {kind} | {at_small[0]:.2f} / {at_small[1]:.2f} | {at_large[0]:.2f} / {at_large[1]:.2f} "
              f"| {ratio:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--databases", default="sqlite,postgresql")
    args = parser.parse_args()

    rows: list[Row] = []
    for kind in args.databases.split(","):
        with ledger_pair(kind, args.small, args.large) as urls:
            results = alternate(urls, args.runs, timings)
        rows += compared(results, METHODS, kind, args.small, args.large)
    print_table("method", rows, args.small, args.large)


if __name__ == "__main__":
    main()
