"""How soon the jobs of a worker killed with SIGKILL run again, with the brokers' default settings.

    python3 benchmarks/rescue.py [--rounds 5] [--brokers redis,rabbitmq] [--bare-rounds 1]

Starts ``watchtower supervise`` (2 worker processes x 2 threads, a SQLite
ledger and the database command bus in a temporary directory) with the test
app ``tests/apps/sup_app.py``, whose Redis broker keeps Dramatiq's
defaults (heartbeat timeout 60 s, maintenance on 1 in 1000 commands).  Each
round sends two 4-second jobs, waits until both run, kills the worker that
runs the first with SIGKILL and measures the seconds until each job it held
starts again (its actor records every start in Redis); the victim is a
worker that has lived ``RestartPolicy.quick`` seconds, so that no round
meets the crash-loop backoff.

``--bare-rounds`` also measures the same on Redis without Watchtower: two
``dramatiq`` commands of the same app, one worker process each; the killed
worker's jobs come back when the broker's own maintenance finds its consumer
silent for 60 s (a minute or more, at the luck of the 1-in-1000 draw).

Prints a Markdown table of medians and maxima.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from harness import RABBITMQ_URL, REDIS_URL, ROOT, stop_process, wait_for

JOB_SECONDS = 4.0


def child_env(namespace: str, queue: str, broker: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("WATCHTOWER_")},
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
        "WT_TEST_NAMESPACE": namespace, "WT_TEST_REDIS": REDIS_URL, "WT_TEST_QUEUE": queue,
        "WT_TEST_BROKER": broker, "WT_TEST_RABBITMQ": RABBITMQ_URL,
    }


@contextlib.contextmanager
def sender(kind: str, namespace: str, queue: str) -> Iterator[Callable[[str], None]]:
    """A function that sends ``nap(token, JOB_SECONDS)`` on a broker of ``kind``."""
    import dramatiq

    if kind == "redis":
        from dramatiq.brokers.redis import RedisBroker

        broker: Any = RedisBroker(url=REDIS_URL, namespace=namespace, middleware=[])
    else:
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        broker = RabbitmqBroker(url=RABBITMQ_URL, middleware=[])
    broker.declare_queue(queue)
    try:
        yield lambda token: broker.enqueue(dramatiq.Message(
            queue_name=queue, actor_name="nap", args=(token, JOB_SECONDS), kwargs={}, options={}))
    finally:
        broker.close()
        if kind == "rabbitmq":
            import pika

            connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
            for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
                connection.channel().queue_delete(queue=name)
            connection.close()


def starts(client: Any, namespace: str, token: str) -> list[int]:
    return [int(pid) for pid in client.lrange(f"{namespace}:t:starts:{token}", 0, -1)]


def supervised(kind: str, rounds: int) -> list[float]:
    """Seconds from each kill to the last of the victim's jobs starting again, under a supervisor."""
    import redis

    from watchtower import Worker, WorkerStatus, store
    from watchtower.pool import RestartPolicy

    namespace, queue = f"wtbench_{uuid.uuid4().hex[:10]}", f"bench_{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(REDIS_URL)
    seconds: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, sender(kind, namespace, queue) as send:
        path = Path(tmp) / "watchtower.toml"
        path.write_text(
            f'app = "apps.sup_app"\ndatabase_url = "sqlite:///{tmp}/ledger.db"\ncommand_bus = "database"\n'
            f'hostname = "bench"\nheartbeat_timeout = 10.0\n[http]\nport = 0\n'
            f'[supervisors.default]\nqueues = ["{queue}"]\nmin_processes = 2\nmax_processes = 4\n'
            f'threads = 2\ntimeout = 30\nmemory = 1024\nsleep = 0.1\n'
        )
        store.connect(f"sqlite:///{tmp}/ledger.db")
        log = open(Path(tmp) / "supervisor.log", "w")
        supervisor = subprocess.Popen([sys.executable, "-m", "watchtower", "--config", str(path), "supervise"],
                                      env=child_env(namespace, queue, kind), stdout=log, stderr=subprocess.STDOUT)

        def running() -> list[Any]:
            return list(Worker.select().where(Worker.status == WorkerStatus.RUNNING))

        try:
            for _ in range(rounds):
                wait_for(lambda: len(running()) == 2, what="2 running workers")
                youngest = max(w.started_at for w in running())
                time.sleep(max(0.0, RestartPolicy.quick + 0.5 - (time.time() - youngest.timestamp())))
                pids = {w.pid for w in running()}
                tokens = [uuid.uuid4().hex for _ in range(2)]
                for token in tokens:
                    send(token)
                wait_for(lambda tokens=tokens: all(starts(client, namespace, t) for t in tokens),
                         what="both jobs running")
                victim = starts(client, namespace, tokens[0])[0]
                assert victim in pids
                held = [t for t in tokens if starts(client, namespace, t)[0] == victim]
                killed = time.perf_counter()
                os.kill(victim, signal.SIGKILL)
                wait_for(lambda held=held: all(len(starts(client, namespace, t)) >= 2 for t in held), 300,
                         "the killed worker's jobs to start again")
                seconds.append(time.perf_counter() - killed)
                wait_for(lambda tokens=tokens: all(client.get(f"{namespace}:t:runs:{t}") for t in tokens),
                         what="both jobs done")
        finally:
            stop_process(supervisor)
            log.close()
            keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
            if keys:
                client.delete(*keys)
            client.close()
    return seconds


def bare(rounds: int) -> list[float]:
    """The same on Redis with two plain ``dramatiq`` commands: the broker's own redelivery."""
    import redis

    namespace, queue = f"wtbench_{uuid.uuid4().hex[:10]}", f"bench_{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(REDIS_URL)
    seconds: list[float] = []
    commands: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [sys.executable, "-m", "dramatiq", "apps.sup_app", "--processes", "1", "--threads", "2",
             "--queues", queue], env=child_env(namespace, queue, "redis"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        commands.append(process)
        return process

    with sender("redis", namespace, queue) as send:
        try:
            start()
            start()
            for _ in range(rounds):
                tokens = [uuid.uuid4().hex for _ in range(2)]
                for token in tokens:
                    send(token)
                wait_for(lambda tokens=tokens: all(starts(client, namespace, t) for t in tokens),
                         what="both jobs running")
                victim = starts(client, namespace, tokens[0])[0]
                held = [t for t in tokens if starts(client, namespace, t)[0] == victim]
                killed = time.perf_counter()
                os.kill(victim, signal.SIGKILL)  # the command then stops; the other one goes on
                wait_for(lambda held=held: all(len(starts(client, namespace, t)) >= 2 for t in held), 900,
                         "the broker to redeliver the killed worker's jobs")
                seconds.append(time.perf_counter() - killed)
                wait_for(lambda tokens=tokens: all(client.get(f"{namespace}:t:runs:{t}") for t in tokens),
                         what="both jobs done")
                for process in list(commands):
                    if process.poll() is not None:
                        commands.remove(process)
                        start()
        finally:
            for process in commands:
                process.send_signal(signal.SIGTERM)
            for process in commands:
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    process.kill()
            keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
            if keys:
                client.delete(*keys)
            client.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--brokers", default="redis,rabbitmq")
    parser.add_argument("--bare-rounds", type=int, default=1, help="rounds without Watchtower (a minute or more each)")
    args = parser.parse_args()

    results: list[tuple[str, list[float]]] = []
    for kind in [name.strip() for name in args.brokers.split(",") if name.strip()]:
        results.append((f"{kind}, supervised (rescue)", supervised(kind, args.rounds)))
    if args.bare_rounds:
        results.append(("redis, bare dramatiq (the broker's own redelivery)", bare(args.bare_rounds)))

    print("\nkill -9 of a worker running jobs -> each of them started again; brokers at their defaults "
          f"(Redis: heartbeat timeout 60 s, maintenance 1 in 1000); 2 workers x 2 threads, {JOB_SECONDS:g} s jobs\n")
    print("| broker | median (s) | max (s) | rounds |")
    print("|---|---|---|---|")
    for name, values in results:
        print(f"| {name} | {statistics.median(values):.2f} | {max(values):.2f} | {len(values)} |")


if __name__ == "__main__":
    main()
