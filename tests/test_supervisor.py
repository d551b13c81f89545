"""The supervisor with real worker processes, a real Redis broker and a real ledger.

Each test runs ``watchtower supervise`` as a process of its own, with an app
module from tests/apps/sup_*.py, its own Redis namespace and queue, and kills
every process it started (by PID) when it ends.  Latencies are printed,
never asserted (see benchmarks/ for budgets).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.checkout import subprocess_env
from tests.support.polling import stays, wait_until
from tests.support.servers import REDIS_URL
from tests.support.supervisors import (
    app_env,
    children,
    config,
    enqueue,
    enqueue_grow,
    measure,
    pid_gone,
    rows,
    running,
    start_supervisor,
    wait_exit,
    write_config,
)
from watchtower import WorkerManager, store
from watchtower.config import load_settings
from watchtower.models import Job, Rollup, Worker
from watchtower.statuses import JobStatus, WorkerStatus

pytestmark = pytest.mark.timeout(240)


def traces(namespace: str) -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL)


def runs(namespace: str, token: str) -> int:
    return int(traces(namespace).get(f"{namespace}:t:runs:{token}") or 0)


def starts(namespace: str, token: str) -> list[int]:
    return [int(pid) for pid in traces(namespace).lrange(f"{namespace}:t:starts:{token}", 0, -1)]


def test_a_pool_of_three_heals_a_killed_worker_and_its_job_is_rerun(
    tmp_path: Path, sqlite_url: str, redis_namespace: str, queue_name: str
) -> None:
    path = config(tmp_path, sqlite_url, redis_namespace, queues=[queue_name], min_processes=3)
    store.connect(sqlite_url)
    log = tmp_path / "supervisor.log"
    with running(start_supervisor(path, "default", log, **app_env(redis_namespace, queue_name)), log) as sup:
        wait_until(lambda: len(rows("default", WorkerStatus.RUNNING)) == 3, 60, message="3 running workers")
        assert len(children(sup)) == 3
        first = {w.worker_id for w in rows("default")}

        token = uuid.uuid4().hex
        enqueue(redis_namespace, queue_name, token, seconds=4)
        holder = wait_until(lambda: Job.get_or_none((Job.status == JobStatus.PROCESSING) & Job.worker_id.in_(first)),
                            30, message="the job to start")
        victim = Worker.get(Worker.worker_id == holder.worker_id)
        assert victim.pid in {c.pid for c in children(sup)}
        os.kill(victim.pid, signal.SIGKILL)

        replaced = measure(lambda: len(children(sup)) == 3 and victim.pid not in {c.pid for c in children(sup)}, 30,
                           "a replacement process")
        running_again = measure(lambda: len(rows("default", WorkerStatus.RUNNING)) == 3, 60, "3 running workers again")
        print(f"\nkill -9 -> replacement process started in {replaced:.2f} s, "
              f"its row running {replaced + running_again:.2f} s after the kill")

        job = wait_until(lambda: Job.get_or_none((Job.message_id == holder.message_id)
                                                 & (Job.status == JobStatus.COMPLETED)),
                         60, message="the job to be re-run and complete")
        assert job.lost_attempts == 1
        assert job.worker_id != victim.worker_id
        assert sum(r.count for r in Rollup.select().where(Rollup.kind == "lost")) == 1
        assert runs(redis_namespace, token) == 1  # the killed run never finished; the re-run did
        assert starts(redis_namespace, token)[0] == victim.pid and len(starts(redis_namespace, token)) == 2
        dead = Worker.get(Worker.worker_id == victim.worker_id)
        assert (dead.status, dead.exit_code, dead.exit_reason) == (WorkerStatus.LOST, -9, "killed by SIGKILL")
        new = [w for w in rows("default", WorkerStatus.RUNNING) if w.worker_id not in first]
        assert len(new) == 1 and new[0].restarts == 1 and new[0].hostname == "host-a"

        sup.send_signal(signal.SIGTERM)
        assert wait_exit(sup, 90) == 0


def test_sigterm_lets_every_worker_finish_its_job_in_hand(
    tmp_path: Path, sqlite_url: str, redis_namespace: str, queue_name: str
) -> None:
    path = config(tmp_path, sqlite_url, redis_namespace, queues=[queue_name], min_processes=2, threads=1)
    store.connect(sqlite_url)
    log = tmp_path / "supervisor.log"
    with running(start_supervisor(path, "default", log, **app_env(redis_namespace, queue_name)), log) as sup:
        wait_until(lambda: len(rows("default", WorkerStatus.RUNNING)) == 2, 60, message="2 running workers")
        pids = {c.pid for c in children(sup)}
        tokens = {enqueue(redis_namespace, queue_name, token, seconds=4): token
                  for token in (uuid.uuid4().hex for _ in range(2))}
        # Each worker prefetches, so both jobs may sit with one worker: what
        # counts is that every job in hand at SIGTERM ends, and none is lost.
        in_hand = wait_until(lambda: [j.message_id for j in Job.select().where(Job.status == JobStatus.PROCESSING)],
                             30, message="a job in hand")
        sup.send_signal(signal.SIGTERM)
        assert wait_exit(sup, 120) == 0
        assert all(pid_gone(pid) for pid in pids)
        for message_id in in_hand:
            job = Job.get(Job.message_id == message_id)
            assert (job.status, job.lost_attempts) == (JobStatus.COMPLETED, 0)
            assert runs(redis_namespace, tokens[message_id]) == 1
        assert Job.select().where((Job.lost_attempts > 0) | (Job.status == JobStatus.PROCESSING)).count() == 0
        assert Rollup.select().where(Rollup.kind == "lost").count() == 0
        assert {(w.status, w.exit_code) for w in rows("default")} == {(WorkerStatus.STOPPED, 0)}


def test_workers_stop_by_themselves_when_their_supervisor_is_killed(
    tmp_path: Path, sqlite_url: str, redis_namespace: str, queue_name: str
) -> None:
    path = config(tmp_path, sqlite_url, redis_namespace, queues=[queue_name], min_processes=2)
    store.connect(sqlite_url)
    log = tmp_path / "supervisor.log"
    with running(start_supervisor(path, "default", log, **app_env(redis_namespace, queue_name)), log) as sup:
        wait_until(lambda: len(rows("default", WorkerStatus.RUNNING)) == 2, 60, message="2 running workers")
        pids = [c.pid for c in children(sup)]
        sup.send_signal(signal.SIGKILL)
        sup.wait(10)
        gone = measure(lambda: all(pid_gone(pid) for pid in pids), 60, "the orphaned workers to exit")
        print(f"\nsupervisor killed -> its workers exited within {gone:.2f} s")
        wait_until(lambda: {w.status for w in rows("default")} == {WorkerStatus.STOPPED}, 30,
                   message="the workers' rows to say stopped")
        assert all("parent process" in (w.exit_reason or "") for w in rows("default"))


def test_a_worker_whose_app_fails_to_import_crash_loops_slowly_and_says_why(
    tmp_path: Path, sqlite_url: str, redis_namespace: str, queue_name: str
) -> None:
    path = config(tmp_path, sqlite_url, redis_namespace, app="apps.sup_broken", queues=[queue_name], min_processes=1)
    store.connect(sqlite_url)
    log = tmp_path / "supervisor.log"
    with running(start_supervisor(path, "default", log, **app_env(redis_namespace, queue_name)), log) as sup:
        looping = wait_until(lambda: rows("default", WorkerStatus.CRASHLOOPING), 60, message="a crash-looping row")[0]
        assert "crash-looping" in looping.exit_reason
        assert "sup_broken fails to import on purpose" in looping.exit_reason
        assert looping.exit_code == 2
        onset, spawned_before = time.monotonic(), len(rows("default"))
        # A window of 25 s: without backoff this app would be started about
        # once a second; with it, after 1, 2, 4, 8 and 16 s waits.
        while time.monotonic() - onset < 25:
            assert sup.poll() is None
            time.sleep(0.5)
        history = rows("default")
        spawned = len(history) - spawned_before
        print(f"\ncrash loop: {spawned_before} starts before the loop was declared, {spawned} in the next 25 s")
        assert 1 <= spawned <= 5
        gaps = [(b.started_at - a.started_at).total_seconds() for a, b in itertools.pairwise(history)]
        assert gaps[-1] > 2 * gaps[0]
        assert len(rows("default", WorkerStatus.CRASHLOOPING)) == 1  # only the latest attempt says so
        sup.send_signal(signal.SIGTERM)
        assert wait_exit(sup, 60) == 0
        assert rows("default", WorkerStatus.CRASHLOOPING) == []


def child_pids(sup: Any) -> set[int]:
    return {c.pid for c in children(sup)}


def row_with(worker_id: str, *statuses: str) -> Worker | None:
    return Worker.get_or_none((Worker.worker_id == worker_id) & Worker.status.in_(statuses))


@pytest.mark.parametrize("bus", ["redis", "database"])
def test_stop_pause_resume_and_start_through_the_manager(
    tmp_path: Path, sqlite_url: str, redis_namespace: str, queue_name: str, bus: str
) -> None:
    path = config(tmp_path, sqlite_url, redis_namespace, bus=bus, queues=[queue_name],
                  min_processes=1, max_processes=2, threads=1)
    settings = load_settings(path, env={})
    store.connect(sqlite_url)
    manager = WorkerManager(settings)
    log = tmp_path / "supervisor.log"
    with running(start_supervisor(path, "default", log, **app_env(redis_namespace, queue_name)), log) as sup:
        pool = wait_until(lambda: rows("default", WorkerStatus.RUNNING), 60, message="the pool's worker")[0]

        requested = manager.start_worker(queue_name, {"sleep": 0.2})
        row = wait_until(lambda: row_with(requested, WorkerStatus.RUNNING), 60, message="the requested worker")
        assert row.pid in child_pids(sup) and row.hostname == "host-a" and row.supervisor == "default"
        refused = manager.start_worker(queue_name)
        refusal = wait_until(lambda: row_with(refused, WorkerStatus.STOPPED), 30, message="the refusal")
        assert refusal.exit_reason == (
            "not started: supervisor 'default' on host-a already runs 2 workers, its max_processes")

        for worker_id in (pool.worker_id, requested):
            manager.pause_worker(worker_id)
        paused = measure(lambda: all(row_with(w, WorkerStatus.PAUSED) for w in (pool.worker_id, requested)), 30,
                         "both workers paused")
        token = uuid.uuid4().hex
        message_id = enqueue(redis_namespace, queue_name, token, seconds=0)
        assert stays(lambda: runs(redis_namespace, token) == 0, 3.0)  # nobody consumes while paused
        manager.resume_worker(requested)
        resumed = measure(lambda: runs(redis_namespace, token) == 1, 30, "the job to run after resume")
        wait_until(lambda: row_with(requested, WorkerStatus.RUNNING), 30, message="the requested worker resumed")
        assert wait_until(lambda: Job.get_or_none((Job.message_id == message_id) & (Job.status == JobStatus.COMPLETED)),
                          30).worker_id == requested
        manager.resume_worker(pool.worker_id)
        wait_until(lambda: row_with(pool.worker_id, WorkerStatus.RUNNING), 30, message="the pool worker resumed")

        # A requested worker that is stopped stays stopped.
        manager.stop_worker(requested)
        stopped = measure(lambda: row_with(requested, WorkerStatus.STOPPED) and pid_gone(row.pid), 30,
                          "the requested worker to stop")
        assert Worker.get(Worker.worker_id == requested).exit_code == 0
        assert stays(lambda: child_pids(sup) == {pool.pid}, 2.0)
        print(f"\n[{bus} bus] pause applied in {paused:.2f} s, resume ran the held job in {resumed:.2f} s, "
              f"stop applied in {stopped:.2f} s")

        with pytest.raises(Exception, match=f"worker '{requested}' is stopped: it cannot stop"):
            manager.stop_worker(requested)
        sup.send_signal(signal.SIGTERM)
        assert wait_exit(sup, 90) == 0
    manager.bus.close()


@pytest.mark.parametrize("bus", ["redis", "database"])
def test_restart_gives_a_pool_slot_a_fresh_process_and_stop_leaves_it_empty(
    tmp_path: Path, sqlite_url: str, redis_namespace: str, queue_name: str, bus: str
) -> None:
    path = config(tmp_path, sqlite_url, redis_namespace, bus=bus, queues=[queue_name],
                  min_processes=2, max_processes=2, threads=1)
    store.connect(sqlite_url)
    manager = WorkerManager(load_settings(path, env={}))
    log = tmp_path / "supervisor.log"
    with running(start_supervisor(path, "default", log, **app_env(redis_namespace, queue_name)), log) as sup:
        first, second = wait_until(lambda: len(found := rows("default", WorkerStatus.RUNNING)) == 2 and found, 60,
                                   message="the pool's two workers")

        # restart: the worker exits gracefully and its slot gets a fresh process at once.
        manager.restart_worker(first.worker_id)
        fresh = wait_until(lambda: [w for w in rows("default", WorkerStatus.RUNNING)
                                    if w.worker_id not in (first.worker_id, second.worker_id)], 60,
                           message="the restarted slot's new process")[0]
        old = Worker.get(Worker.worker_id == first.worker_id)
        assert (old.status, old.exit_code, old.exit_reason) == (WorkerStatus.STOPPED, 65, "command: restart")
        assert fresh.pid != first.pid and fresh.pid in child_pids(sup) and pid_gone(first.pid)
        assert fresh.restarts == 1 and fresh.get_queues() == [queue_name]
        assert child_pids(sup) == {fresh.pid, second.pid}

        # stop: the worker exits for good; its slot stays empty, below min_processes, until asked for.
        manager.stop_worker(second.worker_id)
        wait_until(lambda: row_with(second.worker_id, WorkerStatus.STOPPED) and pid_gone(second.pid), 30,
                   message="the stopped worker to exit")
        gone = Worker.get(Worker.worker_id == second.worker_id)
        assert (gone.exit_code, gone.exit_reason) == (0, "command: stop")
        assert stays(lambda: child_pids(sup) == {fresh.pid}, 3.0)
        assert [w.worker_id for w in rows("default", *WorkerStatus.ALIVE)] == [fresh.worker_id]
        assert (f"worker {second.worker_id} stopped and is not replaced: 1 workers run, below min_processes 2"
                in log.read_text(errors="replace"))
        # A start request fills it again (max_processes allows 2).
        added = manager.start_worker(queue_name)
        refill = wait_until(lambda: row_with(added, WorkerStatus.RUNNING), 60, message="the requested worker")
        assert child_pids(sup) == {fresh.pid, refill.pid}
        sup.send_signal(signal.SIGTERM)
        assert wait_exit(sup, 90) == 0
    manager.bus.close()


def test_two_supervisors_share_a_ledger_and_a_bus_and_clean_up_after_each_other(
    tmp_path: Path, postgres_url: str, redis_namespace: str
) -> None:
    qa, qb = f"qa_{redis_namespace}", f"qb_{redis_namespace}"
    path = write_two(tmp_path, postgres_url, redis_namespace, qa, qb)
    settings = load_settings(path, env={})
    store.connect(postgres_url)
    manager = WorkerManager(settings)
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    with running(start_supervisor(path, "a", log_a, **app_env(redis_namespace, qa)), log_a) as sup_a, \
            running(start_supervisor(path, "b", log_b, WATCHTOWER_HOSTNAME="host-b", **app_env(redis_namespace, qb)),
                    log_b) as sup_b:
        wait_until(lambda: len(rows("a", WorkerStatus.RUNNING)) == 2 and len(rows("b", WorkerStatus.RUNNING)) == 1,
                   60, message="both pools running")
        assert {w.pid for w in rows("a")} == child_pids(sup_a)
        assert {w.pid for w in rows("b")} == child_pids(sup_b)
        assert {w.hostname for w in rows("a")} == {"host-a"} and {w.hostname for w in rows("b")} == {"host-b"}

        extra = manager.start_worker(qb, supervisor="b")
        row = wait_until(lambda: row_with(extra, WorkerStatus.RUNNING), 60, message="b's requested worker")
        assert row.pid in child_pids(sup_b) and row.hostname == "host-b"
        assert len(child_pids(sup_a)) == 2

        message_id = enqueue(redis_namespace, qb, uuid.uuid4().hex, seconds=60)
        wait_until(lambda: Job.get_or_none((Job.message_id == message_id) & (Job.status == JobStatus.PROCESSING)), 30,
                   message="b's worker to hold a job")
        a_before = {w.worker_id: w.pid for w in rows("a", WorkerStatus.RUNNING)}

        # Host b vanishes: its supervisor and its workers die at once.
        b_pids = child_pids(sup_b)
        sup_b.send_signal(signal.SIGKILL)
        for pid in b_pids:
            os.kill(pid, signal.SIGKILL)
        cleaned = measure(lambda: not rows("b", *WorkerStatus.ALIVE), 90, "a to clean b's stale records")
        print(f"\nvanished supervisor's records marked lost {cleaned:.1f} s after the kill (heartbeat_timeout 10 s)")
        assert {w.status for w in rows("b")} == {WorkerStatus.LOST}
        assert all(w.exit_reason.startswith("stale: ") for w in rows("b"))
        job = Job.get(Job.message_id == message_id)
        assert (job.status, job.lost_attempts) == (JobStatus.PENDING, 1)
        assert {w.worker_id: w.pid for w in rows("a", WorkerStatus.RUNNING)} == a_before
        assert child_pids(sup_a) == set(a_before.values())

        sup_a.send_signal(signal.SIGTERM)
        assert wait_exit(sup_a, 90) == 0
    manager.bus.close()


def write_two(tmp_path: Path, database_url: str, namespace: str, qa: str, qb: str) -> Path:
    table = {"max_processes": 3, "threads": 1, "timeout": 30, "memory": 1024, "sleep": 0.2}
    return write_config(
        tmp_path / "watchtower.toml",
        app="apps.sup_app",
        database_url=database_url,
        command_bus="redis",
        redis_url=REDIS_URL,
        redis_prefix=namespace,
        hostname="host-a",
        heartbeat_timeout=10.0,
        **{"http.port": 0},
        supervisors={"a": {"queues": [qa], "min_processes": 2, **table},
                     "b": {"queues": [qb], "min_processes": 1, **table}},
    )


def test_a_worker_that_stops_heart_beating_is_killed_and_replaced(
    tmp_path: Path, sqlite_url: str, redis_namespace: str, queue_name: str
) -> None:
    path = config(tmp_path, sqlite_url, redis_namespace, queues=[queue_name], min_processes=1)
    text = path.read_text().replace("heartbeat_timeout = 10.0", "heartbeat_timeout = 4.0")
    path.write_text(text)
    store.connect(sqlite_url)
    log = tmp_path / "supervisor.log"
    with running(start_supervisor(path, "default", log, **app_env(redis_namespace, queue_name)), log) as sup:
        hung = wait_until(lambda: rows("default", WorkerStatus.RUNNING), 60, message="a running worker")[0]
        os.kill(hung.pid, signal.SIGSTOP)  # alive, but silent
        replaced = measure(lambda: [w for w in rows("default", WorkerStatus.RUNNING) if w.worker_id != hung.worker_id],
                           60, "a replacement for the hung worker")
        print(f"\nhung worker replaced {replaced:.1f} s after it froze (heartbeat_timeout 4 s)")
        dead = Worker.get(Worker.worker_id == hung.worker_id)
        assert dead.status == WorkerStatus.LOST and dead.exit_code == -9
        assert dead.exit_reason.startswith("hung: no heartbeat for ")
        assert pid_gone(hung.pid)
        sup.send_signal(signal.SIGTERM)
        assert wait_exit(sup, 90) == 0


def run_supervise(path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "watchtower", "--config", str(path), "supervise", *args],
        env=subprocess_env(**env), capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize(
    ("change", "args", "code", "message"),
    [
        ({}, ("--supervisor", "nope"), 2, "Error: unknown supervisor 'nope': the configuration declares default"),
        ({"app": "apps.sup_missing"}, (), 2,
         "Error: cannot import app module 'apps.sup_missing' (setting 'app'): ModuleNotFoundError: "),
        ({"timeout": -5}, (), 2, "Error: setting 'supervisors.default.timeout' from"),
        ({"min_processes": -1}, (), 2, "must not be negative, not -1"),
        ({"redis_url": "redis://127.0.0.1:1/0"}, (), 1, "Error: "),
        ({"database_url": "postgresql://postgres@127.0.0.1:2/nothing"}, (), 1,
         "Error: cannot open the ledger database"),
    ],
    ids=["unknown-supervisor", "unknown-app", "negative-timeout", "negative-processes", "unreachable-redis",
         "unreachable-database"],
)
def test_bad_input_is_one_clear_line_and_a_failing_exit(
    tmp_path: Path, sqlite_url: str, redis_namespace: str, change: dict[str, Any], args: tuple[str, ...], code: int,
    message: str,
) -> None:
    top = {key: change[key] for key in ("app", "redis_url", "database_url") if key in change}
    pool = {key: value for key, value in change.items() if key not in top}
    path = config(tmp_path, sqlite_url, redis_namespace, **pool)
    text = path.read_text()
    for key, value in top.items():
        text = "\n".join(f'{key} = "{value}"' if line.startswith(f"{key} =") else line for line in text.splitlines())
    path.write_text(text + "\n")
    result = run_supervise(path, *args, WT_TEST_NAMESPACE=redis_namespace)
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.stderr
    for address in ("127.0.0.1:1", "127.0.0.1:2"):
        if address in str(change):
            assert address in lines[0]


def test_workers_get_the_supervisors_config_file_and_flags(
    tmp_path: Path, sqlite_url: str, redis_namespace: str
) -> None:
    from watchtower.commands.supervise import worker_environment

    path = config(tmp_path, sqlite_url, redis_namespace)
    other = f"sqlite:///{tmp_path / 'other.db'}"
    settings = load_settings(path, env={}, overrides={"database_url": other, "app": None})
    env = worker_environment(settings, os.path.relpath(path))
    assert env["WATCHTOWER_CONFIG"] == str(path)
    assert env["WATCHTOWER_DATABASE_URL"] == other
    assert "WATCHTOWER_APP" not in env  # from the file, which the worker reads itself
    assert load_settings(env=env) == settings


@pytest.mark.parametrize("app", ["apps.sup_app", "apps.sup_big"])
def test_a_worker_that_grows_past_its_memory_limit_is_replaced_and_its_reason_kept(
    tmp_path: Path, sqlite_url: str, redis_namespace: str, queue_name: str, app: str
) -> None:
    # apps.sup_big is over the limit from its import on (200 MB under 128):
    # it runs jobs, says so once, and recycles only when it grows 128 MB more.
    path = config(tmp_path, sqlite_url, redis_namespace, app=app, queues=[queue_name], min_processes=1, memory=128)
    store.connect(sqlite_url)
    log = tmp_path / "supervisor.log"
    with running(start_supervisor(path, "default", log, **app_env(redis_namespace, queue_name)), log) as sup:
        worker = wait_until(lambda: rows("default", WorkerStatus.RUNNING), 60, message="the pool's worker")[0]
        tokens = [uuid.uuid4().hex for _ in range(6)]
        for token in tokens:
            enqueue(redis_namespace, queue_name, token, seconds=0.3)
        wait_until(lambda: all(runs(redis_namespace, t) == 1 for t in tokens), 60, message="every job")
        # Its heartbeats (every second) have measured it for 3 s since it booted: no recycle, no crash loop.
        wait_until(lambda: (r := Worker.get(Worker.worker_id == worker.worker_id)).last_heartbeat.timestamp()
                   - r.started_at.timestamp() > 3, 30, message="heartbeats 3 s after boot")
        assert [(w.worker_id, w.status, w.pid) for w in rows("default")] == [
            (worker.worker_id, WorkerStatus.RUNNING, worker.pid)]
        options = json.loads(Worker.get(Worker.worker_id == worker.worker_id).options)
        said = log.read_text(errors="replace").count(f"worker {worker.worker_id} takes {options['memory_at_boot']} "
                                                      "MB right after boot, before any job: more than its memory "
                                                      "limit of 128 MB")
        big = app == "apps.sup_big"
        assert (options["memory_at_boot"] > 200, said) == ((True, 1) if big else (False, 0))
        assert options["memory_recycle_at"] == (options["memory_at_boot"] + 128 if big else 128)

        enqueue_grow(redis_namespace, queue_name, "leak", 200)
        recycled = wait_until(lambda: row_with(worker.worker_id, WorkerStatus.STOPPED), 60, message="a recycle")
        assert recycled.exit_code == 64 and recycled.exit_reason.startswith("memory: RSS ")
        assert f"{options['memory_recycle_at']} MB" in recycled.exit_reason
        fresh = wait_until(lambda: rows("default", WorkerStatus.RUNNING), 60, message="a fresh process")[0]
        assert fresh.restarts == 1 and fresh.pid != worker.pid
        sup.send_signal(signal.SIGTERM)
        assert wait_exit(sup, 90) == 0
        assert rows("default", WorkerStatus.CRASHLOOPING) == []


def test_the_pool_keeps_healing_while_the_ledger_is_down_and_records_it_afterwards(
    tmp_path: Path, postgres_url: str, redis_namespace: str, queue_name: str
) -> None:
    import peewee
    import psycopg

    from tests.support.servers import POSTGRES_ADMIN
    from watchtower.store import check_database_url

    path = config(tmp_path, postgres_url, redis_namespace, queues=[queue_name], min_processes=1)
    db = store.connect(postgres_url)
    admin = check_database_url(POSTGRES_ADMIN)
    name = check_database_url(postgres_url).database

    def server(sql: str) -> None:
        with psycopg.connect(dbname=admin.database, autocommit=True, **admin.params) as conn:
            conn.execute(sql)

    def read(query: Any) -> Any:
        try:
            return query()
        except peewee.PeeweeException:
            db.close()  # our connection was cut too: a new one next time
            return None

    log = tmp_path / "supervisor.log"
    try:
        with running(start_supervisor(path, "default", log, **app_env(redis_namespace, queue_name)), log) as sup:
            victim = wait_until(lambda: rows("default", WorkerStatus.RUNNING), 60, message="a running worker")[0]
            # The ledger goes away: no new connections, the open ones cut.
            server(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            server(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
            os.kill(victim.pid, signal.SIGKILL)
            wait_until(lambda: child_pids(sup) - {victim.pid}, 30, message="a new worker process without the ledger")
            assert sup.poll() is None
            server(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            dead = wait_until(lambda: read(lambda: row_with(victim.worker_id, WorkerStatus.LOST)), 60,
                              message="the dead worker's record, once the ledger is back")
            assert (dead.exit_code, dead.exit_reason) == (-9, "killed by SIGKILL")
            assert "the ledger is unavailable" in log.read_text()
            wait_until(lambda: read(lambda: rows("default", WorkerStatus.RUNNING)), 90,
                       message="a running worker again")
            sup.send_signal(signal.SIGTERM)
            assert wait_exit(sup, 90) == 0
    finally:
        server(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
