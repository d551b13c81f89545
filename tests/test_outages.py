"""The ledger or the command bus goes down under real supervisors and workers, and comes back.

Each test runs servers of its own (tests/private_servers.py: a PostgreSQL
cluster, a Redis server), takes them down as a crash would and brings them
back, with real ``watchtower supervise`` processes around them; the broker
stays on the shared Redis under the test's own namespace.  What must hold
afterwards:

- a ledger outage longer than ``heartbeat_timeout``, then a stale-worker
  cleanup (by a supervisor, or by ``WorkerManager``), leaves every live
  worker running and obeying a pause, with no lost attempt on a job that
  ran through it, and no lost worker or job in ``/metrics``;
- workers started while the bus is down run jobs, and take their commands
  once it is back: the pool keeps its size;
- a start request the bus cannot take leaves no row behind.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import peewee
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.support.polling import stays, wait_until
from tests.support.private_servers import private_postgres, private_redis
from tests.support.servers import REDIS_URL
from tests.support.supervisors import (
    app_env,
    children,
    enqueue,
    measure,
    metrics_url,
    rows,
    running,
    start_supervisor,
    wait_exit,
    write_config,
)
from tests.support.tcp_proxy import TcpProxy
from tests.support.web_api import TOKEN, client
from watchtower import WorkerManager, models, store
from watchtower.clock import now_ms
from watchtower.config import load_settings
from watchtower.errors import BusError, WorkerGone
from watchtower.events import ALIVE_AS, JobEvent, Kind, WorkerEvent
from watchtower.ledger import write_batch
from watchtower.models import Job, LostMark, Rollup, Worker
from watchtower.recorder import MAX_BACKOFF, Recorder
from watchtower.records import HeartbeatGrace, clean_stale_workers
from watchtower.scrape import ScrapeSources
from watchtower.statuses import JobStatus, WorkerStatus
from watchtower.web import create_app

pytestmark = pytest.mark.timeout(420)

#: Short, so that an outage of a few times it fits in a test.
HEARTBEAT_TIMEOUT = 5.0
#: How long the ledger stays away: three heartbeat timeouts.
OUTAGE = 3 * HEARTBEAT_TIMEOUT
#: Jobs that run through the whole outage and past the cleanup after it.
LONG_JOB = OUTAGE + 15.0


def outage_config(
    path: Path, database_url: str, namespace: str, *, redis_url: str = REDIS_URL, **supervisors: dict[str, Any]
) -> Path:
    pool = {"min_processes": 1, "max_processes": 4, "threads": 3, "timeout": 120, "memory": 1024, "sleep": 0.2}
    return write_config(
        path,
        app="apps.sup_app",
        database_url=database_url,
        command_bus="redis",
        redis_url=redis_url,
        redis_prefix=namespace,
        hostname="host-a",
        heartbeat_timeout=HEARTBEAT_TIMEOUT,
        **{"http.port": 0},
        supervisors={name: {**pool, **table} for name, table in supervisors.items()},
    )


def traces(namespace: str, token: str) -> tuple[int, int]:
    """(finished runs, starts) of the nap with ``token``."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        runs = int(client.get(f"{namespace}:t:runs:{token}") or 0)
        return runs, client.llen(f"{namespace}:t:starts:{token}")
    finally:
        client.close()


def starts(namespace: str, token: str) -> list[int]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return [int(pid) for pid in client.lrange(f"{namespace}:t:starts:{token}", 0, -1)]
    finally:
        client.close()


def metric(url: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` in a scrape of ``url`` that carry ``labels``."""
    with urllib.request.urlopen(url, timeout=30) as answer:
        text = answer.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def ledger(call: Any) -> Any:
    """``call()``, or None while the ledger's connection is broken (it is replaced for the next try)."""
    try:
        return call()
    except (peewee.OperationalError, peewee.InterfaceError):
        models.database.obj.close()
        return None


def obeys_pause_and_resume(manager: WorkerManager, worker_ids: list[str]) -> None:
    for worker_id in worker_ids:
        manager.pause_worker(worker_id)
    wait_until(lambda: {w.worker_id for w in Worker.with_status(WorkerStatus.PAUSED)} >= set(worker_ids), 60,
               message="every worker to pause")
    for worker_id in worker_ids:
        manager.resume_worker(worker_id)
    wait_until(lambda: {w.worker_id for w in Worker.with_status(WorkerStatus.RUNNING)} >= set(worker_ids), 60,
               message="every worker to resume")


def assert_nothing_lost(namespace: str, tokens: list[str], message_ids: list[str]) -> None:
    """Every job completed once, no lost attempt left on it, no lost mark, no lost count."""
    jobs = list(Job.select().where(Job.message_id.in_(message_ids)))
    assert len(jobs) == len(message_ids)
    for job in jobs:
        assert (job.status, job.attempts, job.lost_attempts, job.exception) == (JobStatus.COMPLETED, 1, 0, None), \
            job.message_id
    assert LostMark.select().count() == 0
    assert sum(r.count for r in Rollup.select().where(Rollup.kind == "lost")) == 0
    for token in tokens:
        assert traces(namespace, token) == (1, 1), token  # ran once: nothing was given to another worker


def long_jobs(namespace: str, queue: str, count: int) -> tuple[list[str], list[str]]:
    tokens = [uuid.uuid4().hex for _ in range(count)]
    return tokens, [enqueue(namespace, queue, token, seconds=LONG_JOB) for token in tokens]


def running_ids(supervisor: str) -> dict[str, int]:
    return {w.worker_id: w.pid for w in rows(supervisor, WorkerStatus.RUNNING)}


# The ledger goes down ----------------------------------------------------------------------------


def test_a_ledger_outage_longer_than_heartbeat_timeout_then_a_cleanup_loses_no_live_worker_and_no_job(
    tmp_path: Path, redis_namespace: str, queue_name: str
) -> None:
    """Everyone loses the ledger; right after it is back, a cleanup runs before the workers wrote again."""
    other_queue = f"{queue_name}_b"
    with private_postgres(tmp_path) as pg:
        url = pg.url()
        path = outage_config(tmp_path / "watchtower.toml", url, redis_namespace,
                             a={"queues": [queue_name], "min_processes": 2, "threads": 4},
                             b={"queues": [other_queue]})
        store.connect(url)
        manager = WorkerManager(load_settings(path, env={}))
        log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
        with running(start_supervisor(path, "a", log_a, **app_env(redis_namespace, queue_name)), log_a) as sup_a, \
                running(start_supervisor(path, "b", log_b, WATCHTOWER_HOSTNAME="host-b",
                                         **app_env(redis_namespace, other_queue)), log_b):
            wait_until(lambda: len(rows("a", WorkerStatus.RUNNING)) == 2 and len(rows("b", WorkerStatus.RUNNING)) == 1,
                       90, message="both pools running")
            before = running_ids("a")
            tokens, message_ids = long_jobs(redis_namespace, queue_name, 4)
            wait_until(lambda: Job.select().where(Job.message_id.in_(message_ids)
                                                  & (Job.status == JobStatus.PROCESSING)).count() == 4,
                       60, message="the long jobs to start")

            pg.crash()
            short = [uuid.uuid4().hex for _ in range(6)]  # run and end while the ledger is away
            short_ids = [enqueue(redis_namespace, queue_name, token, seconds=0.2) for token in short]
            time.sleep(OUTAGE)  # the outage itself
            pg.start()
            # A cleanup that knows nothing of the outage (another host's
            # cron, a script) runs as soon as the ledger answers.
            claimed = wait_until(lambda: ledger(lambda: [manager.cleanup_stale_workers(HEARTBEAT_TIMEOUT)]), 60,
                                 message="the ledger to answer")[0]
            print(f"\nthe cleanup right after the outage marked {claimed} workers lost")

            wait_until(lambda: ledger(lambda: running_ids("a") == before), 60, message="a's workers running again")
            wait_until(lambda: ledger(lambda: Job.select().where(
                Job.message_id.in_(message_ids + short_ids) & (Job.status == JobStatus.COMPLETED)).count() == 10),
                LONG_JOB + 60, message="every job to complete")
            # Through the supervisors' grace and past it, no one judges them dead.
            assert stays(lambda: ledger(lambda: running_ids("a")) == before, HEARTBEAT_TIMEOUT + MAX_BACKOFF + 2)

            assert running_ids("a") == before and {c.pid for c in children(sup_a)} == set(before.values())
            for row in rows("a"):
                assert (row.status, row.stopped_at, row.exit_code, row.exit_reason) == \
                    (WorkerStatus.RUNNING, None, None, None)
            obeys_pause_and_resume(manager, list(before))
            assert_nothing_lost(redis_namespace, tokens + short, message_ids + short_ids)
            served = metrics_url(log_a)
            assert metric(served, "watchtower_jobs_lost_total") == 0
            assert metric(served, "watchtower_workers", supervisor="a", status="lost") == 0
            assert metric(served, "watchtower_workers", supervisor="a", status="running") == 2
            assert metric(served, "watchtower_worker_restarts_total") == 0
            sup_a.send_signal(signal.SIGTERM)
            assert wait_exit(sup_a, 120) == 0
        manager.bus.close()


def test_a_host_cut_off_from_the_ledger_and_judged_lost_by_another_comes_back_whole(
    tmp_path: Path, redis_namespace: str, queue_name: str
) -> None:
    """Host a loses the ledger while host b does not: b judges a's workers lost; they were not."""
    other_queue = f"{queue_name}_b"
    with private_postgres(tmp_path) as pg:
        url = pg.url()
        store.connect(url)  # the schema, before host a reaches it through its proxy
        proxy = TcpProxy(("127.0.0.1", pg.port))
        try:
            proxied = url.replace(f":{pg.port}/", f":{proxy.port}/") + "?connect_timeout=2"
            path_a = outage_config(tmp_path / "a.toml", proxied, redis_namespace,
                                   a={"queues": [queue_name], "min_processes": 2})
            path_b = outage_config(tmp_path / "b.toml", url, redis_namespace, b={"queues": [other_queue]})
            manager = WorkerManager(load_settings(path_b, env={}))
            log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
            with running(start_supervisor(path_a, "a", log_a, **app_env(redis_namespace, queue_name)),
                         log_a) as sup_a, \
                    running(start_supervisor(path_b, "b", log_b, WATCHTOWER_HOSTNAME="host-b",
                                             **app_env(redis_namespace, other_queue)), log_b) as sup_b:
                wait_until(lambda: len(rows("a", WorkerStatus.RUNNING)) == 2
                           and len(rows("b", WorkerStatus.RUNNING)) == 1, 90, message="both pools running")
                before = running_ids("a")
                tokens, message_ids = long_jobs(redis_namespace, queue_name, 3)
                wait_until(lambda: Job.select().where(Job.message_id.in_(message_ids)
                                                      & (Job.status == JobStatus.PROCESSING)).count() == 3,
                           60, message="the long jobs to start")

                proxy.cut()
                # b, which reaches the ledger, sees a's workers fall silent and marks them lost.
                wait_until(lambda: len(rows("a", WorkerStatus.LOST)) == 2, OUTAGE + 60,
                           message="b to judge a's workers")
                marked = Job.select().where(Job.message_id.in_(message_ids) & (Job.lost_attempts == 1)).count()
                assert marked == 3  # the mistake this test is about did happen
                with pytest.raises(WorkerGone):
                    manager.pause_worker(next(iter(before)))
                time.sleep(max(0.0, OUTAGE - HEARTBEAT_TIMEOUT))  # the rest of the outage
                proxy.restore()

                back = measure(lambda: running_ids("a") == before, 60, "a's workers running again")
                print(f"\na's workers back {back:.1f} s after the ledger was reachable again")
                wait_until(lambda: Job.select().where(Job.message_id.in_(message_ids)
                                                      & (Job.status == JobStatus.COMPLETED)).count() == 3,
                           LONG_JOB + 60, message="the long jobs to complete")
                # a's own supervisor judges them again once its grace is over: they stay.
                assert stays(lambda: running_ids("a") == before, HEARTBEAT_TIMEOUT + MAX_BACKOFF + 2)

                assert running_ids("a") == before and {c.pid for c in children(sup_a)} == set(before.values())
                for row in rows("a"):
                    assert (row.status, row.stopped_at, row.exit_code, row.exit_reason) == \
                        (WorkerStatus.RUNNING, None, None, None)
                obeys_pause_and_resume(manager, list(before))
                assert_nothing_lost(redis_namespace, tokens, message_ids)
                for served, name in ((metrics_url(log_a), "a"), (metrics_url(log_b), "b")):
                    assert metric(served, "watchtower_jobs_lost_total") == 0
                    assert metric(served, "watchtower_worker_restarts_total") == 0
                    assert metric(served, "watchtower_workers", supervisor=name, status="lost") == 0
                assert metric(metrics_url(log_a), "watchtower_workers", supervisor="a", status="running") == 2
                assert sup_b.poll() is None
            manager.bus.close()
        finally:
            proxy.close()


def test_the_first_scrape_after_an_outage_no_scrape_saw_has_the_ledgers_values(tmp_path: Path) -> None:
    with private_postgres(tmp_path) as pg:
        store.connect(pg.url()).close()
        sources = ScrapeSources(database_url=pg.url(), ttl=0.0)
        try:
            assert sources.reading().workers == []  # a connection is kept between scrapes
            pg.crash()
            pg.start()
            assert sources.reading().workers == []  # not None: values, not "left out"
        finally:
            sources.close()


def test_the_outage_warning_counts_what_waits_in_the_process(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="watchtower.recorder")
    with private_postgres(tmp_path) as pg:
        recorder = Recorder(pg.url(), flush_interval=0.05)
        try:
            recorder.record_worker(WorkerEvent("w-1", {"status": WorkerStatus.RUNNING, "last_heartbeat": now_ms()}))
            assert recorder.flush(timeout=60)
            pg.crash()
            at = time.time_ns() // 1000
            for n in range(300):
                recorder.record(JobEvent(message_id=f"m-{n}", kind=Kind.ENQUEUED, attempt=1, at=at + n, queue="q",
                                         actor="a", connection="redis", queued_at=at // 1000))
            recorder.record_worker(WorkerEvent("w-1", {"last_heartbeat": now_ms()}))
            said = wait_until(lambda: [r.getMessage() for r in caplog.records if "cannot write" in r.getMessage()
                                       and r.getMessage().endswith(
                                           ": 300 job events (0 more in the spool), 1 worker rows")], 60,
                              message="the outage warning")
            assert f"waiting in process {os.getpid()}:" in said[0]
            assert recorder.stats().buffered == 300
            pg.start()
            assert recorder.flush(timeout=60)
        finally:
            recorder.close()


# Judging heartbeats ---------------------------------------------------------------------------------


def test_heartbeats_are_judged_only_a_grace_after_the_ledger_answers_again() -> None:
    grace = HeartbeatGrace(HEARTBEAT_TIMEOUT, now=100.0)
    wait = HEARTBEAT_TIMEOUT + MAX_BACKOFF
    assert not grace.judges(100.0 + wait - 0.1)  # after the start, too
    assert grace.judges(100.0 + wait)
    grace.failed()
    assert not grace.judges(500.0)  # while the ledger is away
    grace.answered(600.0)
    assert not grace.judges(600.0 + wait - 0.1)
    assert grace.judges(600.0 + wait)
    grace.answered(700.0)  # successes without a failure between them change nothing
    assert grace.judges(700.0)


def test_a_worker_row_marked_stale_comes_back_with_a_heartbeat_taken_after_the_mark(database_url: str) -> None:
    db = store.connect(database_url)
    start = now_ms() - 60_000
    for worker_id in ("cut-off", "dead", "reaped"):
        write_batch(db, [], [WorkerEvent(worker_id, {"status": WorkerStatus.PAUSED, "started_at": start,
                                                      "last_heartbeat": start})])
    assert clean_stale_workers(HEARTBEAT_TIMEOUT) == 3
    marked = {w.worker_id: w for w in Worker.select()}
    assert {w.status for w in marked.values()} == {WorkerStatus.LOST}
    assert all(w.exit_reason.startswith("stale: ") for w in marked.values())
    Worker.update(exit_code=-9, exit_reason="killed by SIGKILL").where(Worker.worker_id == "reaped").execute()

    beat = now_ms() + 1
    old_beat = start + 1_000  # taken before the mark, written late (a replayed buffer)
    write_batch(db, [], [
        WorkerEvent("cut-off", {"last_heartbeat": beat, ALIVE_AS: WorkerStatus.PAUSED}),
        WorkerEvent("dead", {"last_heartbeat": old_beat, ALIVE_AS: WorkerStatus.RUNNING}),
        WorkerEvent("reaped", {"last_heartbeat": beat, ALIVE_AS: WorkerStatus.RUNNING}),  # its supervisor saw it die
    ])
    rows_now = {w.worker_id: w for w in Worker.select()}
    back = rows_now["cut-off"]
    assert (back.status, back.stopped_at, back.exit_code, back.exit_reason) == (WorkerStatus.PAUSED, None, None, None)
    assert rows_now["dead"].status == WorkerStatus.LOST and rows_now["dead"].exit_reason.startswith("stale: ")
    assert (rows_now["reaped"].status, rows_now["reaped"].exit_code) == (WorkerStatus.LOST, -9)
    assert clean_stale_workers(HEARTBEAT_TIMEOUT) == 0  # the revived row beats: not stale


# The bus goes down --------------------------------------------------------------------------------------


def test_workers_started_while_the_bus_is_down_run_jobs_and_take_commands_once_it_is_back(
    tmp_path: Path, sqlite_url: str, redis_namespace: str, queue_name: str
) -> None:
    with private_redis(tmp_path) as bus:
        path = outage_config(tmp_path / "watchtower.toml", sqlite_url, redis_namespace, redis_url=bus.url,
                             default={"queues": [queue_name], "min_processes": 2, "threads": 2})
        store.connect(sqlite_url)
        manager = WorkerManager(load_settings(path, env={}))
        log = tmp_path / "supervisor.log"
        with running(start_supervisor(path, "default", log, **app_env(redis_namespace, queue_name)), log) as sup:
            wait_until(lambda: len(rows("default", WorkerStatus.RUNNING)) == 2, 60, message="the pool running")
            first = running_ids("default")

            bus.stop()
            for pid in first.values():  # crashes during the outage: both are replaced
                os.kill(pid, signal.SIGKILL)
            replaced = wait_until(lambda: len(now := running_ids("default")) == 2 and not set(now) & set(first) and now,
                                  60, message="two new workers running while the bus is down")
            assert {c.pid for c in children(sup)} == set(replaced.values())
            tokens = [uuid.uuid4().hex for _ in range(8)]
            for token in tokens:
                enqueue(redis_namespace, queue_name, token, seconds=0.1)
            wait_until(lambda: all(traces(redis_namespace, token)[0] == 1 for token in tokens), 60,
                       message="the new workers to run the jobs")
            assert {pid for token in tokens for pid in starts(redis_namespace, token)} <= set(replaced.values())
            assert not rows("default", WorkerStatus.CRASHLOOPING, WorkerStatus.STOPPED)
            assert "starts without its commands" in log.read_text(errors="replace")

            bus.start()
            obeys_pause_and_resume(manager, list(replaced))
            assert running_ids("default") == replaced
        manager.bus.close()


def test_a_start_request_the_bus_cannot_take_leaves_no_row(
    tmp_path: Path, sqlite_url: str, redis_namespace: str
) -> None:
    with private_redis(tmp_path) as bus:
        path = outage_config(tmp_path / "watchtower.toml", sqlite_url, redis_namespace, redis_url=bus.url,
                             default={"queues": ["default"]})
        settings = load_settings(path, env={})
        store.connect(sqlite_url)
        manager = WorkerManager(settings)
        api = client(create_app(load_settings(path, env={}, overrides={"http.token": TOKEN})))
        asked = manager.start_worker("default")
        assert [w.worker_id for w in Worker.select()] == [asked]  # the request is on the bus: the row is there

        bus.stop()
        with pytest.raises(BusError):
            manager.start_worker("default")
        answer = api.simulate_post("/watchtower/workers/start", json={"queue": "default"})
        assert answer.status_code == 503, answer.text
        assert [w.worker_id for w in Worker.select()] == [asked]
        listed = api.simulate_get("/watchtower/workers")
        assert listed.status_code == 200, listed.text
        assert [w["id"] for w in listed.json["data"]] == [asked]
        manager.bus.close()


@pytest.fixture(autouse=True)
def _no_models_left_bound() -> Iterator[None]:
    yield
    if models.database.obj is not None:
        models.database.obj.close()
