"""What ``watchtower status`` reports: the pools of every host, the queues, the last hour's failures.

Every number comes from a small table or an index range, never from a scan
of the job table: worker rows (a handful), the per-queue counts kept by
triggers, the per-minute rollups, the failed jobs of the last hour through
the ``(status, completed_at)`` index, and, when the app's broker is given,
the broker's own queue depths (as ``/metrics`` reads them).

The shape (also ``watchtower status --json``)::

    {"supervisors": [{"hostname", "supervisor", "workers": {status: n},
                      "failed_last_hour": n}],
     "queues": [{"queue", "pending", "processing", "completed_last_hour",
                 "failed_last_hour", "broker": {"ready", "delayed", "dead"} | null}],
     "jobs": {"total_jobs", "pending", ..., "completed_last_hour", "failed_last_hour"},
     "broker": {"read": bool, "error": str | null}}

``workers`` counts the live statuses and ``crashlooping`` of every row, and
``stopped`` and ``lost`` of the rows that ended in the last hour (as the
``watchtower_workers`` metric does).  A job's failure belongs to the
supervisor whose worker ran its last attempt.
"""

from __future__ import annotations

from typing import Any, cast

import peewee

from .clock import now_ms
from .collector import MetricsCollector
from .models import Job, Rollup, Worker
from .statuses import JobStatus, WorkerStatus

__all__ = ["status_report", "HOUR_MS"]

HOUR_MS = 3_600_000


def status_report(db: peewee.Database, *, depths: dict[str, dict[str, int]] | None = None,
                  broker_error: str | None = None) -> dict[str, Any]:
    """The report, read from the ledger (the models bound to ``db``) and the broker's ``depths``."""
    since = now_ms() - HOUR_MS
    stats = MetricsCollector(db).get_stats()
    jobs = {key: value for key, value in stats.items() if not key.endswith("_workers")}
    return {
        "supervisors": _supervisors(since),
        "queues": _queues(db, depths),
        "jobs": jobs,
        "broker": {"read": depths is not None, "error": broker_error},
    }


def _supervisors(since: int) -> list[dict[str, Any]]:
    recent = Worker.stopped_at >= since
    rows = cast(list[tuple[str | None, str | None, str, int]], list(
        Worker.select(Worker.hostname, Worker.supervisor, Worker.status, peewee.fn.COUNT(Worker.worker_id))
        .where(Worker.status.not_in((WorkerStatus.STOPPED, WorkerStatus.LOST)) | recent)
        .group_by(Worker.hostname, Worker.supervisor, Worker.status)
        .tuples()
    ))
    pools: dict[tuple[str, str | None], dict[str, Any]] = {}
    for hostname, supervisor, status, count in rows:
        pool = pools.setdefault((hostname or "", supervisor), _pool(hostname or "", supervisor))
        pool["workers"][status] = int(count)
    failed = cast(list[tuple[str | None, str | None, int]], list(
        Job.select(Worker.hostname, Worker.supervisor, peewee.fn.COUNT(Job.id))
        .join(Worker, on=(Job.worker_id == Worker.worker_id))
        .where((Job.status == JobStatus.FAILED) & (Job.completed_at >= since))
        .group_by(Worker.hostname, Worker.supervisor)
        .tuples()
    ))
    for hostname, supervisor, count in failed:
        pool = pools.setdefault((hostname or "", supervisor), _pool(hostname or "", supervisor))
        pool["failed_last_hour"] = int(count)
    return [pools[key] for key in sorted(pools, key=lambda key: (key[0], key[1] or ""))]


def _pool(hostname: str, supervisor: str | None) -> dict[str, Any]:
    return {
        "hostname": hostname,
        "supervisor": supervisor,
        "workers": {status: 0 for status in WorkerStatus.ALL},
        "failed_last_hour": 0,
    }


def _queues(db: peewee.Database, depths: dict[str, dict[str, int]] | None) -> list[dict[str, Any]]:
    queues: dict[str, dict[str, Any]] = {}

    def entry(name: str) -> dict[str, Any]:
        return queues.setdefault(name, {
            "queue": name, "pending": 0, "processing": 0, "completed_last_hour": 0, "failed_last_hour": 0,
            "broker": None,
        })

    for row in MetricsCollector(db).get_queue_depths():  # the ledger's pending and processing
        entry(row["queue"]).update(pending=row["pending"], processing=row["processing"])
    finished = cast(list[tuple[str, str, int | None]], list(
        Rollup.select(Rollup.queue, Rollup.kind, peewee.fn.SUM(Rollup.count))
        # The collector's last hour: this minute and the 59 before it.
        .where((Rollup.minute >= now_ms() // 60_000 - 59) & Rollup.kind.in_(("completed", "failed")))
        .group_by(Rollup.queue, Rollup.kind)
        .tuples()
    ))
    for queue, kind, count in finished:
        entry(queue)[f"{kind}_last_hour"] = int(count or 0)
    for queue, counts in (depths or {}).items():
        entry(queue)["broker"] = dict(counts)
    return [queues[name] for name in sorted(queues)]
