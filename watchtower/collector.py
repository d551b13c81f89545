"""MetricsCollector: Horizon's dashboard numbers, at a cost that does not grow with the job table.

Every answer comes from a small table, never from a scan of
``watchtower_jobs``:

- counts per status and queue from ``watchtower_job_counts``, kept exact by
  triggers (:mod:`watchtower.derived`);
- throughput and durations from the per-minute rollups written in the same
  transaction as the jobs (:mod:`watchtower.ledger`) and their hourly sums
  (kept by triggers): at most 60 minute rows or 24 hour rows per (queue,
  actor, kind) are read, however many jobs there are.

Windows are whole minutes or whole clock hours (UTC): "the last hour" is
the current minute and the 59 before it; "24 hours" is the current clock
hour and the 23 before it.  Throughput counts jobs that finished (completed
or failed) in each period; durations average the final attempts of the
jobs that finished in the window (counted when they finished, so pruning
rows does not change them).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import peewee

from . import derived
from .config import Settings
from .models import HourlyRollup, Rollup, Worker
from .statuses import JobStatus, WorkerStatus
from .store import open_database

__all__ = ["MetricsCollector"]

_ROLLUPS = Rollup._meta.table_name
_HOURLY = HourlyRollup._meta.table_name
_WORKERS = Worker._meta.table_name


class MetricsCollector:
    """Job and worker statistics for dashboards (Horizon's MetricsCollector).

    ``source`` is the settings (their ``database_url`` is opened, without
    touching the models' binding), a database URL, or an open Peewee
    database.  ``clock`` gives the time in epoch seconds (for tests).
    """

    def __init__(self, source: Settings | str | peewee.Database, *, clock: Callable[[], float] = time.time) -> None:
        if isinstance(source, Settings):
            source = source.database_url
        self.db: peewee.Database = open_database(source) if isinstance(source, str) else source
        self._clock = clock

    # Horizon's dashboard methods ------------------------------------------

    def get_stats(self) -> dict[str, int]:
        """Job counts by status, jobs finished in the last hour, live workers.

        Keys: total_jobs, pending, processing, completed, failed, skipped,
        completed_last_hour, failed_last_hour, active_workers, paused_workers.
        """
        by_status = {status: 0 for status in JobStatus.ALL}
        for (_queue, status), count in self._counts().items():
            by_status[status] = by_status.get(status, 0) + count
        minute = self._minute()
        finished = self._rollup_totals(minute - 59, ("completed", "failed"))
        workers = self._worker_counts()
        return {
            "total_jobs": sum(by_status.values()),
            **{status: by_status[status] for status in JobStatus.ALL},
            "completed_last_hour": finished.get("completed", 0),
            "failed_last_hour": finished.get("failed", 0),
            "active_workers": workers.get(WorkerStatus.RUNNING, 0),
            "paused_workers": workers.get(WorkerStatus.PAUSED, 0),
        }

    def get_hourly_throughput(self, hours: int = 24) -> list[dict[str, Any]]:
        """Jobs finished per clock hour, oldest first, ``hours`` entries (the last one is this hour so far).

        Each entry: ``{"hour": datetime, "completed": n, "failed": n, "total": n}``.
        """
        first_hour = self._minute() // 60 - (hours - 1)
        return self._series(_HOURLY, "hour", first_hour, hours, 3600)

    def get_recent_throughput(self, minutes: int = 10) -> list[dict[str, Any]]:
        """Jobs finished per minute, oldest first, ``minutes`` entries (the last one is this minute so far).

        Each entry: ``{"minute": datetime, "completed": n, "failed": n, "total": n}``.
        """
        first = self._minute() - (minutes - 1)
        return self._series(_ROLLUPS, "minute", first, minutes, 60)

    def get_queue_depths(self) -> list[dict[str, Any]]:
        """Per queue, jobs waiting and running, as the ledger knows them.

        Each entry: ``{"queue": name, "pending": n, "processing": n}``, by
        queue name.  (The broker's own view is ``watchtower_queue_messages``.)
        """
        depths: dict[str, dict[str, Any]] = {}
        for (queue, status), count in self._counts().items():
            entry = depths.setdefault(queue, {"queue": queue, "pending": 0, "processing": 0})
            if status in (JobStatus.PENDING, JobStatus.PROCESSING):
                entry[status] += count
        return [depths[queue] for queue in sorted(depths)]

    def get_average_durations(self, hours: int = 24) -> list[dict[str, Any]]:
        """Per queue, the average run time of jobs that finished in the last ``hours`` clock hours.

        Each entry: ``{"queue": name, "average_seconds": x, "jobs": n}``, by queue name.
        """
        since = self._minute() // 60 - (hours - 1)
        p = self.db.param
        rows = self.db.execute_sql(
            f"SELECT queue, SUM(count), SUM(duration_sum) FROM {_HOURLY} "
            f"WHERE hour >= {p} AND kind IN ({p}, {p}) GROUP BY queue ORDER BY queue",
            (since, "completed", "failed"),
        ).fetchall()
        return [
            {"queue": queue, "average_seconds": float(total) / int(jobs), "jobs": int(jobs)}
            for queue, jobs, total in rows
            if jobs
        ]

    def get_worker_stats(self) -> dict[str, int]:
        """Worker processes by status (every status, zeros too) and their ``total``."""
        workers = self._worker_counts()
        return {"total": sum(workers.values()), **{status: workers.get(status, 0) for status in WorkerStatus.ALL}}

    # Reading ---------------------------------------------------------------

    def _minute(self) -> int:
        return int(self._clock() // 60)

    def _counts(self) -> dict[tuple[str, str], int]:
        values, rows = derived.read_counts(self.db)
        if rows > derived.COMPACT_ROWS:
            # Shards of ended sessions pile up (one per connection ever on
            # MySQL); fold them now and then so this read stays small.
            derived.compact(self.db)
        return values

    def _rollup_totals(self, since_minute: int, kinds: tuple[str, ...]) -> dict[str, int]:
        p = self.db.param
        rows = self.db.execute_sql(
            f"SELECT kind, SUM(count) FROM {_ROLLUPS} WHERE minute >= {p} AND kind IN ({', '.join([p] * len(kinds))}) "
            "GROUP BY kind",
            (since_minute, *kinds),
        ).fetchall()
        return {kind: int(total) for kind, total in rows}

    def _series(self, table: str, unit: str, first: int, length: int, seconds: int) -> list[dict[str, Any]]:
        """Completed and failed counts of ``length`` periods (``unit`` rows of ``table``) from ``first``."""
        p = self.db.param
        rows = self.db.execute_sql(
            f"SELECT {unit}, kind, SUM(count) FROM {table} WHERE {unit} >= {p} AND {unit} < {p} "
            f"AND kind IN ({p}, {p}) GROUP BY {unit}, kind",
            (first, first + length, "completed", "failed"),
        ).fetchall()
        periods: list[dict[str, Any]] = [
            {unit: datetime.fromtimestamp((first + i) * seconds, tz=UTC), "completed": 0, "failed": 0, "total": 0}
            for i in range(length)
        ]
        for period_number, kind, total in rows:
            period = periods[int(period_number) - first]
            period[kind] += int(total)
            period["total"] += int(total)
        return periods

    def _worker_counts(self) -> dict[str, int]:
        rows = self.db.execute_sql(f"SELECT status, COUNT(*) FROM {_WORKERS} GROUP BY status").fetchall()
        return {status: int(count) for status, count in rows}
