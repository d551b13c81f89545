"""Four producer processes and four worker processes record into one SQLite file at once.

The workers are the ``dramatiq`` command's own (one parent, four forked
worker processes) running an app that adds WatchtowerMiddleware, as a user
would deploy it; the producers are plain scripts that send and exit without
flushing.  Every job must land completed, every event exactly once (the
rollups count each written event), and no process may report "database is
locked".
"""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
from pathlib import Path

import redis

from tests.support.checkout import subprocess_env
from tests.support.polling import wait_until
from tests.support.servers import REDIS_URL
from watchtower import store
from watchtower.models import Job, Rollup, Worker
from watchtower.statuses import JobStatus, WorkerStatus

PRODUCERS = 4
PER_PRODUCER = 400
WORKER_PROCESSES = 4


def test_four_producers_and_four_workers_share_one_sqlite_file(
    tmp_path: Path, redis_namespace: str, queue_name: str
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    # Short flush and heartbeat intervals: many small transactions from eight
    # processes, so that writers really do meet at the file's lock.
    env = subprocess_env(WT_TEST_NAMESPACE=redis_namespace, WT_TEST_QUEUE=queue_name,
                         WT_TEST_DATABASE_URL=url, WT_TEST_REDIS=REDIS_URL,
                         WATCHTOWER_RECORDER_FLUSH_INTERVAL="0.02", WATCHTOWER_HEARTBEAT_INTERVAL="0.1")
    total = PRODUCERS * PER_PRODUCER
    logs: list[Path] = []

    def start(name: str, *args: str) -> subprocess.Popen[bytes]:
        log = tmp_path / f"{name}.log"
        logs.append(log)
        with log.open("wb") as out:
            return subprocess.Popen([sys.executable, *args], cwd=tmp_path, env=env, stdout=out,
                                    stderr=subprocess.STDOUT)

    children: list[subprocess.Popen[bytes]] = []
    try:
        # Workers and producers start together against a file that does not exist yet.
        workers = start("workers", "-m", "dramatiq", "apps.ledger_app",
                        "--processes", str(WORKER_PROCESSES), "--threads", "2")
        children.append(workers)
        producers = [start(f"producer-{n}", "-m", "apps.ledger_producer", str(n), str(PER_PRODUCER))
                     for n in range(PRODUCERS)]
        children.extend(producers)
        for producer in producers:
            assert producer.wait(timeout=180) == 0, producer.args

        db = store.connect(url)

        def completed() -> int:
            return Job.select().where(Job.status == JobStatus.COMPLETED).count()

        wait_until(lambda: completed() == total, timeout=180, interval=0.5,
                   message=f"{total} completed jobs in the ledger")
        workers.send_signal(signal.SIGTERM)
        assert workers.wait(timeout=120) == 0
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()

    output = {log.name: log.read_text(errors="replace") for log in logs}
    for name, text in output.items():
        assert "database is locked" not in text, name
        assert "cannot write" not in text, name  # not one failed batch
        assert "Traceback" not in text, f"{name}:\n{text[-3000:]}"
    for n in range(PRODUCERS):
        assert f"producer {n} sent {PER_PRODUCER}" in output[f"producer-{n}.log"]

    runs = redis.Redis.from_url(REDIS_URL)
    try:
        assert int(runs.get(f"{redis_namespace}:t:runs") or 0) == total
    finally:
        runs.close()

    jobs = list(Job.select())
    assert len(jobs) == total
    assert all(job.status == JobStatus.COMPLETED and job.attempts == 1 for job in jobs)
    assert {job.queue for job in jobs} == {queue_name}
    # Every event of every job written exactly once: enqueued by the
    # producers, started and completed by the workers.
    counts: collections.Counter[str] = collections.Counter()
    for rollup in Rollup.select():
        counts[rollup.kind] += rollup.count
    assert counts == {"enqueued": total, "started": total, "completed": total}

    rows = list(Worker.select())
    assert len(rows) == WORKER_PROCESSES and len({row.pid for row in rows}) == WORKER_PROCESSES
    assert all(row.status == WorkerStatus.STOPPED for row in rows)  # flushed at worker shutdown
    assert sum(row.jobs_processed for row in rows) == total
    assert {job.worker_id for job in jobs} <= {row.worker_id for row in rows}
    db.close()
