"""Helpers of the control API's tests: settings, seeded jobs, an authorised test client."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dramatiq
import falcon.testing
import pytest
import redis
from conftest import REDIS_URL, subprocess_env, unique, wait_until
from dramatiq.brokers.redis import RedisBroker

from watchtower import store
from watchtower.config import Settings, load_settings
from watchtower.payload import encode_message
from watchtower.clock import day_of, now_ms
from watchtower.models import Job, Worker
from watchtower.statuses import JobStatus

TOKEN = "s3cret-token-for-tests"
#: Seconds to wait for anything a worker process does.
DEADLINE = 30.0
AUTH = {"Authorization": f"Bearer {TOKEN}"}

_clock = itertools.count()


def web_settings(database_url: str, namespace: str, **more: Any) -> Settings:
    """Settings of an API on ``database_url`` with a Redis bus under ``namespace`` and a token."""
    overrides = {
        "database_url": database_url,
        "command_bus": "redis",
        "redis_url": REDIS_URL,
        "redis_prefix": namespace,
        "http.token": TOKEN,
        **more,
    }
    return load_settings(env={}, overrides=overrides)


def client(app: Any, **headers: str) -> falcon.testing.TestClient:
    """A test client that sends the token unless told otherwise."""
    return falcon.testing.TestClient(app, headers={**AUTH, **headers})


def seed_job(
    *,
    actor: str = "send_email",
    queue: str = "default",
    status: str = JobStatus.COMPLETED,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
    exception: str | None = None,
    payload: str | None = "message",
    **fields: Any,
) -> Job:
    """Insert one job row as the ledger would hold it (payload = the encoded message)."""
    message = dramatiq.Message(
        queue_name=queue, actor_name=actor, args=args, kwargs=kwargs or {}, options=options or {},
        **({"message_id": fields.pop("message_id")} if "message_id" in fields else {}),
    )
    now = now_ms() + next(_clock)
    row = {
        "message_id": message.message_id,
        "queue": queue,
        "actor": actor,
        "connection": "redis",
        "payload": encode_message(message) if payload == "message" else payload,
        "status": status,
        "attempts": 1 if status != JobStatus.PENDING else 0,
        "exception": exception,
        "queued_at": now,
        "started_at": now if status != JobStatus.PENDING else None,
        "completed_at": now + 5 if status in JobStatus.FINISHED else None,
        "progress": 12,
        "progress_at": now * 1000,
        **fields,
    }
    row.setdefault("queued_day", day_of(row["queued_at"]))
    Job.insert(**row).execute()
    return Job.get(Job.message_id == message.message_id)


def seed_many(count: int, **fields: Any) -> list[Job]:
    return [seed_job(**fields) for _ in range(count)]


def table_fingerprint() -> tuple[int, list[tuple[Any, ...]]]:
    """The job table's row count and contents, to show that nothing changed it."""
    rows = list(Job.select(Job.message_id, Job.status, Job.payload, Job.retried_by).order_by(Job.id).tuples())
    return len(rows), rows


def deadline(seconds: float) -> float:
    return time.monotonic() + seconds


class ServedAPI:
    """A ``watchtower serve`` child process on a free loopback port."""

    def __init__(self, process: Any, base_url: str, lines: list[str]) -> None:
        self.process = process
        self.base_url = base_url  # http://127.0.0.1:PORT
        self.lines = lines  # what it wrote to stderr so far

    def stop(self) -> int:
        """SIGTERM, then wait; returns the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except Exception:
                self.process.kill()
                self.process.wait(timeout=20)
        return int(self.process.returncode)


def serve_api(env: dict[str, str], *args: str, timeout: float = 30.0,
              preexec_fn: Callable[[], None] | None = None) -> ServedAPI:
    """Start ``python -m watchtower serve --port 0 ARGS`` and wait for its "listening on" line.

    ``preexec_fn`` runs in the child before it starts (to lower a limit).
    """
    import re
    import subprocess
    import sys
    import threading

    process = subprocess.Popen(
        [sys.executable, "-m", "watchtower", "serve", "--port", "0", *args],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn,
    )
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if "listening on" in line:
                found.set()

    threading.Thread(target=read, daemon=True).start()
    end = deadline(timeout)
    while not found.wait(0.05):
        if process.poll() is not None or time.monotonic() > end:
            process.kill()
            process.wait()
            raise AssertionError("watchtower serve did not start:\n" + "".join(lines))
    match = re.search(r"http://(\S+?):(\d+)/", "".join(lines))
    assert match, lines
    return ServedAPI(process, f"http://{match.group(1)}:{match.group(2)}", lines)


@dataclass
class World:
    """One test's world: Redis namespace, queue, ledger, a producer broker, the workers it started."""

    namespace: str
    queue: str
    database_url: str
    tmp_path: Path
    redis: redis.Redis
    producer: RedisBroker
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        return subprocess_env(
            WT_TEST_NAMESPACE=self.namespace,
            WT_TEST_REDIS=REDIS_URL,
            WT_TEST_QUEUE=self.queue,
            WATCHTOWER_DATABASE_URL=self.database_url,
            WATCHTOWER_COMMAND_BUS="redis",
            WATCHTOWER_REDIS_URL=REDIS_URL,
            WATCHTOWER_REDIS_PREFIX=self.namespace,
            WATCHTOWER_HEARTBEAT_INTERVAL="0.5",
            **extra,
        )

    def start_worker(self) -> tuple[subprocess.Popen[bytes], str]:
        """``watchtower worker`` on this world's queue; the process and its worker id."""
        worker_id = unique("w")
        log = (self.tmp_path / f"{worker_id}.log").open("wb")
        child = subprocess.Popen(
            [sys.executable, "-m", "watchtower", "worker", self.queue, "--app", "apps.web",
             "--worker-id", worker_id, "--sleep", "0.2"],
            env=self.env(), stdout=log, stderr=subprocess.STDOUT,
        )
        self.children.append(child)
        return child, worker_id

    def send(self, actor: str, *args: Any, **kwargs: Any) -> str:
        self.producer.declare_queue(self.queue)
        message = dramatiq.Message(queue_name=self.queue, actor_name=actor, args=args, kwargs=kwargs, options={})
        self.producer.enqueue(message)
        return message.message_id

    def job(self, message_id: str, status: str) -> Job:
        return wait_until(
            lambda: (job := Job.get_or_none(Job.message_id == message_id)) is not None and job.status == status and job,
            timeout=DEADLINE, message=f"job {message_id} to be {status}",
        )

    def trace(self, name: str) -> int:
        return int(self.redis.get(f"{self.namespace}:t:{name}") or 0)

    def worker(self, worker_id: str, status: str) -> Worker:
        return wait_until(
            lambda: (row := Worker.get_or_none(Worker.worker_id == worker_id)) is not None
            and row.status == status and row,
            timeout=DEADLINE, message=f"worker {worker_id} to be {status}",
        )

    def held_messages(self) -> int:
        """Messages fetched and not acked by any worker (the broker's ack sets)."""
        keys = list(self.redis.scan_iter(match=f"{self.namespace}:__acks__.*", count=1000))
        return sum(self.redis.scard(key) for key in keys)

    def dead_letter(self, broker_message_id: str) -> tuple[Any, Any]:
        key = f"{self.namespace}:{self.queue}.XQ"
        return self.redis.zscore(key, broker_message_id), self.redis.hget(key + ".msgs", broker_message_id)


@pytest.fixture
def world(tmp_path: Path, redis_namespace: str, queue_name: str) -> Iterator[World]:
    database_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    db = store.connect(database_url)
    connection = redis.Redis.from_url(REDIS_URL)
    producer = RedisBroker(url=REDIS_URL, namespace=redis_namespace, middleware=[])
    world = World(redis_namespace, queue_name, database_url, tmp_path, connection, producer)
    try:
        yield world
    finally:
        for child in world.children:
            if child.poll() is None:
                child.terminate()
                try:
                    child.wait(timeout=DEADLINE)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
        for log in tmp_path.glob("*.log"):
            print(f"--- {log.name}:\n{log.read_text(errors='replace')[-3000:]}")
        producer.close()
        connection.close()
        db.close()
