"""The batch-delete engine: deleting what the retention policy says has expired, in short transactions.

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

How long a batch should take and the pause after it are the database
dialect's (``prune_tuning``); on SQLite, :mod:`watchtower.retention.space`
hands freed pages back to the file system after a big prune.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import peewee

from ..clock import now_ms
from ..dialects import Dialect, dialect_of
from ..models import HourlyRollup, Job, LostMark, Rollup, Worker
from ..statuses import JobStatus
from . import space
from .policy import GONE_WORKERS, WORKERS_GONE, PruneResult, Retention, cutoff_ms, rollup_cutoff, scalar

__all__ = ["prune", "BatchLoop", "FIRST_BATCH", "MIN_BATCH", "MAX_BATCH"]

logger = logging.getLogger(__name__)

_JOBS = Job._meta.table_name
_ROLLUPS = Rollup._meta.table_name
_HOURLY = HourlyRollup._meta.table_name
_WORKERS = Worker._meta.table_name
_MARKS = LostMark._meta.table_name

# Rows per batch: where the adaptation starts, and its bounds.
FIRST_BATCH = 2_000
MIN_BATCH = 200
MAX_BATCH = 50_000


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
    between batches (defaults: the dialect's ``prune_tuning``).  ``vacuum``
    lets SQLite hand freed pages back to the file system afterwards when they
    are a large part of the file.
    """
    now = now_ms() if now is None else now
    dialect = dialect_of(db)
    result = PruneResult(started_at=time.time())
    clock = time.perf_counter()
    default_seconds, default_pause = dialect.prune_tuning
    loop = BatchLoop(
        db, dialect, result,
        batch_seconds=default_seconds if batch_seconds is None else batch_seconds,
        pause=default_pause if pause is None else pause,
        between_batches=between_batches,
        cancel=cancel,
    )
    with dialect.pruning(db):
        free_before = space.free_pages(db) if dialect.keeps_free_pages else 0
        try:
            if all_jobs:
                _delete_all_jobs(loop, result, progress)
            else:
                for status, cutoff in retention.job_cutoffs(now).items():
                    result.jobs[status] = 0
                    _delete_jobs(loop, status, cutoff, _tally(result.jobs, status, progress))
            _delete_rollups(loop, rollup_cutoff(now, retention), result.add_rollups)
            _delete_workers(loop, cutoff_ms(now, retention.workers_days), result.add_workers)
            if vacuum and dialect.keeps_free_pages and loop.running():
                vacuum_started = time.perf_counter()
                try:
                    space.give_back(loop, free_before)
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


class BatchLoop:
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


def _delete_jobs(loop: BatchLoop, status: str, cutoff: int, tally: Callable[[int], None]) -> None:
    """Jobs in ``status`` that finished before ``cutoff``, oldest first."""
    loop.run(_JOBS, "completed_at", cutoff, tally, where=f"status = {loop.db.param}", params=(status,))


def _delete_rollups(loop: BatchLoop, cutoff_minute: int, tally: Callable[[int], None]) -> None:
    """Rollup rows of minutes before ``cutoff_minute`` (a whole hour), oldest first, then their hours.

    Triggers (watchtower.derived) take each deleted minute row off its
    hourly row, so the hours before the cutoff are left at zero: they go
    too.  Their rows are few (one per queue, actor and kind an hour), and
    not counted in the result.
    """
    loop.run(_ROLLUPS, "minute", cutoff_minute, tally)
    loop.run(_HOURLY, "hour", cutoff_minute // 60, lambda deleted: None)


def _delete_all_jobs(loop: BatchLoop, result: PruneResult, progress: Callable[[int], None] | None) -> None:
    """Every job that exists now, in id ranges; counted per status as they go."""
    db, param = loop.db, loop.db.param
    top = scalar(db, f"SELECT COALESCE(MAX(id), 0) FROM {_JOBS}", ())
    result.jobs = {status: 0 for status in JobStatus.ALL}
    low = 0
    while low < top:
        row = db.execute_sql(
            f"SELECT id FROM {_JOBS} WHERE id > {param} AND id <= {param} ORDER BY id LIMIT 1 OFFSET {loop.size - 1}",
            (low, top),
        ).fetchone()
        high = top if row is None else int(row[0])
        counts: list[tuple[str, int]] = []

        def delete_range(low: int = low, high: int = high, counts: list[tuple[str, int]] = counts) -> int:
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


def _delete_workers(loop: BatchLoop, cutoff: int, tally: Callable[[int], None]) -> None:
    """Stopped and lost worker rows last seen before ``cutoff``, a batch of ids at a time."""
    db = loop.db
    where = WORKERS_GONE.format(p=db.param)
    while True:
        ids = [
            row[0]
            for row in db.execute_sql(
                f"SELECT worker_id FROM {_WORKERS} WHERE {where} LIMIT {loop.size}", (*GONE_WORKERS, cutoff)
            ).fetchall()
        ]
        if not ids:
            return
        marks = ", ".join([db.param] * len(ids))
        # The condition again: a worker id reused by a new process since the
        # SELECT is alive now and stays.
        tally(loop.write(
            f"DELETE FROM {_WORKERS} WHERE worker_id IN ({marks}) AND {WORKERS_GONE}", (*ids, *GONE_WORKERS, cutoff)
        ))
        # Their lost marks: a worker gone this long will not finish those attempts.
        loop.write(
            f"DELETE FROM {_MARKS} WHERE worker_id IN ({marks}) "
            f"AND NOT EXISTS (SELECT 1 FROM {_WORKERS} WHERE {_WORKERS}.worker_id = {_MARKS}.worker_id)", tuple(ids)
        )
        if len(ids) < loop.size:
            return
        loop.step_back()


