"""The supervisor's /metrics: its workers' counters, restarts and lost jobs, with a real pool.

``watchtower supervise`` runs as a process of its own (see test_supervisor.py
for the app and helpers); its /metrics port (``http.port = 0``) is read from
its log.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from tests.support.exposition import promtool_check, scrape, value
from tests.support.polling import wait_until
from tests.support.supervisors import app_env, config, enqueue, metrics_url, rows, running, start_supervisor, wait_exit
from watchtower import store
from watchtower.models import Job, Rollup, Worker
from watchtower.statuses import JobStatus, WorkerStatus

pytestmark = pytest.mark.timeout(240)


def test_the_supervisor_serves_its_pool_with_restarts_and_lost_jobs(
    tmp_path: Path, sqlite_url: str, redis_namespace: str, queue_name: str
) -> None:
    path = config(tmp_path, sqlite_url, redis_namespace, queues=[queue_name], min_processes=2)
    store.connect(sqlite_url)
    log = tmp_path / "supervisor.log"
    job = {"queue": queue_name, "actor": "nap"}
    with running(start_supervisor(path, "default", log, **app_env(redis_namespace, queue_name)), log) as sup:
        url = wait_until(lambda: metrics_url(log), 60, message="the supervisor's /metrics")
        assert url.startswith("http://127.0.0.1:")
        wait_until(lambda: len(rows("default", WorkerStatus.RUNNING)) == 2, 60, message="2 running workers")

        quick = [enqueue(redis_namespace, queue_name, uuid.uuid4().hex, seconds=0) for _ in range(5)]
        slow = enqueue(redis_namespace, queue_name, uuid.uuid4().hex, seconds=4)
        holder = wait_until(lambda: Job.get_or_none((Job.message_id == slow) & (Job.status == JobStatus.PROCESSING)),
                            30, message="the slow job to start")
        wait_until(lambda: Job.select().where(Job.message_id.in_(quick) & (Job.status == JobStatus.COMPLETED)).count()
                   == 5, 30, message="the quick jobs to complete")

        def counters() -> dict[str, float]:
            samples = scrape(url)[1]
            names = ("started", "completed", "failed", "retried", "skipped", "lost")
            found = {name: value(samples, f"watchtower_jobs_{name}_total", **job) or 0.0 for name in names}
            found["in_progress"] = value(samples, "watchtower_jobs_in_progress", **job) or 0.0
            found["restarts"] = value(samples, "watchtower_worker_restarts_total", supervisor="default",
                                      reason="killed") or 0.0
            return found

        def consistent(found: dict[str, float]) -> bool:
            """Attempts running = started - finished - lost: true whatever moment the scrape catches."""
            ended = sum(found[name] for name in ("completed", "failed", "retried", "skipped", "lost"))
            return found["in_progress"] == found["started"] - ended

        before = wait_until(lambda: (found := counters())["in_progress"] == 1 and found, 30,
                            message="the slow job in progress")
        assert before["started"] == 6 and before["completed"] == 5 and consistent(before)

        victim = Worker.get(Worker.worker_id == holder.worker_id)
        os.kill(victim.pid, signal.SIGKILL)
        # The supervisor reaps it, marks it dead in the metrics, counts the
        # restart and the lost attempt; the broker redelivers the message.
        after = wait_until(lambda: (found := counters())["lost"] == 1 and found["restarts"] == 1 and
                           consistent(found) and found, 60, message="the kill counted")
        assert after["started"] >= 6 and after["completed"] >= 5  # the dead worker's counters stayed
        lost = sum(r.count for r in Rollup.select().where((Rollup.queue == queue_name) & (Rollup.kind == "lost")))
        assert lost == after["lost"] == 1

        wait_until(lambda: Job.get_or_none((Job.message_id == slow) & (Job.status == JobStatus.COMPLETED)), 60,
                   message="the slow job re-run to completion")
        final = wait_until(lambda: (found := counters())["completed"] == 6 and found, 30, message="6 completed")
        assert final["started"] == 7 and final["in_progress"] == 0 and final["lost"] == 1

        body, samples = scrape(url)
        workers = wait_until(lambda: value(scrape(url)[1], "watchtower_workers", supervisor="default",
                                           status="running") == 2 and True, 30, message="2 running workers")
        assert workers
        assert value(samples, "watchtower_queue_messages", queue=queue_name, state="ready") == 0
        assert value(samples, "watchtower_queue_messages", queue=queue_name, state="dead") == 0
        promtool_check(body)

        sup.send_signal(signal.SIGTERM)
        assert wait_exit(sup, 90) == 0


@pytest.mark.parametrize("dramatiq_prometheus", [False, True], ids=["plain-app", "with-dramatiq-prometheus"])
def test_every_series_is_there_at_zero_and_the_counters_match_the_ledger(
    tmp_path: Path, sqlite_url: str, redis_namespace: str, queue_name: str, dramatiq_prometheus: bool
) -> None:
    """Before any job, each job and restart series reads 0; after 12 jobs, the counters say what the ledger says.

    With Dramatiq's own Prometheus middleware in the app, which points
    PROMETHEUS_MULTIPROC_DIR at its own directory in every worker when it
    boots: Watchtower's values must stay in the supervisor's directory.
    """
    path = config(tmp_path, sqlite_url, redis_namespace, queues=[queue_name], min_processes=2)
    store.connect(sqlite_url)
    log = tmp_path / "supervisor.log"
    env = app_env(redis_namespace, queue_name)
    dramatiq_dir = tmp_path / "dramatiq-prometheus"
    if dramatiq_prometheus:
        env.update(WT_TEST_DRAMATIQ_PROMETHEUS="1", dramatiq_prom_db=str(dramatiq_dir))
    job = {"queue": queue_name, "actor": "nap"}
    # Records of earlier deploys: one stopped and one lost two hours ago, one stopped ten minutes ago.
    now = int(time.time() * 1000)
    for worker_id, status, ended in [("old-stopped", WorkerStatus.STOPPED, now - 7_200_000),
                                     ("old-lost", WorkerStatus.LOST, now - 7_200_000),
                                     ("recent-stopped", WorkerStatus.STOPPED, now - 600_000)]:
        Worker.insert(worker_id=worker_id, supervisor="default", hostname="host-a", status=status,
                      started_at=ended - 60_000, last_heartbeat=ended, stopped_at=ended).execute()
    with running(start_supervisor(path, "default", log, **env), log) as sup:
        url = wait_until(lambda: metrics_url(log), 60, message="the supervisor's /metrics")
        wait_until(lambda: len(rows("default", WorkerStatus.RUNNING)) == 2, 60, message="2 running workers")

        samples = scrape(url)[1]
        # Live workers as they are; stopped and lost of the last hour only.
        assert value(samples, "watchtower_workers", supervisor="default", status="running") == 2
        assert value(samples, "watchtower_workers", supervisor="default", status="stopped") == 1
        assert value(samples, "watchtower_workers", supervisor="default", status="lost") == 0
        for name in ("enqueued", "started", "completed", "failed", "retried", "skipped", "lost"):
            # The producer here is the test, not a worker: enqueued is 0 in the workers' files.
            assert value(samples, f"watchtower_jobs_{name}_total", **job) == 0, name
        assert value(samples, "watchtower_jobs_in_progress", **job) == 0
        assert value(samples, "watchtower_job_duration_seconds_count", **job) == 0
        assert value(samples, "watchtower_job_queue_wait_seconds_count", **job) == 0
        for reason in ("exit", "crash", "killed", "hung", "memory"):
            assert value(samples, "watchtower_worker_restarts_total", supervisor="default", reason=reason) == 0

        sent = [enqueue(redis_namespace, queue_name, uuid.uuid4().hex, seconds=0) for _ in range(12)]
        done = Job.select().where(Job.message_id.in_(sent) & (Job.status == JobStatus.COMPLETED))
        wait_until(lambda: done.count() == 12, 60, message="12 jobs completed in the ledger")
        completed = wait_until(
            lambda: value(scrape(url)[1], "watchtower_jobs_completed_total", **job) == 12 and 12, 30,
            message="/metrics to count the 12 completed jobs",
        )
        samples = scrape(url)[1]
        assert completed == done.count() == 12
        assert value(samples, "watchtower_jobs_started_total", **job) == 12
        assert value(samples, "watchtower_job_duration_seconds_count", **job) == 12
        if dramatiq_prometheus:
            # Dramatiq's middleware ran too, and wrote its own metrics where it wanted them.
            assert any(dramatiq_dir.glob("counter_*.db")), "Dramatiq's Prometheus middleware wrote nothing"
            assert not any(dramatiq_dir.glob("*watchtower*")), "Watchtower's values went to Dramatiq's directory"

        sup.send_signal(signal.SIGTERM)
        assert wait_exit(sup, 90) == 0
