"""Long ledger outages: a PostgreSQL server of the test's own is stopped while jobs run, and started again.

Past the recorder's memory buffer, events go to the spool on local disk and
come back when the database does: nothing is lost.  A worker stopped during
the outage exits within its shutdown budget and leaves what it could not
write in its spool, for the next process on the host.  Only past the spool's
own bound are events dropped, and then every one is counted (at close too,
also under the stock ``dramatiq`` command, whose log pipe is closed by then).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from tests.support.checkout import subprocess_env
from tests.support.polling import wait_until
from tests.support.private_servers import PrivatePostgres
from tests.support.recording import Jobs, completed, job_events_written
from tests.support.servers import REDIS_URL, unique
from watchtower import models, store
from watchtower.events import WorkerEvent
from watchtower.models import Job, Worker
from watchtower.multiproc import read_metrics
from watchtower.recorder import Recorder
from watchtower.spool import HEADER_SIZE, spool_directory
from watchtower.statuses import JobStatus


@pytest.fixture
def private_postgres() -> Iterator[tuple[PrivatePostgres, str]]:
    """A running private server and the URL of a ledger on it (its schema made)."""
    server = PrivatePostgres()
    try:
        server.start()
        url = server.create_database("ledger")
        store.connect(url).close()
        yield server, url
    finally:
        if models.database.obj is not None:
            models.database.obj.close()
        server.close()


def spool_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.spool")) if directory.exists() else []


def worker_row(db: Any, worker_id: str) -> Worker | None:
    return Worker.select().where(Worker.worker_id == worker_id).first(db)


def test_an_outage_whose_events_pass_the_memory_buffer_loses_none(
    private_postgres: tuple[PrivatePostgres, str], redis_namespace: str, tmp_path: Path,
) -> None:
    server, url = private_postgres
    spool = tmp_path / "spool"
    recorder = Recorder(url + "?connect_timeout=2", flush_interval=0.05, buffer_size=1_000, batch_size=200,
                        spool_dir=spool)
    direct = store.open_database(url)
    try:
        with Jobs(redis_namespace, recorder, tmp_path) as jobs:
            jobs.send(50)
            wait_until(jobs.all_ran, timeout=60, message="the jobs before the outage")
            assert recorder.flush(timeout=60)
            direct.close()
            server.stop()
            jobs.send(3_000)  # 9,000 events, nine times the memory buffer
            wait_until(jobs.all_ran, timeout=120, message="every job to run while the ledger is away")
            wait_until(lambda: recorder.stats().spooled >= 8_000, timeout=60,
                       message="the events past memory to reach the spool")
            stats = recorder.stats()
            assert stats.dropped == 0 and stats.buffered <= 1_000
            print(f"during the outage: {stats.buffered} events in memory, {stats.spooled} in the spool")
            server.start()
            back = time.monotonic()
            ids = jobs.sent
            wait_until(lambda: completed(direct, ids) == len(ids), timeout=120,
                       message="every row to be final after the ledger is back")
            print(f"every row final {time.monotonic() - back:.1f} s after the database was back")
            assert recorder.flush(timeout=60)
        stats = recorder.stats()
        assert stats.dropped == 0 and stats.spooled == 0
        assert job_events_written(direct, jobs.queue) == 3 * len(ids)  # every event exactly once
        assert Job.select().where(Job.queue == jobs.queue).count(direct) == len(ids)
        assert Job.select().where((Job.queue == jobs.queue) & (Job.attempts != 1)).count(direct) == 0
    finally:
        recorder.close()
        direct.close()
    assert spool_files(spool) == []  # written out and deleted


def worker_env(url: str, namespace: str, queue: str, spool_root: Path, **more: str) -> dict[str, str]:
    return subprocess_env(
        WATCHTOWER_DATABASE_URL=url + "?connect_timeout=2",
        WATCHTOWER_COMMAND_BUS="redis",
        WATCHTOWER_REDIS_URL=REDIS_URL,
        WATCHTOWER_REDIS_PREFIX=namespace,
        WATCHTOWER_RECORDER_SPOOL_DIR=str(spool_root),
        WATCHTOWER_RECORDER_FLUSH_INTERVAL="0.05",
        WT_TEST_NAMESPACE=namespace,
        WT_TEST_QUEUE=queue,
        WT_TEST_REDIS=REDIS_URL,
        **more,
    )


class Producer:
    """Sends ``apps.spool_app``'s jobs without a middleware of its own, and counts their runs."""

    def __init__(self, namespace: str, queue: str) -> None:
        self.namespace = namespace
        self.broker = RedisBroker(url=REDIS_URL, namespace=namespace)
        self.actor = dramatiq.actor(lambda number: None, broker=self.broker, queue_name=queue, actor_name="run",
                                    max_retries=0)
        self.redis = redis.Redis.from_url(REDIS_URL)
        self.sent: list[str] = []

    def send(self, count: int) -> None:
        for _ in range(count):
            self.sent.append(self.actor.send(len(self.sent)).message_id)

    def runs(self) -> int:
        return int(self.redis.get(f"{self.namespace}:t:runs") or 0)

    def close(self) -> None:
        self.broker.close()
        self.redis.close()


def test_sigterm_during_an_outage_exits_within_the_budget_and_the_next_process_writes_the_rest(
    private_postgres: tuple[PrivatePostgres, str], redis_namespace: str, tmp_path: Path,
) -> None:
    server, url = private_postgres
    queue = unique("q")
    root = tmp_path / "spools"
    budget = 3.0
    env = worker_env(url, redis_namespace, queue, root, WATCHTOWER_RECORDER_BUFFER_SIZE="300",
                     WATCHTOWER_RECORDER_SHUTDOWN_TIMEOUT=str(budget))
    command = [sys.executable, "-m", "watchtower", "worker", queue, "--app", "apps.spool_app",
               "--threads", "4", "--sleep", "0.1"]
    producer = Producer(redis_namespace, queue)
    direct = store.open_database(url)
    first = subprocess.Popen([*command, "--worker-id", "first"], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    second: subprocess.Popen[str] | None = None
    try:
        wait_until(lambda: (row := worker_row(direct, "first")) and row.status == "running",
                   timeout=60, message="the first worker to run")
        producer.send(20)
        wait_until(lambda: completed(direct, producer.sent) == 20, timeout=60, message="the jobs before the outage")
        direct.close()
        server.stop()
        producer.send(600)  # 1,200 events: four times the memory buffer
        wait_until(lambda: producer.runs() == 620, timeout=120, message="the jobs to run during the outage")
        directory = spool_directory(root, url)
        wait_until(lambda: any(p.stat().st_size > HEADER_SIZE for p in spool_files(directory)), timeout=60,
                   message="the worker to spool")

        stopping = time.monotonic()
        first.send_signal(signal.SIGTERM)
        code = first.wait(timeout=120)
        took = time.monotonic() - stopping
        _, log = first.communicate()
        print(f"SIGTERM during the outage: exit {code} after {took:.2f} s (budget {budget:g} s)")
        assert code == 0, log[-3000:]
        assert took < budget + 10, log[-3000:]  # the old waits alone were 10 + 10 + 5 s
        assert "they wait in the spool" in log
        assert "they are lost" not in log and "dropped" not in log
        left = spool_files(directory)
        assert len(left) == 1 and left[0].stat().st_size > HEADER_SIZE

        server.start()
        direct.connect(reuse_if_open=True)
        second = subprocess.Popen([*command, "--worker-id", "second"], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
        wait_until(lambda: completed(direct, producer.sent) == 620, timeout=120,
                   message="the next process to write the first one's spool")
        wait_until(lambda: not spool_files(directory) or spool_files(directory)[0] != left[0], timeout=60,
                   message="the first worker's spool to be deleted once written")
        first_row = worker_row(direct, "first")
        assert (first_row.status, first_row.exit_code) == ("stopped", 0)
        assert sum(1 for _ in Job.select().where(Job.queue == queue).execute(direct)) == 620
        # started and completed of every job exactly once (the producer records nothing)
        assert job_events_written(direct, queue) == 2 * 620
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=60) == 0
        assert spool_files(directory) == []
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.communicate()
        producer.close()
        direct.close()


def metric(directory: Path, name: str) -> float:
    return sum(sample.value for family in read_metrics(str(directory)) for sample in family.samples
               if sample.name == name)


def test_drops_past_the_spool_bound_are_counted_exactly_at_close_too_under_the_dramatiq_command(
    private_postgres: tuple[PrivatePostgres, str], redis_namespace: str, tmp_path: Path,
) -> None:
    server, url = private_postgres
    server.stop()  # away from the start
    queue = unique("q")
    root = tmp_path / "spools"
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = worker_env(url, redis_namespace, queue, root, WATCHTOWER_RECORDER_BUFFER_SIZE="100",
                     WATCHTOWER_RECORDER_BATCH_SIZE="25", WATCHTOWER_RECORDER_SPOOL_BYTES="30000",
                     WATCHTOWER_METRICS_DIR=str(metrics_dir))
    producer = Producer(redis_namespace, queue)
    workers = subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "apps.spool_app", "--processes", "1", "--threads", "2"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        total = 400
        producer.send(total)
        wait_until(lambda: producer.runs() == total, timeout=120, message="every job to run with the ledger away")
        workers.send_signal(signal.SIGTERM)
        assert workers.wait(timeout=120) == 0
        _, log = workers.communicate()
        dropped = metric(metrics_dir, "watchtower_recorder_events_dropped_total")
        at_close = [int(n) for n in re.findall(r"closing with (\d+) unwritten events: they are lost", log)]
        reported = [int(n) for n in re.findall(r"recorder dropped (\d+) events", log)]
        print(f"dropped {dropped:g} events ({sum(at_close)} at close); the log reported {reported} and {at_close}")
        assert len(at_close) == 1 and at_close[0] > 0, log[-3000:]  # the line reached stderr after the pipe closed
        assert sum(reported) + at_close[0] == dropped  # every drop said, each once

        server.start()
        directory = spool_directory(root, url)
        replayer = Recorder(url, flush_interval=0.05, spool_dir=directory)
        direct = store.open_database(url)
        try:
            replayer.record_worker(WorkerEvent("replayer", {"status": "stopped"}))  # starts its flusher
            wait_until(lambda: not spool_files(directory), timeout=60, message="the spool to be written")
            written = job_events_written(direct, queue)
            assert written > 0
            assert written + dropped == 2 * total  # started and completed: each either in the ledger or counted
            rows = Job.select().where(Job.queue == queue)
            assert all(job.status in (JobStatus.PROCESSING, JobStatus.COMPLETED) for job in rows.execute(direct))
        finally:
            replayer.close()
            direct.close()
    finally:
        if workers.poll() is None:
            workers.kill()
            workers.communicate()
        producer.close()
