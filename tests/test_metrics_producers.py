"""Enqueues counted where they happen: producers on a supervisor's host that share its ``metrics_dir``.

A web app served by gunicorn with several worker processes and a
short-lived script (a cron job) send jobs through a WatchtowerMiddleware
whose ``metrics_dir`` is the supervisor's: the supervisor's /metrics counts
their enqueues, keeps them after the processes exit, and folds their files.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.support.checkout import ROOT, subprocess_env
from tests.support.exposition import scrape, value
from tests.support.polling import wait_until
from tests.support.supervisors import app_env, config, metrics_url, rows, running, start_supervisor
from watchtower import store
from watchtower.models import Job
from watchtower.multiproc import file_pid
from watchtower.statuses import JobStatus, WorkerStatus

pytestmark = pytest.mark.timeout(240)


def pids_with_files(directory: Path) -> set[int]:
    return {pid for file in directory.glob("*.db") if (pid := file_pid(str(file))) is not None}


def test_a_gunicorn_app_and_a_cron_script_are_counted_by_the_supervisor(
    tmp_path: Path, sqlite_url: str, redis_namespace: str, queue_name: str
) -> None:
    path = config(tmp_path, sqlite_url, redis_namespace, queues=[queue_name], min_processes=1)
    store.connect(sqlite_url)
    metrics_dir = tmp_path / "metrics"
    env = app_env(redis_namespace, queue_name, WATCHTOWER_METRICS_DIR=str(metrics_dir), WATCHTOWER_CONFIG=str(path))
    job = {"queue": queue_name, "actor": "nap"}
    log = tmp_path / "supervisor.log"
    web_log = tmp_path / "gunicorn.log"
    with running(start_supervisor(path, "default", log, **env), log):
        url = wait_until(lambda: metrics_url(log), 60, message="the supervisor's /metrics")
        wait_until(lambda: rows("default", WorkerStatus.RUNNING), 60, message="a running worker")
        with web_log.open("ab") as out:
            web = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "--workers", "3", "--bind", "127.0.0.1:0",
                 "--graceful-timeout", "5", "apps.web_producer:app"],
                env=subprocess_env(**env), cwd=ROOT / "tests", stdout=out, stderr=subprocess.STDOUT,
            )
        with running(web, web_log):
            port = wait_until(lambda: (m := re.search(r"Listening at: http://127\.0\.0\.1:(\d+)",
                                                       web_log.read_text())) and int(m.group(1)),
                              60, message="gunicorn to listen")
            wait_until(lambda: web_log.read_text().count("Booting worker") >= 3, 60, message="3 gunicorn workers")
            served_by = []
            for _ in range(30):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/send", timeout=30) as response:
                    served_by.append(int(response.read()))
            assert value(scrape(url)[1], "watchtower_jobs_enqueued_total", **job) == 30

            script = subprocess.run([sys.executable, "-m", "apps.web_producer", "7"], env=subprocess_env(**env),
                                    cwd=ROOT / "tests", capture_output=True, text=True, timeout=60)
            assert script.returncode == 0, script.stderr
            script_pid = int(script.stdout.split()[-1])
            assert value(scrape(url)[1], "watchtower_jobs_enqueued_total", **job) == 37

            # One web worker dies (as with --max-requests, or the OOM killer): gunicorn replaces it.
            victim = served_by[0]
            assert victim in pids_with_files(metrics_dir)
            os.kill(victim, signal.SIGKILL)
            # The supervisor folds the files of the exited producers into the archive, counts kept.
            wait_until(lambda: not {victim, script_pid} & pids_with_files(metrics_dir), 60,
                       message="the exited producers' files folded")
            assert value(scrape(url)[1], "watchtower_jobs_enqueued_total", **job) == 37

            web.send_signal(signal.SIGTERM)
            assert web.wait(60) == 0

        done = Job.select().where((Job.queue == queue_name) & (Job.status == JobStatus.COMPLETED))
        wait_until(lambda: done.count() == 37, 60, message="the 37 jobs completed in the ledger")
        samples = scrape(url)[1]
        assert value(samples, "watchtower_jobs_enqueued_total", **job) == 37
        assert value(samples, "watchtower_jobs_completed_total", **job) == 37
