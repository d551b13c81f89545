"""Metrics of real worker processes (Redis broker) against what the ledger recorded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support.checkout import subprocess_env
from tests.support.exposition import parse, promtool_check, value
from tests.support.polling import wait_until
from tests.support.servers import REDIS_URL, unique
from watchtower import exposition, metric_listeners, multiproc
from watchtower.config import load_settings, replace
from watchtower.ledger import mark_lost
from watchtower.models import Job, Rollup, Worker
from watchtower.statuses import JobStatus
from watchtower.store import connect


class Workers:
    """Worker processes writing into one multiprocess directory, as a supervisor's children.

    ``kind`` is ``dramatiq`` (apps.metrics_workload's own dramatiq.Worker) or
    ``watchtower`` (``python -m watchtower worker --app apps.metrics_workload``).
    """

    def __init__(self, directory: Path, env: dict[str, str], kind: str) -> None:
        self.directory = directory
        self.env = env
        self.kind = kind
        self.children: list[subprocess.Popen[str]] = []

    def start(self, worker_id: str | None = None) -> subprocess.Popen[str]:
        worker_id = worker_id or unique("w")
        env = dict(self.env, PROMETHEUS_MULTIPROC_DIR=str(self.directory), WT_APP_WORKER_ID=worker_id)
        if self.kind == "dramatiq":
            command = [sys.executable, "-m", "apps.metrics_workload"]
        else:
            command = [
                sys.executable, "-m", "watchtower", "--database-url", self.env["WT_APP_DATABASE_URL"], "worker",
                "--app", "apps.metrics_workload", "--worker-id", worker_id, "--threads", "2", "--sleep", "0.1",
            ]
        child = subprocess.Popen(command, env=subprocess_env(**env), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True)
        self.children.append(child)
        if self.kind == "dramatiq":
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
        else:
            wait_until(lambda: (row := Worker.get_or_none(Worker.worker_id == worker_id)) and row.status == "running",
                       timeout=60, message=f"worker {worker_id} running")
        return child

    def stop(self, child: subprocess.Popen[str]) -> None:
        """A graceful stop: the worker finishes, flushes its ledger events and exits."""
        if self.kind == "dramatiq":
            assert child.stdin is not None
            child.stdin.close()
        else:
            child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=60) == 0

    def close(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.kill()
            child.wait(timeout=30)


@pytest.fixture
def app_env(redis_namespace: str, sqlite_url: str) -> dict[str, str]:
    return {
        "WT_APP_REDIS": REDIS_URL,
        "WT_APP_NAMESPACE": redis_namespace,
        "WT_APP_QUEUE": unique("q"),
        "WT_APP_DATABASE_URL": sqlite_url,
    }


@pytest.fixture(params=["dramatiq", "watchtower"])
def workers(
    request: pytest.FixtureRequest, tmp_path: Path, app_env: dict[str, str], sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Workers]:
    """Worker processes of each kind in turn; the models bound to the ledger."""
    db = connect(sqlite_url)
    held = multiproc.prepare_multiprocess_dir(tmp_path / "metrics")
    # The producer in this process imports the same app module.
    for name, text in app_env.items():
        monkeypatch.setenv(name, text)
    sys.modules.pop("apps.metrics_workload", None)
    group = Workers(held.path, app_env, request.param)
    try:
        yield group
    finally:
        group.close()
        held.release()
        db.close()
        sys.modules.pop("apps.metrics_workload", None)


def scrape(settings, directory: Path) -> dict:
    body, _ = exposition.exposition(replace(settings, metrics_dir=str(directory)))
    return parse(body)


def ledger_counts(queue: str) -> dict[tuple[str, str], int]:
    """(kind, actor) -> count, from the job rows and the rollups."""
    counts: dict[tuple[str, str], int] = {}
    for job in Job.select().where(Job.queue == queue):
        counts[("rows", job.actor)] = counts.get(("rows", job.actor), 0) + 1
        counts[(job.status, job.actor)] = counts.get((job.status, job.actor), 0) + 1
        if job.status != JobStatus.SKIPPED:  # a skipped job never started, yet counts an attempt
            counts[("attempts", job.actor)] = counts.get(("attempts", job.actor), 0) + job.attempts
    for rollup in Rollup.select().where(Rollup.queue == queue):
        key = ("rollup_" + rollup.kind, rollup.actor)
        counts[key] = counts.get(key, 0) + rollup.count
    return counts


def test_counters_equal_the_ledger_after_a_run_of_real_workers(workers: Workers, app_env, sqlite_url):
    import apps.metrics_workload as app

    queue = app_env["WT_APP_QUEUE"]
    # The recorder counters have no labels: this process's own share may
    # hold drops of earlier tests in the same run (outage tests drop on purpose).
    dropped_before = value(scrape(load_settings(overrides={"database_url": sqlite_url}, env={}), workers.directory),
                           "watchtower_recorder_events_dropped_total") or 0
    for _ in range(2):
        workers.start()
    for n in range(20):
        app.ok.send(n)
    for n in range(3):
        app.ok.send_with_options(args=(n,), delay=200)
    for n in range(4):
        app.flaky.send(f"f{n}")
    for _ in range(3):
        app.boom.send()
    for n in range(2):
        app.ok.send_with_options(args=(n,), max_age=1)  # AgeLimit skips it
    app.middleware.recorder.flush(timeout=30)
    total = 20 + 3 + 4 + 3 + 2

    def finished() -> bool:
        return Job.select().where((Job.queue == queue) & Job.status.in_(JobStatus.FINISHED)).count() == total

    wait_until(finished, timeout=60, message="every job finished in the ledger")
    for child in list(workers.children):
        workers.stop(child)  # flushes every event the workers hold

    counts = ledger_counts(queue)
    samples = scrape(load_settings(overrides={"database_url": sqlite_url}, env={}), workers.directory)
    expected = {
        "ok": {"enqueued": 25, "started": 23, "completed": 23, "retried": 0, "failed": 0, "skipped": 2},
        "flaky": {"enqueued": 4, "started": 8, "completed": 4, "retried": 4, "failed": 0, "skipped": 0},
        "boom": {"enqueued": 3, "started": 6, "completed": 0, "retried": 3, "failed": 3, "skipped": 0},
    }
    for actor, numbers in expected.items():
        job = {"queue": queue, "actor": actor}

        def counter(name: str, job: dict[str, str] = job) -> float:
            return value(samples, f"watchtower_jobs_{name}_total", **job) or 0

        # The metrics, the job rows and the rollups all say the same.
        assert counter("enqueued") == counts.get(("rows", actor), 0) == numbers["enqueued"]
        assert counter("enqueued") == counts.get(("rollup_enqueued", actor), 0)
        assert counter("started") == counts.get(("rollup_started", actor), 0) == numbers["started"]
        assert counter("started") == counts.get(("attempts", actor), 0)
        for outcome in ("completed", "failed", "skipped"):
            assert counter(outcome) == counts.get((outcome, actor), 0) == numbers[outcome], (actor, outcome)
            assert counter(outcome) == counts.get((f"rollup_{outcome}", actor), 0), (actor, outcome)
        assert counter("retried") == counts.get(("rollup_retried", actor), 0) == numbers["retried"]
        assert value(samples, "watchtower_jobs_in_progress", **job) == 0
        ran = numbers["completed"] + numbers["retried"] + numbers["failed"]
        assert value(samples, "watchtower_job_duration_seconds_count", **job) == ran
        assert value(samples, "watchtower_job_queue_wait_seconds_count", **job) == numbers["started"]
    written = value(samples, "watchtower_recorder_events_written_total")
    assert written is not None and written > 0
    assert (value(samples, "watchtower_recorder_events_dropped_total") or 0) == dropped_before


def test_a_killed_worker_leaves_the_in_progress_gauge_and_its_counters_stay(workers: Workers, app_env, sqlite_url):
    import apps.metrics_workload as app

    settings = load_settings(overrides={"database_url": sqlite_url}, env={})
    queue = app_env["WT_APP_QUEUE"]
    victim = workers.start(worker_id="victim-1")
    app.hang.send("k1")
    app.middleware.recorder.flush(timeout=30)
    client = redis.Redis.from_url(REDIS_URL)
    job = {"queue": queue, "actor": "hang"}
    try:
        wait_until(lambda: client.get(f"{app_env['WT_APP_NAMESPACE']}:started:k1"), timeout=30)
        wait_until(lambda: value(scrape(settings, workers.directory), "watchtower_jobs_in_progress", **job) == 1,
                   timeout=30, message="the running attempt in the gauge")
        wait_until(lambda: Job.get_or_none(Job.queue == queue, Job.status == JobStatus.PROCESSING), timeout=30,
                   message="the ledger to show the attempt running")

        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=30)
        # What the supervisor does for a child that died, however it died:
        multiproc.mark_process_dead(victim.pid, workers.directory)
        metric_listeners.record_lost(mark_lost("victim-1", "killed"))

        samples = scrape(settings, workers.directory)
        # Its file went with it (the producer, this process, holds a zero).
        assert (value(samples, "watchtower_jobs_in_progress", **job) or 0) == 0
        assert value(samples, "watchtower_jobs_started_total", **job) == 1  # counters stay
        assert value(samples, "watchtower_jobs_enqueued_total", **job) == 1
        lost_in_ledger = sum(r.count for r in Rollup.select().where((Rollup.queue == queue) & (Rollup.kind == "lost")))
        assert value(samples, "watchtower_jobs_lost_total", **job) == lost_in_ledger == 1
        promtool_check(exposition.exposition(replace(settings, metrics_dir=str(workers.directory)))[0])
    finally:
        client.close()
