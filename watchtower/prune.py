"""Retention: deleting old job records, rollups and worker records in short batches.

What goes, and when (days from the settings, or the command line):

- finished jobs whose ``completed_at`` is older than their status's retention:
  ``completed`` (``retention.completed_days``, 7), ``failed``
  (``retention.failed_days``, 30) and ``skipped`` (``retention.skipped_days``,
  30: Dramatiq dead-letters what AgeLimit skips, so a skipped job is a failure
  to look into, kept as long as one).  A job finished exactly at the cutoff
  stays; one a millisecond older goes.  Pending and processing jobs are never
  pruned by age; only :func:`prune` with ``all_jobs=True`` deletes them;
- per-minute rollups of the clock hours that ended more than
  ``retention.rollup_days`` ago (2: MetricsCollector reads the last 24
  hours), and the hourly sums of those hours;
- stopped and lost worker records whose last sign of life is older than
  ``retention.workers_days`` (7: as long as the completed jobs that name
  them), with the lost marks of their attempts (see
  :class:`~watchtower.models.LostMark`).  ``Job.worker_id`` is a plain
  column, so those jobs stay intact and ``job.worker`` returns None.

Each batch is its own short transaction, so live recording only ever waits
for one batch and a crash mid-prune leaves a consistent table (what was
deleted is gone, the rest is untouched).  A batch is a range of the
``(status, completed_at)`` index: the ``completed_at`` of the N-th oldest
row bounds a ``DELETE ... WHERE status = ? AND completed_at <= ?``, and N
adapts so that a batch holds the write lock for about ``batch_seconds``.
On SQLite, where one writer at a time holds the whole database, the pruner
also steps back for ``pause`` seconds between batches (checkpointing what
the batch wrote meanwhile): SQLite's busy handler retries a waiting writer
at most 50 ms apart during its first 0.2 s of waiting, so a pause of that
length lets a waiting writer in (without it, the pruner would take the
lock again first, batch after batch).

Space: SQLite puts pages freed by a prune on its free list and reuses them
for new rows.  After a prune that freed a large part of the file (a first
prune of a big ledger, ``--all``) the pages go back to the file system, one
of two ways.  When little is left, one ``VACUUM`` rebuilds the file from
the rows that stay: it holds the write lock while it copies them, so it is
taken only when the prune's own batches show that this takes no longer
than :data:`WHOLE_VACUUM_BATCHES` batches (VACUUM's time grows with the
pages that stay; the batches measured how fast this machine writes these
tables just now).  Otherwise ``PRAGMA incremental_vacuum`` runs in short
steps; the ledger's file is in incremental auto-vacuum mode (set by
:mod:`watchtower.store` when it creates the file).  Each of those steps
searches SQLite's free list for every page it takes off the end of the
file, so their time grows with the free list: a million rows' 79,000 free
pages took 2-3 s of steps, where one VACUUM of the 3,600 pages left took
0.13 s.  A file created before that (auto_vacuum = NONE) reuses its free
pages and shrinks only through the whole VACUUM, which also switches it to
incremental mode (every connection asks for it).  PostgreSQL reuses the
space after (auto)vacuum; MySQL/InnoDB reuses it inside the table's file.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import peewee

from .config import Settings
from .lease import Lease, acquire, free_at
from .clock import DAY_MS, now_ms
from .models import HourlyRollup, Job, LostMark, Rollup, Worker
from .statuses import JobStatus, WorkerStatus
from .dialects import Dialect, dialect_of

__all__ = ["Retention", "PruneResult", "prune", "plan", "prune_if_due", "AutoPruner"]

logger = logging.getLogger(__name__)

#: The lease that keeps automatic pruning to one process at a time.
LEASE_NAME = "prune"
#: Seconds a pruner's lease lasts without renewal (it renews after every batch).
LEASE_TTL = 60.0

_JOBS = Job._meta.table_name
_ROLLUPS = Rollup._meta.table_name
_HOURLY = HourlyRollup._meta.table_name
_WORKERS = Worker._meta.table_name
_MARKS = LostMark._meta.table_name
_GONE_WORKERS = (WorkerStatus.STOPPED, WorkerStatus.LOST)

#: SQLite: give free pages back to the file system when they are at least
#: this fraction of the file (after a big prune; not in the steady state of
#: hourly trimming, where new rows reuse the pages freed an hour earlier).
VACUUM_FREE_FRACTION = 0.25

#: SQLite: rebuild the file with one VACUUM when that should hold the write
#: lock no longer than this many batches (see the module doc).
WHOLE_VACUUM_BATCHES = 2.0

# Rows per batch: where the adaptation starts, and its bounds.
FIRST_BATCH = 2_000
MIN_BATCH = 200
MAX_BATCH = 50_000


@dataclass(frozen=True)
class Retention:
    """How many days each kind of record is kept."""

    completed_days: float = 7.0
    failed_days: float = 30.0
    skipped_days: float = 30.0
    rollup_days: float = 2.0
    workers_days: float = 7.0

    @classmethod
    def from_settings(cls, settings: Settings) -> Retention:
        """The ``retention.*`` settings."""
        return cls(
            completed_days=settings.retention_completed_days,
            failed_days=settings.retention_failed_days,
            skipped_days=settings.retention_skipped_days,
            rollup_days=settings.retention_rollup_days,
            workers_days=settings.retention_workers_days,
        )

    def job_cutoffs(self, now: int) -> dict[str, int]:
        """For each finished status, the epoch ms before which its jobs go."""
        return {
            JobStatus.COMPLETED: _cutoff(now, self.completed_days),
            JobStatus.FAILED: _cutoff(now, self.failed_days),
            JobStatus.SKIPPED: _cutoff(now, self.skipped_days),
        }


def _cutoff(now: int, days: float) -> int:
    return now - round(days * DAY_MS)


@dataclass
class PruneResult:
    """What a prune deleted (or, for a dry run, would delete) and how long it took."""

    jobs: dict[str, int] = field(default_factory=dict)  # by status
    rollups: int = 0
    workers: int = 0
    seconds: float = 0.0
    dry_run: bool = False
    complete: bool = True  # False when cancelled (or its lease was lost) midway
    started_at: float = 0.0  # epoch seconds
    finished_at: float = 0.0
    batches: int = 0
    longest_batch: float = 0.0  # seconds of the longest delete transaction
    vacuum_seconds: float = 0.0  # of ``seconds``, handing space back (SQLite)
    vacuum: str = ""  # how (SQLite): "whole" (one VACUUM), "incremental", or "" (not needed)
    owner: str | None = None  # who pruned (automatic trimming)

    def add_rollups(self, deleted: int) -> None:
        self.rollups += deleted

    def add_workers(self, deleted: int) -> None:
        self.workers += deleted

    @property
    def jobs_total(self) -> int:
        return sum(self.jobs.values())

    def summary(self) -> str:
        """One line: deleted per status, rollups, workers, time taken."""
        verb = "would prune" if self.dry_run else "pruned"
        per_status = ", ".join(f"{status} {count}" for status, count in self.jobs.items() if count)
        jobs = f"{self.jobs_total} jobs" + (f" ({per_status})" if per_status else "")
        line = f"{verb} {jobs}, {self.rollups} rollup rows, {self.workers} worker records"
        if not self.dry_run:
            line += f" in {self.seconds:.2f} s"
        if not self.complete:
            line += " (stopped before the end)"
        return line


def plan(db: peewee.Database, retention: Retention, *, now: int | None = None, all_jobs: bool = False) -> PruneResult:
    """Count what :func:`prune` would delete, deleting nothing."""
    now = now_ms() if now is None else now
    result = PruneResult(dry_run=True, started_at=time.time())
    if all_jobs:
        rows = db.execute_sql(f"SELECT status, COUNT(*) FROM {_JOBS} GROUP BY status").fetchall()
        counts = {str(status): int(count) for status, count in rows}
        result.jobs = {status: counts.get(status, 0) for status in JobStatus.ALL}
    else:
        for status, cutoff in retention.job_cutoffs(now).items():
            result.jobs[status] = _scalar(
                db, f"SELECT COUNT(*) FROM {_JOBS} WHERE status = {{p}} AND completed_at < {{p}}", (status, cutoff)
            )
    result.rollups = _scalar(
        db, f"SELECT COUNT(*) FROM {_ROLLUPS} WHERE minute < {{p}}", (_rollup_cutoff(now, retention),)
    )
    result.workers = _scalar(
        db, f"SELECT COUNT(*) FROM {_WORKERS} WHERE {_WORKERS_GONE}", (*_GONE_WORKERS, _cutoff(now, retention.workers_days))
    )
    result.finished_at = time.time()
    return result


def prune(
    db: peewee.Database,
    retention: Retention,
    *,
    now: int | None = None,
    all_jobs: bool = False,
    progress: Callable[[int], None] | None = None,
    between_batches: Callable[[], bool] | None = None,
    cancel: threading.Event | None = None,
    batch_seconds: float | None = None,
    pause: float | None = None,
    vacuum: bool = True,
) -> PruneResult:
    """Delete what ``retention`` says has expired, in short transactions.

    ``all_jobs`` deletes every job record that exists when the prune starts,
    whatever its status or age (rollups and workers still by age).
    ``progress`` is called with the number of job rows each batch deleted;
    ``between_batches`` after every batch, and returning False stops the
    prune there, as does setting ``cancel``.  ``batch_seconds`` is how long
    a batch should hold its locks, ``pause`` the time given to other writers
    between batches (defaults: the dialect's ``prune_tuning``).  ``vacuum`` lets SQLite hand freed pages back to the file
    system afterwards when they are a large part of the file.
    """
    now = now_ms() if now is None else now
    dialect = dialect_of(db)
    result = PruneResult(started_at=time.time())
    clock = time.perf_counter()
    default_seconds, default_pause = dialect.prune_tuning
    loop = _BatchLoop(
        db, dialect, result,
        batch_seconds=default_seconds if batch_seconds is None else batch_seconds,
        pause=default_pause if pause is None else pause,
        between_batches=between_batches,
        cancel=cancel,
    )
    with dialect.pruning(db):
        free_before = _scalar(db, "PRAGMA freelist_count", ()) if dialect.keeps_free_pages else 0
        try:
            if all_jobs:
                _delete_all_jobs(loop, result, progress)
            else:
                for status, cutoff in retention.job_cutoffs(now).items():
                    result.jobs[status] = 0
                    _delete_jobs(loop, status, cutoff, _tally(result.jobs, status, progress))
            _delete_rollups(loop, _rollup_cutoff(now, retention), result.add_rollups)
            _delete_workers(loop, _cutoff(now, retention.workers_days), result.add_workers)
            if vacuum and dialect.keeps_free_pages and loop.running():
                vacuum_started = time.perf_counter()
                try:
                    _give_space_back(loop, free_before)
                finally:
                    result.vacuum_seconds = time.perf_counter() - vacuum_started
        except _Stopped:
            result.complete = False
    result.seconds = time.perf_counter() - clock
    result.finished_at = time.time()
    logger.debug("%s", result.summary())
    return result


class _Stopped(Exception):
    """Raised inside a prune when it was cancelled or lost its lease."""


class _BatchLoop:
    """Runs delete batches: sizes them, times them, and steps back between them."""

    def __init__(
        self,
        db: peewee.Database,
        dialect: Dialect,
        result: PruneResult,
        *,
        batch_seconds: float,
        pause: float,
        between_batches: Callable[[], bool] | None,
        cancel: threading.Event | None,
    ) -> None:
        self.db, self.dialect, self.result = db, dialect, result
        self.batch_seconds = batch_seconds
        self.pause = pause
        self.between_batches = between_batches
        self.cancel = cancel
        self.size = FIRST_BATCH
        self.busy = 0.0  # seconds the batches held their transactions

    def running(self) -> bool:
        return not (self.cancel is not None and self.cancel.is_set())

    def run(
        self,
        table: str,
        column: str,
        cutoff: object,
        tally: Callable[[int], None],
        *,
        where: str = "",
        params: tuple[object, ...] = (),
    ) -> None:
        """Delete the rows of ``table`` whose ``column`` is below ``cutoff``, oldest first, batch after batch.

        ``where`` (with ``params``) narrows the rows further; ``tally`` is
        told each batch's count.  A batch ends at the ``column`` value of
        the N-th row still to go and deletes up to that value alone, not
        also below the cutoff: SQLite's index range takes one upper bound,
        and given two it may range up to the cutoff and test each row
        against the other.  The value is below the cutoff, so it implies it.
        """
        p = self.db.param
        scope = f"{where} AND " if where else ""
        while True:
            row = self.db.execute_sql(
                f"SELECT {column} FROM {table} WHERE {scope}{column} < {p} ORDER BY {column} "
                f"LIMIT 1 OFFSET {self.size - 1}",
                (*params, cutoff),
            ).fetchone()
            if row is None:  # the last batch: everything left below the cutoff
                tally(self.write(f"DELETE FROM {table} WHERE {scope}{column} < {p}", (*params, cutoff)))
                return
            tally(self.write(f"DELETE FROM {table} WHERE {scope}{column} <= {p}", (*params, row[0])))
            self.step_back()

    def write(self, sql: str, params: tuple[object, ...]) -> int:
        """One statement in its own transaction; the rows it deleted."""
        return self.transaction(lambda: int(self.db.execute_sql(sql.format(p=self.db.param), params).rowcount))

    def transaction(self, work: Callable[[], int]) -> int:
        """Run ``work`` (returning rows deleted) in one timed transaction; adapt the batch size."""
        started = time.perf_counter()
        with self.dialect.transaction(self.db):
            deleted = work()
        elapsed = time.perf_counter() - started
        self.busy += elapsed
        self.result.batches += 1
        self.result.longest_batch = max(self.result.longest_batch, elapsed)
        if deleted >= self.size // 2 and elapsed > 0:
            # Aim at batch_seconds, moving at most 2x per batch so one slow
            # batch (a checkpoint, a busy disk) does not swing the size.
            wanted = deleted * self.batch_seconds / elapsed
            self.size = int(min(MAX_BATCH, max(MIN_BATCH, self.size / 2, min(self.size * 2, wanted))))
        return deleted

    def step_back(self) -> None:
        """Between batches: let other writers in, and stop if asked to."""
        if self.between_batches is not None and not self.between_batches():
            raise _Stopped
        started = time.perf_counter()
        self.dialect.between_batches(self.db)  # SQLite: a checkpoint, as part of the pause
        rest = max(0.0, self.pause - (time.perf_counter() - started))
        if self.cancel is not None:
            if self.cancel.wait(rest):
                raise _Stopped
        elif rest:
            time.sleep(rest)


def _tally(
    counts: dict[str, int], key: str, progress: Callable[[int], None] | None = None
) -> Callable[[int], None]:
    """Adds each committed batch's count to ``counts[key]`` (and tells ``progress``)."""
    def add(deleted: int) -> None:
        counts[key] += deleted
        if progress is not None and deleted:
            progress(deleted)

    return add


def _delete_jobs(loop: _BatchLoop, status: str, cutoff: int, tally: Callable[[int], None]) -> None:
    """Jobs in ``status`` that finished before ``cutoff``, oldest first."""
    loop.run(_JOBS, "completed_at", cutoff, tally, where=f"status = {loop.db.param}", params=(status,))


def _delete_rollups(loop: _BatchLoop, cutoff_minute: int, tally: Callable[[int], None]) -> None:
    """Rollup rows of minutes before ``cutoff_minute`` (a whole hour), oldest first, then their hours.

    Triggers (watchtower.derived) take each deleted minute row off its
    hourly row, so the hours before the cutoff are left at zero: they go
    too.  Their rows are few (one per queue, actor and kind an hour), and
    not counted in the result.
    """
    loop.run(_ROLLUPS, "minute", cutoff_minute, tally)
    loop.run(_HOURLY, "hour", cutoff_minute // 60, lambda deleted: None)


def _delete_all_jobs(loop: _BatchLoop, result: PruneResult, progress: Callable[[int], None] | None) -> None:
    """Every job that exists now, in id ranges; counted per status as they go."""
    db, param = loop.db, loop.db.param
    top = _scalar(db, f"SELECT COALESCE(MAX(id), 0) FROM {_JOBS}", ())
    result.jobs = {status: 0 for status in JobStatus.ALL}
    low = 0
    while low < top:
        row = db.execute_sql(
            f"SELECT id FROM {_JOBS} WHERE id > {param} AND id <= {param} ORDER BY id LIMIT 1 OFFSET {loop.size - 1}",
            (low, top),
        ).fetchone()
        high = top if row is None else int(row[0])
        counts: list[tuple[str, int]] = []

        def delete_range() -> int:
            counts[:] = db.execute_sql(
                f"SELECT status, COUNT(*) FROM {_JOBS} WHERE id > {param} AND id <= {param} GROUP BY status",
                (low, high),
            ).fetchall()
            db.execute_sql(f"DELETE FROM {_JOBS} WHERE id > {param} AND id <= {param}", (low, high))
            return sum(int(count) for _, count in counts)

        deleted = loop.transaction(delete_range)
        for status, count in counts:  # once committed
            result.jobs[str(status)] = result.jobs.get(str(status), 0) + int(count)
        if progress is not None and deleted:
            progress(deleted)
        low = high
        if low < top:
            loop.step_back()


_WORKERS_GONE = (
    "status IN ({p}, {p}) AND COALESCE(stopped_at, last_heartbeat, started_at, 0) < {p}"
)


def _delete_workers(loop: _BatchLoop, cutoff: int, tally: Callable[[int], None]) -> None:
    """Stopped and lost worker rows last seen before ``cutoff``, a batch of ids at a time."""
    db = loop.db
    where = _WORKERS_GONE.format(p=db.param)
    while True:
        ids = [
            row[0]
            for row in db.execute_sql(
                f"SELECT worker_id FROM {_WORKERS} WHERE {where} LIMIT {loop.size}", (*_GONE_WORKERS, cutoff)
            ).fetchall()
        ]
        if not ids:
            return
        marks = ", ".join([db.param] * len(ids))
        # The condition again: a worker id reused by a new process since the
        # SELECT is alive now and stays.
        tally(loop.write(
            f"DELETE FROM {_WORKERS} WHERE worker_id IN ({marks}) AND {_WORKERS_GONE}", (*ids, *_GONE_WORKERS, cutoff)
        ))
        # Their lost marks: a worker gone this long will not finish those attempts.
        loop.write(
            f"DELETE FROM {_MARKS} WHERE worker_id IN ({marks}) "
            f"AND NOT EXISTS (SELECT 1 FROM {_WORKERS} WHERE {_WORKERS}.worker_id = {_MARKS}.worker_id)", tuple(ids)
        )
        if len(ids) < loop.size:
            return
        loop.step_back()


def _give_space_back(loop: _BatchLoop, free_before: int) -> None:
    """Hand the pages the prune freed back to the file system (SQLite; see the module doc).

    ``free_before``: the free list's length when the prune began.
    """
    db = loop.db
    # Only the pages free now: live writers free and reuse pages all the time.
    free = _scalar(db, "PRAGMA freelist_count", ())
    pages = _scalar(db, "PRAGMA page_count", ())
    if free < VACUUM_FREE_FRACTION * pages:
        return  # steady state: new rows will reuse these pages; moving them would double the writes
    freed = free - free_before
    if freed > 0 and loop.busy > 0:
        # VACUUM copies the pages that stay; the batches freed ``freed``
        # pages in ``busy`` seconds of writing.  (Measured on a million
        # rows: VACUUM copied a page in about 0.7 of the time the batches
        # took per page they freed, so the estimate errs long.)
        estimate = (pages - free) * loop.busy / freed
        if estimate <= WHOLE_VACUUM_BATCHES * loop.batch_seconds:
            loop.result.vacuum = "whole"
            started = time.perf_counter()
            db.execute_sql("VACUUM")
            loop.result.longest_batch = max(loop.result.longest_batch, time.perf_counter() - started)
            return
    if _scalar(db, "PRAGMA auto_vacuum", ()) != 2:
        logger.info(
            "the ledger's SQLite file is not in incremental auto-vacuum mode: run "
            "'PRAGMA auto_vacuum = INCREMENTAL; VACUUM;' on it once, with the workers stopped, to shrink it"
        )
        return
    loop.result.vacuum = "incremental"
    _incremental_vacuum(loop, free)


def _incremental_vacuum(loop: _BatchLoop, free: int) -> None:
    """Hand ``free`` pages back, a few MB per transaction."""
    db = loop.db
    pages = 1024
    while free > 0:
        step = min(pages, free)
        started = time.perf_counter()
        # executescript: through execute() the pragma stops after one page.
        db.connection().executescript(f"PRAGMA incremental_vacuum({step});")
        elapsed = time.perf_counter() - started
        free -= step
        loop.result.longest_batch = max(loop.result.longest_batch, elapsed)
        if elapsed > 0:
            pages = int(min(65_536, max(64, pages / 2, min(pages * 2, step * loop.batch_seconds / elapsed))))
        if free > 0:
            loop.step_back()


def _rollup_cutoff(now: int, retention: Retention) -> int:
    """The epoch minute before which rollup rows go: the start of a clock hour, so whole hours go."""
    return _cutoff(now, retention.rollup_days) // 3_600_000 * 60


def _scalar(db: peewee.Database, sql: str, params: tuple[object, ...]) -> int:
    return int(db.execute_sql(sql.format(p=db.param), params).fetchone()[0] or 0)


# Automatic trimming -------------------------------------------------------


def prune_if_due(
    settings: Settings,
    *,
    owner: str,
    db: peewee.Database,
    clock: Callable[[], int] = now_ms,
    cancel: threading.Event | None = None,
    progress: Callable[[int], None] | None = None,
) -> PruneResult | None:
    """Prune now if automatic trimming is on, it is due, and no other process is at it.

    Due means ``retention.interval`` seconds have passed since the last
    automatic prune by any process sharing this database; the lease
    ``prune`` (see :mod:`watchtower.lease`) makes sure only one process
    prunes at a time.  Returns the result, or None when nothing was done.
    Database errors are logged, not raised: trimming is housekeeping and
    must never bring a supervisor down.
    """
    if not settings.retention_auto:
        return None
    lease: Lease | None = None
    next_in = settings.retention_interval
    try:
        now = clock()
        if free_at(db, LEASE_NAME) > now:
            return None  # held by someone, or pruned recently: known without a write
        lease = acquire(db, LEASE_NAME, owner=owner, ttl=LEASE_TTL, clock=clock)
        if lease is None:
            return None
        renewed = [time.monotonic()]

        def keep_lease() -> bool:
            if time.monotonic() - renewed[0] < LEASE_TTL / 3:
                return True
            renewed[0] = time.monotonic()
            assert lease is not None
            return lease.renew()

        logger.debug("automatic prune by %s", owner)
        result = prune(
            db, Retention.from_settings(settings), now=now, progress=progress,
            between_batches=keep_lease, cancel=cancel,
        )
        result.owner = owner
        if not result.complete:
            next_in = 0.0  # stopped midway: whoever comes next may finish the job
        return result
    except peewee.DatabaseError as error:
        logger.warning("automatic prune by %s failed (next try after retention.interval): %s", owner, error)
        return None
    finally:
        if lease is not None:
            try:
                lease.release(next_in_ms=round(next_in * 1000))
            except peewee.DatabaseError as error:
                logger.warning("cannot release the prune lease (it expires in %.0f s): %s", LEASE_TTL, error)


class AutoPruner:
    """Automatic trimming for a long-running loop (the supervisor's).

    ``tick()`` returns at once: when a prune may be due it runs
    :func:`prune_if_due` in a thread of its own, so that a long prune never
    delays the loop's real work (restarting workers).
    """

    #: Seconds between two looks at the lease, at most.
    CHECK_EVERY = 10.0

    def __init__(
        self, settings: Settings, *, owner: str, db: peewee.Database, clock: Callable[[], int] = now_ms
    ) -> None:
        self.settings = settings
        self.owner = owner
        self.db = db
        self.clock = clock
        self._thread: threading.Thread | None = None
        self._cancel = threading.Event()
        self._next_check = 0.0
        self._done: list[PruneResult] = []

    def tick(self) -> PruneResult | None:
        """Start a prune in the background if one may be due; the result of one that finished."""
        if self._done:
            return self._done.pop(0)
        if not self.settings.retention_auto or self._cancel.is_set():
            return None
        if self._thread is not None and self._thread.is_alive():
            return None
        now = time.monotonic()
        if now < self._next_check:
            return None
        self._next_check = now + min(self.CHECK_EVERY, self.settings.retention_interval)
        self._thread = threading.Thread(target=self._run, name="watchtower-prune", daemon=True)
        self._thread.start()
        return None

    def _run(self) -> None:
        try:
            result = prune_if_due(self.settings, owner=self.owner, db=self.db, clock=self.clock, cancel=self._cancel)
            if result is not None:
                logger.info("automatic prune by %s: %s", self.owner, result.summary())
                self._done.append(result)
        except Exception:
            logger.exception("automatic prune by %s failed", self.owner)
        finally:
            self.db.close()  # this thread's own connection

    def close(self, timeout: float = 10.0) -> None:
        """Stop a running prune after its current batch and wait for it."""
        self._cancel.set()
        if self._thread is not None:
            self._thread.join(timeout)
