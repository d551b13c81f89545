"""``watchtower jobs``, ``failed``, ``show``, ``status``, ``pause``, ``resume``, ``restart`` and ``stop``
as a user runs them.

One user's directory per test (tests/support/cli_project.py), one real supervisor
started from flags, real jobs through a real Redis broker into a SQLite
ledger, and the commands run as the console script.  The ``--json``
documents are compared with what the API answers for the same ledger.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.checkout import ROOT
from tests.support.cli_project import Project, one_error_line
from tests.support.polling import wait_until
from tests.support.supervisors import wait_exit
from watchtower import store
from watchtower.config import load_settings
from watchtower.models import Job, Worker
from watchtower.statuses import JobStatus, WorkerStatus

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def project(tmp_path: Path, sqlite_url: str, redis_namespace: str) -> Project:
    return Project(tmp_path, sqlite_url, redis_namespace)


@pytest.fixture
def pool(project: Project) -> Iterator[Any]:
    """A supervisor of 2 workers on both queues, running until the test ends (then stopped with SIGTERM)."""
    store.connect(project.database_url)
    with project.supervise("tasks", "-p", "2", "-t", "2", "-Q", project.queues[0], "-Q", project.queues[1],
                           "--sleep", "0.2") as sup:
        wait_until(lambda: len(running()) == 2, 90, message="two running workers")
        yield sup
        sup.send_signal(signal.SIGTERM)
        assert wait_exit(sup, 120) == 0


def running() -> list[Worker]:
    return list(Worker.select().where(Worker.status == WorkerStatus.RUNNING).order_by(Worker.worker_id))


def statuses() -> dict[str, str]:
    return {row.worker_id: row.status for row in Worker.select()}


def api(project: Project, path: str) -> Any:
    """What the API answers at ``path`` for the same ledger (in this test's process, not the command's)."""
    import falcon.testing

    from watchtower import create_app

    settings = load_settings(env={"WATCHTOWER_DATABASE_URL": project.database_url, "WATCHTOWER_API_TOKEN": "t"},
                             cwd=project.root)
    client = falcon.testing.TestClient(create_app(settings), headers={"Authorization": "Bearer t"})
    result = client.simulate_get(f"/watchtower{path}")
    assert result.status_code == 200, result.text
    return result.json


def test_jobs_failed_show_and_status_and_their_json(project: Project, pool: Any) -> None:
    first, second = project.queues
    greets = [project.send("greet", f"g{n}") for n in range(3)]
    tallies = [project.send("tally", f"t{n}") for n in range(2)]
    boom = project.send("explode", "e1")
    wait_until(lambda: Job.select().where(Job.status.in_(JobStatus.FINISHED)).count() == 6, 90,
               message="six finished jobs")

    # jobs: the API's page, with its filters.
    page = project.json("jobs")
    assert page == api(project, "/jobs")
    # Newest first by the row's id, which follows the first event recorded (here, each job's start).
    assert sorted(job["id"] for job in page["data"]) == sorted([boom, *tallies, *greets])
    assert set(page) >= {"page", "per_page", "has_more", "next_cursor", "data"} and page["has_more"] is False
    assert sorted(job["id"] for job in project.json("jobs", "--queue", second)["data"]) == sorted(tallies)
    assert [job["id"] for job in project.json("jobs", "--status", "failed")["data"]] == [boom]
    assert [job["id"] for job in project.json("jobs", "--search", "EXPLODE")["data"]] == [boom]
    short = project.json("jobs", "--limit", "2")
    assert short["has_more"] is True and len(short["data"]) == 2
    rest = project.json("jobs", "--limit", "10", "--before", short["next_cursor"])
    assert [job["id"] for job in short["data"] + rest["data"]] == [job["id"] for job in page["data"]]
    assert project.json("jobs", "--limit", "2", "--page", "2")["data"] == rest["data"][:2]
    table = project.ok("jobs")
    assert table.splitlines()[0].split() == ["ID", "QUEUE", "ACTOR", "STATUS", "ATTEMPTS", "QUEUED", "DURATION",
                                             "WORKER"]
    assert all(message_id in table for message_id in greets + tallies + [boom])
    assert f"{boom}  {first}" in table and "failed" in table
    more = project.run("jobs", "--limit", "2")
    assert f"more: watchtower jobs --before {short['next_cursor']}" in more.stderr

    # failed: the failed jobs alone.
    failed = project.json("failed")
    assert failed == api(project, "/failed")
    assert [job["id"] for job in failed["data"]] == [boom]
    assert boom in project.ok("failed") and greets[0] not in project.ok("failed")

    # show: the whole record, traceback included.
    detail = project.json("show", boom)
    assert detail == api(project, f"/jobs/{boom}")
    assert detail["payload"]["args"] == ["e1"] and "ValueError: boom on purpose e1" in detail["exception"]
    text = project.ok("show", boom)
    assert f"id                 {boom}" in text.splitlines()[0] and 'args               ["e1"]' in text
    assert text.rstrip().endswith("ValueError: boom on purpose e1")
    missing = project.run("show", "no-such-job")
    assert missing.returncode == 1 and one_error_line(missing) == "Error: no job has the id 'no-such-job'"

    # status: per host and supervisor, and per queue with the broker's depths.
    report = project.json("status", "--app", "tasks")
    [mine] = [entry for entry in report["supervisors"] if entry["supervisor"] == "default"]
    assert mine["workers"]["running"] == 2 and mine["failed_last_hour"] == 1 and mine["hostname"]
    queues = {entry["queue"]: entry for entry in report["queues"]}
    assert queues[first]["completed_last_hour"] == 3 and queues[first]["failed_last_hour"] == 1
    assert queues[second]["completed_last_hour"] == 2
    assert queues[first]["broker"] == {"ready": 0, "delayed": 0, "dead": 1}  # the failed job is a dead letter
    assert report["broker"] == {"read": True, "error": None}
    assert report["jobs"]["completed"] == 5 and report["jobs"]["failed"] == 1
    without_app = project.json("status")
    assert without_app["broker"] == {"read": False, "error": None} and all(q["broker"] is None
                                                                           for q in without_app["queues"])
    text = project.ok("status", "--app", "tasks")
    assert "supervisor default: 2 running; 1 jobs failed in the last hour" in text
    assert any(line.split()[:4] == [first, "0", "0", "1"] for line in text.splitlines())
    assert "5 completed, 1 failed" in text


def test_pause_resume_restart_and_stop_one_worker_and_all_of_them(project: Project, pool: Any) -> None:
    one, other = (row.worker_id for row in running())

    out = project.ok("pause", one, "--wait")
    assert out.strip() == f"worker {one} (supervisor default on {Worker.get_by_id(one).hostname}): paused"
    assert statuses()[one] == WorkerStatus.PAUSED and statuses()[other] == WorkerStatus.RUNNING
    assert project.ok("resume", one, "--wait").strip().endswith(": running")
    assert statuses()[one] == WorkerStatus.RUNNING

    paused = project.json("pause", "--all", "--wait")
    assert sorted(paused["workers"]) == sorted([one, other]) and paused["skipped"] == []
    assert paused["statuses"] == {one: "paused", other: "paused"} and paused["command"] == "pause"
    again = project.json("pause", "--supervisor", "default")  # nothing left to pause: both are skipped
    assert again["workers"] == [] and {entry["id"] for entry in again["skipped"]} == {one, other}
    # A job sent while every worker is paused runs once they resume.
    project.send("greet", "after-resume")
    resumed = project.ok("resume", "--all", "--wait")
    assert "resumed 2 workers on every host" in resumed
    wait_until(lambda: project.traces("after-resume"), 60, message="the job sent while paused")

    # restart: the old record ends stopped (exit 65), a fresh process takes its place at once.
    out = project.ok("restart", one, "--wait")
    assert out.splitlines()[0].endswith(": stopped") and "a fresh process" in out
    assert Worker.get_by_id(one).exit_code == 65
    fresh = wait_until(lambda: len(running()) == 2 and one not in {r.worker_id for r in running()} and running(), 90,
                       message="a fresh worker in the restarted one's place")
    restarted = project.json("restart", "--all", "--wait")
    assert sorted(restarted["workers"]) == sorted(r.worker_id for r in fresh)
    assert set(restarted["statuses"].values()) == {"stopped"}
    after = wait_until(lambda: len(running()) == 2
                       and not {r.worker_id for r in fresh} & {r.worker_id for r in running()}
                       and running(), 90, message="two fresh workers after restart --all")
    assert {r.pid for r in after}.isdisjoint({r.pid for r in fresh})
    project.send("greet", "after-restart")
    wait_until(lambda: project.traces("after-restart"), 60, message="a job run by the restarted pool")

    # stop: for good; the pool runs one worker fewer, then none, while the supervisor lives on.
    first, second = (row.worker_id for row in after)
    out = project.ok("stop", first, "--wait")
    assert out.strip().endswith(": stopped") and statuses()[first] == WorkerStatus.STOPPED
    assert [row.worker_id for row in running()] == [second]
    stopped = project.json("stop", "--all", "--wait")
    assert stopped["workers"] == [second] and stopped["statuses"] == {second: "stopped"}
    assert running() == [] and pool.poll() is None
    assert "no live workers on every host: nothing to stop" in project.ok("stop", "--all")

    gone = project.run("pause", one)
    assert gone.returncode == 1 and one_error_line(gone) == f"Error: worker {one!r} is stopped: it cannot pause"
    unknown = project.run("resume", "no-such-worker")
    assert unknown.returncode == 1 and "unknown worker 'no-such-worker'" in one_error_line(unknown)


def test_the_commands_import_neither_falcon_nor_jinja(project: Project) -> None:
    """The CLI stays out of the web layer: with falcon and jinja2 made unimportable, every command works."""
    store.connect(project.database_url)
    blocked = project.env(PYTHONPATH=str(ROOT / "tests" / "support" / "import_blockers"), WT_TEST_BLOCK="falcon,jinja2")
    assert project.run("serve", "--port", "0", env=blocked, timeout=30).returncode != 0  # the blockers work
    for args in (["jobs", "--json"], ["failed"], ["status", "--app", "tasks", "--json"], ["workers", "--json"],
                 ["pause", "--all"], ["resume", "--all", "--json"], ["restart", "--all"], ["stop", "--all"]):
        result = project.run(*args, env=blocked)
        assert result.returncode == 0 and "Traceback" not in result.stderr, (args, result.stderr)
    result = project.run("show", "nothing", env=blocked)
    assert result.returncode == 1 and one_error_line(result) == "Error: no job has the id 'nothing'"
    json.loads(project.run("jobs", "--json", env=blocked).stdout)
