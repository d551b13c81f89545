"""Healing, steering and memory of a real supervisor.

    python3 benchmarks/supervisor.py [--rounds 5]

Starts ``watchtower supervise`` (2 worker processes, a Redis broker of its own
namespace, a SQLite ledger and the database command bus in a temporary
directory) with the test app ``tests/apps/basic.py`` while a producer keeps
sending short jobs, then measures:

- ``kill -9`` of a worker -> its replacement's row running, and -> the
  replacement's first completed job in the ledger (each victim the oldest
  worker, once it has lived ``RestartPolicy.quick`` seconds: younger deaths
  count towards the crash-loop backoff, by design);
- pause / resume / stop through ``WorkerManager`` -> the worker's row says so
  (a stopped worker is not replaced: a start request refills the pool);
- restart through ``WorkerManager`` -> the fresh process's row running;
- resident memory: the supervisor, a pool worker (with Watchtower), and a
  plain ``dramatiq.Worker`` process of the same app without Watchtower.

Prints a Markdown table of medians and maxima.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
from harness import REDIS_URL, ROOT, stop_process, wait_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import dramatiq
    import redis
    from dramatiq.brokers.redis import RedisBroker

    from watchtower import Job, JobStatus, Worker, WorkerManager, WorkerStatus, load_settings, store
    from watchtower.pool import RestartPolicy

    namespace = f"wtbench_{uuid.uuid4().hex[:10]}"
    queue = "bench"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("WATCHTOWER_")},
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
        "WT_TEST_NAMESPACE": namespace,
        "WT_TEST_REDIS": REDIS_URL,
        "WT_TEST_QUEUE": queue,
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "watchtower.toml"
        path.write_text(
            f'app = "apps.basic"\n'
            f'database_url = "sqlite:///{tmp}/ledger.db"\n'
            f'command_bus = "database"\n'
            f'redis_url = "{REDIS_URL}"\n'
            f'redis_prefix = "{namespace}"\n'
            f'hostname = "bench"\n'
            f'heartbeat_timeout = 10.0\n'
            f'[http]\nport = 0\n'
            f'[supervisors.default]\nqueues = ["{queue}"]\nmin_processes = 2\nmax_processes = 4\n'
            f'threads = 2\ntimeout = 30\nmemory = 1024\nsleep = 0.1\n'
        )
        settings = load_settings(path, env={})
        store.connect(settings.database_url)
        log = open(Path(tmp) / "supervisor.log", "w")
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "watchtower", "--config", str(path), "supervise"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        broker = RedisBroker(url=REDIS_URL, namespace=namespace)
        broker.declare_queue(queue)
        stop_producer = threading.Event()

        def produce() -> None:
            while not stop_producer.is_set():
                message = dramatiq.Message(queue_name=queue, actor_name="work", args=(uuid.uuid4().hex, 0.0),
                                           kwargs={}, options={})
                broker.enqueue(message)
                stop_producer.wait(0.02)

        producer = threading.Thread(target=produce, daemon=True)
        kills: list[float] = []
        first_jobs: list[float] = []
        commands: dict[str, list[float]] = {"pause": [], "resume": [], "stop": [], "restart": []}
        memory: dict[str, float] = {}
        try:
            def running() -> list[Any]:
                return list(Worker.select().where((Worker.supervisor == "default")
                                                  & (Worker.status == WorkerStatus.RUNNING)))

            wait_for(lambda: len(running()) == 2)
            producer.start()
            wait_for(lambda: Job.select().where(Job.status == JobStatus.COMPLETED).count() > 20)
            memory["supervisor"] = psutil.Process(supervisor.pid).memory_info().rss
            memory["pool worker (with Watchtower)"] = statistics.mean(
                psutil.Process(w.pid).memory_info().rss for w in running())

            for _ in range(args.rounds):
                before = {w.worker_id for w in Worker.select()}
                # The oldest worker, once it has lived RestartPolicy.quick
                # seconds: a process that dies younger counts as a quick
                # failure of its slot, and from the third in a row the slot
                # waits before starting the next one (crash-loop backoff).
                # Killing a replacement a second after it started would
                # measure that policy, not the healing of a worker that died.
                victim = min(running(), key=lambda w: w.started_at)
                time.sleep(max(0.0, RestartPolicy.quick + 0.5 - victim.get_uptime()))
                started = time.perf_counter()
                os.kill(victim.pid, signal.SIGKILL)
                new = wait_for(lambda before=before: [w for w in running() if w.worker_id not in before])[0]
                kills.append(time.perf_counter() - started)
                wait_for(lambda new=new: Job.select().where((Job.worker_id == new.worker_id)
                                                    & (Job.status == JobStatus.COMPLETED)).exists())
                first_jobs.append(time.perf_counter() - started)
                wait_for(lambda: len(running()) == 2)

            manager = WorkerManager(settings)
            for _ in range(args.rounds):
                target = running()[0].worker_id

                def status(target: str = target) -> str:
                    return str(Worker.get(Worker.worker_id == target).status)

                for command, expected in (("pause", WorkerStatus.PAUSED), ("resume", WorkerStatus.RUNNING)):
                    started = time.perf_counter()
                    getattr(manager, f"{command}_worker")(target)
                    wait_for(lambda expected=expected: status() == expected)
                    commands[command].append(time.perf_counter() - started)
                started = time.perf_counter()
                manager.stop_worker(target)
                wait_for(lambda: status() in (WorkerStatus.STOPPED, WorkerStatus.STOPPING))
                commands["stop"].append(time.perf_counter() - started)
                manager.start_worker(queue)  # a stopped worker's slot stays empty until asked for
                wait_for(lambda: len(running()) == 2)
                before = {w.worker_id for w in Worker.select()}
                started = time.perf_counter()
                manager.restart_worker(running()[0].worker_id)
                wait_for(lambda before=before: [w for w in running() if w.worker_id not in before])
                commands["restart"].append(time.perf_counter() - started)
                wait_for(lambda: len(running()) == 2)
        finally:
            stop_producer.set()
            stop_process(supervisor)
            log.close()

        # A plain Dramatiq worker process of the same app, without Watchtower.
        plain = subprocess.Popen(
            [sys.executable, "-c",
             "import time, dramatiq, apps.basic as app\n"
             "w = dramatiq.Worker(app.broker, worker_threads=2, worker_timeout=100); w.start()\n"
             "time.sleep(600)"],
            env=env,
        )
        try:
            time.sleep(3)  # let it boot and settle; nothing to wait for but its own start
            memory["plain dramatiq.Worker (no Watchtower)"] = psutil.Process(plain.pid).memory_info().rss
        finally:
            plain.kill()
            plain.wait()
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
        if keys:
            client.delete(*keys)

    def row(name: str, values: list[float]) -> str:
        return f"| {name} | {statistics.median(values):.2f} | {max(values):.2f} | {len(values)} |"

    print("\nSupervisor: 2 workers x 2 threads, Redis broker, SQLite ledger, database command bus\n")
    print("| from -> to | median (s) | max (s) | rounds |")
    print("|---|---|---|---|")
    print(row("kill -9 of a worker -> replacement's row running", kills))
    print(row("kill -9 of a worker -> replacement's first job completed", first_jobs))
    for command, values in commands.items():
        what = "the fresh process's row running" if command == "restart" else "row says so"
        print(row(f"WorkerManager.{command}_worker -> {what}", values))
    print("\n| process | resident memory (MiB) |")
    print("|---|---|")
    for name, rss in memory.items():
        print(f"| {name} | {rss / 2**20:.1f} |")


if __name__ == "__main__":
    main()
