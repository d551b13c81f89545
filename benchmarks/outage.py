#!/usr/bin/env python3
"""A long ledger outage under load: nothing lost, memory flat, and how fast the ledger catches up.

    python3 benchmarks/outage.py [--rate 200] [--outage 600] [--warmup 20] [--spool-bytes N]

A private PostgreSQL server (initdb in a temporary directory, started and
stopped here; never the machine's own), a ``watchtower worker`` (8 threads,
a no-op actor) and a producer process sending ``--rate`` jobs a second, each
with the WatchtowerMiddleware and its spool.  After ``--warmup`` seconds the
server stops for ``--outage`` seconds and starts again; the load goes on
throughout.  Printed: both processes' resident memory before, during and
after the outage (and its slope), the spool on disk at the outage's end, how
long after the server's return every job sent until then had its final row
and every spool was written, and the final check (every job's row
completed, every event once in the rollups, no drop counted).

``--spool-bytes 0`` turns the spool off (memory then holds the outage's
events, up to ``recorder.buffer_size``): the comparison for memory.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
from harness import REDIS_URL, ROOT

from tests.support.private_servers import PrivatePostgres

HERE = Path(__file__).resolve().parent

QUEUE = "bench"


def produce(rate: float) -> None:
    """The producer process: sends ``rate`` jobs a second until SIGTERM, then prints how many."""
    import bench_app
    import redis

    from watchtower import WatchtowerMiddleware

    bench_app.broker.add_middleware(WatchtowerMiddleware())
    counter = redis.Redis.from_url(REDIS_URL)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    sent = 0
    started = time.monotonic()
    while not stop:
        due = started + sent / rate
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        bench_app.noop.send(sent)
        sent += 1
        if sent % 20 == 0:
            counter.set(f"{bench_app.NAMESPACE}:sent", sent)
    counter.set(f"{bench_app.NAMESPACE}:sent", sent)
    print(sent, flush=True)
    # Exit: the recorder writes (or spools) what it holds, within its shutdown budget.


def rss_mb(process: psutil.Process) -> float:
    try:
        return process.memory_info().rss / 1e6
    except psutil.Error:
        return float("nan")


def slope_per_minute(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) samples, in MB a minute."""
    if len(samples) < 3:
        return float("nan")
    xs = [t for t, _ in samples]
    ys = [v for _, v in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else float("nan")


def spool_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*.spool")) if root.exists() else 0


def spool_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*.spool") if p.stat().st_size > 16] if root.exists() else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0, help="jobs a second")
    parser.add_argument("--outage", type=float, default=600.0, help="seconds the database is away")
    parser.add_argument("--warmup", type=float, default=20.0)
    parser.add_argument("--spool-bytes", type=int, default=None, help="recorder.spool_bytes (0: no spool)")
    parser.add_argument("--child-producer", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_producer:
        produce(args.rate)
        return

    import redis

    from watchtower import store
    from watchtower.models import Job, Rollup
    from watchtower.multiproc import read_metrics
    from watchtower.statuses import JobStatus

    namespace = f"wtbench-{uuid.uuid4().hex[:8]}"
    work = Path(tempfile.mkdtemp(prefix="wt-outage-"))
    spool_root = work / "spool"
    metrics_dir = work / "metrics"
    metrics_dir.mkdir()
    server = PrivatePostgres()
    server.start()
    url = server.create_database("ledger")
    store.connect(url).close()
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE), str(ROOT / "tests")]),
        WATCHTOWER_DATABASE_URL=url + "?connect_timeout=2",
        WATCHTOWER_COMMAND_BUS="redis",
        WATCHTOWER_REDIS_URL=REDIS_URL,
        WATCHTOWER_REDIS_PREFIX=namespace,
        WATCHTOWER_RECORDER_SPOOL_DIR=str(spool_root),
        WATCHTOWER_METRICS_DIR=str(metrics_dir),
        WT_BENCH_NAMESPACE=namespace,
        WT_BENCH_QUEUE=QUEUE,
        WT_BENCH_REDIS=REDIS_URL,
    )
    if args.spool_bytes is not None:
        env["WATCHTOWER_RECORDER_SPOOL_BYTES"] = str(args.spool_bytes)
    worker = subprocess.Popen(
        [sys.executable, "-m", "watchtower", "worker", QUEUE, "--app", "bench_app", "--worker-id", "bench-worker",
         "--threads", "8", "--memory", "0"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(work / "worker.log", "wb"),
    )
    producer = None
    db = store.open_database(url)

    def count(*statuses: str) -> int:
        query = Job.select().where(Job.queue == QUEUE)
        if statuses:
            query = query.where(Job.status.in_(statuses))
        return int(query.count(db))

    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and count() == 0:
            if producer is None:
                time.sleep(2)  # the worker boots
                producer = subprocess.Popen(
                    [sys.executable, __file__, "--child-producer", "--rate", str(args.rate)], env=env,
                    stdout=subprocess.PIPE, stderr=open(work / "producer.log", "wb"), text=True,
                )
            time.sleep(0.2)
        assert producer is not None and count() > 0, (work / "worker.log").read_text()[-2000:]
        processes = {"worker": psutil.Process(worker.pid), "producer": psutil.Process(producer.pid)}
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in processes}

        def sample(since: float) -> None:
            for name, process in processes.items():
                samples[name].append((time.monotonic() - since, rss_mb(process)))

        time.sleep(args.warmup)
        before = {name: rss_mb(p) for name, p in processes.items()}
        db.close()
        server.stop()
        down = time.monotonic()
        while time.monotonic() - down < args.outage:
            sample(down)
            time.sleep(1.0)
        at_end = {name: rss_mb(p) for name, p in processes.items()}
        on_disk = spool_bytes(spool_root)
        r = redis.Redis.from_url(REDIS_URL)
        server.start()
        back = time.monotonic()
        sent_before = int(r.get(f"{namespace}:sent") or 0)  # the jobs sent before the return
        db.connect(reuse_if_open=True)
        caught_up = None
        while time.monotonic() - back < 1800:
            if count(JobStatus.COMPLETED) >= sent_before and not spool_files(spool_root):
                caught_up = time.monotonic() - back
                break
            time.sleep(0.5)
        after = {name: rss_mb(p) for name, p in processes.items()}
        producer.send_signal(signal.SIGTERM)
        out, _ = producer.communicate(timeout=120)
        sent = int(out.strip())
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and count(JobStatus.COMPLETED) < sent:
            time.sleep(0.5)
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=120)
        time.sleep(1)
        rows, completed = count(), count(JobStatus.COMPLETED)
        events = sum(x.count for x in Rollup.select().where(Rollup.queue == QUEUE).execute(db))
        dropped = sum(s.value for f in read_metrics(str(metrics_dir)) for s in f.samples
                      if s.name == "watchtower_recorder_events_dropped_total")
        r.close()

        print(f"`python3 benchmarks/outage.py --rate {args.rate:g} --outage {args.outage:g} --warmup {args.warmup:g}"
              + (f" --spool-bytes {args.spool_bytes}" if args.spool_bytes is not None else "") + "`\n")
        print(f"{args.rate:g} jobs/s; PostgreSQL away for {args.outage:g} s after {args.warmup:g} s; "
              f"{sent:,} jobs sent in all\n")
        print("| process | RSS before (MB) | at the outage's end | max during | slope during (MB/min) "
              "| after catching up |")
        print("|---|---|---|---|---|---|")
        for name in processes:
            values = [v for _, v in samples[name]]
            print(f"| {name} | {before[name]:.1f} | {at_end[name]:.1f} | {max(values):.1f} | "
                  f"{slope_per_minute(samples[name]):+.2f} | {after[name]:.1f} |")
        print()
        print(f"- spool on disk at the outage's end: {on_disk / 1e6:.1f} MB")
        print(f"- every job sent before the return final, and every spool written: "
              f"{caught_up:.1f} s after the database was back" if caught_up is not None else "- did not catch up")
        print(f"- at the end: {rows:,} rows for {sent:,} jobs sent, {completed:,} completed; "
              f"{events:,} events in the rollups for {3 * sent:,} (enqueued, started, completed); "
              f"{dropped:g} dropped")
    finally:
        for process in (producer, worker):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
        db.close()
        server.close()
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
