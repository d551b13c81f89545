"""Retention policy: what is old enough to go, and counting it (a dry run).

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

:mod:`watchtower.retention.engine` deletes what this policy says has
expired.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import peewee

from ..clock import DAY_MS, now_ms
from ..config import Settings
from ..models import Job, Rollup, Worker
from ..statuses import JobStatus, WorkerStatus

__all__ = ["Retention", "PruneResult", "plan", "scalar", "cutoff_ms", "rollup_cutoff", "WORKERS_GONE", "GONE_WORKERS"]

_JOBS = Job._meta.table_name
_ROLLUPS = Rollup._meta.table_name
_WORKERS = Worker._meta.table_name

#: The worker statuses whose records may go, once old.
GONE_WORKERS = (WorkerStatus.STOPPED, WorkerStatus.LOST)

#: Which worker rows are gone (with GONE_WORKERS and a cutoff as parameters).
WORKERS_GONE = (
    "status IN ({p}, {p}) AND COALESCE(stopped_at, last_heartbeat, started_at, 0) < {p}"
)


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
            JobStatus.COMPLETED: cutoff_ms(now, self.completed_days),
            JobStatus.FAILED: cutoff_ms(now, self.failed_days),
            JobStatus.SKIPPED: cutoff_ms(now, self.skipped_days),
        }


def cutoff_ms(now: int, days: float) -> int:
    """The epoch ms ``days`` before ``now``."""
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
            result.jobs[status] = scalar(
                db, f"SELECT COUNT(*) FROM {_JOBS} WHERE status = {{p}} AND completed_at < {{p}}", (status, cutoff)
            )
    result.rollups = scalar(
        db, f"SELECT COUNT(*) FROM {_ROLLUPS} WHERE minute < {{p}}", (rollup_cutoff(now, retention),)
    )
    result.workers = scalar(
        db, f"SELECT COUNT(*) FROM {_WORKERS} WHERE {WORKERS_GONE}",
        (*GONE_WORKERS, cutoff_ms(now, retention.workers_days)),
    )
    result.finished_at = time.time()
    return result


def rollup_cutoff(now: int, retention: Retention) -> int:
    """The epoch minute before which rollup rows go: the start of a clock hour, so whole hours go."""
    return cutoff_ms(now, retention.rollup_days) // 3_600_000 * 60


def scalar(db: peewee.Database, sql: str, params: tuple[object, ...]) -> int:
    """The integer ``sql`` (``{p}`` for each parameter) returns; 0 for NULL."""
    return int(db.execute_sql(sql.format(p=db.param), params).fetchone()[0] or 0)


