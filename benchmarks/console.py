"""The console's page answer times at 10,000 and at 1,000,000 job rows.

    python3 benchmarks/console.py [--small 10000] [--large 1000000] [--runs 30] [--databases sqlite,postgresql]

The ledgers are those of benchmarks/api.py (filled as benchmarks/collector.py
fills them, then given realistic payloads), and the pages are asked for as
a logged-in browser asks: through the real WSGI app in this process
(falcon.testing), with the session and CSRF cookies, so that the session's
check and the templates' rendering are in every time.  Each page is asked
for ``--runs`` times, in 5 blocks in which the two ledgers take turns (each
block after two warm-up calls).  The table gives p50 / p95 in milliseconds
and the ratio of the large to the small p50.  Budget: the API's, under
50 ms at one million rows, the cost not growing with the table.

"dashboard (live part)" is what the page's script fetches every few
seconds.  "bulk retry count" is the page that counts the failed jobs a
filter selects before a bulk retry: a COUNT over that selection, so its
cost follows the number of failed jobs (5% of the ledger here), not a
page's size; it is shown for what it costs, outside the lists' budget.
"""

from __future__ import annotations

import argparse

from api import give_payloads  # benchmarks/api.py: the same ledgers
from collector import Row, alternate, compared, ledger_pair, print_table
from harness import time_get

TOKEN = "bench-token"
CONSOLE = "/watchtower/console"

PAGES = (
    ("dashboard", CONSOLE, None),
    ("dashboard (live part)", CONSOLE, "live"),
    ("jobs", CONSOLE + "/jobs", None),
    ("jobs status=failed", CONSOLE + "/jobs?status=failed", None),
    ("jobs queue=emails", CONSOLE + "/jobs?queue=emails", None),
    ("jobs before=cursor", CONSOLE + "/jobs?before={cursor}", None),
    ("failed", CONSOLE + "/failed", None),
    ("job", CONSOLE + "/jobs/m000000042", None),
    ("workers", CONSOLE + "/workers", None),
    ("search (matches)", CONSOLE + "/jobs?search=customer-42@", None),
    ("search (no match)", CONSOLE + "/jobs?search=no-such-text", None),
    ("bulk retry count queue=emails", CONSOLE + "/failed/retry?queue=emails", None),
)


def measure(url: str, runs: int) -> dict[str, list[float]]:
    """``runs`` times (ms) of every page, after two warm-up calls, as a logged-in browser."""
    import falcon.testing

    from watchtower.config import load_settings
    from watchtower.web import create_app
    from watchtower.web.session import CSRF_COOKIE, SESSION_COOKIE, SessionSigner, new_csrf_token

    settings = load_settings(env={}, overrides={"database_url": url, "http.token": TOKEN})
    cookies = f"{SESSION_COOKIE}={SessionSigner(TOKEN).issue()}; {CSRF_COOKIE}={new_csrf_token()}"
    client = falcon.testing.TestClient(create_app(settings), headers={"Cookie": cookies, "Accept": "text/html"})
    # The cursor of the first page's end, as the "Older jobs" link carries it.
    api = falcon.testing.TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN}"})
    cursor = api.simulate_get("/watchtower/jobs").json["next_cursor"]
    results = {}
    for name, template, fragment in PAGES:
        path = template.format(cursor=cursor)
        headers = {"X-Watchtower-Fragment": fragment} if fragment else {}
        results[name] = time_get(client, path, runs, headers)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--databases", default="sqlite,postgresql")
    args = parser.parse_args()

    rows: list[Row] = []
    for kind in args.databases.split(","):
        with ledger_pair(kind, args.small, args.large, then=give_payloads) as urls:
            results = alternate(urls, args.runs, measure)
        rows += compared(results, [name for name, _, _ in PAGES], kind, args.small, args.large)
    print_table("page", rows, args.small, args.large)


if __name__ == "__main__":
    main()
