"""Rescue and the poison guard with real supervisors, workers and brokers at their DEFAULT settings.

The app (tests/apps/sup_app.py) builds its Redis broker with Dramatiq's
defaults (heartbeat timeout 60 s, maintenance on 1 in 1000 commands), so the
broker's own redelivery of a dead worker's messages takes a minute or more:
a job that runs again within the deadlines below was put back by its
supervisor.  Times are printed, never asserted tighter than a generous
deadline (benchmarks/rescue.py measures them).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import DEFAULT_HEARTBEAT_TIMEOUT
from prometheus_client.parser import text_string_to_metric_families

from tests.support.brokers import open_broker, rabbitmq_count
from tests.support.checkout import subprocess_env
from tests.support.polling import wait_until
from tests.support.servers import RABBITMQ_URL, REDIS_URL
from tests.support.supervisors import (
    children,
    config,
    metrics_url,
    pid_gone,
    rows,
    running,
    start_supervisor,
    write_config,
)
from watchtower import dramatiq_internals as internals
from watchtower import store
from watchtower.models import Job, Rollup, Worker
from watchtower.statuses import JobStatus, WorkerStatus

pytestmark = pytest.mark.timeout(300)

#: Far below what the broker's own redelivery takes (its heartbeat timeout, 60 s, and then luck).
RERUN_DEADLINE = 40.0


def env_for(namespace: str, queue: str, broker: str = "redis") -> dict[str, str]:
    return {"WT_TEST_NAMESPACE": namespace, "WT_TEST_QUEUE": queue, "WT_TEST_REDIS": REDIS_URL,
            "WT_TEST_BROKER": broker, "WT_TEST_RABBITMQ": RABBITMQ_URL}


def traces() -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL)


def starts(namespace: str, token: str) -> list[int]:
    with contextlib.closing(traces()) as client:
        return [int(pid) for pid in client.lrange(f"{namespace}:t:starts:{token}", 0, -1)]


def runs(namespace: str, token: str) -> int:
    with contextlib.closing(traces()) as client:
        return int(client.get(f"{namespace}:t:runs:{token}") or 0)


@contextlib.contextmanager
def producer(kind: str, namespace: str, queue: str) -> Iterator[dramatiq.Broker]:
    """A broker to send the app's messages with (no middleware: the workers record them)."""
    with open_broker(kind, namespace, queue, middleware=[]) as broker:
        broker.declare_queue(queue)
        yield broker


def send(broker: dramatiq.Broker, queue: str, actor: str, *args: Any) -> dramatiq.Message:
    return broker.enqueue(dramatiq.Message(queue_name=queue, actor_name=actor, args=args, kwargs={}, options={}))


def job(message_id: str) -> Job | None:
    return Job.get_or_none(Job.message_id == message_id)


def status_of(message_id: str) -> str | None:
    row = job(message_id)
    return row.status if row is not None else None


def lost_rollups() -> int:
    return sum(r.count for r in Rollup.select().where(Rollup.kind == "lost"))


# kill -9 of a worker holding jobs ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["redis", "rabbitmq"])
def test_the_jobs_of_a_worker_killed_with_sigkill_run_again_at_once(
    tmp_path: Path, sqlite_url: str, redis_namespace: str, queue_name: str, kind: str
) -> None:
    assert DEFAULT_HEARTBEAT_TIMEOUT == 60_000  # what the app's Redis broker keeps
    path = config(tmp_path, sqlite_url, redis_namespace, app="apps.sup_app", queues=[queue_name],
                  min_processes=2, threads=2)
    store.connect(sqlite_url)
    log = tmp_path / "supervisor.log"
    with producer(kind, redis_namespace, queue_name) as broker, \
            running(start_supervisor(path, "default", log, **env_for(redis_namespace, queue_name, kind)), log):
        wait_until(lambda: len(rows("default", WorkerStatus.RUNNING)) == 2, 60, message="2 running workers")
        tokens = [uuid.uuid4().hex for _ in range(2)]
        ids = {send(broker, queue_name, "nap", token, 6.0).message_id: token for token in tokens}
        wait_until(lambda: all(status_of(i) == JobStatus.PROCESSING for i in ids), 30, message="both jobs running")
        victim = Worker.get(Worker.worker_id == job(next(iter(ids))).worker_id)
        held = {i: t for i, t in ids.items() if job(i).worker_id == victim.worker_id}

        os.kill(victim.pid, signal.SIGKILL)
        killed = time.monotonic()
        again = {}
        for message_id, token in held.items():
            wait_until(lambda token=token: len(starts(redis_namespace, token)) >= 2, RERUN_DEADLINE,
                       message="the killed worker's job to start again")
            again[message_id] = time.monotonic() - killed
        print(f"\n{kind}: kill -9 of a worker holding {len(held)} jobs -> running again after "
              f"{max(again.values()):.2f} s (broker defaults)")

        wait_until(lambda: all(status_of(i) == JobStatus.COMPLETED for i in ids), 60, message="every job done")
        for message_id, token in held.items():
            row = job(message_id)
            assert (row.lost_attempts, row.exception) == (1, "lost: killed by SIGKILL")
            assert row.worker_id != victim.worker_id
            assert runs(redis_namespace, token) == 1  # the killed run never finished, the second did
            assert starts(redis_namespace, token)[0] == victim.pid
        assert lost_rollups() == len(held)
        dead = Worker.get(Worker.worker_id == victim.worker_id)
        assert (dead.status, dead.exit_reason) == (WorkerStatus.LOST, "killed by SIGKILL")
        if kind == "redis":
            with contextlib.closing(traces()) as client:
                assert client.zscore(internals.heartbeats_key(redis_namespace), victim.worker_id) is None
                assert not list(client.scan_iter(match=f"{redis_namespace}:__acks__.{victim.worker_id}.*"))


def test_a_hung_worker_is_killed_before_its_jobs_go_back(
    tmp_path: Path, sqlite_url: str, redis_namespace: str, queue_name: str
) -> None:
    path = config(tmp_path, sqlite_url, redis_namespace, app="apps.sup_app", queues=[queue_name],
                  min_processes=2, threads=2)
    path.write_text(path.read_text().replace("heartbeat_timeout = 10.0", "heartbeat_timeout = 4.0"))
    store.connect(sqlite_url)
    log = tmp_path / "supervisor.log"
    token = uuid.uuid4().hex
    with producer("redis", redis_namespace, queue_name) as broker, \
            running(start_supervisor(path, "default", log, **env_for(redis_namespace, queue_name)), log):
        wait_until(lambda: len(rows("default", WorkerStatus.RUNNING)) == 2, 60, message="2 running workers")
        message_id = send(broker, queue_name, "nap", token, 2.0).message_id
        wait_until(lambda: status_of(message_id) == JobStatus.PROCESSING, 30, message="the job running")
        hung = Worker.get(Worker.worker_id == job(message_id).worker_id)
        os.kill(hung.pid, signal.SIGSTOP)  # alive, holding the job, silent
        frozen = time.monotonic()
        wait_until(lambda: len(starts(redis_namespace, token)) >= 2, 10 + RERUN_DEADLINE,
                   message="the hung worker's job to start again")
        again = time.monotonic() - frozen
        assert pid_gone(hung.pid)  # killed before its job was handed out again
        print(f"\nhung worker (SIGSTOP) -> killed and its job running again after {again:.1f} s "
              f"(heartbeat_timeout 4 s)")
        wait_until(lambda: status_of(message_id) == JobStatus.COMPLETED, 60, message="the job done")
        assert runs(redis_namespace, token) == 1  # the frozen run never went on
        dead = Worker.get(Worker.worker_id == hung.worker_id)
        assert dead.exit_reason.startswith("hung: no heartbeat for ")
        assert job(message_id).exception == f"lost: {dead.exit_reason}"


def test_a_killed_workers_jobs_go_back_while_the_ledger_is_down(
    tmp_path: Path, postgres_url: str, redis_namespace: str, queue_name: str
) -> None:
    import peewee
    import psycopg

    from tests.support.servers import POSTGRES_ADMIN
    from watchtower.store import check_database_url

    path = config(tmp_path, postgres_url, redis_namespace, app="apps.sup_app", queues=[queue_name],
                  min_processes=2, threads=2)
    db = store.connect(postgres_url)
    admin = check_database_url(POSTGRES_ADMIN)
    name = check_database_url(postgres_url).database

    def server(sql: str) -> None:
        with psycopg.connect(dbname=admin.database, autocommit=True, **admin.params) as conn:
            conn.execute(sql)

    log = tmp_path / "supervisor.log"
    token = uuid.uuid4().hex
    try:
        with producer("redis", redis_namespace, queue_name) as broker, \
                running(start_supervisor(path, "default", log, **env_for(redis_namespace, queue_name)), log):
            wait_until(lambda: len(rows("default", WorkerStatus.RUNNING)) == 2, 60, message="2 running workers")
            message_id = send(broker, queue_name, "nap", token, 4.0).message_id
            wait_until(lambda: status_of(message_id) == JobStatus.PROCESSING, 30, message="the job running")
            victim = Worker.get(Worker.worker_id == job(message_id).worker_id)
            # The ledger goes away: no new connections, the open ones cut.
            server(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            server(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
            db.close()
            os.kill(victim.pid, signal.SIGKILL)
            killed = time.monotonic()
            wait_until(lambda: len(starts(redis_namespace, token)) >= 2, RERUN_DEADLINE,
                       message="the job to start again without the ledger")
            print(f"\nledger down: kill -9 -> the job running again after {time.monotonic() - killed:.2f} s")
            assert "the ledger is unavailable" in log.read_text()
            wait_until(lambda: runs(redis_namespace, token) == 1, 60, message="the job done")
            server(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')

            def dead() -> Any:
                try:
                    return Worker.get_or_none((Worker.worker_id == victim.worker_id)
                                              & (Worker.status == WorkerStatus.LOST))
                except peewee.PeeweeException:
                    db.close()
                    return None

            assert wait_until(dead, 60, message="the dead worker's record, once the ledger is back").exit_code == -9
            wait_until(lambda: status_of(message_id) == JobStatus.COMPLETED, 60, message="the job recorded done")
            assert runs(redis_namespace, token) == 1
    finally:
        server(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


def test_only_a_supervised_worker_names_its_consumers_by_its_id(
    tmp_path: Path, sqlite_url: str, redis_namespace: str, queue_name: str
) -> None:
    """A worker started by hand may reuse an id (HOSTNAME-PID, a fixed --worker-id): it keeps Dramatiq's random name."""
    store.connect(sqlite_url)
    heartbeats = internals.heartbeats_key(redis_namespace)
    for worker_id, supervised in ((f"by-hand-{uuid.uuid4().hex[:6]}", False), (f"sup-{uuid.uuid4().hex[:6]}", True)):
        command = [sys.executable, "-m", "watchtower", "--database-url", sqlite_url, "worker", queue_name,
                   "--app", "apps.sup_app", "--worker-id", worker_id, "--sleep", "0.2"]
        if supervised:
            command += ["--parent-pid", str(os.getpid())]
        log = tmp_path / f"{worker_id}.log"
        with log.open("wb") as out:
            child = subprocess.Popen(command, env=subprocess_env(**env_for(redis_namespace, queue_name)),
                                     stdout=out, stderr=subprocess.STDOUT)
        with running(child, log), contextlib.closing(traces()) as client:
            wait_until(lambda worker_id=worker_id: Worker.get_or_none((Worker.worker_id == worker_id)
                                                  & (Worker.status == WorkerStatus.RUNNING)), 60,
                       message="the worker running")
            wait_until(lambda: client.zcard(heartbeats) >= 1, 30, message="its consumers' heartbeat")
            named = client.zscore(heartbeats, worker_id) is not None
            assert named is supervised, (worker_id, client.zrange(heartbeats, 0, -1))
            child.send_signal(signal.SIGTERM)
            assert child.wait(60) == 0
            client.delete(heartbeats)


# A whole host dies ---------------------------------------------------------------------------------


def start_host(config_path: Path, name: str, hostname: str, log: Path, **env: str) -> subprocess.Popen[bytes]:
    """A supervisor alone in a PID and UTS namespace: a "host" that dies whole when its first process does."""
    with log.open("ab") as out:
        return subprocess.Popen(
            ["unshare", "--uts", "--pid", "--fork", "--mount-proc", "--", "bash", "-c",
             f'hostname {hostname} && exec "$0" "$@"', sys.executable, "-m", "watchtower", "--config",
             str(config_path), "supervise", "--supervisor", name],
            env=subprocess_env(WATCHTOWER_HOSTNAME=hostname, **env), stdout=out, stderr=subprocess.STDOUT,
        )


def test_the_jobs_of_a_dead_hosts_workers_are_rescued_by_another_host_after_heartbeat_timeout(
    tmp_path: Path, postgres_url: str, redis_namespace: str, queue_name: str
) -> None:
    table = {"queues": [queue_name], "min_processes": 1, "max_processes": 2, "threads": 1, "timeout": 60,
             "memory": 1024, "sleep": 0.2}
    path = write_config(
        tmp_path / "watchtower.toml", app="apps.sup_app", database_url=postgres_url, command_bus="redis",
        redis_url=REDIS_URL, redis_prefix=redis_namespace, heartbeat_timeout=10.0, **{"http.port": 0},
        supervisors={"a": table, "b": table},
    )
    store.connect(postgres_url)
    env = env_for(redis_namespace, queue_name)
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    token = uuid.uuid4().hex
    with producer("redis", redis_namespace, queue_name) as broker, \
            running(start_host(path, "b", "host-b", log_b, **env), log_b) as host_b:
        wait_until(lambda: rows("b", WorkerStatus.RUNNING), 60, message="host b's worker")
        message_id = send(broker, queue_name, "nap", token, 8.0).message_id
        wait_until(lambda: status_of(message_id) == JobStatus.PROCESSING, 30, message="host b's worker to hold it")
        holder = job(message_id).worker_id
        assert Worker.get(Worker.worker_id == holder).hostname == "host-b"
        with running(start_supervisor(path, "a", log_a, WATCHTOWER_HOSTNAME="host-a", **env), log_a) as sup_a:
            wait_until(lambda: rows("a", WorkerStatus.RUNNING), 60, message="host a's worker")
            a_workers = {w.worker_id for w in rows("a", WorkerStatus.RUNNING)}

            # Host b dies: the first process of its PID namespace, and with it everything there.
            (init,) = children(host_b)
            doomed = [p.pid for p in init.children(recursive=True)]
            init.send_signal(signal.SIGKILL)
            died = time.monotonic()
            wait_until(lambda: all(pid_gone(pid) for pid in [init.pid, *doomed]), 30, message="host b gone")
            wait_until(lambda: len(starts(redis_namespace, token)) >= 2, 10 + RERUN_DEADLINE,
                       message="host a to run host b's job again")
            print(f"\nhost b killed whole -> its job running again on host a after {time.monotonic() - died:.1f} s "
                  f"(heartbeat_timeout 10 s; the broker's own: 60 s)")
            wait_until(lambda: status_of(message_id) == JobStatus.COMPLETED, 60, message="the job done on host a")
            row = job(message_id)
            assert row.worker_id in a_workers and row.lost_attempts == 1
            assert row.exception.startswith(f"lost: worker {holder} sent no heartbeat for 10 s")
            assert runs(redis_namespace, token) == 1
            assert {w.status for w in rows("b")} == {WorkerStatus.LOST}
            assert {w.worker_id for w in rows("a", WorkerStatus.RUNNING)} == a_workers  # host a untouched
            assert sup_a.poll() is None


# Poison jobs -----------------------------------------------------------------------------------------


def given_up_total(url: str, queue: str, actor: str) -> float | None:
    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "watchtower_jobs_given_up_total" and sample.labels == {"queue": queue, "actor": actor}:
                return float(sample.value)
    return None


@pytest.mark.parametrize("kind", ["redis", "rabbitmq"])
def test_a_job_that_kills_its_worker_is_given_up_after_max_lost_while_the_others_complete(
    tmp_path: Path, sqlite_url: str, redis_namespace: str, queue_name: str, kind: str
) -> None:
    path = config(tmp_path, sqlite_url, redis_namespace, app="apps.sup_app", queues=[queue_name],
                  min_processes=2, threads=2)
    store.connect(sqlite_url)
    log = tmp_path / "supervisor.log"
    token = uuid.uuid4().hex
    with producer(kind, redis_namespace, queue_name) as broker, \
            running(start_supervisor(path, "default", log, **env_for(redis_namespace, queue_name, kind)), log) as sup:
        wait_until(lambda: len(rows("default", WorkerStatus.RUNNING)) == 2, 60, message="2 running workers")
        url = wait_until(lambda: metrics_url(log), 60, message="the supervisor's /metrics")
        assert given_up_total(url, queue_name, "poison") == 0.0  # declared before the first
        bad = send(broker, queue_name, "poison", token, 1.0)
        good = {send(broker, queue_name, "nap", t, 0.3).message_id: t for t in (uuid.uuid4().hex for _ in range(6))}

        wait_until(lambda: status_of(bad.message_id) == JobStatus.FAILED, 120, message="the poison job given up")
        row = job(bad.message_id)
        assert row.lost_attempts == 3
        assert row.exception.startswith("given up: lost 3 times (max_lost 3), not run again; last exit: ")
        assert "killed by SIGKILL" in row.exception
        assert len(starts(redis_namespace, token)) == 3  # never a fourth run
        # The others ran to their end, some beside it in the workers it killed.
        wait_until(lambda: all(runs(redis_namespace, t) >= 1 for t in good.values()), 60, message="the others done")
        wait_until(lambda: all(status_of(i) != JobStatus.PROCESSING for i in good), 30, message="the others recorded")
        for message_id, other_token in good.items():
            other = job(message_id)
            if other.status != JobStatus.COMPLETED:
                # It finished in a worker the poison job killed a moment later,
                # before that worker's ledger buffer was written: its row shows
                # the attempt lost (the broker has no copy left to run again).
                assert (other.status, other.lost_attempts, len(starts(redis_namespace, other_token))) == (
                    JobStatus.PENDING, 1, 1,
                )
        print(f"\n{kind}: {sum(status_of(i) == JobStatus.COMPLETED for i in good)} of {len(good)} ordinary jobs "
              f"recorded completed; the rest finished but their worker died before writing it")
        wait_until(lambda: len(rows("default", WorkerStatus.RUNNING)) == 2, 60, message="the pool running again")
        assert sup.poll() is None
        if kind == "redis":
            with contextlib.closing(traces()) as client:
                assert client.zscore(internals.dead_key(redis_namespace, queue_name), row.broker_message_id)
        else:
            wait_until(lambda: rabbitmq_count(f"{queue_name}.XQ") == 1, 30, message="the dead letter")
        wait_until(lambda: given_up_total(url, queue_name, "poison") == 1.0, 30, message="the given-up count")
        assert len(starts(redis_namespace, token)) == 3

        # Fixed, it can be retried like any failed job.
        with contextlib.closing(traces()) as client:
            client.set(f"{redis_namespace}:t:cured:{token}", 1)
        retried = subprocess.run(
            [sys.executable, "-m", "watchtower", "--config", str(path), "retry", bad.message_id],
            env=subprocess_env(**env_for(redis_namespace, queue_name, kind)), capture_output=True, text=True,
            timeout=120,
        )
        assert retried.returncode == 0, retried.stderr
        new_id = retried.stdout.split(" -> ")[1].split()[0]
        wait_until(lambda: status_of(new_id) == JobStatus.COMPLETED, 60, message="the retried job done")
        assert runs(redis_namespace, token) == 1
        assert job(bad.message_id).retried_by == new_id
        if kind == "redis":
            with contextlib.closing(traces()) as client:
                assert client.zscore(internals.dead_key(redis_namespace, queue_name), row.broker_message_id) is None
