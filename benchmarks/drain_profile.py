"""Where a worker's time goes when Watchtower records the jobs it runs.

    python3 benchmarks/drain_profile.py [--messages 20000] [--rounds 4] [--hot] [--setting NAME=VALUE ...]

benchmarks/throughput.py measures the drain rate as users get it; this
script takes the difference apart.  Each round runs these variants, each in
a fresh child process, in rotating order.  A child enqueues ``--messages``
no-op messages to a real Redis broker (untimed; the ledger variants wait
for those rows to be written), then drains them with one
``dramatiq.Worker`` of 8 threads:

- ``bare``: Dramatiq alone;
- ``no writes``: the middleware's hooks, metrics and recorder, the recorder
  writing nothing;
- ``sqlite``: everything as shipped, recording into a SQLite file.

Per variant (medians of the rounds): the drain rate and its ratio to bare
in the same round; the process's CPU time per message during the drain
(a Dramatiq worker of one process is bound by the GIL: its CPU use stays
near 100 % of one core while the machine has idle time, so the CPU it
spends per message sets its rate); of that, the CPU of Dramatiq's own
threads (the consumer thread and the worker threads, which also run the
middleware's hooks) and of Watchtower's flusher thread; and how busy the
whole machine was (both cores, Redis included).

``--hot`` also times the hooks a message passes through (before and after
processing, ack), in a tight loop over a StubBroker, with and without the
middleware, and without its metrics listener.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
import uuid
from typing import Any

from harness import REDIS_URL

# benchmarks/throughput.py: the same rounds, pairing and clean-up.
from throughput import delete_namespace, paired_ratio, rotating_rounds

VARIANTS = ("bare", "no writes", "sqlite")
THREADS = 8


def _thread_cpu() -> dict[int, float]:
    """CPU seconds (user + system) of each thread of this process, by native id."""
    tick = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue  # the thread ended meanwhile
        seconds[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
    return seconds


def _machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all cores so far, from /proc/stat."""
    with open("/proc/stat") as stat:
        values = [int(value) for value in stat.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def child(variant: str, database_url: str, messages: int, settings: dict[str, Any]) -> dict[str, Any]:
    """One measurement, in this process."""
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    namespace = f"wtdrain_{uuid.uuid4().hex[:10]}"
    broker = RedisBroker(url=REDIS_URL, namespace=namespace)
    middleware = None
    if variant != "bare":
        import watchtower.recorder as recording
        from watchtower import WatchtowerMiddleware, store
        from watchtower.config import Settings

        if variant == "no writes":
            recording.write_batch = lambda *args, **kwargs: None  # type: ignore[assignment]
        middleware = WatchtowerMiddleware(settings=Settings(database_url=database_url, **settings))
        broker.add_middleware(middleware)
        store.connect(database_url)
    broker.emit_after("process_boot")

    @dramatiq.actor(queue_name="drain", broker=broker, max_retries=0)
    def noop(i: int) -> None:
        return None

    try:
        for i in range(messages):
            noop.send(i)
        if middleware is not None:
            middleware.recorder.flush(timeout=120)
        worker = dramatiq.Worker(broker, worker_threads=THREADS, worker_timeout=100)
        threads_before, busy_before = _thread_cpu(), _machine_busy()
        process_started, started = time.process_time(), time.perf_counter()
        worker.start()
        broker.join("drain", timeout=600_000)
        worker.join()
        elapsed = time.perf_counter() - started
        process_cpu = time.process_time() - process_started
        threads_after, busy_after = _thread_cpu(), _machine_busy()
        flusher_ids = {
            thread.native_id for thread in threading.enumerate() if thread.name.startswith("watchtower")
        }
        main_id = threading.main_thread().native_id
        per_thread = {tid: seconds - threads_before.get(tid, 0.0) for tid, seconds in threads_after.items()}
        flusher = sum(seconds for tid, seconds in per_thread.items() if tid in flusher_ids)
        dramatiq_threads = sum(
            seconds for tid, seconds in per_thread.items() if tid not in flusher_ids and tid != main_id
        )
        worker.stop()
        if middleware is not None:
            middleware.recorder.flush(timeout=120)
        busy = (busy_after[0] - busy_before[0]) / max(1, busy_after[1] - busy_before[1])
        return {
            "rate": messages / elapsed,
            "process_us": process_cpu / messages * 1e6,
            "process_share": process_cpu / elapsed,
            "dramatiq_us": dramatiq_threads / messages * 1e6,
            "flusher_us": flusher / messages * 1e6,
            "machine_busy": busy,
        }
    finally:
        delete_namespace(namespace)


def hot(messages: int, rounds: int = 5) -> dict[str, float]:
    """Microseconds a message spends in the hooks, in a tight loop (best of ``rounds``)."""
    import dramatiq
    from dramatiq.broker import MessageProxy
    from dramatiq.brokers.stub import StubBroker

    import watchtower.recorder as recording
    from watchtower import WatchtowerMiddleware
    from watchtower.config import Settings

    recording.write_batch = lambda *args, **kwargs: None  # type: ignore[assignment]
    broker = StubBroker()
    with tempfile.TemporaryDirectory() as tmp:
        middleware = WatchtowerMiddleware(settings=Settings(
            database_url=f"sqlite:///{tmp}/hot.db", recorder_buffer_size=10 * messages * rounds,
        ))
        listeners = list(middleware.listeners)
        broker.emit_after("process_boot")

        @dramatiq.actor(queue_name="hot", broker=broker)
        def noop(i: int) -> None:
            return None

        def run(with_middleware: bool, with_listeners: bool = True) -> float:
            if with_middleware and middleware not in broker.middleware:
                broker.add_middleware(middleware)
            if not with_middleware and middleware in broker.middleware:
                broker.middleware.remove(middleware)
            middleware.listeners[:] = listeners if with_listeners else []
            proxies = [MessageProxy(noop.message(i)) for i in range(messages)]
            started = time.perf_counter()
            for message in proxies:
                broker.emit_before("process_message", message)
                broker.emit_after("process_message", message, result=None)
                broker.emit_before("ack", message)
                broker.emit_after("ack", message)
            return (time.perf_counter() - started) / messages * 1e6

        best: dict[str, float] = {}
        for _ in range(rounds):
            for name, timing in (
                ("bare", lambda: run(False)),
                ("watchtower", lambda: run(True)),
                ("watchtower without metrics", lambda: run(True, with_listeners=False)),
            ):
                best[name] = min(best.get(name, float("inf")), timing())
        middleware.recorder.close(timeout=1.0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--hot", action="store_true", help="also time the hooks in a tight loop")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                        help="a Settings field for the ledger variants, e.g. recorder_flush_interval=1.0")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        settings = {name: json.loads(value) for name, value in (item.split("=", 1) for item in args.setting)}
        print(json.dumps(child(args.child, args.database_url, args.messages, settings)))
        return

    results = rotating_rounds(__file__, VARIANTS, args.rounds, lambda variant, url: [
        "--messages", str(args.messages), "--database-url", url, *(f"--setting={item}" for item in args.setting),
    ])

    def median(runs: list[dict[str, Any]], key: str) -> float:
        return statistics.median(run[key] for run in runs)

    print(f"\n{args.messages:,} no-op messages drained by 1 process x {THREADS} threads, Redis broker, "
          f"SQLite ledger; medians of {args.rounds} rounds"
          + (f"; settings: {', '.join(args.setting)}" if args.setting else "") + "\n")
    print("| variant | drain msg/s | ratio (paired) | process CPU per message (µs) | process CPU / wall "
          "| of which Dramatiq's threads (µs) | of which the flusher (µs) | machine busy (2 cores) |")
    print("|---|---|---|---|---|---|---|---|")
    bare = results["bare"]
    for variant in VARIANTS:
        runs = results[variant]
        print(f"| {variant} | {median(runs, 'rate'):.0f} | {paired_ratio(runs, bare, 'rate'):.2f} "
              f"| {median(runs, 'process_us'):.0f} | {median(runs, 'process_share') * 100:.0f} % "
              f"| {median(runs, 'dramatiq_us'):.0f} | {median(runs, 'flusher_us'):.0f} "
              f"| {median(runs, 'machine_busy') * 100:.0f} % |")
    if args.hot:
        best = hot(5_000)
        print(f"\nIn a tight loop (StubBroker, best of 5), the hooks of one message (process, ack): "
              f"Dramatiq's own middleware {best['bare']:.1f} µs; with Watchtower {best['watchtower']:.1f} µs "
              f"(+{best['watchtower'] - best['bare']:.1f}); without its metrics listener "
              f"{best['watchtower without metrics']:.1f} µs "
              f"(+{best['watchtower without metrics'] - best['bare']:.1f})")


if __name__ == "__main__":
    main()
