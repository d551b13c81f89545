"""Jobs recorded in-process: events, a Dramatiq worker with the recording middleware, what reached the ledger."""

from __future__ import annotations

import collections
import socket
import threading
import time
from pathlib import Path
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from tests.support.servers import REDIS_URL, unique
from watchtower import WatchtowerMiddleware, load_settings
from watchtower.clock import now_ms
from watchtower.events import JobEvent, Kind
from watchtower.models import Job, Rollup
from watchtower.recorder import Recorder
from watchtower.statuses import JobStatus


def enqueued(message_id: str, queue: str = "default") -> JobEvent:
    at = now_ms()
    return JobEvent(message_id=message_id, kind=Kind.ENQUEUED, attempt=1, at=at * 1000, queue=queue,
                    actor="act", connection="redis", queued_at=at, payload="{}")


def refused_url() -> str:
    """A PostgreSQL URL whose port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"postgresql://postgres@127.0.0.1:{port}/nowhere?connect_timeout=1"


class Jobs:
    """A Redis broker, one actor that counts its runs, a worker, and the recording middleware."""

    def __init__(self, namespace: str, recorder: Recorder, tmp_path: Path) -> None:
        self.queue = unique("q")
        self.broker = RedisBroker(url=REDIS_URL, namespace=namespace)
        settings = load_settings(env={}, cwd=tmp_path, overrides={"heartbeat_interval": 0.2})
        self.middleware = WatchtowerMiddleware(settings=settings, recorder=recorder, worker_id=unique("w"))
        self.broker.add_middleware(self.middleware)
        self.runs: collections.Counter[str] = collections.Counter()
        lock = threading.Lock()

        def work(n: int) -> None:
            time.sleep(0.002)  # a little work, so jobs overlap
            with lock:
                self.runs[f"{n}"] += 1

        self.actor = dramatiq.actor(work, broker=self.broker, queue_name=self.queue, actor_name="work")
        self.broker.emit_after("process_boot")
        self.worker = dramatiq.Worker(self.broker, worker_timeout=100, worker_threads=4)
        self.sent: list[str] = []

    def __enter__(self) -> Jobs:
        self.worker.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.worker.stop()
        self.broker.close()

    def send(self, count: int) -> None:
        for _ in range(count):
            self.sent.append(self.actor.send(len(self.sent)).message_id)

    def all_ran(self) -> bool:
        return len(self.runs) == len(self.sent)


def job_events_written(db: Any, queue: str) -> int:
    """Job events in the ledger: every one adds one to a rollup (enqueued, started, completed)."""
    return sum(r.count for r in Rollup.select().where(Rollup.queue == queue).execute(db))


def completed(db: Any, ids: list[str]) -> int:
    return Job.select().where(Job.message_id.in_(ids) & (Job.status == JobStatus.COMPLETED)).count(db)
