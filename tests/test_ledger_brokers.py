"""Every kind of job life, recorded from a real broker by a real dramatiq.Worker.

The matrix: Redis, RabbitMQ and the StubBroker on SQLite, and Redis on
PostgreSQL and MariaDB too.  Each case declares its actors on a broker of
its own (unique queue, own Redis namespace), runs one ``dramatiq.Worker``
with WatchtowerMiddleware and checks every row the ledger wrote.
"""

from __future__ import annotations

import collections
import json
import os
import threading
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.stub import StubBroker

from tests.support.brokers import open_broker
from tests.support.polling import wait_until
from tests.support.servers import REDIS_URL, make_database_url, unique
from watchtower import WatchtowerMiddleware, load_settings, models, store
from watchtower.clock import now_ms, to_ms
from watchtower.models import Job, Rollup, Worker
from watchtower.statuses import JobStatus, WorkerStatus

CASES = [
    ("redis", "sqlite"),
    ("rabbitmq", "sqlite"),
    ("stub", "sqlite"),
    ("redis", "postgresql"),
    ("redis", "mysql"),
]


def recording_middleware(url: str, tmp_path: Path, worker_id: str) -> WatchtowerMiddleware:
    settings = load_settings(env={}, cwd=tmp_path, overrides={
        "database_url": url,
        "recorder.flush_interval": 0.05,
        "heartbeat_interval": 0.2,
    })
    return WatchtowerMiddleware(settings=settings, worker_id=worker_id)


@pytest.mark.parametrize(("broker_kind", "db_kind"), CASES, ids=[f"{b}-{d}" for b, d in CASES])
def test_every_job_life_is_recorded(
    broker_kind: str, db_kind: str, tmp_path: Path, redis_namespace: str, queue_name: str
) -> None:
    url, drop = make_database_url(db_kind, tmp_path)
    worker_id = unique("worker")
    middleware = recording_middleware(url, tmp_path, worker_id)
    tries: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    try:
        with open_broker(broker_kind, redis_namespace, queue_name) as broker:
            broker.add_middleware(middleware)

            def declare(fn: Any, **options: Any) -> dramatiq.Actor:
                return dramatiq.actor(fn, broker=broker, queue_name=queue_name, actor_name=fn.__name__,
                                      min_backoff=50, max_backoff=100, **options)

            def succeeds(number: int, *, label: str) -> None:
                pass

            def fails_once() -> None:
                with lock:
                    tries["fails_once"] += 1
                    first = tries["fails_once"] == 1
                if first:
                    raise RuntimeError("the first try fails")

            def always_fails() -> None:
                raise RuntimeError("this one always fails")

            def refuses() -> None:
                raise ValueError("not worth retrying")

            def runs_later() -> None:
                pass

            def too_old() -> None:
                raise AssertionError("AgeLimit must skip this message")

            actors = {
                "succeeds": declare(succeeds),
                "fails_once": declare(fails_once, max_retries=3),
                "always_fails": declare(always_fails, max_retries=1),
                "refuses": declare(refuses, max_retries=5, throws=(ValueError,)),
                "runs_later": declare(runs_later),
                "too_old": declare(too_old, max_age=1_000),
            }
            broker.emit_after("process_boot")
            worker = dramatiq.Worker(broker, worker_timeout=100, worker_threads=2)
            worker.start()
            try:
                sent = {
                    "succeeds": actors["succeeds"].send(7, label="seven"),
                    "fails_once": actors["fails_once"].send(),
                    "always_fails": actors["always_fails"].send(),
                    "refuses": actors["refuses"].send(),
                    "runs_later": actors["runs_later"].send_with_options(delay=400),
                    # Sent a minute ago, as far as AgeLimit can tell.
                    "too_old": broker.enqueue(
                        actors["too_old"].message().copy(message_timestamp=now_ms() - 60_000)
                    ),
                }
                store.connect(url)
                ids = [message.message_id for message in sent.values()]

                def all_final() -> bool:
                    rows = Job.select().where(Job.message_id.in_(ids))
                    return sum(job.status in JobStatus.FINISHED for job in rows) == len(ids)

                wait_until(all_final, timeout=30, message="every job to finish in the ledger")
            finally:
                worker.stop()
            redis_dead = dead_letter_ids(redis_namespace, queue_name) if broker_kind == "redis" else set()

        jobs = {job.message_id: job for job in Job.select().where(Job.queue == queue_name)}
        assert set(jobs) == set(ids), "one row per message, under the canonical queue name"
        row = {name: jobs[message.message_id] for name, message in sent.items()}

        for name, job in row.items():
            message = sent[name]
            assert job.actor == name and job.get_job_class() == name
            assert job.queue == queue_name and not job.queue.endswith((".DQ", ".XQ"))
            assert job.connection == broker_kind
            assert job.worker_id == worker_id
            assert job.queued_at is not None and job.started_at is not None and job.completed_at is not None
            assert to_ms(job.queued_at) == message.message_timestamp
            assert job.queued_at <= job.started_at <= job.completed_at, name
            assert job.get_duration() is not None and job.get_duration() >= 0
            payload = job.get_payload()
            assert payload is not None
            assert payload["message_id"] == message.message_id
            assert payload["actor_name"] == name
            assert payload["queue_name"] == queue_name
            assert payload["args"] == list(message.args) and payload["kwargs"] == message.kwargs
            if broker_kind == "redis":
                assert job.broker_message_id, name
            else:
                assert job.broker_message_id is None  # RabbitMQ and the stub have no id of their own
            assert job.lost_attempts == 0

        expect(row["succeeds"], JobStatus.COMPLETED, attempts=1, exception=None)
        assert row["succeeds"].get_payload()["args"] == [7]
        assert row["succeeds"].get_payload()["kwargs"] == {"label": "seven"}
        expect(row["fails_once"], JobStatus.COMPLETED, attempts=2, exception="the first try fails")
        expect(row["always_fails"], JobStatus.FAILED, attempts=2, exception="RuntimeError: this one always fails")
        expect(row["refuses"], JobStatus.FAILED, attempts=1, exception="ValueError: not worth retrying")
        expect(row["runs_later"], JobStatus.COMPLETED, attempts=1, exception=None)
        expect(row["too_old"], JobStatus.SKIPPED, attempts=1, exception=None)
        assert row["too_old"].started_at == row["too_old"].completed_at  # skipped, never ran

        later = row["runs_later"]
        assert to_ms(later.eta) == sent["runs_later"].options["eta"]
        assert to_ms(later.eta) >= to_ms(later.queued_at) + 400
        assert later.started_at >= later.eta
        # A retry's delay is recorded too (the latest one), and the retry ran after it.
        assert row["fails_once"].eta is not None and row["fails_once"].started_at >= row["fails_once"].eta
        assert row["always_fails"].eta is not None and row["always_fails"].started_at >= row["always_fails"].eta
        # The final payload of a failed job carries its retries and traceback (for a later retry).
        assert row["always_fails"].get_payload()["options"]["retries"] == 2
        assert "this one always fails" in row["always_fails"].get_payload()["options"]["traceback"]

        if broker_kind == "redis":
            # Dead letters on Redis are keyed by the id of their last enqueue: the ledger has it.
            for name in ("always_fails", "refuses", "too_old"):
                assert row[name].broker_message_id in redis_dead, name

        counts = collections.Counter()
        for rollup in Rollup.select().where(Rollup.queue == queue_name):
            counts[rollup.kind] += rollup.count
        assert counts == {"enqueued": 6, "started": 7, "completed": 3, "retried": 2, "failed": 2, "skipped": 1}

        worker_row = Worker.get(Worker.worker_id == worker_id)
        assert worker_row.status == WorkerStatus.STOPPED
        assert worker_row.get_queues() == [queue_name]
        assert (worker_row.hostname, worker_row.pid) == (middleware.settings.hostname, os.getpid())
        assert worker_row.stopped_at is not None and worker_row.started_at <= worker_row.stopped_at
        assert worker_row.get_jobs_processed_count() == 7  # attempts that ran; the skipped one did not
        assert worker_row.get_jobs_failed_count() == 4
        assert {job.message_id for job in worker_row.jobs} == set(ids)
        assert row["succeeds"].worker.worker_id == worker_id
    finally:
        middleware.recorder.close()
        close_bound_database()
        drop()


def close_bound_database() -> None:
    if models.database.obj is not None:
        models.database.obj.close()


def expect(job: Job, status: str, *, attempts: int, exception: str | None) -> None:
    assert (job.status, job.attempts) == (status, attempts), job.message_id
    if exception is None:
        assert job.exception is None
    else:
        assert job.exception is not None and exception in job.exception
        assert "Traceback" in job.exception


def dead_letter_ids(namespace: str, queue: str) -> set[str]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return {member.decode() for member in client.zrange(f"{namespace}:{queue}.XQ", 0, -1)}
    finally:
        client.close()


def test_payload_is_json_that_dramatiq_can_decode(tmp_path: Path, queue_name: str) -> None:
    """The stored message is the message: Dramatiq decodes it back to an equal one."""
    url, drop = make_database_url("sqlite", tmp_path)
    middleware = recording_middleware(url, tmp_path, unique("worker"))
    broker = StubBroker()
    broker.add_middleware(middleware)
    try:
        actor = dramatiq.actor(lambda *a, **k: None, broker=broker, queue_name=queue_name, actor_name="echo")
        message = actor.send_with_options(args=(1, "two", [3.5]), kwargs={"four": {"five": None}})
        assert middleware.recorder.flush(timeout=15)
        store.connect(url)
        job = Job.get(Job.message_id == message.message_id)
        assert job.status == JobStatus.PENDING and job.attempts == 0
        decoded = dramatiq.Message.decode(json.dumps(job.get_payload()).encode())
        assert decoded == message
    finally:
        middleware.recorder.close()
        broker.close()
        close_bound_database()
        drop()
