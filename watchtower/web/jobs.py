"""The job routes: list and show jobs, list, retry and delete failed jobs.

Lists are newest first (by row id, which follows the first enqueue) and
paginated without a total: counting a million rows costs more than the page
itself, so a page says ``has_more`` instead.  Two ways to page:

- ``page`` (as the seed has it): an OFFSET, which costs as much as the rows
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
from typing import Any, NamedTuple, cast

import falcon
import peewee

from ..errors import JobConflict, JobNotFound
from ..models import Job, JobStatus, actor_names, database
from ..store import dialect
from . import params
from .context import Services

__all__ = [
    "JobsResource",
    "JobResource",
    "FailedJobsResource",
    "FailedJobResource",
    "RetryResource",
    "job_summary",
    "job_detail",
    "list_jobs",
    "find_job",
    "retry_job",
    "delete_failed",
    "retryable_failed",
    "Selection",
    "SUMMARY_COLUMNS",
    "SEARCH_WINDOW",
    "MAX_PAGE",
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


def job_detail(job: Job, services: Services) -> dict[str, Any]:
    """The whole record: the summary, the stored message (redacted) and the traceback."""
    detail = job_summary(job)
    payload: dict[str, Any] | None = None
    readable = job.payload is not None
    if job.payload is not None:
        try:
            payload = services.redactor.redact(job.get_payload())
        except Exception:  # a message another encoder wrote, which this process cannot read
            readable = False
    detail.update(
        payload=payload,
        payload_readable=readable,
        exception=job.exception,
        broker_message_id=job.broker_message_id,
    )
    return detail


def _page(req: falcon.Request) -> tuple[int, int]:
    page = params.query_int(req, "page", default=1, minimum=1, maximum=MAX_PAGE)
    per_page = params.query_int(req, "per_page", default=PER_PAGE, minimum=1, maximum=MAX_PER_PAGE)
    return page, per_page


def list_jobs(
    services: Services,
    *,
    status: str | None,
    queue: str | None,
    search: str | None,
    page: int,
    per_page: int,
    before: int | None = None,
) -> dict[str, Any]:
    """One page of jobs, newest first, as the list routes answer it (below row ``before`` if given)."""
    services.ledger()
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
        ids, complete = _search(services, where, search, offset + per_page + 1)
        ids = ids[offset:]
        rows = list(Job.select(*SUMMARY_COLUMNS).where(Job.id.in_(ids)).order_by(Job.id.desc())) if ids else []
        answer.update(search_window=SEARCH_WINDOW, search_complete=complete)
    rows, more = rows[:per_page], len(rows) > per_page
    answer["has_more"] = more
    answer["next_cursor"] = str(rows[-1].id) if more else None
    answer["data"] = [job_summary(job) for job in rows]
    return answer


def _search(services: Services, where: list[Any], text: str, wanted: int) -> tuple[list[int], bool]:
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
    postgresql = dialect(database.obj) == "postgresql"
    conditions = list(where)
    if floor is not None:
        conditions.append(Job.id >= floor)
    if postgresql:
        # The stored JSON and the escaped text are ASCII, so folding ASCII
        # letters (the "C" collation's ILIKE) matches what the database's
        # own collation would, at a third of the cost: that ILIKE lowercases
        # each payload through the locale before matching.
        match = _like(peewee.NodeList((Job.payload, peewee.SQL('COLLATE "C"'))), "ILIKE", escaped)
    else:
        # LIKE ignores ASCII case on SQLite, and on MySQL under the default
        # (case-insensitive) collations.
        match = _like(Job.payload, "LIKE", escaped)
    if not _UNSTORABLE.search(text):
        # Text no column can hold (NUL, lone surrogates) cannot be in an
        # actor's name, and the drivers refuse to send it: match the
        # payload alone, where it is escaped as JSON writes it.
        if postgresql:
            # Names may be any Unicode: rather than lowercase every row's
            # actor through the locale, pick the matching names among the
            # few distinct ones, with the same test as the rows below.
            names = [actor for actor in actor_names() if needle in actor.casefold()]
            if names:
                match = Job.actor.in_(names) | match
        else:
            match = _like(Job.actor, "LIKE", text) | match
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
            if needle in actor.casefold() or _arguments_match(services, payload, needle_escaped):
                found.append(row_id)
                if len(found) >= wanted:
                    break
        last = chunk[-1][0]
    return found, complete


class Selection(NamedTuple):
    """The failed jobs a filter selects for a bulk retry (see :func:`retryable_failed`)."""

    ids: list[str]  # message ids of the oldest ones, at most the limit asked for
    matched: int  # how many match, counted up to the cap asked for
    more: bool  # whether more than ``matched`` match (the count stopped at the cap)
    complete: bool  # False when a search stopped at the SEARCH_WINDOW newest failed jobs


def retryable_failed(
    services: Services, *, queue: str | None, search: str | None, limit: int, count_up_to: int
) -> Selection:
    """The failed jobs not yet retried that ``queue`` and ``search`` select, as a list filter selects them.

    The count stops at ``count_up_to`` (counting every match would cost as
    many rows as match, which grows with the table); the ids are those of
    the oldest ``limit`` matches.
    """
    services.ledger()
    where: list[Any] = [Job.status == JobStatus.FAILED, Job.retried_by.is_null()]
    if queue is not None:
        where.append(Job.queue == queue)
    if search is None:
        count = Job.select(Job.id).where(*where).limit(count_up_to + 1).count()
        rows = Job.select(Job.message_id).where(*where).order_by(Job.id).limit(limit) if limit else []
        complete = True
        ids = [job.message_id for job in rows]
    else:
        found, complete = _search(services, where, search, count_up_to + 1)
        count = len(found)
        oldest = sorted(found)[:limit]
        ids = [job.message_id for job in Job.select(Job.message_id).where(Job.id.in_(oldest)).order_by(Job.id)] \
            if oldest else []
    return Selection(ids, min(count, count_up_to), count > count_up_to, complete)


def _like(column: peewee.ColumnBase, operator: str, text: str) -> peewee.ColumnBase:
    """``column LIKE '%text%'`` with the text's own wildcards taken literally ('!' escapes)."""
    literal = text.replace("!", "!!").replace("%", "!%").replace("_", "!_")
    return peewee.NodeList((column, peewee.SQL(operator), f"%{literal}%", peewee.SQL("ESCAPE '!'")), parens=True)


def _arguments_match(services: Services, payload: str | None, needle_escaped: str) -> bool:
    """Whether the redacted arguments of a stored message contain the (JSON-escaped) needle."""
    if not payload or payload.startswith("base64:"):
        return False  # another encoder's bytes: only the actor can match
    try:
        message = json.loads(payload)
        shown = services.redactor.redact([message.get("args"), message.get("kwargs")])
    except (ValueError, AttributeError, RecursionError):
        return False
    return needle_escaped in json.dumps(shown, separators=(",", ":")).casefold()


def find_job(services: Services, raw_id: str) -> Job:
    """The job whose message id is ``raw_id`` (checked: 400 if it cannot be one), or JobNotFound."""
    message_id = params.job_id(raw_id)
    services.ledger()
    job = Job.find(message_id)
    if job is None:
        raise JobNotFound(f"no job has the id {message_id!r}")
    return job


class JobsResource:
    """``GET /jobs?status=&queue=&search=&page=&per_page=&before=``."""

    query_params = ("status", "queue", "search", "page", "per_page", "before")

    def __init__(self, services: Services) -> None:
        self.services = services

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = _list_page(self.services, req, params.query_choice(req, "status", JobStatus.ALL))


def _list_page(services: Services, req: falcon.Request, status: str | None) -> dict[str, Any]:
    """One page of jobs in ``status`` (any if None), filtered by the request's queue and search."""
    page, per_page = _page(req)
    return list_jobs(
        services,
        status=status,
        queue=params.query_queue(req),
        search=params.query_search(req, "search", max_length=MAX_SEARCH),
        page=page,
        per_page=per_page,
        before=params.query_cursor(req, "before"),
    )


class JobResource:
    """``GET /jobs/{id}``: the whole record."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def on_get(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        resp.media = job_detail(find_job(self.services, job_id), self.services)


class FailedJobsResource:
    """``GET /failed?queue=&search=&page=&per_page=&before=``: failed jobs, newest first."""

    query_params = ("queue", "search", "page", "per_page", "before")

    def __init__(self, services: Services) -> None:
        self.services = services

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = _list_page(self.services, req, JobStatus.FAILED)


class FailedJobResource:
    """``DELETE /failed/{id}``: forget a failed job's record."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def on_delete(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        resp.media = delete_failed(self.services, job_id)


def delete_failed(services: Services, raw_id: str) -> dict[str, Any]:
    """Forget failed job ``raw_id``'s record (JobConflict if it is not failed); the API's answer."""
    job = find_job(services, raw_id)
    if job.status != JobStatus.FAILED:
        raise JobConflict(f"job {job.message_id} is {job.status}: only failed jobs can be deleted here")
    Job.delete().where((Job.id == job.id) & (Job.status == JobStatus.FAILED)).execute()
    return {"id": job.message_id, "deleted": True}


class RetryResource:
    """``POST /failed/{id}/retry``: enqueue the failed job's message again as a new, linked job."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def on_post(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        resp.status = falcon.HTTP_202
        resp.media = retry_job(self.services, job_id)


def retry_job(services: Services, raw_id: str) -> dict[str, Any]:
    """Retry failed job ``raw_id`` (see :func:`watchtower.retry.retry_failed`); the API's answer."""
    from ..retry import retry_failed

    message_id = params.job_id(raw_id)
    services.ledger()
    # Check the job before loading the app, so that an unknown id is a
    # 404 even where the app's broker cannot be loaded.
    if Job.find(message_id, Job.id) is None:
        raise JobNotFound(f"no job has the id {message_id!r}")
    result = retry_failed(message_id, broker=services.broker())
    return {
        "id": result.new_id,
        "retried_from": result.failed_id,
        "queue": result.queue,
        "actor": result.actor,
        "dead_letter_removed": result.dead_letter_removed,
    }
