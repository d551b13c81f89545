"""Steering a real worker process through the API: pause, resume and stop take effect,
through the WSGI app in this process and through ``watchtower serve`` over HTTP.
Start requests reach a supervisor's inbox; unknown and gone workers get 404 and 409."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis

from tests.support.lab import Lab
from tests.support.polling import DEADLINE
from tests.support.servers import REDIS_URL, unique
from tests.support.web_api import AUTH, TOKEN, client, serve_api, web_settings
from watchtower.bus import supervisor_inbox_key
from watchtower.models import Job, Worker
from watchtower.statuses import JobStatus, WorkerStatus
from watchtower.web import create_app

Call = Callable[[str, str, Any], tuple[int, Any]]


def steer_and_check(lab: Lab, call: Call) -> None:
    child, worker_id = lab.start(lab.queue, app="apps.web")
    lab.wait_status(worker_id, WorkerStatus.RUNNING)
    status, listed = call("GET", "/watchtower/workers", None)
    assert status == 200
    mine = [worker for worker in listed["data"] if worker["id"] == worker_id]
    assert len(mine) == 1 and mine[0]["status"] == "running" and mine[0]["queues"] == [lab.queue]
    assert mine[0]["pid"] == child.pid

    latencies = {}

    def command(name: str, status: str) -> None:
        started = time.monotonic()
        answer = call("POST", f"/watchtower/workers/{worker_id}/{name}", None)
        assert answer == (202, {"id": worker_id, "command": name})
        lab.wait_status(worker_id, status)
        latencies[name] = time.monotonic() - started

    command("pause", WorkerStatus.PAUSED)
    assert lab.held_messages() == 0  # a paused worker holds no message
    token = unique("t")
    waiting = lab.send("work", token)
    assert lab.redis.llen(f"{lab.namespace}:{lab.queue}") == 1  # in the queue, taken by nobody
    assert lab.runs(token) == 0

    command("resume", WorkerStatus.RUNNING)
    job = lab.wait_job(waiting, JobStatus.COMPLETED)
    assert job.worker_id == worker_id and lab.runs(token) == 1

    command("stop", WorkerStatus.STOPPED)
    assert child.wait(timeout=DEADLINE) == 0
    gone = call("POST", f"/watchtower/workers/{worker_id}/pause", None)
    assert gone[0] == 409 and "stopped" in gone[1]["description"]
    print("applied through the API in " + ", ".join(f"{k} {v:.2f} s" for k, v in latencies.items()))


def test_pause_resume_and_stop_through_the_wsgi_app(lab: Lab) -> None:
    api = client(create_app(web_settings(lab.database_url, lab.namespace), broker=lab.producer))

    def call(method: str, path: str, body: Any) -> tuple[int, Any]:
        answer = api.simulate_request(method, path, json=body)
        return answer.status_code, answer.json

    steer_and_check(lab, call)


def test_pause_resume_and_stop_over_http(lab: Lab) -> None:
    server = serve_api(lab.environment(WATCHTOWER_API_TOKEN=TOKEN))
    try:
        with httpx.Client(base_url=server.base_url, headers=AUTH, timeout=DEADLINE) as http:

            def call(method: str, path: str, body: Any) -> tuple[int, Any]:
                answer = http.request(method, path, json=body)
                return answer.status_code, answer.json()

            steer_and_check(lab, call)
    finally:
        assert server.stop() == 0


def test_a_start_request_goes_to_the_supervisors_inbox(lab: Lab) -> None:
    api = client(create_app(web_settings(lab.database_url, lab.namespace)))
    answer = api.simulate_post("/watchtower/workers/start", json={"queue": "emails", "threads": 2, "timeout": 30})
    assert answer.status_code == 202
    worker_id = answer.json["id"]
    assert answer.json["queue"] == "emails"
    row = Worker.get(Worker.worker_id == worker_id)
    assert row.status == WorkerStatus.STARTING and row.supervisor == "default"
    inbox = redis.Redis.from_url(REDIS_URL).lrange(f"{lab.namespace}:{supervisor_inbox_key('default')}", 0, -1)
    requests = [json.loads(entry.decode().split("|", 1)[1]) for entry in inbox]
    assert requests == [{"worker_id": worker_id, "queues": ["emails"], "options": {"threads": 2, "timeout": 30.0}}]


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({}, 422, '"queue" is required'),
        ({"queue": "no spaces"}, 422, "must be a queue name"),
        ({"queue": 5}, 422, "must be a queue name"),
        ({"queue": "q", "threads": 0}, 422, "'threads' must be from 1 to 256"),
        ({"queue": "q", "threads": 2.5}, 422, "'threads' must be a whole number"),
        ({"queue": "q", "timeout": "soon"}, 422, "'timeout' must be a number"),
        ({"queue": "q", "tries": True}, 422, "'tries' must be a whole number"),
        ({"queue": "q", "colour": "blue"}, 422, "unknown field 'colour'"),
        ({"queue": "q", "supervisor": "nobody"}, 422, "unknown supervisor 'nobody'"),
        ([1, 2], 400, "must be a JSON object"),
    ],
)
def test_a_bad_start_request_says_what_is_wrong(lab: Lab, body: Any, status: int, says: str) -> None:
    api = client(create_app(web_settings(lab.database_url, lab.namespace)))
    answer = api.simulate_post("/watchtower/workers/start", json=body)
    assert answer.status_code == status, answer.text
    assert says in answer.json["description"]
    assert Worker.select().count() == 0


def test_commands_to_unknown_workers_are_404(lab: Lab) -> None:
    api = client(create_app(web_settings(lab.database_url, lab.namespace)))
    for command in ("stop", "restart", "pause", "resume"):
        answer = api.simulate_post(f"/watchtower/workers/nobody-1/{command}")
        assert answer.status_code == 404 and "nobody-1" in answer.json["description"]
    assert api.simulate_post("/watchtower/workers/nobody-1/explode").status_code == 404
    assert Job.select().count() == 0
