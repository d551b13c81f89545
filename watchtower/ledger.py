"""Writing events into the job table: coalescing, upserts and rollups.

A batch of events is first coalesced per message in memory (with the same
rule the SQL applies), then written in one transaction as one upsert per
message plus the per-minute rollup counts.  The upsert applies the ordering
rule of :mod:`watchtower.events` inside the database, so that batches from
different processes converge to the same row whatever order they commit in:

- the status, attempts and ordering columns take the incoming values only
  when the incoming event is newer;
- columns an event may not know (payload, worker, times, traceback, broker
  id) take the newer side's value when it has one and otherwise keep the
  other side's.  This converges only if the newest event knows every value
  that older events may disagree on, so the middleware makes the events that
  end an attempt carry the worker, the start time, the broker id and the
  last traceback (see :mod:`watchtower.middleware`);
- ``eta`` takes the later of the two: every delay (the producer's, then each
  retry's backoff) ends after the previous one, and the events that follow
  a delay (the move, the start) no longer know it.

MySQL evaluates ``ON DUPLICATE KEY UPDATE`` assignments left to right, each
seeing the columns already assigned, so the ordering columns are assigned
last there and everywhere.  How each database writes the upsert is its
dialect's (:mod:`watchtower.dialects`); what the upsert assigns is here.
"""

from __future__ import annotations

import json
import logging
import operator
import random
import time
from collections.abc import Iterable, Sequence
from typing import Any

import peewee

from . import models
from .clock import now_ms
from .dialects import Dialect, dialect_of
from .dialects.base import Speller
from .events import ALIVE_AS, PHASE_FINISHED, PHASE_LOST, PHASE_STARTED, JobEvent, Kind, WorkerEvent
from .models import Job, LostMark, Rollup, Worker
from .statuses import JobStatus, WorkerStatus

__all__ = [
    "coalesce", "write_batch", "mark_lost", "mark_attempt_lost", "give_up", "LOSS_FIELDS", "LOST_PREFIX",
    "ROLLUP_KINDS", "DEADLOCK_TRIES",
]

logger = logging.getLogger(__name__)

#: How many times write_batch runs a batch that the database aborted to
#: break a deadlock.  Concurrent upserts of overlapping rows deadlock on
#: InnoDB even in one lock order (gap and insert-intention locks on the
#: unique index), and now and then on PostgreSQL; running the transaction
#: again is the documented remedy, and cheaper than the recorder's backoff.
DEADLOCK_TRIES = 5

# PostgreSQL SQLSTATEs and MySQL error numbers that mean "run it again".
_PG_RETRY_STATES = {"40P01", "40001"}  # deadlock_detected, serialization_failure
_MYSQL_RETRY_CODES = {1213, 1205}  # ER_LOCK_DEADLOCK, ER_LOCK_WAIT_TIMEOUT

# Fields an event may not know: kept from the other side when missing.
_OPTIONAL = ("payload", "worker_id", "eta", "started_at", "finished_at", "exception", "broker_message_id")

# Job columns written by an upsert, and the event attribute that feeds each.
_COLUMNS: tuple[tuple[str, str], ...] = (
    ("message_id", "message_id"),
    ("queue", "queue"),
    ("actor", "actor"),
    ("connection", "connection"),
    ("queued_at", "queued_at"),
    ("queued_day", "queued_day"),
    ("payload", "payload"),
    ("worker_id", "worker_id"),
    ("eta", "eta"),
    ("started_at", "started_at"),
    ("completed_at", "finished_at"),
    ("exception", "exception"),
    ("broker_message_id", "broker_message_id"),
    ("status", "status"),
    ("attempts", "attempts"),
    ("progress", "progress"),
    ("progress_at", "at"),
)
_COALESCED = ("payload", "worker_id", "started_at", "completed_at", "exception", "broker_message_id")
_VERSIONED = ("status", "attempts")

#: Rollup kinds: one row per (minute, queue, actor, kind).
ROLLUP_KINDS = {
    Kind.ENQUEUED: "enqueued",
    Kind.DELAYED: "enqueued",
    Kind.STARTED: "started",
    Kind.COMPLETED: "completed",
    Kind.RETRIED: "retried",
    Kind.FAILED: "failed",
    Kind.SKIPPED: "skipped",
}


def coalesce(events: Iterable[JobEvent]) -> dict[str, JobEvent]:
    """Fold events per message into one event that carries the row's new values.

    The result for each message is its newest event, with the optional
    fields it lacks filled from older ones: what the SQL upsert would leave
    in the row if the events were written one by one, in any order.
    """
    merged: dict[str, JobEvent] = {}
    for event in events:
        current = merged.get(event.message_id)
        if current is None:
            merged[event.message_id] = event  # copied only if another event merges in
            continue
        if event.is_newer_than(current.progress, current.at):
            newer, older = _copy(event), current
        else:
            newer, older = _copy(current), event
        for name in _OPTIONAL:
            if getattr(newer, name) is None:
                setattr(newer, name, getattr(older, name))
        if older.eta is not None and older.eta > newer.eta:  # type: ignore[operator]
            newer.eta = older.eta  # the later delay, as the SQL does
        merged[event.message_id] = newer
    return merged


def _copy(event: JobEvent) -> JobEvent:
    return JobEvent(**{name: getattr(event, name) for name in JobEvent.__slots__})  # type: ignore[attr-defined]


def write_batch(db: peewee.Database, events: Sequence[JobEvent], workers: Sequence[WorkerEvent] = ()) -> None:
    """Write ``events`` and ``workers`` in one transaction (raises on failure)."""
    dialect = dialect_of(db)
    rows = sorted(coalesce(events).values(), key=lambda e: e.message_id)  # one lock order: fewer deadlocks
    rollups = _rollups(events)
    merged_workers = _merge_workers(workers)
    for attempt in range(1, DEADLOCK_TRIES + 1):
        try:
            with dialect.write_transaction(db):
                counts = rollups
                if rows:
                    _upsert_jobs(db, dialect, rows)
                    # "lost" counts taken back (no event kind counts "lost": no key is in both)
                    counts = {**rollups, **_undo_false_losses(db, events)}
                if counts:
                    _upsert_rollups(db, dialect, counts)
                for worker in merged_workers:
                    _upsert_worker(db, worker)
            return
        except peewee.DatabaseError as error:
            if attempt == DEADLOCK_TRIES or not is_deadlock(error):
                raise
            logger.info("watchtower ledger batch of %d rows deadlocked (try %d), running it again", len(rows), attempt)
            time.sleep(random.uniform(0.005, 0.05) * attempt)  # let the other transaction finish


def is_deadlock(error: BaseException) -> bool:
    """Whether ``error`` is the database aborting a transaction that may simply run again."""
    original = error.args[0] if error.args and isinstance(error.args[0], BaseException) else error.__context__
    if original is None:
        original = error  # a driver's own exception
    # psycopg 3 names the SQLSTATE sqlstate, psycopg2 pgcode.
    if getattr(original, "sqlstate", None) in _PG_RETRY_STATES or getattr(original, "pgcode", None) in _PG_RETRY_STATES:
        return True
    code = original.args[0] if original.args else None
    return isinstance(code, int) and code in _MYSQL_RETRY_CODES


# The job columns that are not text, and their types (PostgreSQL sends each column as a typed array).
_TYPES = {
    "queued_at": "bigint", "queued_day": "bigint", "eta": "bigint", "started_at": "bigint", "completed_at": "bigint",
    "attempts": "integer", "progress": "integer", "progress_at": "bigint",
}

_NAMES = tuple(column for column, _ in _COLUMNS)
_KEY = ("queued_day", "message_id")

# One row tuple per event, in _COLUMNS order (attrgetter builds it in C).
_ROW = operator.attrgetter(*("kind.status" if attr == "status" else attr for _, attr in _COLUMNS))


def _upsert_jobs(db: peewee.Database, dialect: Dialect, events: Sequence[JobEvent]) -> None:
    rows = [_ROW(event) for event in events]
    dialect.upsert_rows(db, Job._meta.table_name, _NAMES, rows, key=_KEY, assignments=_job_assignments, types=_TYPES)


def _job_assignments(old: Speller, new: Speller) -> list[str]:
    """The upsert's assignments, applying the ordering rule of watchtower.events.

    In the order MySQL needs (it evaluates them left to right, each seeing
    the columns already assigned): the ordering columns last, progress_at
    before progress.
    """
    newer = (
        f"({new('progress')} > {old('progress')} OR ({new('progress')} = {old('progress')} "
        f"AND {new('progress_at')} >= {old('progress_at')}))"
    )
    sets = []
    for column in _COALESCED:
        sets.append(
            f"{column} = CASE WHEN {newer} THEN COALESCE({new(column)}, {old(column)}) "
            f"ELSE COALESCE({old(column)}, {new(column)}) END"
        )
    # The later eta, ignoring NULL (GREATEST and SQLite's max() would not).
    sets.append(
        f"eta = CASE WHEN {new('eta')} IS NULL THEN {old('eta')} WHEN {old('eta')} IS NULL "
        f"OR {new('eta')} > {old('eta')} THEN {new('eta')} ELSE {old('eta')} END"
    )
    for column in _VERSIONED:
        sets.append(f"{column} = CASE WHEN {newer} THEN {new(column)} ELSE {old(column)} END")
    # Each compares against the other's old value, except on MySQL, where
    # progress_at was just assigned: so progress is compared on its own.  That
    # is the same rule: when the progress is equal, it stays the same either
    # way (and progress_at took the newer time).
    sets.append(
        f"progress_at = CASE WHEN {newer} THEN {new('progress_at')} ELSE {old('progress_at')} END"
    )
    sets.append(
        f"progress = CASE WHEN {new('progress')} > {old('progress')} THEN {new('progress')} "
        f"ELSE {old('progress')} END"
    )
    return sets


def _rollups(events: Iterable[JobEvent]) -> dict[tuple[int, str, str, str], list[float]]:
    totals: dict[tuple[int, str, str, str], list[float]] = {}
    for event in events:
        name = ROLLUP_KINDS.get(event.kind)
        if name is None:
            continue
        key = (event.at // 60_000_000, event.queue, event.actor, name)
        total = totals.setdefault(key, [0, 0.0])
        total[0] += 1
        total[1] += event.duration or 0.0
    return totals


_ROLLUP_KEY = ("minute", "queue", "actor", "kind")


def _rollup_assignments(old: Speller, new: Speller) -> list[str]:
    return [
        f"count = {old('count')} + {new('count')}",
        f"duration_sum = {old('duration_sum')} + {new('duration_sum')}",
    ]


def _upsert_rollups(
    db: peewee.Database, dialect: Dialect, totals: dict[tuple[int, str, str, str], list[float]]
) -> None:
    param = db.param
    table = Rollup._meta.table_name
    values: list[Any] = []
    for (minute, queue, actor, name), (count, duration) in sorted(totals.items()):
        values.extend((minute, queue, actor, name, int(count), float(duration)))
    rows = ", ".join(["(" + ", ".join([param] * 6) + ")"] * len(totals))
    head = f"INSERT INTO {table} (minute, queue, actor, kind, count, duration_sum) VALUES {rows}"
    db.execute_sql(head + dialect.on_conflict(table, _ROLLUP_KEY, _rollup_assignments), values)


def _merge_workers(workers: Iterable[WorkerEvent]) -> list[WorkerEvent]:
    merged: dict[str, dict[str, object]] = {}
    for worker in workers:
        merged.setdefault(worker.worker_id, {}).update(worker.fields)
    return [WorkerEvent(worker_id, fields) for worker_id, fields in sorted(merged.items())]


def _upsert_worker(db: peewee.Database, worker: WorkerEvent) -> None:
    # Run on ``db`` itself, not through the models' proxy: the proxy may be
    # bound to another Database object (another recorder, the app's own
    # connection), whose connection would wait on this transaction's lock.
    fields = dict(worker.fields)
    alive_as = fields.pop(ALIVE_AS, None)
    for name in ("queues", "options"):
        if name in fields and not isinstance(fields[name], str):
            fields[name] = json.dumps(fields[name])
    heartbeat = fields.get("last_heartbeat")
    if alive_as is not None and isinstance(heartbeat, int):
        _revive(db, worker.worker_id, str(alive_as), heartbeat)
    updated = Worker.update(**fields).where(Worker.worker_id == worker.worker_id).execute(db) if fields else 0
    if not updated:
        Worker.insert(worker_id=worker.worker_id, **fields).on_conflict_ignore().execute(db)
        if fields:
            Worker.update(**fields).where(Worker.worker_id == worker.worker_id).execute(db)


#: How the reason of a lost attempt starts in the row's ``exception``.
LOST_PREFIX = "lost: "

#: The job fields :func:`mark_lost` reads, and :func:`mark_attempt_lost` needs.
LOSS_FIELDS = (
    Job.id, Job.message_id, Job.queued_day, Job.queue, Job.actor, Job.status, Job.worker_id, Job.progress,
    Job.lost_attempts, Job.broker_message_id, Job.exception,
)


def _revive(db: peewee.Database, worker_id: str, status: str, heartbeat: int) -> None:
    """A row marked lost by a stale-worker cleanup whose worker beats again takes back its own status.

    Only a mark that no one saw happen (no exit code: the worker stopped
    heart-beating, nobody reaped it) can be wrong, and only a heartbeat
    taken after the mark proves it wrong: an old heartbeat replayed late
    does not raise the dead.
    """
    revived = (
        Worker.update(status=status, stopped_at=None, exit_code=None, exit_reason=None)
        .where(
            (Worker.worker_id == worker_id) & (Worker.status == WorkerStatus.LOST)
            & Worker.exit_code.is_null() & (Worker.stopped_at < heartbeat)
        )
        .execute(db)
    )
    if revived:
        logger.warning("worker %s heart-beats again after it was marked lost: it is %s", worker_id, status)


def mark_lost(
    worker_id: str, reason: str, *, at_us: int | None = None, db: peewee.Database | None = None
) -> list[Job]:
    """Return the jobs that ``worker_id`` was running to pending, as lost attempts.

    Called by whoever judged the worker dead.  The row's progress drops from
    "started" to "lost" of the same attempt, so that the broker's redelivery
    of the message (the same attempt, "started" again) wins over it.  Each
    mark is kept in :class:`~watchtower.models.LostMark`: if the worker was
    alive after all (cut off from the ledger, not dead), its own finish of
    that attempt undoes the mark when it is written (see :func:`write_batch`).
    ``db`` defaults to the database the models are bound to.
    Returns the jobs that were marked, for counting, with their new
    ``status``, ``progress`` and ``lost_attempts``, and their
    ``broker_message_id``.
    """
    at = at_us if at_us is not None else now_ms() * 1000
    target = db if db is not None else models.database.obj
    jobs = list(
        Job.select(*LOSS_FIELDS)
        .where((Job.worker_id == worker_id) & (Job.status == JobStatus.PROCESSING))
        .execute(target)
    )
    marked = [job for job in jobs if _lose(job, reason, at, db)]
    if marked:
        _count(db, at, marked, "lost")
    return marked


def mark_attempt_lost(job: Job, reason: str, *, at_us: int | None = None, db: peewee.Database | None = None) -> bool:
    """The attempt ``job`` (read with LOSS_FIELDS) shows running under ``job.worker_id`` was lost.

    As :func:`mark_lost` does for each of a dead worker's jobs; False if the
    row has moved on since it was read.
    """
    at = at_us if at_us is not None else now_ms() * 1000
    if not _lose(job, reason, at, db):
        return False
    _count(db, at, [job], "lost")
    return True


def _lose(job: Job, reason: str, at: int, db: peewee.Database | None) -> bool:
    attempt_started = job.progress
    if job.status != JobStatus.PROCESSING or attempt_started % 8 != PHASE_STARTED:
        return False
    lost = attempt_started - PHASE_STARTED + PHASE_LOST
    exception = f"{LOST_PREFIX}{reason}"
    target = db if db is not None else models.database.obj
    with target.atomic():  # the row and its mark together
        count = (
            Job.update(
                status=JobStatus.PENDING,
                progress=lost,
                progress_at=at,
                lost_attempts=Job.lost_attempts + 1,
                exception=exception,
            )
            .where((Job.id == job.id) & (Job.progress == attempt_started) & (Job.status == JobStatus.PROCESSING)
                   & (Job.worker_id == job.worker_id))
            .execute(target)
        )
        if count:
            LostMark.insert(
                worker_id=job.worker_id, message_id=job.message_id, queued_day=job.queued_day,
                attempt=attempt_started // 8, at=at, queue=job.queue, actor=job.actor,
                exception=exception, previous=job.exception,
            ).execute(target)
    if count:
        job.status, job.progress, job.exception = JobStatus.PENDING, lost, exception
        job.lost_attempts = (job.lost_attempts or 0) + 1
    return bool(count)


def give_up(
    job: Job, reason: str, *, payload: str | None = None, at_us: int | None = None, db: peewee.Database | None = None
) -> bool:
    """Record ``job``, just marked lost, as failed for good with ``reason`` (it was dead-lettered).

    The row changes only if it is still at the lost attempt that
    :func:`mark_lost` wrote (``job.progress``).  ``payload``: the message,
    kept if the row has none yet (so that it can be retried).  Returns
    whether the row changed.
    """
    at = at_us if at_us is not None else now_ms() * 1000
    finished = job.progress - PHASE_LOST + PHASE_FINISHED
    count = (
        Job.update(
            status=JobStatus.FAILED,
            progress=finished,
            progress_at=at,
            completed_at=at // 1000,
            exception=reason,
            payload=peewee.fn.COALESCE(Job.payload, payload),
        )
        .where((Job.id == job.id) & (Job.progress == job.progress) & (Job.status == JobStatus.PENDING))
        .execute(db)
    )
    if not count:
        return False
    job.status, job.progress, job.exception = JobStatus.FAILED, finished, reason
    _count(db, at, [job], "failed")
    return True


def _count(db: peewee.Database | None, at_us: int, jobs: Sequence[Job], kind: str) -> None:
    """Add ``jobs`` to the rollups of ``kind`` for the minute of ``at_us``."""
    target = db if db is not None else models.database.obj
    totals: dict[tuple[int, str, str, str], list[float]] = {}
    for job in jobs:
        totals.setdefault((at_us // 60_000_000, job.queue, job.actor, kind), [0, 0.0])[0] += 1
    _upsert_rollups(target, dialect_of(target), totals)


def _undo_false_losses(db: peewee.Database, events: Sequence[JobEvent]) -> dict[tuple[int, str, str, str], list[float]]:
    """Undo the lost marks that these events prove false: the marked worker finished that attempt itself.

    A supervisor judges a worker dead when its heartbeats stop reaching the
    ledger; a worker that was only cut off from the ledger goes on and ends
    its attempts, and those finishing events (completed, retried, failed,
    skipped) come later.  Each one that matches a mark (same job, same
    attempt, same worker) takes the loss back: ``lost_attempts`` and the
    "lost" rollup of the mark's minute go down by one, and the mark's
    ``lost: ...`` text leaves ``exception`` if it is still there.

    Order-independent: a finish written before the mark prevents it (the
    row no longer shows the attempt running under that worker), one written
    after finds the mark here, whatever else reached the row meanwhile (a
    retry's next attempt, a redelivery to another worker).  Deleting the
    mark is the claim: a finish written twice undoes it once.  Returns the
    rollup counts to take back, for the batch's own rollup upsert.
    """
    totals: dict[tuple[int, str, str, str], list[float]] = {}
    workers = sorted({event.worker_id for event in events if event.worker_id is not None})
    if not workers:
        return totals
    # In plain SQL: this runs for every batch, and finds nothing almost
    # always (a Peewee query costs 50 times more than this one).
    found = db.execute_sql(
        f"SELECT id, worker_id, queued_day, message_id, attempt FROM {LostMark._meta.table_name} "
        f"WHERE worker_id IN ({', '.join([db.param] * len(workers))})", workers,
    ).fetchall()
    if not found:
        return totals
    finished = {
        (event.worker_id, event.queued_day, event.message_id, event.attempt)
        for event in events
        if event.kind.phase == PHASE_FINISHED and event.worker_id is not None
    }
    matched = sorted(row[0] for row in found if tuple(row[1:]) in finished)
    if not matched:
        return totals
    for mark in LostMark.select().where(LostMark.id.in_(matched)).order_by(LostMark.id).execute(db):
        if not LostMark.delete().where(LostMark.id == mark.id).execute(db):
            continue  # another writer undid it first
        job = (Job.queued_day == mark.queued_day) & (Job.message_id == mark.message_id)
        Job.update(lost_attempts=Job.lost_attempts - 1).where(job & (Job.lost_attempts > 0)).execute(db)
        Job.update(exception=mark.previous).where(job & (Job.exception == mark.exception)).execute(db)
        # A later mark of the same job that replaced this one's text now
        # replaces what this one had replaced.
        LostMark.update(previous=mark.previous).where(
            (LostMark.queued_day == mark.queued_day) & (LostMark.message_id == mark.message_id)
            & (LostMark.previous == mark.exception)
        ).execute(db)
        totals.setdefault((mark.at // 60_000_000, mark.queue, mark.actor, "lost"), [0, 0.0])[0] -= 1
        logger.info("worker %s finished attempt %d of message %s after it was marked lost: the loss is undone",
                    mark.worker_id, mark.attempt, mark.message_id)
    return totals
