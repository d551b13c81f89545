"""Enqueue and drain throughput: bare Dramatiq against Dramatiq with Watchtower recording.

    python3 benchmarks/throughput.py [--messages 20000] [--rounds 5] [--threads 8]

Each measurement runs in a fresh child process (one process tree), and the
variants alternate within every round so that machine drift hits them all
alike.  A variant enqueues N no-op messages to a real Redis broker (its own
namespace), then drains them with one ``dramatiq.Worker`` of ``--threads``
threads.  Rates are messages per second; ratios are against bare Dramatiq
in the same run: for each round, the variant's rate over bare's in that
round, and the median of those (a child's rate moves by 10 % or more from
one child to the next on a shared 2-core machine; pairing within a round
cancels the drift between rounds).  The ratio of the medians is printed
too.  The ledger variants also report how long after the drain the ledger
was complete (every row written), which is not part of the rate.

Servers: Redis at WT_BENCH_REDIS (default redis://127.0.0.1:6379/0) and
PostgreSQL at WT_BENCH_POSTGRES (default postgresql://postgres@127.0.0.1:5432/postgres,
where a database of the benchmark's own is created and dropped).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from harness import REDIS_URL, postgres_database


def run_variant(variant: str, database_url: str | None, messages: int, threads: int) -> dict[str, float]:
    """One measurement, in this process (called in a child)."""
    import logging

    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    logging.basicConfig(level=logging.WARNING)
    namespace = f"wtbench_{uuid.uuid4().hex[:10]}"
    broker = RedisBroker(url=REDIS_URL, namespace=namespace)
    middleware = None
    if database_url is not None:
        from watchtower import WatchtowerMiddleware
        from watchtower.config import Settings

        middleware = WatchtowerMiddleware(settings=Settings(database_url=database_url))
        broker.add_middleware(middleware)
    broker.emit_after("process_boot")
    dramatiq.set_broker(broker)

    @dramatiq.actor(queue_name="bench", broker=broker, max_retries=0)
    def noop(i: int) -> None:
        return None

    try:
        if middleware is not None:
            # Open the connection and create the schema before timing anything.
            from watchtower import store

            store.connect(database_url)  # type: ignore[arg-type]
            from watchtower.models import Job

            Job.delete().execute()  # the PostgreSQL database is shared by the rounds
        started = time.perf_counter()
        for i in range(messages):
            noop.send(i)
        enqueue_seconds = time.perf_counter() - started

        worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
        started = time.perf_counter()
        worker.start()
        broker.join("bench", timeout=600_000)
        worker.join()
        drain_seconds = time.perf_counter() - started
        ledger_lag = 0.0
        if middleware is not None:
            lag_start = time.perf_counter()
            middleware.recorder.flush(timeout=120)
            ledger_lag = time.perf_counter() - lag_start
            from watchtower.models import Job
            from watchtower.statuses import JobStatus

            completed = Job.select().where(Job.status == JobStatus.COMPLETED).count()
            if completed != messages:
                raise SystemExit(f"ledger has {completed} completed rows, expected {messages}")
        worker.stop()
        return {
            "enqueue_rate": messages / enqueue_seconds,
            "drain_rate": messages / drain_seconds,
            "ledger_lag": ledger_lag,
        }
    finally:
        delete_namespace(namespace)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--variants", default="bare,sqlite,postgresql")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        result = run_variant(args.child, args.database_url, args.messages, args.threads)
        print(json.dumps(result))
        return

    variants = args.variants.split(",")
    results: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        cleanups = []
        urls: dict[str, str | None] = {"bare": None}
        if "sqlite" in variants:
            urls["sqlite"] = None
        if "postgresql" in variants:
            url, drop = postgres_database()
            urls["postgresql"] = url
            cleanups.append(drop)
        try:
            for round_number in range(args.rounds):
                # Rotate the order each round so no variant always runs first.
                order = variants[round_number % len(variants):] + variants[:round_number % len(variants)]
                for variant in order:
                    url = urls.get(variant)
                    if variant == "sqlite":
                        url = f"sqlite:///{tmp}/bench-{round_number}.db"
                    command = [sys.executable, __file__, "--child", variant, "--messages", str(args.messages),
                               "--threads", str(args.threads)]
                    if url:
                        command += ["--database-url", url]
                    child = subprocess.run(command, capture_output=True, text=True)
                    if child.returncode != 0:
                        raise SystemExit(f"{variant} run failed:\n{child.stderr[-3000:]}")
                    output = child.stdout
                    result = json.loads(output.strip().splitlines()[-1])
                    results[variant].append(result)
                    print(f"round {round_number + 1} {variant}: enqueue {result['enqueue_rate']:.0f}/s "
                          f"drain {result['drain_rate']:.0f}/s ledger lag {result['ledger_lag']:.2f}s",
                          file=sys.stderr)
        finally:
            for cleanup in cleanups:
                cleanup()

    bare = results.get("bare")
    print(f"\n{args.messages} no-op messages, Redis broker, 1 process x {args.threads} threads, "
          f"medians of {args.rounds} alternating rounds\n")
    print("Ratio: the median over the rounds of the variant's rate over bare's rate in the same round (runs of one "
          "round follow each other, so drift between rounds cancels); the last column divides the medians instead.\n")
    print("| variant | enqueue msg/s | ratio | drain msg/s | ratio | ledger complete after drain (s) "
          "| ratio of medians (enqueue / drain) |")
    print("|---|---|---|---|---|---|---|")
    for variant in variants:
        enqueue = statistics.median(r["enqueue_rate"] for r in results[variant])
        drain = statistics.median(r["drain_rate"] for r in results[variant])
        lag = statistics.median(r["ledger_lag"] for r in results[variant])
        if bare:
            paired = [paired_ratio(results[variant], bare, key) for key in ("enqueue_rate", "drain_rate")]
            of_medians = (enqueue / statistics.median(r["enqueue_rate"] for r in bare),
                          drain / statistics.median(r["drain_rate"] for r in bare))
            ratios = (f"{paired[0]:.2f}", f"{paired[1]:.2f}", f"{of_medians[0]:.2f} / {of_medians[1]:.2f}")
        else:
            ratios = ("-", "-", "-")
        print(f"| {variant} | {enqueue:.0f} | {ratios[0]} | {drain:.0f} | {ratios[1]} | {lag:.2f} | {ratios[2]} |")


def delete_namespace(namespace: str) -> None:
    """Delete the Redis keys of a child's broker namespace."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
    if keys:
        client.delete(*keys)


def rotating_rounds(
    script: str, variants: Sequence[str], rounds: int, child_args: Callable[[str, str], list[str]]
) -> dict[str, list[dict[str, Any]]]:
    """Run ``script --child VARIANT ...`` for every variant in every round, the order rotating by round.

    Each child gets ``child_args(variant, database_url)`` (a SQLite file of
    its own in a temporary directory) and prints its result as JSON on its
    last line.  Returns the results by variant, in round order (the rounds
    line up for :func:`paired_ratio`); prints each round's rates on stderr.
    """
    results: dict[str, list[dict[str, Any]]] = {variant: [] for variant in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for round_number in range(rounds):
            shift = round_number % len(variants)
            for variant in [*variants[shift:], *variants[:shift]]:
                url = f"sqlite:///{tmp}/{round_number}-{variant.replace(' ', '-')}.db"
                command = [sys.executable, script, "--child", variant, *child_args(variant, url)]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode != 0:
                    raise SystemExit(f"{variant} failed:\n{done.stderr[-3000:]}")
                results[variant].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"  round {round_number + 1}: " + ", ".join(
                f"{variant} {results[variant][-1]['rate']:.0f}/s" for variant in variants), file=sys.stderr, flush=True)
    return results


def paired_ratio(runs: list[dict[str, float]], bare: list[dict[str, float]], key: str) -> float:
    """The median, over rounds, of a variant's ``key`` over bare's in the same round."""
    return statistics.median(run[key] / base[key] for run, base in zip(runs, bare, strict=True))


if __name__ == "__main__":
    main()
