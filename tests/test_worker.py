"""``watchtower worker``: real worker processes, a real Redis broker, the ledger on SQLite.

Each test runs ``python -m watchtower worker`` for one of the apps under
tests/apps/ in its own Redis namespace, with its own SQLite ledger, and steers
it through the command bus (Redis with the same prefix, or the database).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import psutil
import pytest

from tests.support.lab import Lab
from tests.support.polling import DEADLINE, wait_until
from tests.support.servers import unique
from tests.support.web_api import client, web_settings
from watchtower import WorkerManager
from watchtower.bus import worker_command_key
from watchtower.statuses import JobStatus, WorkerStatus
from watchtower.web import create_app
from watchtower.worker import EXIT_MEMORY, EXIT_RESTART, EXIT_USAGE, recycle_threshold


def finish(child: subprocess.Popen[bytes], timeout: float = DEADLINE) -> int:
    return child.wait(timeout=timeout)


# Running jobs ----------------------------------------------------------------


@pytest.mark.parametrize("app", ["apps.basic", "apps.with_middleware"])
def test_jobs_run_and_land_in_the_ledger_with_the_worker_id(lab: Lab, app: str) -> None:
    child, worker_id = lab.start("--threads", "2", "--hostname", "fake-host-1", "--tries", "5", app=app)
    ids = [lab.send("work", f"job{n}", 0.05) for n in range(5)]
    for message_id in ids:
        job = lab.wait_job(message_id, JobStatus.COMPLETED)
        assert job.worker_id == worker_id
    row = lab.row(worker_id)
    assert row is not None and row.status == WorkerStatus.RUNNING
    assert (row.hostname, row.pid, row.supervisor) == ("fake-host-1", child.pid, None)
    assert row.get_queues() == [lab.queue]
    options = json.loads(row.options)
    assert 10 < options.pop("memory_at_boot") < 128  # MB, measured after boot (this app is small)
    assert options == {"threads": 2, "tries": 5, "timeout": 60.0, "memory": 128, "sleep": 0.2, "rest": 0.0,
                       "memory_recycle_at": 128}
    first = row.last_heartbeat
    row = wait_until(lambda: (r := lab.row(worker_id)).last_heartbeat > first and r.jobs_processed == 5 and r,
                     timeout=DEADLINE, message="a later heartbeat with the job count")
    assert row.memory_rss and row.memory_rss > 10 * 1024 * 1024
    assert all(lab.runs(f"job{n}") == 1 for n in range(5))

    child.send_signal(signal.SIGTERM)
    assert finish(child) == 0
    row = lab.row(worker_id)
    assert (row.status, row.exit_code, row.exit_reason) == (WorkerStatus.STOPPED, 0, "signal: SIGTERM")
    assert row.stopped_at is not None


# Steering through the bus -----------------------------------------------------


@pytest.mark.parametrize("bus_kind", ["redis", "database"])
def test_stop_pause_and_resume_through_the_bus(lab: Lab, bus_kind: str) -> None:
    child, worker_id = lab.start("--threads", "2", bus=bus_kind)
    bus = lab.bus(bus_kind)
    key = worker_command_key(worker_id)
    lab.wait_status(worker_id, WorkerStatus.RUNNING)
    latencies = {}

    def command(value: str, status: str) -> None:
        started = time.monotonic()
        bus.push(key, value)
        lab.wait_status(worker_id, status)
        latencies[value] = time.monotonic() - started
        assert bus.pop_all(key) == []  # taken and applied

    command("pause", WorkerStatus.PAUSED)
    assert lab.held_messages() == 0
    paused_job = lab.send("work", "while-paused", 0)
    assert lab.job(paused_job) is None  # nobody took it (the producer records nothing)
    command("resume", WorkerStatus.RUNNING)
    assert lab.wait_job(paused_job, JobStatus.COMPLETED).worker_id == worker_id
    # Two quick commands: both applied, in the order sent (a pause, then the
    # resume that undoes it), where one value per key kept only the last.
    bus.push(key, "pause")
    bus.push(key, "resume")
    wait_until(lambda: lab.log_text(worker_id).count(f"worker {worker_id} resumed") == 2, timeout=DEADLINE,
               message="the second pause and resume")
    log = lab.log_text(worker_id)
    assert log.count(f"worker {worker_id} paused") == 2
    assert log.rindex(f"worker {worker_id} paused") < log.rindex(f"worker {worker_id} resumed")
    command("stop", WorkerStatus.STOPPED)
    assert finish(child) == 0
    assert lab.row(worker_id).exit_reason == "command: stop"
    print(f"{bus_kind} bus: " + ", ".join(f"{name} applied in {seconds:.2f} s" for name, seconds in latencies.items()))
    bus.close()


def steering(lab: Lab, via: str, bus_kind: str) -> tuple[Callable[[str, str], None], Callable[[], None]]:
    """How to send a command to a worker through the manager or the API; and how to clean up."""
    settings = web_settings(lab.database_url, lab.namespace, command_bus=bus_kind)
    if via == "manager":
        manager = WorkerManager(settings)
        return (lambda worker_id, command: getattr(manager, f"{command}_worker")(worker_id)), manager.bus.close
    api = client(create_app(settings))

    def post(worker_id: str, command: str) -> None:
        answer = api.simulate_post(f"/watchtower/workers/{worker_id}/{command}")
        assert (answer.status_code, answer.json) == (202, {"id": worker_id, "command": command}), answer.text

    return post, lambda: None


_STEPS = re.compile(r"worker (\S+) (?:received the command (\w+)|(paused|resumed)\b"
                    r"|is stopping: ignores the command (\w+))")


def steps(log: str, worker_id: str) -> tuple[list[str], list[str], list[str]]:
    """From a worker's log: the commands it received, what it did (paused, resumed), and what it ignored."""
    received, done, ignored = [], [], []
    for match in _STEPS.finditer(log):
        if match.group(1) != worker_id:
            continue
        if match.group(2):
            received.append(match.group(2))
        elif match.group(3):
            done.append(match.group(3))
        else:
            ignored.append(match.group(4))
    return received, done, ignored


@pytest.mark.parametrize("bus_kind", ["redis", "database"])
@pytest.mark.parametrize("via", ["manager", "api"])
def test_commands_sent_in_quick_succession_are_all_applied_in_order(lab: Lab, via: str, bus_kind: str) -> None:
    child, worker_id = lab.start("--threads", "2", bus=bus_kind)
    send, close = steering(lab, via, bus_kind)
    lab.wait_status(worker_id, WorkerStatus.RUNNING)
    # A job that runs until the test lets it end: the pause waits for it, so
    # the worker is busy with its first command while the others arrive.
    held = lab.send("hold", "busy")
    wait_until(lambda: lab.trace("started:busy"), timeout=DEADLINE, message="the held job to start")
    send(worker_id, "pause")
    wait_until(lambda: steps(lab.log_text(worker_id), worker_id)[0] == ["pause"], timeout=DEADLINE,
               message="the worker to take the pause")
    burst = ["resume", "pause", "resume", "pause", "resume", "restart", "pause"]
    for command in burst:
        send(worker_id, command)
    assert steps(lab.log_text(worker_id), worker_id)[1] == []  # still pausing: the rest wait in its queue
    lab.redis.set(f"{lab.namespace}:t:release:busy", 1)

    assert finish(child) == EXIT_RESTART
    received, done, ignored = steps(lab.log_text(worker_id), worker_id)
    assert received == ["pause", *burst[:-1]]  # each one, in the order sent
    assert done == ["paused", "resumed", "paused", "resumed", "paused", "resumed"]
    assert ignored == ["pause"]  # sent after the restart: the worker was on its way out
    row = lab.row(worker_id)
    assert (row.status, row.exit_code, row.exit_reason) == (WorkerStatus.STOPPED, EXIT_RESTART, "command: restart")
    assert lab.wait_job(held, JobStatus.COMPLETED).worker_id == worker_id
    assert lab.bus(bus_kind).pop_all(worker_command_key(worker_id)) == []
    close()


def test_a_pause_past_the_broker_heartbeat_timeout_runs_no_job_twice(lab: Lab) -> None:
    # Heartbeat timeout 2 s and maintenance on every broker command: a worker
    # that keeps prefetched messages while paused has them redelivered.
    env = {"WT_TEST_HEARTBEAT_MS": "2000", "WT_TEST_MAINTENANCE": "1000000"}
    lab.producer.heartbeat_timeout = 2000
    lab.producer.maintenance_chance = 1_000_000
    child, worker_id = lab.start("--threads", "2", env=env)
    tokens = [f"p{n}" for n in range(12)]
    for token in tokens:
        lab.send("work", token, 0.3)
    wait_until(lambda: lab.trace("started:p0") or lab.trace("started:p1"), timeout=DEADLINE, message="a first job")
    lab.bus("redis").push(worker_command_key(worker_id), "pause")
    lab.wait_status(worker_id, WorkerStatus.PAUSED)
    assert lab.held_messages() == 0
    left = lab.redis.llen(f"{lab.namespace}:{lab.queue}")
    done = sum(lab.runs(token) for token in tokens)
    assert left + done == len(tokens)  # every unfinished message is back in the queue
    print(f"paused with {done} jobs done and {left} given back")

    # Outlast the heartbeat timeout: wait until the worker's broker heartbeat is 3 s old.
    heartbeats = f"{lab.namespace}:__heartbeats__"

    def worker_heartbeat_is_stale() -> bool:
        now_ms = time.time() * 1000
        others = [score for member, score in lab.redis.zrange(heartbeats, 0, -1, withscores=True)
                  if member.decode() != lab.producer.broker_id]
        return bool(others) and all(score < now_ms - 3000 for score in others)

    wait_until(worker_heartbeat_is_stale, timeout=DEADLINE, interval=0.2, message="a stale worker heartbeat")
    lab.send("work", "after-pause", 0)  # a broker command: runs maintenance over the dead worker's acks
    assert lab.redis.llen(f"{lab.namespace}:{lab.queue}") == left + 1

    lab.bus("redis").push(worker_command_key(worker_id), "resume")
    wait_until(lambda: all(lab.runs(t) >= 1 for t in [*tokens, "after-pause"]), timeout=60, message="every job")
    lab.bus("redis").push(worker_command_key(worker_id), "stop")
    assert finish(child) == 0
    assert {token: lab.runs(token) for token in tokens} == {token: 1 for token in tokens}


# Limits ---------------------------------------------------------------------------


def test_the_recycle_threshold_is_the_limit_unless_the_boot_footprint_is_over_it() -> None:
    mb = 1024 * 1024
    assert recycle_threshold(128, 60 * mb) == 128 * mb
    assert recycle_threshold(128, 128 * mb) == 128 * mb
    assert recycle_threshold(128, 200 * mb) == 328 * mb  # 128 MB of growth past the footprint
    assert recycle_threshold(128, None) == 128 * mb  # not measured: the limit as set
    assert recycle_threshold(0, 200 * mb) is None  # no limit


def test_growth_past_the_memory_limit_recycles_the_worker(lab: Lab) -> None:
    child, worker_id = lab.start("--memory", "128")
    lab.wait_status(worker_id, WorkerStatus.RUNNING)
    leak = lab.send("grow", "leak", 200)
    assert finish(child) == EXIT_MEMORY
    assert lab.job(leak).status == JobStatus.COMPLETED  # the job in hand finished first
    row = lab.row(worker_id)
    assert row.status == WorkerStatus.STOPPED and row.exit_code == EXIT_MEMORY
    match = re.fullmatch(r"memory: RSS (\d+) MB > limit 128 MB", row.exit_reason)
    assert match and int(match.group(1)) > 200
    assert "more than its memory limit" not in lab.log_text(worker_id)


_OVER = re.compile(
    r"worker (\S+) takes (\d+) MB right after boot, before any job: more than its memory limit of 128 MB, "
    r"so recycling cannot help; it keeps working and recycles only past (\d+) MB \(128 MB more\)"
)


def test_an_app_bigger_than_the_memory_limit_keeps_working_and_says_so_once(lab: Lab) -> None:
    # apps.big keeps 200 MB from its import on: over the limit before any job.
    child, worker_id = lab.start("--memory", "128", "--threads", "2", app="apps.big")
    row = lab.wait_status(worker_id, WorkerStatus.RUNNING)
    options = json.loads(row.options)
    assert options["memory"] == 128 and options["memory_at_boot"] > 200
    assert options["memory_recycle_at"] == options["memory_at_boot"] + 128
    ids = [lab.send("work", f"big{n}", 0.2) for n in range(8)]
    for message_id in ids:
        assert lab.wait_job(message_id, JobStatus.COMPLETED).worker_id == worker_id
    # Several heartbeats (every 0.5 s) have measured it over 128 MB since it booted.
    booted = row.started_at
    row = wait_until(lambda: (r := lab.row(worker_id)).last_heartbeat.timestamp() - booted.timestamp() > 3 and r,
                     timeout=DEADLINE, message="heartbeats 3 s after boot")
    assert row.status == WorkerStatus.RUNNING and row.memory_rss > 200 * 1024 * 1024 and child.poll() is None
    said = [m for m in _OVER.finditer(lab.log_text(worker_id))]
    assert len(said) == 1  # once, not at every heartbeat
    assert said[0].group(1) == worker_id and int(said[0].group(2)) == options["memory_at_boot"]
    assert int(said[0].group(3)) == options["memory_recycle_at"]

    # Growth past its footprint plus the limit still recycles it.
    lab.send("grow", "leak", 200)
    assert finish(child) == EXIT_MEMORY
    row = lab.row(worker_id)
    match = re.fullmatch(r"memory: RSS (\d+) MB > (\d+) MB \(limit 128 MB past the (\d+) MB it took to boot\)",
                         row.exit_reason)
    assert match, row.exit_reason
    assert int(match.group(1)) > int(match.group(2)) == options["memory_recycle_at"]
    assert int(match.group(3)) == options["memory_at_boot"]


def test_tries_caps_the_attempts_unless_the_actor_sets_its_own(lab: Lab) -> None:
    child, _ = lab.start("--tries", "2")
    capped = lab.send("fail", "capped")
    own = lab.send("fail_without_retries", "own")
    assert lab.wait_job(capped, JobStatus.FAILED).attempts == 2
    assert lab.wait_job(own, JobStatus.FAILED).attempts == 1
    assert (lab.trace("attempts:capped"), lab.trace("attempts:own")) == ("2", "1")
    child.send_signal(signal.SIGTERM)
    assert finish(child) == 0


def test_timeout_interrupts_long_jobs_unless_the_actor_sets_its_own_limit(lab: Lab) -> None:
    child, _ = lab.start("--timeout", "1", "--tries", "1")
    limited = lab.send("work", "limited", 6)
    own = lab.send("work_with_own_limit", "own", 2.5)
    job = lab.wait_job(limited, JobStatus.FAILED)
    assert "TimeLimitExceeded" in job.exception
    assert lab.runs("limited") == 0
    lab.wait_job(own, JobStatus.COMPLETED)
    assert lab.runs("own") == 1
    child.send_signal(signal.SIGTERM)
    assert finish(child) == 0


def test_sleep_sets_how_long_an_idle_worker_waits_between_fetches(lab: Lab) -> None:
    fast_queue, slow_queue = unique("fast"), unique("slow")
    counting = {"WT_TEST_COUNT_FETCHES": "1"}
    fast, _ = lab.start(sleep="0.05", env={**counting, "WT_TEST_QUEUE": fast_queue})
    slow, _ = lab.start(sleep="4", env={**counting, "WT_TEST_QUEUE": slow_queue})

    def fetches(queue: str) -> int:
        return int(lab.trace(f"fetches:{queue}") or 0)

    # Past the first fetches, whose backoff is still short for both.
    wait_until(lambda: fetches(fast_queue) >= 20 and fetches(slow_queue) >= 8, timeout=60, message="both polling")
    fast_before, slow_before = fetches(fast_queue), fetches(slow_queue)
    wait_until(lambda: fetches(fast_queue) >= fast_before + 100, timeout=60, message="100 fast fetches")
    fast_delta, slow_delta = fetches(fast_queue) - fast_before, fetches(slow_queue) - slow_before
    print(f"in the same time: --sleep 0.05 fetched {fast_delta} times, --sleep 4 fetched {slow_delta} times")
    assert slow_delta * 4 < fast_delta
    for child in (fast, slow):
        child.send_signal(signal.SIGTERM)
    assert [finish(child) for child in (fast, slow)] == [0, 0]


def test_rest_makes_each_thread_wait_between_jobs(lab: Lab) -> None:
    child, _ = lab.start("--rest", "1", "--threads", "1")
    tokens = [f"r{n}" for n in range(3)]
    for token in tokens:
        lab.send("work", token, 0)
    wait_until(lambda: all(lab.trace(f"finished:{t}") for t in tokens), timeout=DEADLINE, message="three jobs")
    spans = sorted((float(lab.trace(f"started:{t}")), float(lab.trace(f"finished:{t}"))) for t in tokens)
    gaps = [start - previous_end for (_, previous_end), (start, _) in itertools.pairwise(spans)]
    print("gaps between jobs with --rest 1:", ", ".join(f"{gap:.2f} s" for gap in gaps))
    assert all(gap >= 0.9 for gap in gaps)
    child.send_signal(signal.SIGTERM)
    assert finish(child) == 0


# Stopping ---------------------------------------------------------------------------


def test_sigterm_during_a_job_lets_it_finish_and_exits_0(lab: Lab) -> None:
    child, worker_id = lab.start("--threads", "2")
    message_id = lab.send("work", "long", 2)
    wait_until(lambda: lab.trace("started:long"), timeout=DEADLINE, message="the job to start")
    child.send_signal(signal.SIGTERM)
    assert finish(child) == 0
    assert lab.runs("long") == 1
    assert lab.job(message_id).status == JobStatus.COMPLETED  # flushed before the exit
    row = lab.row(worker_id)
    assert (row.status, row.exit_code) == (WorkerStatus.STOPPED, 0)


_PARENT = """
import subprocess, sys, time
child = subprocess.Popen(sys.argv[1:] + ["--parent-pid", str(__import__("os").getpid())])
print(child.pid, flush=True)
time.sleep(600)
"""


def test_a_worker_whose_parent_is_gone_stops_on_its_own(lab: Lab) -> None:
    worker_id = unique("orphan")
    command = [
        sys.executable, "-m", "watchtower", "--database-url", lab.database_url,
        "worker", "--app", "apps.basic", "--worker-id", worker_id, "--sleep", "0.2",
    ]
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, *command], env=lab.environment(), stdout=subprocess.PIPE)
    worker_pid = None
    try:
        worker_pid = int(parent.stdout.readline())
        lab.wait_status(worker_id, WorkerStatus.RUNNING)
        parent.kill()
        parent.wait()
        started = time.monotonic()
        row = lab.wait_status(worker_id, WorkerStatus.STOPPED)
        wait_until(lambda: not _alive(worker_pid), timeout=DEADLINE, message="the orphan to exit")
        print(f"orphaned worker stopped {time.monotonic() - started:.2f} s after its parent died")
        assert row.exit_code == 0
        assert row.exit_reason == f"parent process {parent.pid} is gone"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if worker_pid is not None and _alive(worker_pid):
            os.kill(worker_pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# Bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "code", "pattern"),
    [
        (["--memory", "-5"], {}, EXIT_USAGE, r"Error: --memory must be from 0 to 1048576, not -5"),
        (["--tries", "0"], {}, EXIT_USAGE, r"Error: --tries must be from 1 to 1000, not 0"),
        (["--app", "apps.nowhere"], {}, EXIT_USAGE,
         r"Error: cannot import app module 'apps.nowhere' \(setting 'app'\): ModuleNotFoundError: .*"
         r"; added to sys.path: /\S+ \(--path changes it\)$"),
        (["--app", "apps.broken"], {}, EXIT_USAGE,
         r"Error: cannot import app module 'apps.broken' \(setting 'app'\): "
         r"RuntimeError: this app is broken on purpose at \S+broken.py:3; added to sys.path: .*"),
        (["--supervisor", "nosuch"], {}, EXIT_USAGE,
         r"Error: unknown supervisor 'nosuch': the configuration declares default"),
    ],
    ids=["negative-memory", "zero-tries", "unknown-app", "app-raises", "unknown-supervisor"],
)
def test_bad_input_is_one_line_and_a_non_zero_exit(
    lab: Lab, args: list[str], env: dict[str, str], code: int, pattern: str
) -> None:
    worker_id = unique("bad")
    command = [
        sys.executable, "-m", "watchtower", "--database-url", lab.database_url,
        "worker", "--app", "apps.basic", "--worker-id", worker_id, *args,
    ]
    result = subprocess.run(command, env=lab.environment(**env), capture_output=True, text=True, timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, result.stderr
    assert len(lines) == 1, result.stderr
    assert re.fullmatch(pattern, lines[0]), lines[0]
    row = lab.row(worker_id)  # the database is reachable: the row says why
    assert (row.status, row.exit_code, row.exit_reason) == (
        WorkerStatus.STOPPED, code, lines[0].removeprefix("Error: "),
    )
