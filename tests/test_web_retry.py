"""Retrying a failed job through the API, with real Redis and a real worker process,
through the WSGI app in this process and through ``watchtower serve`` over HTTP.

The failed job is run again as a new job; both records name each other; the
Redis dead letter of the failed message is gone; a second retry is refused.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import httpx
import pytest

from tests.support.lab import Lab
from tests.support.polling import DEADLINE
from tests.support.servers import unique
from tests.support.web_api import AUTH, TOKEN, client, seed_job, serve_api, web_settings
from watchtower.models import Job
from watchtower.statuses import JobStatus
from watchtower.web import create_app


@pytest.mark.parametrize("transport", ["wsgi", "http"])
def test_retrying_a_failed_job_runs_it_again_and_links_both_records(lab: Lab, transport: str) -> None:
    lab.start(lab.queue, app="apps.web")
    token = unique("t")
    failed_id = lab.send("flaky", token, password="hunter2")
    failed = lab.wait_job(failed_id, JobStatus.FAILED)
    assert lab.runs(token) == 1
    assert "not fixed yet" in failed.exception
    assert failed.broker_message_id
    assert lab.dead_letter(failed.broker_message_id)[0] is not None  # Redis holds the dead letter

    lab.redis.set(f"{lab.namespace}:t:fixed:{token}", 1)
    if transport == "wsgi":
        settings = web_settings(lab.database_url, lab.namespace)
        api = client(create_app(settings, broker=lab.producer))

        def post(path: str) -> tuple[int, Any]:
            answer = api.simulate_post(path)
            return answer.status_code, answer.json

        def get(path: str) -> Any:
            return api.simulate_get(path).json

        answer = post(f"/watchtower/failed/{failed_id}/retry")
        checks(lab, token, failed_id, answer, post, get)
        return

    server = serve_api(lab.environment(WATCHTOWER_API_TOKEN=TOKEN), "--app", "apps.web")
    try:
        with httpx.Client(base_url=server.base_url, headers=AUTH, timeout=DEADLINE) as http:

            def post(path: str) -> tuple[int, Any]:
                answer = http.post(path)
                return answer.status_code, answer.json()

            def get(path: str) -> Any:
                return http.get(path).json()

            answer = post(f"/watchtower/failed/{failed_id}/retry")
            checks(lab, token, failed_id, answer, post, get)
    finally:
        assert server.stop() == 0


def checks(lab: Lab, token: str, failed_id: str, answer: tuple[int, Any], post: Any, get: Any) -> None:
    status, body = answer
    assert status == 202, body
    new_id = body["id"]
    assert new_id != failed_id
    assert body["retried_from"] == failed_id and body["actor"] == "flaky" and body["queue"] == lab.queue
    assert body["dead_letter_removed"] is True

    new = lab.wait_job(new_id, JobStatus.COMPLETED)
    assert lab.runs(token) == 2
    assert new.retried_from == failed_id
    old = Job.get(Job.message_id == failed_id)
    assert old.retried_by == new_id and old.status == JobStatus.FAILED
    stored = new.get_payload()
    assert stored["args"] == [token] and stored["kwargs"] == {"password": "hunter2"}  # redaction never touched it
    assert "traceback" not in stored["options"] and "retries" not in stored["options"]

    old_shown, new_shown = get(f"/watchtower/jobs/{failed_id}"), get(f"/watchtower/jobs/{new_id}")
    assert old_shown["retried_by"] == new_id and new_shown["retried_from"] == failed_id
    assert new_shown["status"] == "completed"
    assert new_shown["payload"]["kwargs"] == {"password": "[redacted]"}
    assert lab.dead_letter(old.broker_message_id) == (None, None)

    again, refusal = post(f"/watchtower/failed/{failed_id}/retry")
    assert again == 409 and new_id in refusal["description"]
    not_failed, refusal = post(f"/watchtower/failed/{new_id}/retry")
    assert not_failed == 409 and "completed" in refusal["description"]


def run_cli(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "watchtower", *args], env=lab.environment(), cwd=lab.tmp_path,
        capture_output=True, text=True, timeout=120,
    )


def test_the_retry_and_workers_commands_at_a_terminal(lab: Lab) -> None:
    _, worker_id = lab.start(lab.queue, app="apps.web")
    first, second = unique("t"), unique("t")
    first_id, second_id = lab.send("flaky", first), lab.send("flaky", second)
    lab.wait_job(first_id, JobStatus.FAILED)
    lab.wait_job(second_id, JobStatus.FAILED)
    elsewhere = seed_job(queue="elsewhere", actor="flaky", status=JobStatus.FAILED, args=("x",))

    lab.redis.set(f"{lab.namespace}:t:fixed:{first}", 1)
    done = run_cli(lab, "retry", first_id, "--app", "apps.web")
    assert done.returncode == 0, done.stderr
    new_id = done.stdout.split(" -> ")[1].split()[0]
    assert done.stdout.startswith(f"{first_id} -> {new_id} (flaky on {lab.queue})")
    lab.wait_job(new_id, JobStatus.COMPLETED)

    again = run_cli(lab, "retry", first_id, "--app", "apps.web")
    assert again.returncode == 1
    assert again.stderr.strip() == f"Error: job {first_id} was already retried as job {new_id}"
    unknown = run_cli(lab, "retry", "no-such-job", "--app", "apps.web")
    assert unknown.returncode == 1 and unknown.stderr.strip() == "Error: no job has the id 'no-such-job'"
    assert run_cli(lab, "retry", "--app", "apps.web").returncode == 2  # neither an id nor --all-failed

    lab.redis.set(f"{lab.namespace}:t:fixed:{second}", 1)
    everything = run_cli(lab, "retry", "--all-failed", "--queue", lab.queue, "--app", "apps.web")
    assert everything.returncode == 0, everything.stderr
    assert f"retried 1 failed jobs of queue {lab.queue}" in everything.stderr
    assert everything.stdout.startswith(f"{second_id} -> ")
    lab.wait_job(everything.stdout.split(" -> ")[1].split()[0], JobStatus.COMPLETED)
    assert Job.get(Job.id == elsewhere.id).retried_by is None  # another queue: left alone
    assert lab.runs(first) == 2 and lab.runs(second) == 2

    table = run_cli(lab, "workers")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["ID", "SUPERVISOR", "HOST", "PID", "STATUS", "QUEUES", "HEARTBEAT", "PROCESSED", "FAILED"]
    mine = [row for row in rows if row.startswith(worker_id)]
    assert len(mine) == 1 and " running " in mine[0] and lab.queue in mine[0]
