"""The ledger's tables as Peewee models: Job, Worker, LostMark, Command, Rollup, Meta, Lease.

The models are bound to a :class:`peewee.DatabaseProxy`; :func:`watchtower.store.connect`
points it at a real database, so the models can be imported before any
database is chosen.

Times are stored as integer milliseconds since the epoch (one portable,
sortable column type on SQLite, PostgreSQL and MySQL) and read back as
timezone-aware UTC datetimes.

``Job.worker_id`` is a plain indexed column rather than a database foreign
key: job events and worker records reach the database from different
processes in any order, and pruning old worker rows must not break (or
cascade into) the jobs that name them.  ``job.worker`` and ``worker.jobs``
give the relation in Python.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import peewee

from .clock import now_ms, to_datetime, to_ms
from .dialects import dialect_of
from .payload import decode_message
from .statuses import JobStatus, WorkerStatus

__all__ = ["Job", "queued_days", "JobCount", "HourlyRollup", "Worker", "LostMark", "Command", "CommandEntry", "Rollup",
           "Meta", "Lease", "database"]

#: Every model is bound to this proxy; ``store.connect`` initialises it.
database = peewee.DatabaseProxy()


class TimestampField(peewee.BigIntegerField):
    """Epoch milliseconds in the database, aware UTC datetimes in Python."""

    def db_value(self, value: Any) -> int | None:
        return to_ms(value)

    def python_value(self, value: Any) -> datetime | None:
        return to_datetime(None if value is None else int(value))


class BigTextField(peewee.TextField):
    """TEXT on SQLite and PostgreSQL, LONGTEXT on MySQL (TEXT stops at 64 KiB there)."""

    field_type = "BIGTEXT"


class BaseModel(peewee.Model):
    class Meta:
        database = database
        legacy_table_names = False


class Worker(BaseModel):
    """One worker process, as it registered itself and as its supervisor saw it."""

    worker_id = peewee.CharField(max_length=128, primary_key=True)
    supervisor = peewee.CharField(max_length=128, null=True)
    hostname = peewee.CharField(max_length=255, default="")
    pid = peewee.IntegerField(null=True)
    queues = peewee.TextField(default="[]")
    options = peewee.TextField(default="{}")
    status = peewee.CharField(max_length=16, default=WorkerStatus.STARTING)
    started_at = TimestampField(null=True)
    last_heartbeat = TimestampField(null=True)
    stopped_at = TimestampField(null=True)
    exit_code = peewee.IntegerField(null=True)
    exit_reason = peewee.TextField(null=True)
    restarts = peewee.IntegerField(default=0)
    jobs_processed = peewee.BigIntegerField(default=0)
    jobs_failed = peewee.BigIntegerField(default=0)
    memory_rss = peewee.BigIntegerField(null=True)

    class Meta:
        table_name = "watchtower_workers"
        indexes = (
            (("supervisor", "status"), False),
            (("status", "last_heartbeat"), False),
        )

    # Scopes ---------------------------------------------------------------

    @classmethod
    def running(cls) -> peewee.ModelSelect[Worker]:
        """Workers that are alive and taking jobs."""
        return cls.select().where(cls.status == WorkerStatus.RUNNING)

    @classmethod
    def with_status(cls, status: str) -> peewee.ModelSelect[Worker]:
        """Workers in ``status`` (one of :class:`WorkerStatus`)."""
        return cls.select().where(cls.status == status)

    @classmethod
    def for_supervisor(cls, name: str) -> peewee.ModelSelect[Worker]:
        """Workers that belong to the supervisor called ``name``."""
        return cls.select().where(cls.supervisor == name)

    @classmethod
    def stale(cls, seconds: float = 60) -> peewee.ModelSelect[Worker]:
        """Workers said to be alive whose last heartbeat is older than ``seconds``."""
        cutoff = now_ms() - int(seconds * 1000)
        return cls.select().where(
            cls.status.in_(WorkerStatus.ALIVE)
            & ((cls.last_heartbeat < cutoff) | cls.last_heartbeat.is_null())
        )

    # Instance methods -----------------------------------------------------

    def __str__(self) -> str:
        where = f"on {self.hostname or '?'}" + (f" ({self.supervisor})" if self.supervisor else "")
        return f"Worker {self.worker_id} {where}: {self.status}"

    def __repr__(self) -> str:
        return (f"<Worker {self.worker_id} host={self.hostname!r} supervisor={self.supervisor!r} "
                f"pid={self.pid} status={self.status}>")

    def is_running(self) -> bool:
        return self.status == WorkerStatus.RUNNING

    def is_paused(self) -> bool:
        return self.status == WorkerStatus.PAUSED

    def is_stopped(self) -> bool:
        return self.status in (WorkerStatus.STOPPED, WorkerStatus.LOST)

    def is_healthy(self, seconds: float = 30) -> bool:
        """Alive, with a heartbeat within the last ``seconds``."""
        if self.status not in WorkerStatus.ALIVE or self.last_heartbeat is None:
            return False
        return datetime.now(UTC) - self.last_heartbeat <= timedelta(seconds=seconds)

    def get_uptime(self) -> float:
        """Seconds since the worker started (until it stopped, if it did)."""
        if self.started_at is None:
            return 0.0
        end = self.stopped_at or datetime.now(UTC)
        return max(0.0, (end - self.started_at).total_seconds())

    def get_jobs_processed_count(self) -> int:
        """Jobs this worker finished, successfully or not."""
        return int(self.jobs_processed)

    def get_jobs_failed_count(self) -> int:
        """Attempts that raised in this worker (retried or final)."""
        return int(self.jobs_failed)

    def get_queues(self) -> list[str]:
        return list(json.loads(self.queues or "[]"))

    @property
    def jobs(self) -> peewee.ModelSelect[Job]:
        """The jobs this worker ran last, newest first."""
        return Job.select().where(Job.worker_id == self.worker_id).order_by(Job.id.desc())


class Job(BaseModel):
    """One Dramatiq message and the life it has had so far."""

    id = peewee.BigAutoField()
    message_id = peewee.CharField(max_length=64)
    queue = peewee.CharField(max_length=255)
    actor = peewee.CharField(max_length=255)
    connection = peewee.CharField(max_length=32, default="")
    payload = BigTextField(null=True)
    status = peewee.CharField(max_length=16)
    worker_id = peewee.CharField(max_length=128, null=True)
    attempts = peewee.IntegerField(default=0)
    lost_attempts = peewee.IntegerField(default=0, constraints=[peewee.SQL("DEFAULT 0")])
    exception = BigTextField(null=True)  # capped tracebacks can pass 64 KiB in utf8mb4
    queued_at = TimestampField()
    # The UTC day of queued_at (the message's own timestamp, the same in
    # every event of it): the unique key is (queued_day, message_id), so
    # that old rows sit together in that index and a prune rewrites few of
    # its pages (message ids are random).  See :meth:`Job.find`.
    queued_day = peewee.BigIntegerField(default=0, constraints=[peewee.SQL("DEFAULT 0")])
    eta = TimestampField(null=True)
    started_at = TimestampField(null=True)
    completed_at = TimestampField(null=True)
    broker_message_id = peewee.CharField(max_length=64, null=True)
    retried_from = peewee.CharField(max_length=64, null=True)
    retried_by = peewee.CharField(max_length=64, null=True)
    # Ordering state: the newest event applied so far, as attempt * 8 + phase
    # and its time in microseconds.  An event changes the row only when it is
    # newer than this (see watchtower.events).
    progress = peewee.IntegerField(default=0)
    progress_at = peewee.BigIntegerField(default=0)

    class Meta:
        table_name = "watchtower_jobs"
        indexes = (
            (("queued_day", "message_id"), True),
            (("status", "id"), False),
            (("queue", "id"), False),
            (("actor", "id"), False),
            (("worker_id", "id"), False),
            (("status", "completed_at"), False),
        )

    # Lookups --------------------------------------------------------------

    @classmethod
    def find(cls, message_id: str, *fields: Any, database: peewee.Database | None = None) -> Job | None:
        """The job of ``message_id`` (with only ``fields``, if given), or None.

        Through the unique (queued_day, message_id) index: one probe per
        day that has jobs, the days found by walking the same index (in the
        same statement on SQLite and PostgreSQL, one query a day on MySQL).
        """
        db = database if database is not None else cls._meta.database.obj
        on_days = dialect_of(db).in_distinct(db, cls.queued_day, cls._meta.table_name)
        if on_days is None:
            return None
        return cls.select(*fields).where(on_days & (cls.message_id == message_id)).first(db)

    # Scopes ---------------------------------------------------------------

    @classmethod
    def with_status(cls, status: str) -> peewee.ModelSelect[Job]:
        """Jobs in ``status`` (one of :class:`JobStatus`), newest first."""
        if status not in JobStatus.ALL:
            raise ValueError(f"unknown job status {status!r}: use one of {', '.join(JobStatus.ALL)}")
        return cls.select().where(cls.status == status).order_by(cls.id.desc())

    @classmethod
    def on_queue(cls, queue: str) -> peewee.ModelSelect[Job]:
        """Jobs of ``queue`` (its canonical name), newest first."""
        return cls.select().where(cls.queue == queue).order_by(cls.id.desc())

    @classmethod
    def recent(cls, limit: int = 50) -> peewee.ModelSelect[Job]:
        """The ``limit`` newest jobs."""
        return cls.select().order_by(cls.id.desc()).limit(limit)

    @classmethod
    def failed(cls) -> peewee.ModelSelect[Job]:
        return cls.with_status(JobStatus.FAILED)

    @classmethod
    def completed(cls) -> peewee.ModelSelect[Job]:
        return cls.with_status(JobStatus.COMPLETED)

    @classmethod
    def pending(cls) -> peewee.ModelSelect[Job]:
        return cls.with_status(JobStatus.PENDING)

    @classmethod
    def processing(cls) -> peewee.ModelSelect[Job]:
        return cls.with_status(JobStatus.PROCESSING)

    # Instance methods -----------------------------------------------------

    def __str__(self) -> str:
        return f"Job {self.message_id} {self.actor} (queue {self.queue}): {self.status}"

    def __repr__(self) -> str:
        return (f"<Job {self.message_id} actor={self.actor!r} queue={self.queue!r} status={self.status} "
                f"attempts={self.attempts}>")

    @property
    def job_id(self) -> str:
        """The message id, under the name Horizon's job records use."""
        return str(self.message_id)

    def is_completed(self) -> bool:
        return self.status == JobStatus.COMPLETED

    def is_failed(self) -> bool:
        return self.status == JobStatus.FAILED

    def is_pending(self) -> bool:
        return self.status == JobStatus.PENDING

    def is_processing(self) -> bool:
        return self.status == JobStatus.PROCESSING

    def is_skipped(self) -> bool:
        return self.status == JobStatus.SKIPPED

    def get_duration(self) -> float | None:
        """Seconds from the start of the last attempt to its end, if it ended."""
        if self.started_at is None or self.completed_at is None:
            return None
        return max(0.0, (self.completed_at - self.started_at).total_seconds())

    def get_job_class(self) -> str:
        """The actor's name (Laravel's "job class")."""
        return str(self.actor)

    def get_payload(self) -> dict[str, Any] | None:
        """The stored message as a dict (Dramatiq's own encoding), if it was kept."""
        return None if self.payload is None else decode_message(self.payload)

    @property
    def worker(self) -> Worker | None:
        """The worker that ran the last attempt, if its record still exists."""
        if self.worker_id is None:
            return None
        return Worker.get_or_none(Worker.worker_id == self.worker_id)


class LostMark(BaseModel):
    """One attempt marked lost with its worker, kept so that the worker's own finish can undo it.

    A worker is judged dead when it stops heart-beating or its supervisor
    reaps it.  One that was only cut off from the ledger lives on and ends
    the attempt itself; its finishing event of the same ``attempt`` then
    undoes this mark, whenever it arrives (see :mod:`watchtower.ledger`).
    ``at`` is the mark's time in microseconds (its "lost" rollup minute);
    ``exception`` is what the mark wrote into the job's exception
    (``lost: <reason>``), ``previous`` what was there before.
    """

    id = peewee.BigAutoField()
    worker_id = peewee.CharField(max_length=128)
    message_id = peewee.CharField(max_length=64)
    queued_day = peewee.BigIntegerField()
    attempt = peewee.IntegerField()
    at = peewee.BigIntegerField()
    queue = peewee.CharField(max_length=255)
    actor = peewee.CharField(max_length=255)
    exception = BigTextField()
    previous = BigTextField(null=True)

    class Meta:
        table_name = "watchtower_lost_marks"
        indexes = ((("worker_id", "message_id"), False), (("queued_day", "message_id"), False))


def actor_names(database: peewee.Database | None = None) -> list[str]:
    """Every actor name in the job table, in order: one seek a name in the (actor, id) index."""
    db = database if database is not None else Job._meta.database.obj
    return dialect_of(db).distinct_values(db, Job._meta.table_name, "actor")


def queued_days(database: peewee.Database | None = None) -> list[int]:
    """Every ``queued_day`` that has jobs, in order: one seek a day in the (queued_day, message_id) index."""
    db = database if database is not None else Job._meta.database.obj
    return [int(day) for day in dialect_of(db).distinct_values(db, Job._meta.table_name, "queued_day")]


class Command(BaseModel):
    """One entry of the database command bus: a key, a value and an expiry."""

    key = peewee.CharField(max_length=255, primary_key=True)
    value = peewee.TextField()
    expires_at = TimestampField(index=True)

    class Meta:
        table_name = "watchtower_commands"


class CommandEntry(BaseModel):
    """One entry of a list on the database command bus (a worker's commands, a supervisor's inbox).

    One row per entry, so that taking an entry is deleting its row: of two
    readers that race for it, exactly one deletes it (see
    :mod:`watchtower.bus.database`).  ``id`` gives the order of the list;
    ``token`` names the entry for the delete, because SQLite reuses the id
    of a deleted last row.
    """

    id = peewee.BigAutoField()
    token = peewee.CharField(max_length=32, unique=True)
    key = peewee.CharField(max_length=255)
    value = peewee.TextField()
    expires_at = TimestampField(index=True)

    class Meta:
        table_name = "watchtower_command_entries"
        indexes = ((("key", "id"), False),)


class Rollup(BaseModel):
    """Per-minute counts of job events, written in the same transaction as the jobs.

    ``kind`` is one of enqueued, started, completed, failed, retried, skipped,
    lost; ``duration_sum`` adds the durations (seconds) of the attempts that
    finished in that minute, so averages come without scanning the job table.
    """

    minute = peewee.BigIntegerField()  # epoch minutes
    queue = peewee.CharField(max_length=255)
    actor = peewee.CharField(max_length=255)
    kind = peewee.CharField(max_length=16)
    count = peewee.BigIntegerField(default=0)
    duration_sum = peewee.DoubleField(default=0.0)

    class Meta:
        table_name = "watchtower_rollups"
        primary_key = peewee.CompositeKey("minute", "queue", "actor", "kind")


class HourlyRollup(BaseModel):
    """The rollups added up per clock hour, kept by triggers (see watchtower.derived)."""

    hour = peewee.BigIntegerField()  # epoch hours
    queue = peewee.CharField(max_length=255)
    actor = peewee.CharField(max_length=255)
    kind = peewee.CharField(max_length=16)
    count = peewee.BigIntegerField(default=0)
    duration_sum = peewee.DoubleField(default=0.0)

    class Meta:
        table_name = "watchtower_rollups_hourly"
        primary_key = peewee.CompositeKey("hour", "queue", "actor", "kind")


class JobCount(BaseModel):
    """How many jobs each queue has in each status, kept by triggers (see watchtower.derived).

    Each database session adds to its own ``shard`` row; a count is the sum
    over shards.
    """

    shard = peewee.BigIntegerField()
    queue = peewee.CharField(max_length=255)
    status = peewee.CharField(max_length=16)
    count = peewee.BigIntegerField(default=0)

    class Meta:
        table_name = "watchtower_job_counts"
        primary_key = peewee.CompositeKey("shard", "queue", "status")


class Meta(BaseModel):
    """Key/value facts about the ledger itself (the schema version)."""

    key = peewee.CharField(max_length=64, primary_key=True)
    value = peewee.TextField()

    class Meta:
        table_name = "watchtower_meta"


class Lease(BaseModel):
    """A named claim that one process at a time holds until it expires.

    ``next_at`` is the earliest time the claim may be taken again after its
    holder released it: a schedule shared by every host (see watchtower.lease).
    """

    name = peewee.CharField(max_length=64, primary_key=True)
    owner = peewee.CharField(max_length=255)
    token = peewee.CharField(max_length=32)  # new on every acquisition
    expires_at = TimestampField()
    next_at = TimestampField(default=0)

    class Meta:
        table_name = "watchtower_leases"


MODELS: tuple[type[BaseModel], ...] = (
    Meta, Worker, Job, LostMark, Command, CommandEntry, Rollup, HourlyRollup, JobCount, Lease,
)
