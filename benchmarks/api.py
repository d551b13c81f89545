"""The control API's answer times at 10,000 and at 1,000,000 job rows.

    python3 benchmarks/api.py [--small 10000] [--large 1000000] [--runs 30] [--databases sqlite,postgresql]
                              [--collector-runs 50]

Each ledger is filled as benchmarks/collector.py fills it (jobs on 3 queues
x 2 actors, their rollups, 16 workers; both ledgers hold the same last 24
hours, the large one 6 more days of history before), then every stored message
is given a realistic payload (about 250 bytes of JSON with two arguments and
a keyword argument).  Requests go through the real WSGI app in this process
(falcon.testing), token and all; each is made ``--runs`` times, in 5 blocks in which
the two ledgers take turns (each block after two warm-up calls).  The table
gives p50 / p95 in milliseconds and the ratio of the large to the small
p50.  Budget: poll and the job list under 50 ms at one million rows, their
cost not growing with the table.

Deep pages: "page 100 x 100" (with the default sizes) is an OFFSET of 9,900
rows, the last full page the small ledger has: an OFFSET costs the rows it
skips, the same in both tables; "before=cursor" is the same page reached by
the cursor of the page above it (``next_cursor`` of page 99), found through
the index.  Numbered
pages stop at 200; past the small ledger's end a page 200 would compare an
empty answer with a full one.

Searches are bounded to the 10,000 newest rows that pass the other filters,
so their cost is that of scanning 10,000 payloads whatever the table's size;
"search (no match)" is the worst case: the whole window is scanned.

With ``--collector-runs N`` the MetricsCollector methods are timed too, on
the same ledgers (as benchmarks/collector.py times them), and printed as a
second table: one fill serves both (benchmarks/run.py uses this).
"""

from __future__ import annotations

import argparse
import sys
import time

from collector import (  # benchmarks/collector.py: the same ledger
    METHODS,
    Row,
    alternate,
    compared,
    ledger_pair,
    print_table,
)
from harness import time_get

TOKEN = "bench-token"

REQUESTS = (
    ("poll", "/watchtower/api/poll"),
    ("jobs", "/watchtower/jobs"),
    ("jobs status=failed", "/watchtower/jobs?status=failed"),
    ("jobs queue=emails", "/watchtower/jobs?queue=emails"),
    ("jobs status+queue", "/watchtower/jobs?status=failed&queue=emails"),
    ("jobs page {deep} x 100", "/watchtower/jobs?page={deep}&per_page=100"),
    ("jobs before=cursor (same page)", "/watchtower/jobs?per_page=100&before={cursor}"),
    ("failed", "/watchtower/failed"),
    ("job detail", "/watchtower/jobs/m000000042"),
    ("workers", "/watchtower/workers"),
    ("search (matches)", "/watchtower/jobs?search=customer-42@"),
    ("search (no match)", "/watchtower/jobs?search=no-such-text"),
)


def give_payloads(url: str) -> None:
    """Replace the fill's empty payloads with messages of a realistic size."""
    from watchtower.store import connect

    db = connect(url)
    concat = (
        "'{\"queue_name\":\"' || queue || '\",\"actor_name\":\"' || actor || '\",\"args\":[' || id || "
        "',\"customer-' || (id - (id / 1000) * 1000) || '@example.com\"],"
        "\"kwargs\":{\"template\":\"welcome\",\"locale\":\"en\"},"
        "\"options\":{\"redis_message_id\":\"0b1c5f4e-8c5a-4d6e-9f0a-1b2c3d4e5f60\"},"
        "\"message_id\":\"' || message_id || "
        "'\",\"message_timestamp\":' || queued_at || '}'"
    )
    started = time.perf_counter()
    with db.atomic():
        db.execute_sql(f"UPDATE watchtower_jobs SET payload = {concat}")
    # The update left a dead copy of every row behind (PostgreSQL): clean
    # up as autovacuum would in a live ledger, so that the timings are not
    # those of a table twice its size.
    db.execute_sql("VACUUM ANALYZE" if db.__class__.__name__.startswith("Postgres") else "ANALYZE")
    print(f"  payloads written in {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)
    db.close()


def measure(url: str, runs: int, deep: int) -> dict[str, list[float]]:
    """``runs`` times (ms) of every request, after two warm-up calls; ``deep`` is the deep page (100 rows a page)."""
    import falcon.testing

    from watchtower.config import load_settings
    from watchtower.web import create_app

    settings = load_settings(env={}, overrides={"database_url": url, "http.token": TOKEN})
    client = falcon.testing.TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN}"})
    # The cursor below the deep page's top, as a client paging down gets it.
    cursor = client.simulate_get(f"/watchtower/jobs?page={deep - 1}&per_page=100").json["next_cursor"]
    results = {}
    for template, path_template in REQUESTS:
        name, path = template.format(deep=deep), path_template.format(cursor=cursor, deep=deep)
        results[name] = time_get(client, path, runs)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--collector-runs", type=int, default=0, help="also time MetricsCollector (0: not)")
    args = parser.parse_args()

    import collector

    deep = max(2, args.small // 100)  # the small ledger's last full page of 100
    names = [template.format(deep=deep) for template, _ in REQUESTS]
    rows: list[Row] = []
    methods: list[Row] = []
    for kind in args.databases.split(","):
        with ledger_pair(kind, args.small, args.large, then=give_payloads) as urls:
            results = alternate(urls, args.runs, lambda url, runs: measure(url, runs, deep))
            if args.collector_runs:
                collected = alternate(urls, args.collector_runs, collector.timings)
                methods += compared(collected, METHODS, kind, args.small, args.large)
        rows += compared(results, names, kind, args.small, args.large)

    print_table("request", rows, args.small, args.large)
    if methods:
        print_table("method", methods, args.small, args.large)


if __name__ == "__main__":
    main()
