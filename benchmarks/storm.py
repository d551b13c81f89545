"""Failure storm: the drain rate of failing jobs, bare Dramatiq against Dramatiq with Watchtower recording.

    python3 benchmarks/storm.py [--messages 10000] [--rounds 5] [--threads 8] [--retries 0,2,throws]
                                [--variants bare,sqlite,postgresql] [--logging off|file] [--baseline DIR]

benchmarks/throughput.py drains jobs that succeed; this drains jobs whose
actor raises, the moment a team most needs its workers to keep up.  For each
``--retries`` value R (the actor's ``max_retries``) the variants run in
rounds, each in a fresh child process, the order rotating by round
(``throws``: the actor declares ``throws=(RuntimeError,)``, so each message
fails once and Retries neither retries nor formats anything).  A child
enqueues ``--messages`` messages to a real Redis broker (its own namespace;
untimed, the ledger variants wait for those rows), then drains them with one
``dramatiq.Worker`` of ``--threads`` threads: every message fails R + 1
times (a RuntimeError three calls deep), its retries a few milliseconds
apart, so Dramatiq's Retries middleware formats a traceback for every
attempt and schedules R retries through the delay queue.  The drain ends
when the queue, its delay queue and the acks are empty.

The rate is messages per second (attempts per second is R + 1 times that);
the ratio is the median, over the rounds, of the variant's rate over bare's
in the same round.  Beside it: the process's CPU per message during the
drain, the part of it spent by Watchtower's flusher thread, and how long
after the drain the ledger was complete.  A ledger child checks that every
message's row is failed after R + 1 attempts with the final traceback.

``--logging off`` (the default) silences Dramatiq's loggers, so bare
Dramatiq formats one traceback per attempt (Retries'); ``--logging file``
logs as a worker does (warnings and errors, each failure's traceback from
the worker's own error log, into a file), which both variants pay.

``--baseline DIR`` adds a variant ``sqlite baseline``: the sqlite variant
with the watchtower package of another checkout (an earlier commit: ``git
worktree add DIR COMMIT``), in the same rounds, so that a change is measured
against what it replaces under the same load.

Servers: Redis at WT_BENCH_REDIS, PostgreSQL at WT_BENCH_POSTGRES (see
benchmarks/throughput.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

# The same rounds, pairing, clean-up and CPU counters as the other throughput scripts.
from drain_profile import _thread_cpu
from harness import REDIS_URL, ROOT, postgres_database
from throughput import delete_namespace, paired_ratio, rotating_rounds

QUEUE = "storm"


def _charge(i: int) -> None:
    raise RuntimeError(f"card of job {i} declined")


def _bill(i: int) -> None:
    _charge(i)


def child(variant: str, database_url: str | None, messages: int, threads: int, retries: str,
          logging_mode: str, log_path: str, root: Path = ROOT) -> dict[str, Any]:
    """One measurement, in this process."""
    import logging

    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    if logging_mode == "off":
        logging.disable(logging.CRITICAL)
    else:
        logging.basicConfig(filename=log_path, level=logging.WARNING)
    namespace = f"wtstorm_{uuid.uuid4().hex[:10]}"
    broker = RedisBroker(url=REDIS_URL, namespace=namespace)
    middleware = None
    if variant != "bare":
        sys.path.insert(0, str(root))
        from watchtower import WatchtowerMiddleware, store
        from watchtower.config import Settings
        from watchtower.models import Job

        middleware = WatchtowerMiddleware(settings=Settings(database_url=database_url))
        broker.add_middleware(middleware)
        store.connect(database_url)  # type: ignore[arg-type]
        Job.delete().execute()  # the PostgreSQL database is shared by the rounds
    broker.emit_after("process_boot")

    options: dict[str, Any] = {"throws": (RuntimeError,)} if retries == "throws" else {"max_retries": int(retries)}

    @dramatiq.actor(queue_name=QUEUE, broker=broker, min_backoff=5, max_backoff=10, **options)
    def pay(i: int) -> None:
        _bill(i)

    try:
        for i in range(messages):
            pay.send(i)
        if middleware is not None:
            middleware.recorder.flush(timeout=120)
        worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
        before = _thread_cpu()
        process_started, started = time.process_time(), time.perf_counter()
        worker.start()
        broker.join(QUEUE, interval=20, timeout=600_000)
        worker.join()
        elapsed = time.perf_counter() - started
        process_cpu = time.process_time() - process_started
        after = _thread_cpu()
        flusher_ids = {thread.native_id for thread in threading.enumerate() if thread.name.startswith("watchtower")}
        flusher = sum(seconds - before.get(tid, 0.0) for tid, seconds in after.items() if tid in flusher_ids)
        ledger_lag = 0.0
        if middleware is not None:
            lag_start = time.perf_counter()
            middleware.recorder.flush(timeout=120)
            ledger_lag = time.perf_counter() - lag_start
            check_ledger(messages, attempts(retries))
        worker.stop()
        return {
            "rate": messages / elapsed,
            "process_us": process_cpu / messages * 1e6,
            "flusher_us": flusher / messages * 1e6,
            "ledger_lag": ledger_lag,
        }
    finally:
        delete_namespace(namespace)


def attempts(retries: str) -> int:
    """How many times each message runs: ``max_retries + 1``, or once when the actor throws."""
    return 1 if retries == "throws" else int(retries) + 1


def check_ledger(messages: int, attempts: int) -> None:
    """Every message failed after ``attempts`` attempts, its row holding the final traceback."""
    from watchtower.models import Job
    from watchtower.statuses import JobStatus

    rows = Job.select(Job.payload, Job.exception).where(
        (Job.status == JobStatus.FAILED) & (Job.attempts == attempts)
    )
    complete = 0
    for row in rows.iterator():
        number = json.loads(row.payload)["args"][0]
        text = row.exception or ""
        if f"RuntimeError: card of job {number} declined" in text and "in _charge" in text:
            complete += 1
    if complete != messages:
        raise SystemExit(f"the ledger has {complete} failed rows with their traceback, expected {messages}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--retries", default="0,2,throws",
                        help="comma-separated max_retries values (or throws), one group of table rows each")
    parser.add_argument("--variants", default="bare,sqlite,postgresql")
    parser.add_argument("--logging", choices=("off", "file"), default="off")
    parser.add_argument("--baseline", type=Path, help="another checkout: its sqlite variant runs beside this one's")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--log-path", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        result = child(args.child, args.database_url, args.messages, args.threads, args.retries,
                       args.logging, args.log_path, args.baseline.resolve() if args.baseline else ROOT)
        print(json.dumps(result))
        return

    variants = args.variants.split(",")
    if variants[0] != "bare":
        parser.error("--variants must start with bare: the ratios are against it")
    unknown = set(variants) - {"bare", "sqlite", "postgresql"}
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(sorted(unknown))}: choose from bare, sqlite, postgresql")
    if args.baseline is not None:
        if not (args.baseline / "watchtower" / "middleware.py").is_file():
            parser.error(f"--baseline {args.baseline}: no watchtower package there")
        variants.append("sqlite baseline")
    retry_counts = args.retries.split(",")
    if any(value != "throws" and not value.isdigit() for value in retry_counts):
        parser.error(f"--retries takes max_retries values or throws, not {args.retries!r}")
    cleanups = []
    postgres_url = None
    if "postgresql" in variants:
        postgres_url, drop = postgres_database()
        cleanups.append(drop)

    def child_args(retries: str) -> Any:
        def arguments(variant: str, sqlite_url: str) -> list[str]:
            url = {"bare": None, "sqlite": sqlite_url, "postgresql": postgres_url,
                   "sqlite baseline": sqlite_url}[variant]
            return ["--messages", str(args.messages), "--threads", str(args.threads), "--retries", str(retries),
                    "--logging", args.logging, "--log-path", sqlite_url.removeprefix("sqlite:///") + ".log",
                    *(["--database-url", url] if url else []),
                    *(["--baseline", str(args.baseline)] if variant == "sqlite baseline" else [])]
        return arguments

    results = {}
    try:
        for retries in retry_counts:
            print(f"max_retries={retries}:" if retries != "throws" else "throws:", file=sys.stderr, flush=True)
            results[retries] = rotating_rounds(__file__, variants, args.rounds, child_args(retries))
    finally:
        for cleanup in cleanups:
            cleanup()

    def median(runs: list[dict[str, Any]], key: str) -> float:
        return statistics.median(run[key] for run in runs)

    print(f"\n{args.messages:,} failing messages (the actor raises), Redis broker, 1 process x {args.threads} threads, "
          f"Dramatiq's logging {'off' if args.logging == 'off' else 'into a file'}; medians of {args.rounds} "
          f"alternating rounds; ratio: the median of the per-round ratios to bare\n")
    print("| max_retries | variant | drain msg/s | attempts/s | ratio (paired) | process CPU per message (µs) "
          "| of which the flusher (µs) | ledger complete after drain (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for retries, by_variant in results.items():
        bare = by_variant["bare"]
        for variant in variants:
            runs = by_variant[variant]
            rate = median(runs, "rate")
            print(f"| {retries} | {variant} | {rate:.0f} | {rate * attempts(retries):.0f} "
                  f"| {paired_ratio(runs, bare, 'rate'):.2f} | {median(runs, 'process_us'):.0f} "
                  f"| {median(runs, 'flusher_us'):.0f} | {median(runs, 'ledger_lag'):.2f} |")


if __name__ == "__main__":
    main()
