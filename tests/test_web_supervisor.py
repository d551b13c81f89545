"""The API served by a supervisor beside its /metrics: a worker asked for over HTTP is
spawned by that supervisor, and stops when told to; a pool worker told to restart is replaced."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support.polling import wait_until
from tests.support.supervisors import app_env, config, metrics_url, rows, running, start_supervisor
from watchtower import store
from watchtower.models import Worker
from watchtower.statuses import WorkerStatus

pytestmark = pytest.mark.timeout(240)


def test_a_worker_started_through_the_supervisors_api_is_spawned_and_stopped(
    tmp_path: Path, sqlite_url: str, redis_namespace: str, queue_name: str
) -> None:
    path = config(tmp_path, sqlite_url, redis_namespace, queues=[queue_name], min_processes=1)
    store.connect(sqlite_url)
    log = tmp_path / "supervisor.log"
    with running(start_supervisor(path, "default", log, **app_env(redis_namespace, queue_name)), log):
        base = wait_until(lambda: metrics_url(log).removesuffix("/metrics"), 60, message="the supervisor's server")
        wait_until(lambda: len(rows("default", WorkerStatus.RUNNING)) == 1, 60, message="the pool's worker")
        # No token is configured: the supervisor's API answers loopback clients.
        with httpx.Client(base_url=base, timeout=30) as http:
            assert http.get("/metrics").status_code == 200
            listed = http.get("/watchtower/workers").json()["data"]
            assert [worker["status"] for worker in listed] == ["running"]

            started = http.post("/watchtower/workers/start", json={"queue": queue_name, "threads": 1})
            assert started.status_code == 202
            worker_id = started.json()["id"]
            row = wait_until(
                lambda: (found := Worker.get_or_none(Worker.worker_id == worker_id)) is not None
                and found.status == WorkerStatus.RUNNING and found,
                60, message="the requested worker to run",
            )
            assert row.supervisor == "default" and row.pid

            assert http.post(f"/watchtower/workers/{worker_id}/stop").status_code == 202
            wait_until(lambda: Worker.get(Worker.worker_id == worker_id).status == WorkerStatus.STOPPED, 60,
                       message="the requested worker to stop")
            assert http.post(f"/watchtower/workers/{worker_id}/resume").status_code == 409
            poll = http.get("/watchtower/api/poll").json()
            assert poll["stats"]["active_workers"] == 1  # the pool's own worker is still there

            # A restart gives the pool's slot a fresh process.
            pool = listed[0]
            assert http.post(f"/watchtower/workers/{pool['id']}/restart").json() == {
                "id": pool["id"], "command": "restart",
            }
            fresh = wait_until(lambda: [w for w in rows("default", WorkerStatus.RUNNING) if w.worker_id != pool["id"]],
                               60, message="the restarted worker's new process")[0]
            assert fresh.pid != pool["pid"] and fresh.restarts == 1
            assert Worker.get(Worker.worker_id == pool["id"]).exit_reason == "command: restart"
