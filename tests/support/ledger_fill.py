"""Filling a ledger fast, for tests and benchmarks of pruning.

Rows go in with ``executemany`` in one transaction per chunk, not through
the recorder: a million rows in seconds, with the columns the real writer
sets for a finished job.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import peewee

from watchtower.clock import day_of, now_ms
from watchtower.dialects import dialect_of, driver
from watchtower.events import JobEvent, Kind
from watchtower.models import Job
from watchtower.statuses import JobStatus

_COLUMNS = (
    "message_id", "queue", "actor", "connection", "status", "worker_id", "attempts",
    "queued_at", "started_at", "completed_at", "progress", "progress_at", "payload", "queued_day",
)

PAYLOAD = '{"args": [1, 2], "kwargs": {}, "options": {}}'


def job_row(status: str, completed_at: int | None, *, queue: str = "default", actor: str = "task",
            worker_id: str | None = "w-1", message_id: str | None = None) -> tuple[Any, ...]:
    """One job row as inserted by :func:`insert_jobs` (times in epoch ms)."""
    finished = status in JobStatus.FINISHED
    queued = (completed_at - 1_000) if completed_at is not None else 0
    return (
        message_id or uuid.uuid4().hex, queue, actor, "redis", status, worker_id, 1,
        queued, queued + 500 if status != JobStatus.PENDING else None,
        completed_at if finished else None, 8 + (4 if finished else 1), queued * 1000, PAYLOAD, day_of(queued),
    )


def insert_jobs(db: peewee.Database, rows: Iterable[Sequence[Any]], *, chunk: int = 50_000) -> int:
    """Insert ``rows`` (see :func:`job_row`) with executemany; returns how many.

    On PostgreSQL through psycopg 3, COPY (executemany there costs a round
    trip per row; psycopg2's executemany is slow too, but small fills use it).
    """
    if dialect_of(db).name == "postgresql" and driver(db) == "psycopg":
        return _copy_jobs(db, rows)
    sql = (
        f"INSERT INTO {Job._meta.table_name} ({', '.join(_COLUMNS)}) "
        f"VALUES ({', '.join([db.param] * len(_COLUMNS))})"
    )
    total = 0
    batch: list[Sequence[Any]] = []

    def write() -> None:
        with db.atomic():
            db.cursor().executemany(sql, batch)

    for row in rows:
        batch.append(row)
        if len(batch) >= chunk:
            write()
            total += len(batch)
            batch = []
    if batch:
        write()
        total += len(batch)
    return total


def _copy_jobs(db: peewee.Database, rows: Iterable[Sequence[Any]]) -> int:
    total = 0
    with db.atomic():
        cursor = db.cursor()
        with cursor.copy(f"COPY {Job._meta.table_name} ({', '.join(_COLUMNS)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
                total += 1
    return total


def completed_job_events(message_id: str, *, queue: str = "live", actor: str = "task",
                         worker_id: str = "w-live") -> list[JobEvent]:
    """The events of one job that was enqueued, ran and completed just now."""
    now = now_ms()
    at = now * 1000

    def event(kind: Kind, offset: int, **fields: Any) -> JobEvent:
        return JobEvent(message_id=message_id, kind=kind, attempt=1, at=at + offset, queue=queue, actor=actor,
                        connection="redis", queued_at=now, **fields)

    return [
        event(Kind.ENQUEUED, 0, payload=PAYLOAD),
        event(Kind.STARTED, 1, worker_id=worker_id, started_at=now),
        event(Kind.COMPLETED, 2, worker_id=worker_id, started_at=now, finished_at=now, duration=0.001),
    ]


def as_version_1(db: peewee.Database, kind: str) -> None:
    """Reshape a ledger's job table as schema version 1 made it: unique ``message_id``, no ``queued_day``."""
    from watchtower.models import Meta

    table = Job._meta.table_name
    on_table = f" ON {table}" if kind == "mysql" else ""
    db.execute_sql(f"DROP INDEX {table}_queued_day_message_id{on_table}")
    db.execute_sql(f"ALTER TABLE {table} DROP COLUMN queued_day")
    db.execute_sql(f"CREATE UNIQUE INDEX {table}_message_id ON {table} (message_id)")
    Meta.update(value="1").where(Meta.key == "schema_version").execute(db)
