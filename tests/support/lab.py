"""Real ``watchtower worker`` processes against one test's ledger and Redis namespace.

A :class:`Lab` is one test's world: its Redis namespace and queue, a SQLite
ledger, a producer broker to send messages with, and the worker processes it
started (each logging to a file under the test's ``tmp_path``).  The ``lab``
fixture in tests/conftest.py makes one and, afterwards, kills every worker it
started by its PID and prints their logs (pytest shows them when a test fails).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from tests.support.checkout import subprocess_env
from tests.support.polling import DEADLINE, wait_until
from tests.support.servers import REDIS_URL, unique
from watchtower.bus import CommandBus
from watchtower.bus.database import DatabaseCommandBus
from watchtower.bus.redis import RedisCommandBus
from watchtower.models import Job, Worker


@dataclass
class Lab:
    """One test's world: namespace, queue, ledger, a producer broker, the workers it started."""

    namespace: str
    queue: str
    database_url: str
    tmp_path: Path
    redis: redis.Redis
    producer: RedisBroker
    children: list[tuple[subprocess.Popen[bytes], Path]] = field(default_factory=list)

    def environment(self, bus: str = "redis", **extra: str) -> dict[str, str]:
        """A worker's environment: the apps' ``WT_TEST_*`` variables, the ledger, the bus."""
        values = {
            "WT_TEST_NAMESPACE": self.namespace,
            "WT_TEST_REDIS": REDIS_URL,
            "WT_TEST_QUEUE": self.queue,
            "WATCHTOWER_DATABASE_URL": self.database_url,
            "WATCHTOWER_COMMAND_BUS": bus,
            "WATCHTOWER_REDIS_URL": REDIS_URL,
            "WATCHTOWER_REDIS_PREFIX": self.namespace,
            "WATCHTOWER_HEARTBEAT_INTERVAL": "0.5",
        }
        return subprocess_env(**{**values, **extra})

    def start(
        self,
        *args: str,
        app: str = "apps.basic",
        worker_id: str | None = None,
        bus: str = "redis",
        env: dict[str, str] | None = None,
        sleep: str = "0.2",
    ) -> tuple[subprocess.Popen[bytes], str]:
        """Start ``watchtower worker ARGS``; returns the process and its worker id."""
        worker_id = worker_id or unique("w")
        command = [
            sys.executable, "-m", "watchtower", "--database-url", self.database_url,
            "worker", "--app", app, "--worker-id", worker_id, "--sleep", sleep, *args,
        ]
        log = self.tmp_path / f"{worker_id}.log"
        with log.open("wb") as out:
            child = subprocess.Popen(command, env=self.environment(bus, **(env or {})), stdout=out,
                                     stderr=subprocess.STDOUT)
        self.children.append((child, log))
        return child, worker_id

    def stop_all(self) -> None:
        """Kill every worker still running (by its PID) and print each one's log."""
        for child, log in self.children:
            if child.poll() is None:
                child.kill()
                child.wait()
                print(f"--- killed {child.args[-1]!r}")
            print(f"--- {log.name}:\n{log.read_text(errors='replace')[-4000:]}")

    def log_text(self, worker_id: str) -> str:
        """What the worker ``worker_id`` (started by :meth:`start`) has logged so far."""
        return (self.tmp_path / f"{worker_id}.log").read_text(errors="replace")

    def send(self, actor: str, *args: Any, queue: str | None = None, **kwargs: Any) -> str:
        """Enqueue a message for an actor of the app; returns its message id."""
        queue = queue or self.queue
        self.producer.declare_queue(queue)
        message = dramatiq.Message(queue_name=queue, actor_name=actor, args=args, kwargs=kwargs, options={})
        self.producer.enqueue(message)
        return message.message_id

    def bus(self, kind: str) -> CommandBus:
        """A command bus of ``kind`` (``redis`` or ``database``) that reaches this lab's workers."""
        if kind == "redis":
            return RedisCommandBus(url=REDIS_URL, prefix=self.namespace)
        return DatabaseCommandBus(database=self.database_url)

    def trace(self, name: str) -> str | None:
        """A trace the apps leave in Redis (``<namespace>:t:<name>``), or None."""
        value = self.redis.get(f"{self.namespace}:t:{name}")
        return None if value is None else value.decode()

    def runs(self, token: str) -> int:
        """How many runs of the job ``token`` finished."""
        return int(self.trace(f"runs:{token}") or 0)

    def row(self, worker_id: str) -> Worker | None:
        return Worker.get_or_none(Worker.worker_id == worker_id)

    def wait_status(self, worker_id: str, status: str, timeout: float = DEADLINE) -> Worker:
        """The worker's row, once its status is ``status``."""
        return wait_until(
            lambda: (row := self.row(worker_id)) is not None and row.status == status and row,
            timeout=timeout, message=f"worker {worker_id} to be {status}",
        )

    def job(self, message_id: str) -> Job | None:
        return Job.get_or_none(Job.message_id == message_id)

    def wait_job(self, message_id: str, status: str, timeout: float = DEADLINE) -> Job:
        """The job's row, once its status is ``status``."""
        return wait_until(
            lambda: (job := self.job(message_id)) is not None and job.status == status and job,
            timeout=timeout, message=f"job {message_id} to be {status}",
        )

    def held_messages(self) -> int:
        """Messages fetched and not acked by any worker (the broker's ack sets)."""
        keys = list(self.redis.scan_iter(match=f"{self.namespace}:__acks__.*", count=1000))
        return sum(self.redis.scard(key) for key in keys)

    def dead_letter(self, broker_message_id: str) -> tuple[Any, Any]:
        """The score and the body of a message in the queue's dead-letter set (None, None if not there)."""
        key = f"{self.namespace}:{self.queue}.XQ"
        return self.redis.zscore(key, broker_message_id), self.redis.hget(key + ".msgs", broker_message_id)
