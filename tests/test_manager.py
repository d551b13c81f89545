"""WorkerManager against a real ledger and both command buses (no worker processes here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support.servers import REDIS_URL
from tests.support.supervisors import write_config
from watchtower import WorkerManager, store
from watchtower.bus import COMMAND_TTL, supervisor_inbox_key, worker_command_key
from watchtower.bus.redis import RedisCommandBus
from watchtower.clock import now_ms, to_ms
from watchtower.config import Settings, load_settings
from watchtower.errors import UnknownWorker, WorkerError, WorkerGone
from watchtower.events import JobEvent, Kind
from watchtower.ledger import write_batch
from watchtower.models import CommandEntry, Job, Rollup, Worker
from watchtower.statuses import JobStatus, WorkerStatus


def make_settings(tmp_path: Path, database_url: str, bus: str, prefix: str, **supervisors: dict) -> Settings:
    config = write_config(
        tmp_path / "watchtower.toml",
        database_url=database_url,
        command_bus=bus,
        redis_url=REDIS_URL,
        redis_prefix=prefix,
        hostname="host-test",
        supervisors=supervisors or {"default": {"queues": ["default"]}},
    )
    return load_settings(config, env={})


@pytest.fixture(params=["database", "redis"])
def manager(
    request: pytest.FixtureRequest, tmp_path: Path, sqlite_url: str, redis_namespace: str
) -> Iterator[WorkerManager]:
    settings = make_settings(tmp_path, sqlite_url, request.param, redis_namespace)
    store.connect(settings.database_url)
    manager = WorkerManager(settings)
    yield manager
    manager.bus.close()


def add_worker(worker_id: str, status: str = WorkerStatus.RUNNING, *, beat_age: float = 0.0, **fields: object) -> None:
    now = now_ms()
    defaults = {"supervisor": "default", "hostname": "host-test", "pid": None, "started_at": now - 60_000,
                "last_heartbeat": now - int(beat_age * 1000)}
    defaults.update(fields)
    Worker.insert(worker_id=worker_id, status=status, **defaults).execute()


def test_start_worker_asks_the_supervisor_through_its_inbox(manager: WorkerManager) -> None:
    worker_id = manager.start_worker("emails", {"tries": 5, "timeout": 120})
    [entry] = manager.bus.pop_all(supervisor_inbox_key("default"))
    assert json.loads(entry) == {
        "worker_id": worker_id, "queues": ["emails"], "options": {"tries": 5, "timeout": 120.0},
    }
    row = Worker.get(Worker.worker_id == worker_id)
    assert (row.status, row.supervisor, row.get_queues()) == (WorkerStatus.STARTING, "default", ["emails"])


def test_start_worker_refuses_bad_requests_before_sending_anything(manager: WorkerManager) -> None:
    with pytest.raises(WorkerError, match="unknown supervisor 'nope': the configuration declares default"):
        manager.start_worker("emails", supervisor="nope")
    with pytest.raises(WorkerError, match="unknown worker option 'retries'"):
        manager.start_worker("emails", {"retries": 3})
    with pytest.raises(WorkerError, match="'memory' must be from 0 to 1048576, not -1"):
        manager.start_worker("emails", {"memory": -1})
    with pytest.raises(WorkerError, match="queue must be"):
        manager.start_worker("")
    assert manager.bus.pop_all(supervisor_inbox_key("default")) == []
    assert Worker.select().count() == 0


def test_the_default_supervisor_is_the_only_one_or_default(
    tmp_path: Path, sqlite_url: str, redis_namespace: str
) -> None:
    two = make_settings(tmp_path, sqlite_url, "redis", redis_namespace, a={}, b={})
    with pytest.raises(WorkerError, match=r"several supervisors are configured \(a, b\)"):
        WorkerManager(two).start_worker("q")
    manager = WorkerManager(two)
    worker_id = manager.start_worker("q", supervisor="b")
    assert json.loads(manager.bus.pop_all(supervisor_inbox_key("b"))[0])["worker_id"] == worker_id
    assert manager.bus.pop_all(supervisor_inbox_key("a")) == []
    only = make_settings(tmp_path, sqlite_url, "redis", redis_namespace, emails={})
    assert WorkerManager(only).default_supervisor() == "emails"
    manager.bus.close()


def test_the_commands_queue_on_the_workers_list_in_order(manager: WorkerManager) -> None:
    add_worker("w1")
    manager.pause_worker("w1")
    manager.resume_worker("w1")
    manager.restart_worker("w1")
    manager.stop_worker("w1")
    assert manager.bus.pop_all(worker_command_key("w1")) == ["pause", "resume", "restart", "stop"]
    assert manager.bus.pop_all(worker_command_key("w1")) == []


def test_a_command_waits_a_day_for_its_worker(manager: WorkerManager) -> None:
    # A command outlives any wait of a busy worker (a pause waits for the jobs
    # in hand), and lapses if its worker never comes.
    add_worker("w1")
    manager.pause_worker("w1")
    if isinstance(manager.bus, RedisCommandBus):
        client = redis.Redis.from_url(REDIS_URL)
        left = client.pttl(f"{manager.bus.prefix}:{worker_command_key('w1')}") / 1000
        client.close()
    else:
        left = (to_ms(CommandEntry.get(CommandEntry.key == worker_command_key("w1")).expires_at) - now_ms()) / 1000
    assert COMMAND_TTL - 60 < left <= COMMAND_TTL == 24 * 3600


def test_commands_to_unknown_or_gone_workers_are_refused_distinctly(manager: WorkerManager) -> None:
    with pytest.raises(UnknownWorker, match="unknown worker 'ghost'"):
        manager.stop_worker("ghost")
    for status in (WorkerStatus.STOPPED, WorkerStatus.LOST, WorkerStatus.CRASHLOOPING):
        add_worker(f"gone-{status}", status)
        with pytest.raises(WorkerGone, match=f"worker 'gone-{status}' is {status}: it cannot pause"):
            manager.pause_worker(f"gone-{status}")
        assert manager.bus.pop_all(worker_command_key(f"gone-{status}")) == []


def test_running_all_and_is_running(manager: WorkerManager) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        add_worker("here-alive", pid=sleeper.pid)
        add_worker("here-dead-pid", pid=2**22 + 17)  # above pid_max: no such process
        add_worker("elsewhere", hostname="other-host", pid=os.getpid())
        add_worker("silent", beat_age=3600)
        add_worker("paused", WorkerStatus.PAUSED, pid=sleeper.pid)
        add_worker("stopped", WorkerStatus.STOPPED)
        assert manager.is_worker_running("here-alive")
        assert not manager.is_worker_running("here-dead-pid")
        assert manager.is_worker_running("elsewhere")  # another host: its heartbeat is the evidence
        assert not manager.is_worker_running("silent")
        assert manager.is_worker_running("paused")
        assert not manager.is_worker_running("stopped")
        assert not manager.is_worker_running("nobody")
        running = {w.worker_id for w in manager.get_running_workers()}
        assert running == {"here-alive", "here-dead-pid", "elsewhere", "silent", "paused"}
        assert {w.worker_id for w in manager.get_all_workers()} == running | {"stopped"}
    finally:
        sleeper.kill()
        sleeper.wait()


def test_terminate_all_workers_restarts_every_live_one(manager: WorkerManager) -> None:
    add_worker("a")
    add_worker("b", WorkerStatus.PAUSED, hostname="elsewhere")
    add_worker("c", WorkerStatus.STOPPED)
    assert manager.terminate_all_workers() == 2
    assert manager.bus.pop_all(worker_command_key("a")) == ["restart"]
    assert manager.bus.pop_all(worker_command_key("b")) == ["restart"]
    assert manager.bus.pop_all(worker_command_key("c")) == []


def started(message_id: str, worker_id: str) -> JobEvent:
    now = now_ms()
    return JobEvent(message_id=message_id, kind=Kind.STARTED, attempt=1, at=now * 1000, queue="q", actor="act",
                    connection="redis", queued_at=now, worker_id=worker_id, started_at=now)


def test_stale_workers_and_their_jobs_are_marked_lost_once(
    tmp_path: Path, database_url: str, redis_namespace: str
) -> None:
    settings = make_settings(tmp_path, database_url, "database", redis_namespace)
    db = store.connect(settings.database_url)
    add_worker("vanished", beat_age=120, hostname="dead-host", supervisor="other")
    add_worker("crashloop-orphan", WorkerStatus.CRASHLOOPING, beat_age=120)
    add_worker("fresh", beat_age=1)
    add_worker("starting-now", WorkerStatus.STARTING, started_at=now_ms(), last_heartbeat=None)
    write_batch(db, [started("m-vanished", "vanished"), started("m-fresh", "fresh")])

    # Two cleaners at once (two supervisors): each row and each job is claimed once.
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda: results.append(WorkerManager(settings, database=db).cleanup_stale_workers(60)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(results) == 2

    statuses = {w.worker_id: w.status for w in Worker.select()}
    assert statuses == {"vanished": "lost", "crashloop-orphan": "lost", "fresh": "running", "starting-now": "starting"}
    assert "sent no heartbeat for 60 s" in Worker.get(Worker.worker_id == "vanished").exit_reason
    lost = Job.get(Job.message_id == "m-vanished")
    assert (lost.status, lost.lost_attempts) == (JobStatus.PENDING, 1)
    assert "lost: " in lost.exception
    assert Job.get(Job.message_id == "m-fresh").status == JobStatus.PROCESSING
    assert sum(r.count for r in Rollup.select().where(Rollup.kind == "lost")) == 1
    assert WorkerManager(settings, database=db).cleanup_stale_workers(60) == 0
    assert Job.get(Job.message_id == "m-vanished").lost_attempts == 1
