"""``watchtower supervise`` as a Dramatiq user runs it: ``watchtower supervise tasks -p 2 -t 3 -Q a -Q b``.

Each test is a user's directory (tests/support/cli_project.py): a ``tasks.py``, no
configuration file, no PYTHONPATH, a real Redis broker under the test's own
namespace and a real ledger.  Latencies are never asserted.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli_project import Project, one_error_line
from tests.support.polling import wait_until
from tests.support.servers import fresh_database
from tests.support.supervisors import children, wait_exit
from watchtower import store
from watchtower.models import Job, Worker
from watchtower.statuses import JobStatus, WorkerStatus

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def project(tmp_path: Path, sqlite_url: str, redis_namespace: str) -> Project:
    return Project(tmp_path, sqlite_url, redis_namespace)


def live(supervisor: str = "default") -> list[Worker]:
    return list(Worker.select().where((Worker.supervisor == supervisor) & (Worker.status == WorkerStatus.RUNNING))
                .order_by(Worker.worker_id))


@pytest.fixture(params=["sqlite", "postgresql"])
def any_project(request: pytest.FixtureRequest, tmp_path: Path, redis_namespace: str) -> Iterator[Project]:
    with fresh_database(request.param, tmp_path) as url:
        yield Project(tmp_path, url, redis_namespace)


def test_a_pool_of_two_processes_of_three_threads_on_two_queues_from_flags_alone(any_project: Project) -> None:
    project = any_project
    first, second = project.queues
    store.connect(project.database_url)
    with project.supervise("tasks", "-p", "2", "-t", "3", "-Q", first, "-Q", second, "--sleep", "0.2") as sup:
        rows = wait_until(lambda: len(live()) == 2 and live(), 90, message="two running workers")
        assert len(children(sup)) == 2
        for row in rows:
            assert json.loads(row.options)["threads"] == 3
            assert sorted(json.loads(row.queues)) == sorted([first, second])
            assert row.hostname and row.pid in {child.pid for child in children(sup)}
        ids = [project.send("greet", f"g{n}") for n in range(6)] + [project.send("tally", f"t{n}") for n in range(6)]

        def completed() -> set[str]:
            done = Job.select(Job.message_id, Job.queue).where(
                Job.message_id.in_(ids) & (Job.status == JobStatus.COMPLETED)
            )
            return {job.queue for job in done} if done.count() == len(ids) else set()

        assert wait_until(completed, 90, message="the jobs of both queues completed") == {first, second}
        log = (project.root / "supervise.log").read_text()
        # The start block: where it answers, what it uses, and the limits beside Dramatiq's.
        assert "API:     http://127.0.0.1:" in log and "metrics: http://127.0.0.1:" in log
        assert f"ledger:  {store.redact_url(project.database_url)}" in log
        assert "bus:     database (the ledger's tables)" in log
        assert "pool default: 2 processes" in log and "3 threads each [dramatiq: 8]" in log
        assert f"queues {first}, {second} [dramatiq: every queue the app declares]" in log
        assert "tries 3 [dramatiq: 21, Retries max_retries=20]" in log and "timeout 60 s [dramatiq: 600 s" in log
        sup.send_signal(signal.SIGTERM)
        assert wait_exit(sup, 120) == 0


def test_flags_override_the_environment_and_the_environment_shapes_the_pool(project: Project) -> None:
    _, second = project.queues
    store.connect(project.database_url)
    env = project.env(WATCHTOWER_SUPERVISORS_DEFAULT_THREADS="5", WATCHTOWER_SUPERVISORS_DEFAULT_QUEUES=second,
                      WATCHTOWER_SUPERVISORS_DEFAULT_MIN_PROCESSES="1")
    with project.supervise("tasks", "-t", "2", "--sleep", "0.2", env=env) as sup:
        [row] = wait_until(live, 90, message="a running worker")
        assert json.loads(row.options)["threads"] == 2  # the flag beats WATCHTOWER_SUPERVISORS_DEFAULT_THREADS
        assert json.loads(row.queues) == [second]  # from the environment
        project.send("tally", "from-env")
        wait_until(lambda: project.traces("from-env"), 60, message="the job of the environment's queue")
        sup.send_signal(signal.SIGTERM)
        assert wait_exit(sup, 120) == 0


def test_watch_reloads_the_workers_when_the_code_changes_and_the_new_code_runs(project: Project) -> None:
    store.connect(project.database_url)
    pid_file = project.root / "run" / "supervise.pid"
    pid_file.parent.mkdir()
    with project.supervise("tasks", "-p", "2", "-t", "1", "-Q", project.queues[0], "--sleep", "0.2",
                           "--watch", str(project.root), "--pid-file", str(pid_file),
                           "--log-file", "supervise-file.log") as sup:
        before = wait_until(lambda: len(live()) == 2 and live(), 90, message="two running workers")
        assert pid_file.read_text().strip() == str(sup.pid)
        project.send("version", "v1")
        assert wait_until(lambda: project.traces("v1"), 60, message="the first version ran")[0].endswith(":1")

        tasks = project.root / "tasks.py"
        tasks.write_text(tasks.read_text().replace("VERSION = 1", "VERSION = 2"))
        old = {row.worker_id for row in before}
        after = wait_until(lambda: len(fresh := [r for r in live() if r.worker_id not in old]) == 2 and fresh, 120,
                           message="two fresh workers after the change")
        assert {row.pid for row in after}.isdisjoint({row.pid for row in before})
        assert {row.status for row in Worker.select().where(Worker.worker_id.in_(old))} == {WorkerStatus.STOPPED}
        project.send("version", "v2")
        [ran] = wait_until(lambda: project.traces("v2"), 60, message="the job after the change")
        assert ran.endswith(":2") and int(ran.split(":")[0]) in {row.pid for row in after}

        assert sup.poll() is None and pid_file.read_text().strip() == str(sup.pid)  # started afresh in place
        text = (project.root / "supervise-file.log").read_text()
        assert "tasks.py changed: reloading the workers" in text and "starting afresh" in text
        assert text.count("pool default: 2 processes") == 2  # one start block each time
        assert "consuming" in text  # the workers' own output goes to the log file too
        assert "pool default" not in (project.root / "supervise.log").read_text()  # and not to stderr
        sup.send_signal(signal.SIGTERM)
        assert wait_exit(sup, 120) == 0
    assert not pid_file.exists()


def test_a_second_supervisor_on_a_live_pid_file_is_refused(project: Project) -> None:
    pid_file = project.root / "supervise.pid"
    pid_file.write_text(f"{os.getpid()}\n")  # this test's process: alive
    result = project.run("supervise", "tasks", "--pid-file", str(pid_file))
    assert result.returncode == 1
    assert f"the pid file {pid_file} names process {os.getpid()}, which is running" in one_error_line(result)
    assert pid_file.read_text() == f"{os.getpid()}\n"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_missing_app_is_one_error_text_for_every_command_that_imports_it(project: Project) -> None:
    expected = (f"Error: cannot import app module 'taks' (setting 'app'): ModuleNotFoundError: No module named 'taks'; "
                f"added to sys.path: {project.root} (--path changes it)")
    for args in (["supervise", "taks"], ["worker", "--app", "taks"], ["retry", "--all-failed", "--app", "taks"],
                 ["status", "--app", "taks"]):
        result = project.run(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert one_error_line(result) == expected, args
    # --path says where to look instead; the error names it.
    (project.root / "src").mkdir()
    result = project.run("supervise", "taks", "--path", "src")
    assert result.returncode == 2
    assert one_error_line(result).endswith(f"added to sys.path: {project.root / 'src'} (--path changes it)")


def test_path_puts_another_directory_on_sys_path_for_the_supervisor_and_its_workers(project: Project) -> None:
    src = project.root / "src"
    src.mkdir()
    (project.root / "tasks.py").rename(src / "tasks.py")
    store.connect(project.database_url)
    with project.supervise("tasks", "-p", "1", "-Q", project.queues[0], "--path", "src", "--sleep", "0.2") as sup:
        wait_until(live, 90, message="a running worker")
        project.send("greet", "from-src")
        wait_until(lambda: project.traces("from-src"), 60, message="the job of the app in src/")
        sup.send_signal(signal.SIGTERM)
        assert wait_exit(sup, 120) == 0


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["supervise", "tasks", "-p", "two"], "Invalid value for '--processes' / '-p'"),
        (["supervise", "tasks", "-p", "0"], "Invalid value for '--processes' / '-p'"),
        (["supervise", "tasks", "--processes-count", "2"], "No such option"),
        (["supervise", "tasks", "-p", "2", "--max-processes", "3"], "-p sets both min_processes and max_processes"),
        (["supervise", "tasks", "-t", "0"], "'supervisors.default.threads' from command line option --threads"),
        (["supervise", "tasks", "--min-processes", "5"], "min_processes (5) from command line option --min-processes"),
        (["supervise", "tasks", "-Q", ""], "a queue name must not be empty"),
        (["jobs", "--status", "done"], "Invalid value for '--status'"),
        (["jobs", "--limit", "1000"], "Invalid value for '--limit'"),
        (["pause", "w1", "--all"], "give one WORKER_ID, --supervisor NAME or --all"),
    ],
)
def test_a_bad_flag_is_one_line_and_exit_2(project: Project, args: list[str], words: str) -> None:
    result = project.run(*args)
    assert result.returncode == 2, result.stderr
    assert words in one_error_line(result)


def test_an_unreachable_ledger_is_one_line_and_exit_1(project: Project) -> None:
    nowhere = f"postgresql://postgres:secret@127.0.0.1:{closed_port()}/ledger"
    for args in (["supervise", "tasks"], ["jobs"], ["status"], ["pause", "--all"], ["show", "x"]):
        result = project.run(*args, env=project.env(WATCHTOWER_DATABASE_URL=nowhere))
        assert result.returncode == 1, (args, result.stderr)
        line = one_error_line(result)
        assert "cannot open the ledger database postgresql://postgres:***@127.0.0.1" in line, line
        assert "secret" not in line


def test_watch_without_watchfiles_says_what_to_install(project: Project, tmp_path: Path) -> None:
    from tests.support.checkout import ROOT

    blockers = ROOT / "tests" / "support" / "import_blockers"
    result = project.run("supervise", "tasks", "--watch", ".",
                         env=project.env(PYTHONPATH=str(blockers), WT_TEST_BLOCK="watchfiles"))
    assert result.returncode == 2
    assert "--watch needs the watchfiles package: pip install 'dramatiq-watchtower[watch]'" in one_error_line(result)
