"""A worker killed mid-job: its attempt is marked lost, and the broker's
redelivery to another worker completes the same row.

Real processes, a real Redis broker with a short heartbeat timeout (so the
dead worker's message comes back within a second), one SQLite ledger.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
from pathlib import Path

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from tests.support.checkout import subprocess_env
from tests.support.polling import wait_until
from tests.support.servers import REDIS_URL
from watchtower import WatchtowerMiddleware, load_settings, store
from watchtower.ledger import mark_lost
from watchtower.models import Job, Rollup
from watchtower.statuses import JobStatus


def test_a_killed_workers_job_is_lost_then_completed_by_another(
    tmp_path: Path, redis_namespace: str, queue_name: str
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    env = dict(WT_TEST_NAMESPACE=redis_namespace, WT_TEST_QUEUE=queue_name, WT_TEST_DATABASE_URL=url,
               WT_TEST_REDIS=REDIS_URL, WT_TEST_HEARTBEAT_MS="1000", WATCHTOWER_RECORDER_FLUSH_INTERVAL="0.05")
    children: list[subprocess.Popen[str]] = []

    def start_worker(worker_id: str) -> subprocess.Popen[str]:
        child = subprocess.Popen([sys.executable, "-m", "apps.ledger_worker"], cwd=tmp_path,
                                 env=subprocess_env(**env, WT_TEST_WORKER_ID=worker_id),
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        children.append(child)
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        return child

    # The producer: this process, with the app's actor declared on a broker of its own.
    producer = RedisBroker(url=REDIS_URL, namespace=redis_namespace)
    settings = load_settings(env={}, cwd=tmp_path, overrides={"database_url": url})
    middleware = WatchtowerMiddleware(settings=settings)
    producer.add_middleware(middleware)
    hang_once = dramatiq.actor(lambda token: None, broker=producer, queue_name=queue_name, actor_name="hang_once")
    try:
        victim = start_worker("victim")
        message = hang_once.send("t1")
        assert middleware.recorder.flush(timeout=30)
        store.connect(url)

        def row() -> Job:
            return Job.get(Job.message_id == message.message_id)

        wait_until(lambda: row().status == JobStatus.PROCESSING and row().worker_id == "victim", timeout=30,
                   message="the victim to start the job")
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=30)

        # What a supervisor does when it sees a worker die.
        lost = mark_lost("victim", "worker killed")
        assert [job.message_id for job in lost] == [message.message_id]
        assert (row().status, row().lost_attempts, row().exception) == (JobStatus.PENDING, 1, "lost: worker killed")
        assert mark_lost("victim", "worker killed") == []  # once only

        rescuer = start_worker("rescuer")
        wait_until(lambda: row().status == JobStatus.COMPLETED, timeout=60,
                   message="the redelivered message to complete")
        assert rescuer.stdin is not None
        rescuer.stdin.close()
        assert rescuer.wait(timeout=60) == 0
    finally:
        middleware.recorder.close()
        producer.close()
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()

    job = row()
    assert (job.status, job.attempts, job.worker_id, job.lost_attempts) == (JobStatus.COMPLETED, 1, "rescuer", 1)
    assert job.queued_at <= job.started_at <= job.completed_at
    assert job.exception == "lost: worker killed"  # the row keeps why an attempt went missing
    counts: collections.Counter[str] = collections.Counter()
    for rollup in Rollup.select().where(Rollup.queue == queue_name):
        counts[rollup.kind] += rollup.count
    assert counts == {"enqueued": 1, "started": 2, "lost": 1, "completed": 1}
    traces = redis.Redis.from_url(REDIS_URL)
    try:
        assert int(traces.get(f"{redis_namespace}:t:tries:t1")) == 2
    finally:
        traces.close()
