"""Rows as the API and the command line show them: jobs and workers as plain dicts.

The API's JSON and ``watchtower jobs|failed|show|workers --json`` are the
same shapes, made here, where neither the web layer (Falcon) nor the
command line (Click) is imported.

Job lists are newest first (by row id, which follows the first enqueue) and
paginated without a total: counting a million rows costs more than the page
itself, so a page says ``has_more`` instead.  Two ways to page:

- ``page`` (as Horizon has it): an OFFSET, which costs as much as the rows
  it skips, so pages stop at ``MAX_PAGE``;
- ``before``: the ``next_cursor`` of the previous page; the list goes on
  below that row, found through the index, so the thousandth page costs
  what the first does and no page is out of reach.  Rows that arrive
  meanwhile do not shift a cursor's pages as they shift numbered ones.

``page`` counts from the cursor when both are given.  Filters narrow a list
faster than paging does.

``search`` matches the actor's name and the message's arguments and
keyword arguments, case-insensitively.  Arguments live inside the stored
message text, so matching them is a LIKE scan that no index helps: the scan
is bounded to the ``SEARCH_WINDOW`` newest rows that pass the other filters
(below the cursor, when there is one), and a response says whether the search covered them all
(``search_complete``).  Candidates found by SQL are checked again against
the *redacted* arguments, so a search cannot find a row by the value of a
redacted field.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any, cast

from .dialects import dialect_of
from .models import Job, Worker, database
from .redact import Redactor
from .statuses import WorkerStatus

__all__ = [
    "iso",
    "job_summary",
    "job_detail",
    "list_jobs",
    "search_ids",
    "worker_record",
    "worker_rows",
    "list_workers",
    "SUMMARY_COLUMNS",
    "PER_PAGE",
    "MAX_PER_PAGE",
    "MAX_PAGE",
    "SEARCH_WINDOW",
    "MAX_SEARCH",
    "MAX_WORKERS",
]

#: Jobs per page by default, and at most; the last page a list serves.
#: Together they bound how deep an OFFSET goes (20,000 rows).
PER_PAGE = 50
MAX_PER_PAGE = 100
MAX_PAGE = 200
#: How many of the newest (filtered) rows a search looks through at most.
SEARCH_WINDOW = 10_000
#: The longest search text.
MAX_SEARCH = 200

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")

# The columns of a list entry: everything but the message and the traceback.
SUMMARY_COLUMNS = (
    Job.id, Job.message_id, Job.queue, Job.actor, Job.connection, Job.status, Job.worker_id,
    Job.attempts, Job.lost_attempts, Job.queued_at, Job.eta, Job.started_at, Job.completed_at,
    Job.retried_from, Job.retried_by,
)


def iso(value: datetime | None) -> str | None:
    """An aware datetime as RFC 3339 text with milliseconds, in UTC."""
    if value is None:
        return None
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def job_summary(job: Job) -> dict[str, Any]:
    """A job as a list shows it."""
    return {
        "id": job.message_id,
        "queue": job.queue,
        "actor": job.actor,
        "connection": job.connection,
        "status": job.status,
        "attempts": job.attempts,
        "lost_attempts": job.lost_attempts,
        "worker_id": job.worker_id,
        "queued_at": iso(job.queued_at),
        "eta": iso(job.eta),
        "started_at": iso(job.started_at),
        "completed_at": iso(job.completed_at),
        "duration": job.get_duration(),
        "retried_from": job.retried_from,
        "retried_by": job.retried_by,
    }


def job_detail(job: Job, redactor: Redactor) -> dict[str, Any]:
    """The whole record: the summary, the stored message (redacted) and the traceback."""
    detail = job_summary(job)
    payload: dict[str, Any] | None = None
    readable = job.payload is not None
    if job.payload is not None:
        try:
            payload = redactor.redact(job.get_payload())
        except Exception:  # a message another encoder wrote, which this process cannot read
            readable = False
    detail.update(
        payload=payload,
        payload_readable=readable,
        exception=job.exception,
        broker_message_id=job.broker_message_id,
    )
    return detail


def list_jobs(
    redactor: Redactor,
    *,
    status: str | None,
    queue: str | None,
    search: str | None,
    page: int,
    per_page: int,
    before: int | None = None,
) -> dict[str, Any]:
    """One page of jobs, newest first, as ``GET /jobs`` answers it (below row ``before`` if given).

    The models must be bound to the ledger (:func:`watchtower.store.connect`).
    """
    where: list[Any] = []
    if status is not None:
        where.append(Job.status == status)
    if queue is not None:
        where.append(Job.queue == queue)
    if before is not None:
        where.append(Job.id < before)
    offset = (page - 1) * per_page
    answer: dict[str, Any] = {"page": page, "per_page": per_page}
    if search is None:
        query = Job.select(*SUMMARY_COLUMNS)
        if where:
            query = query.where(*where)
        rows = list(query.order_by(Job.id.desc()).offset(offset).limit(per_page + 1))
    else:
        ids, complete = search_ids(redactor, where, search, offset + per_page + 1)
        ids = ids[offset:]
        rows = list(Job.select(*SUMMARY_COLUMNS).where(Job.id.in_(ids)).order_by(Job.id.desc())) if ids else []
        answer.update(search_window=SEARCH_WINDOW, search_complete=complete)
    rows, more = rows[:per_page], len(rows) > per_page
    answer["has_more"] = more
    answer["next_cursor"] = str(rows[-1].id) if more else None
    answer["data"] = [job_summary(job) for job in rows]
    return answer


def search_ids(redactor: Redactor, where: list[Any], text: str, wanted: int) -> tuple[list[int], bool]:
    """Row ids, newest first, of up to ``wanted`` jobs matching ``text``; and whether the window covered all rows."""
    floor_query = Job.select(Job.id)
    if where:
        floor_query = floor_query.where(*where)
    floor = floor_query.order_by(Job.id.desc()).offset(SEARCH_WINDOW - 1).limit(1).scalar()
    complete = floor is None

    # The message is stored as JSON with non-ASCII characters, quotes and
    # backslashes escaped, so the payload is matched against the text as
    # JSON writes it.
    escaped = json.dumps(text)[1:-1]
    needle, needle_escaped = text.casefold(), escaped.casefold()
    dialect = dialect_of(database.obj)
    conditions = list(where)
    if floor is not None:
        conditions.append(Job.id >= floor)
    # The stored JSON and the escaped text are ASCII, so folding ASCII
    # letters matches what the database's own collation would.
    match = dialect.contains_ascii_folded(Job.payload, escaped)
    if not _UNSTORABLE.search(text):
        # Text no column can hold (NUL, lone surrogates) cannot be in an
        # actor's name, and the drivers refuse to send it: match the
        # payload alone, where it is escaped as JSON writes it.
        names = dialect.contains_folded(database.obj, Job._meta.table_name, Job.actor, text)
        if names is not None:
            match = names | match
    conditions.append(match)

    found: list[int] = []
    last: int | None = None
    while len(found) < wanted:
        query = Job.select(Job.id, Job.actor, Job.payload).where(*conditions)
        if last is not None:
            query = query.where(Job.id < last)
        chunk = cast(list[tuple[int, str, str | None]], list(query.order_by(Job.id.desc()).limit(200).tuples()))
        if not chunk:
            break
        for row_id, actor, payload in chunk:
            if needle in actor.casefold() or _arguments_match(redactor, payload, needle_escaped):
                found.append(row_id)
                if len(found) >= wanted:
                    break
        last = chunk[-1][0]
    return found, complete


def _arguments_match(redactor: Redactor, payload: str | None, needle_escaped: str) -> bool:
    """Whether the redacted arguments of a stored message contain the (JSON-escaped) needle."""
    if not payload or payload.startswith("base64:"):
        return False  # another encoder's bytes: only the actor can match
    try:
        message = json.loads(payload)
        shown = redactor.redact([message.get("args"), message.get("kwargs")])
    except (ValueError, AttributeError, RecursionError):
        return False
    return needle_escaped in json.dumps(shown, separators=(",", ":")).casefold()


#: Workers listed at most (newest first); stale records are removed by the supervisors.
MAX_WORKERS = 500


def _json(text: str | None, default: Any) -> Any:
    try:
        value = json.loads(text) if text else default
    except ValueError:
        return default
    return value if isinstance(value, type(default)) else default


def worker_record(worker: Worker) -> dict[str, Any]:
    """A worker as the API shows it."""
    return {
        "id": worker.worker_id,
        "supervisor": worker.supervisor,
        "hostname": worker.hostname,
        "pid": worker.pid,
        "queues": _json(worker.queues, []),
        "options": _json(worker.options, {}),
        "status": worker.status,
        "healthy": worker.is_healthy(),
        "started_at": iso(worker.started_at),
        "last_heartbeat": iso(worker.last_heartbeat),
        "stopped_at": iso(worker.stopped_at),
        "uptime": worker.get_uptime(),
        "exit_code": worker.exit_code,
        "exit_reason": worker.exit_reason,
        "restarts": worker.restarts,
        "jobs_processed": worker.get_jobs_processed_count(),
        "jobs_failed": worker.get_jobs_failed_count(),
        "memory_rss": worker.memory_rss,
    }


def worker_rows(*, status: str | None = None, supervisor: str | None = None, alive: bool = False) -> list[Worker]:
    """Worker rows, newest first, at most MAX_WORKERS."""
    query = Worker.select()
    if status is not None:
        query = query.where(Worker.status == status)
    if alive:
        query = query.where(Worker.status.in_(WorkerStatus.ALIVE))
    if supervisor is not None:
        query = query.where(Worker.supervisor == supervisor)
    return list(query.order_by(Worker.started_at.desc(nulls="LAST"), Worker.worker_id).limit(MAX_WORKERS))


def list_workers(
    *, status: str | None = None, supervisor: str | None = None, alive: bool = False
) -> list[dict[str, Any]]:
    """Worker records as the API shows them, newest first."""
    return [worker_record(worker) for worker in worker_rows(status=status, supervisor=supervisor, alive=alive)]
