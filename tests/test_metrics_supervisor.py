"""The supervisor's /metrics: its workers' counters, restarts and lost jobs, with a real pool.

``watchtower supervise`` runs as a process of its own (see test_supervisor.py
for the app and helpers); its /metrics port (``http.port = 0``) is read from
its log.
"""

from __future__ import annotations

import os
import signal
import urllib.request
import uuid
from pathlib import Path

import pytest
from conftest import wait_until
from supervision import app_env, config, enqueue, metrics_url, rows, running, start_supervisor, wait_exit
from test_metrics import parse, promtool_check, value

from watchtower import store
from watchtower.models import Job, JobStatus, Rollup, Worker, WorkerStatus

pytestmark = pytest.mark.timeout(240)


def scrape(url: str) -> tuple[bytes, dict]:
    with urllib.request.urlopen(url, timeout=30) as response:
        body = response.read()
    return body, parse(body)


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
