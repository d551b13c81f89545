"""/metrics of a real supervisor with 16 one-thread workers while jobs flow.

    python3 benchmarks/scrape_pool.py [--processes 16] [--runs 50] [--rate 100]

Runs ``watchtower supervise`` as a child process (min_processes=16,
threads=1, a SQLite ledger in a temporary directory, the Redis bus, the app
benchmarks/bench_app.py on a Redis namespace of its own, deleted afterwards)
while a producer thread sends ``--rate`` no-op jobs a second.  Once every
worker runs and completed jobs show in /metrics, the supervisor's /metrics is
fetched ``--runs`` times over HTTP: p50 / p95 in milliseconds, with the size
of the answer and the resident memory of the supervisor and its workers.
(benchmarks/scrape.py measures the same scrape with synthetic writers and 100
dead processes folded in.)  Budget: under 100 ms with 16 processes.
Every process it started is killed by PID when it ends.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
from harness import REDIS_URL, ROOT, wait_for

QUEUE = "bench"


def child_env(namespace: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHTOWER_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "benchmarks"), env.get("PYTHONPATH", "")])
    env.update(WT_BENCH_NAMESPACE=namespace, WT_BENCH_REDIS=REDIS_URL, WT_BENCH_QUEUE=QUEUE)
    return env


def percentiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


class Producer(threading.Thread):
    """Keeps ``rate`` no-op jobs a second flowing into the bench queue."""

    def __init__(self, namespace: str, rate: float) -> None:
        super().__init__(daemon=True)
        import dramatiq
        from dramatiq.brokers.redis import RedisBroker

        self.broker = RedisBroker(url=REDIS_URL, namespace=namespace)
        self.broker.declare_queue(QUEUE)
        self.message = lambda i: dramatiq.Message(queue_name=QUEUE, actor_name="noop", args=(i,), kwargs={},
                                                  options={})
        self.rate = rate
        self.halt = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.halt.wait(1 / self.rate):
            self.broker.enqueue(self.message(i))
            i += 1

    def stop(self) -> None:
        self.halt.set()
        self.join(10)
        self.broker.close()


@contextlib.contextmanager
def supervised(processes: int, rate: float) -> Iterator[dict[str, Any]]:
    """A running supervisor with ``processes`` one-thread workers and jobs flowing."""
    import redis

    from watchtower import WorkerManager, store
    from watchtower.config import load_settings
    from watchtower.models import Worker
    from watchtower.statuses import WorkerStatus

    namespace = f"wtbench_{uuid.uuid4().hex[:10]}"
    with tempfile.TemporaryDirectory(prefix="wtbench") as tmp:
        url = f"sqlite:///{tmp}/ledger.db"
        config = Path(tmp) / "watchtower.toml"
        config.write_text(
            f'app = "bench_app"\ndatabase_url = "{url}"\ncommand_bus = "redis"\nredis_url = "{REDIS_URL}"\n'
            f'redis_prefix = "{namespace}"\nhostname = "bench"\nheartbeat_timeout = 10.0\n"http".port = 0\n'
            f'\n[supervisors.default]\nqueues = ["{QUEUE}"]\nmin_processes = {processes}\n'
            f"max_processes = {processes + 2}\nthreads = 1\ntimeout = 30\nmemory = 1024\nsleep = 0.2\n"
        )
        log = Path(tmp) / "supervisor.log"
        store.connect(url)
        with log.open("ab") as out:
            sup = subprocess.Popen(
                [sys.executable, "-m", "watchtower", "--config", str(config), "supervise", "--supervisor", "default"],
                env=child_env(namespace), stdout=out, stderr=subprocess.STDOUT, cwd=tmp,
            )
        producer = None
        manager = WorkerManager(load_settings(config, env={}))
        try:
            wait_for(lambda: Worker.select().where(Worker.status == WorkerStatus.RUNNING).count() == processes,
                     120, f"{processes} running workers", interval=0.2)
            producer = Producer(namespace, rate)
            producer.start()
            found = wait_for(lambda: re.search(r"serving Prometheus metrics at (http://\S+/metrics)",
                                               log.read_text(errors="replace")), 60, "the /metrics address")
            yield {"supervisor": sup, "manager": manager, "metrics": found.group(1), "log": log}
        except BaseException:
            sys.stderr.write(log.read_text(errors="replace")[-5000:])
            raise
        finally:
            if producer is not None:
                producer.stop()
            pids = [c.pid for c in psutil.Process(sup.pid).children()] if sup.poll() is None else []
            if sup.poll() is None:
                sup.send_signal(signal.SIGKILL)
            sup.wait(30)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                manager.bus.close()
            client = redis.Redis.from_url(REDIS_URL)
            keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
            if keys:
                client.delete(*keys)


def scrape(processes: int, runs: int, rate: float) -> dict[str, Any]:
    """/metrics of a supervisor with ``processes`` one-thread workers (p50/p95 ms), its RSS and its workers'."""
    with supervised(processes, rate=rate) as ctx:
        url = ctx["metrics"]
        wait_for(lambda: _scrape(url)[1] and b"watchtower_jobs_completed_total{" in _scrape(url)[1], 60,
                 "completed jobs in /metrics", interval=0.2)
        times = []
        size = 0
        for _ in range(runs):
            seconds, body = _scrape(url)
            times.append(seconds * 1000)
            size = len(body)
        memory = rss_of_pool(ctx["supervisor"])
    return {"processes": processes, "runs": runs, "ms": percentiles(times), "bytes": size, **memory}


def _scrape(url: str) -> tuple[float, bytes]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as response:
        body = response.read()
    return time.perf_counter() - started, body


def rss_of_pool(sup: subprocess.Popen[bytes]) -> dict[str, float]:
    parent = psutil.Process(sup.pid)
    workers = [c.memory_info().rss for c in parent.children()]
    return {"supervisor_mb": parent.memory_info().rss / 2**20,
            "worker_mb": statistics.median(workers) / 2**20 if workers else float("nan"),
            "workers": len(workers)}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--processes", type=int, default=16)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--rate", type=float, default=100, help="no-op jobs sent a second meanwhile")
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    found = scrape(args.processes, args.runs, args.rate)
    p50, p95 = found["ms"]
    print(f"\nA supervisor with {found['workers']} one-thread worker processes (min_processes={args.processes}), "
          f"SQLite ledger, Redis bus, {args.rate:g} no-op jobs/s flowing; {args.runs} scrapes of "
          f"{found['bytes'] / 1024:.0f} KiB\n")
    print("| scrape of the supervisor's /metrics | p50 (ms) | p95 (ms) | supervisor RSS (MiB) "
          "| worker RSS, median (MiB) |")
    print("|---|---|---|---|---|")
    print(f"| {args.processes} live workers | {p50:.1f} | {p95:.1f} | {found['supervisor_mb']:.0f} "
          f"| {found['worker_mb']:.0f} |")


if __name__ == "__main__":
    main()
