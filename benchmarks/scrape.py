"""How long a /metrics scrape takes with 16 worker processes writing metrics.

    python3 benchmarks/scrape.py [--processes 16] [--queues 5] [--actors 4] [--dead 100] [--runs 50]

Each of ``--processes`` child processes counts events for every (queue,
actor) pair (``--queues`` x ``--actors`` label sets: every counter, both
histograms and the in-progress gauge) into one multiprocess directory, and
stays alive.  ``--dead`` more processes ran and exited before (marked dead,
so their counters sit in the archive files).  The scrape is timed over HTTP
against ``start_metrics_server`` on port 0 (``watchtower_workers`` read from a
SQLite ledger with 16 worker rows): p50 / p95 in milliseconds, with the
ledger reading cached (the usual case, ``CACHE_SECONDS``) and uncached
(a scrape that refreshes it).  Budget: under 100 ms with 16 processes.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from harness import ROOT

CHILD = """
import sys
from watchtower.events import JobEvent, Kind
from watchtower.metric_listeners import JobMetrics
queues, actors = int(sys.argv[1]), int(sys.argv[2])
listen = JobMetrics()
for q in range(queues):
    for a in range(actors):
        def event(kind, **fields):
            return JobEvent("m", kind, 1, 0, f"queue{q}", f"actor{q}_{a}", "redis", 0, **fields)
        for kind in (Kind.ENQUEUED, Kind.DELAYED):
            listen(event(kind))
        listen(event(Kind.STARTED, started_at=2_000, ready_at=1_000))
        for kind in (Kind.COMPLETED, Kind.RETRIED, Kind.FAILED, Kind.SKIPPED):
            listen(event(Kind.STARTED, started_at=2_000, ready_at=1_000))
            listen(event(kind, started_at=2_000, duration=0.1))
print("ready", flush=True)
if sys.argv[3] == "stay":
    sys.stdin.read()
"""


def timed(url: str, runs: int) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        with urllib.request.urlopen(url, timeout=30) as response:
            response.read()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.95))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=16)
    parser.add_argument("--queues", type=int, default=5)
    parser.add_argument("--actors", type=int, default=4)
    parser.add_argument("--dead", type=int, default=100)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()

    import os

    from watchtower import multiproc, scrape
    from watchtower.config import load_settings, replace
    from watchtower.metrics_server import start_metrics_server
    from watchtower.models import Worker
    from watchtower.store import connect

    with tempfile.TemporaryDirectory() as work:
        held = multiproc.prepare_multiprocess_dir(Path(work) / "metrics")
        env = {**os.environ, **held.env(), "PYTHONPATH": str(ROOT)}

        def child(stay: str) -> subprocess.Popen[str]:
            process = subprocess.Popen(
                [sys.executable, "-c", CHILD, str(args.queues), str(args.actors), stay],
                env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )
            assert process.stdout is not None and process.stdout.readline().strip() == "ready"
            return process

        started = time.perf_counter()
        for _ in range(args.dead):
            gone = child("exit")
            gone.wait()
            multiproc.mark_process_dead(gone.pid, held.path)
        live = [child("stay") for _ in range(args.processes)]
        print(f"  {args.dead} dead and {args.processes} live processes in {time.perf_counter() - started:.1f}s",
              file=sys.stderr)

        url = f"sqlite:///{work}/ledger.db"
        db = connect(url)
        for n in range(16):
            Worker.insert(worker_id=f"w{n}", supervisor="default", hostname="bench", status="running").execute()
        db.close()
        settings = replace(load_settings(overrides={"database_url": url}, env={}), metrics_dir=str(held.path))
        server = start_metrics_server(settings, port=0)
        try:
            with urllib.request.urlopen(server.url, timeout=30) as response:
                body = response.read()
            series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
            cached = timed(server.url, args.runs)
            for sources in scrape._sources.values():
                sources.ttl = 0.0  # every scrape reads the ledger again
            uncached = timed(server.url, args.runs)
        finally:
            server.stop()
            for process in live:
                assert process.stdin is not None
                process.stdin.close()
                process.wait()
            held.release()

    print(f"\n{args.processes} live processes, {args.dead} dead ones folded, {series} series, "
          f"{len(body) / 1024:.0f} KiB per scrape\n")
    print("| scrape | p50 (ms) | p95 (ms) |")
    print("|---|---|---|")
    print(f"| ledger reading cached | {cached[0]:.1f} | {cached[1]:.1f} |")
    print(f"| ledger read on every scrape | {uncached[0]:.1f} | {uncached[1]:.1f} |")


if __name__ == "__main__":
    main()
