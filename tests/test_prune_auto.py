"""Automatic trimming: the lease that keeps it to one process, the schedule, the background runner."""

from __future__ import annotations

import itertools
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.ledger_fill import insert_jobs, job_row
from tests.support.polling import wait_until
from tests.support.servers import REDIS_URL
from watchtower import store
from watchtower.clock import DAY_MS, now_ms
from watchtower.config import Settings
from watchtower.lease import acquire, free_at
from watchtower.models import Job
from watchtower.retention import AutoPruner, PruneResult, Retention, prune, prune_if_due
from watchtower.retention.auto import LEASE_NAME
from watchtower.statuses import JobStatus

AUTO = Settings(retention_auto=True, retention_interval=0.0)


def _expired(db, count: int) -> None:  # type: ignore[no-untyped-def]
    now = now_ms()
    insert_jobs(db, [job_row(JobStatus.COMPLETED, now - 10 * DAY_MS + i) for i in range(count)])


class Clock:
    """A wall clock in epoch ms that the test moves by hand."""

    def __init__(self) -> None:
        self.now = now_ms()

    def __call__(self) -> int:
        return self.now


def test_a_lease_has_one_holder_until_it_is_released_or_expires(database_url: str) -> None:
    db = store.connect(database_url)
    clock = Clock()

    first = acquire(db, "job", owner="host-a", ttl=10, clock=clock)
    assert first is not None
    assert acquire(db, "job", owner="host-b", ttl=10, clock=clock) is None
    clock.now += 5_000
    assert first.renew()  # now held until +15 s
    clock.now += 9_000
    assert acquire(db, "job", owner="host-b", ttl=10, clock=clock) is None

    first.release(next_in_ms=2_000)  # free, but not before 2 s from now
    assert free_at(db, "job") == clock.now + 2_000
    assert acquire(db, "job", owner="host-b", ttl=10, clock=clock) is None
    clock.now += 2_000
    second = acquire(db, "job", owner="host-b", ttl=10, clock=clock)
    assert second is not None and second.owner == "host-b"
    assert not first.renew()  # released, then taken: the old holder cannot renew

    # A holder that dies (no release) loses the lease when it expires.
    clock.now += 10_000 - 1
    assert acquire(db, "job", owner="host-c", ttl=10, clock=clock) is None
    clock.now += 1
    third = acquire(db, "job", owner="host-c", ttl=10, clock=clock)
    assert third is not None
    assert not second.renew()
    third.release()
    assert acquire(db, "other", owner="host-a", ttl=10, clock=clock) is not None  # leases are independent


def test_automatic_trimming_is_off_by_default_and_then_touches_nothing(sqlite_url: str) -> None:
    db = store.connect(sqlite_url)
    _expired(db, 10)

    assert prune_if_due(Settings(), owner="host-a", db=db) is None

    assert Job.select().count() == 10
    assert free_at(db, LEASE_NAME) == 0  # not even the lease was taken


def test_automatic_trimming_runs_once_per_interval_whoever_asks(database_url: str) -> None:
    db = store.connect(database_url)
    settings = Settings(retention_auto=True, retention_interval=3600.0)
    clock = Clock()
    _expired(db, 25)

    first = prune_if_due(settings, owner="host-a", db=db, clock=clock)
    assert first is not None and first.owner == "host-a" and first.jobs_total == 25

    _expired(db, 5)
    clock.now += 3_599_000
    assert prune_if_due(settings, owner="host-b", db=db, clock=clock) is None
    assert prune_if_due(settings, owner="host-a", db=db, clock=clock) is None
    assert Job.select().count() == 5

    clock.now += 1_000
    second = prune_if_due(settings, owner="host-b", db=db, clock=clock)
    assert second is not None and second.owner == "host-b" and second.jobs_total == 5


@dataclass
class Attempt:
    owner: str
    called: float
    returned: float
    result: PruneResult | None


def test_two_supervisors_trimming_one_database_never_prune_at_the_same_time(database_url: str) -> None:
    db = store.connect(database_url)
    attempts: list[Attempt] = []
    lock = threading.Lock()
    deadline = time.monotonic() + 6.0

    def supervisor(owner: str) -> None:
        try:
            while time.monotonic() < deadline:
                _expired(db, 2_500)  # something to prune, in several batches

                def slow(deleted: int) -> None:
                    time.sleep(0.03)  # hold the lease a while: overlaps would show

                called = time.time()
                result = prune_if_due(AUTO, owner=owner, db=db, progress=slow)
                with lock:
                    attempts.append(Attempt(owner, called, time.time(), result))
                time.sleep(0.005)
        finally:
            db.close()  # this thread's connection

    threads = [threading.Thread(target=supervisor, args=(owner,)) for owner in ("host-a", "host-b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    pruned = sorted((a for a in attempts if a.result is not None), key=lambda a: a.result.started_at)  # type: ignore[union-attr]
    windows = [(a.owner, a.result.started_at, a.result.finished_at) for a in pruned]  # type: ignore[union-attr]
    for (_, _, end), (owner, start, _) in itertools.pairwise(windows):
        assert start >= end, f"{owner} started pruning at {start} before {end}: two pruners at once"
    assert {owner for owner, _, _ in windows} == {"host-a", "host-b"}, windows  # the lease changes hands
    # Each was turned away while the other was pruning: the lease was contended, not just idle.
    refused = [
        a for a in attempts if a.result is None
        and any(o != a.owner and start < a.returned and a.called < end for o, start, end in windows)
    ]
    assert refused, "no attempt ever met the other supervisor's prune"
    print(f"\n{len(windows)} prunes, none overlapping; {len(refused)} attempts refused during the other's prune")


def test_the_auto_pruner_prunes_in_the_background_and_reports_once(sqlite_url: str) -> None:
    db = store.connect(sqlite_url)
    _expired(db, 3_000)
    pruner = AutoPruner(AUTO, owner="host-a", db=db)
    try:
        assert pruner.tick() is None  # returns at once: the prune runs in its own thread
        result = wait_until(pruner.tick, timeout=30, message="the background prune")
        assert result.jobs_total == 3_000 and result.owner == "host-a"
        assert pruner.tick() is None  # reported once
    finally:
        pruner.close()
    assert Job.select().count() == 0


def test_a_prune_stops_when_told_to_between_batches(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import watchtower.retention.engine as prune_module

    monkeypatch.setattr(prune_module, "FIRST_BATCH", 100)
    db = store.connect(sqlite_url)
    _expired(db, 1_000)

    result = prune(db, Retention(), between_batches=lambda: False, pause=0)

    assert not result.complete
    assert result.jobs_total == 100 and Job.select().count() == 900


def test_a_running_supervisor_trims_the_ledger_on_schedule(
    tmp_path: Path, sqlite_url: str, redis_namespace: str
) -> None:
    from tests.support.supervisors import running, start_supervisor, wait_exit, write_config

    db = store.connect(sqlite_url)
    _expired(db, 2_000)
    insert_jobs(db, [job_row(JobStatus.PENDING, None) for _ in range(10)])
    path = write_config(
        tmp_path / "watchtower.toml",
        app="apps.sup_app", database_url=sqlite_url, command_bus="redis", redis_url=REDIS_URL,
        redis_prefix=redis_namespace, heartbeat_timeout=2.0,
        **{"http.port": 0, "retention.auto": True, "retention.interval": 1.0},
        supervisors={"default": {"queues": [f"q_{redis_namespace}"], "min_processes": 1, "threads": 1,
                                 "memory": 1024}},
    )
    log = tmp_path / "supervisor.log"
    env = {"WT_TEST_NAMESPACE": redis_namespace, "WT_TEST_REDIS": REDIS_URL}
    with running(start_supervisor(path, "default", log, **env), log) as supervisor:
        wait_until(lambda: "pruned 2000 jobs (completed 2000)" in log.read_text(), timeout=60,
                   message="the first automatic prune")
        assert Job.select().where(Job.status == JobStatus.COMPLETED).count() == 0
        _expired(db, 500)  # more expire later: the next scheduled prune takes them
        wait_until(lambda: "pruned 500 jobs (completed 500)" in log.read_text(), timeout=60,
                   message="the next automatic prune")
        assert Job.select().where(Job.status == JobStatus.COMPLETED).count() == 0
        assert Job.select().where(Job.status == JobStatus.PENDING).count() == 10
        supervisor.send_signal(signal.SIGTERM)
        assert wait_exit(supervisor, 90) == 0
