"""The job routes: list and show jobs, list, retry and delete failed jobs.

What a list holds, how it pages and how a search matches are the
functions of :mod:`watchtower.views`, which the command line shares.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import falcon

from .. import views
from ..errors import JobConflict, JobNotFound
from ..models import Job
from ..statuses import JobStatus
from ..views import MAX_PAGE, MAX_PER_PAGE, MAX_SEARCH, PER_PAGE, SEARCH_WINDOW, SUMMARY_COLUMNS, iso, job_summary
from . import params
from .context import Services

__all__ = [
    "JobsResource",
    "JobResource",
    "FailedJobsResource",
    "FailedJobResource",
    "RetryResource",
    "iso",
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


def job_detail(job: Job, services: Services) -> dict[str, Any]:
    """The whole record: the summary, the stored message (redacted) and the traceback."""
    return views.job_detail(job, services.redactor)


def list_jobs(services: Services, **filters: Any) -> dict[str, Any]:
    """One page of jobs, newest first, as the list routes answer it (see :func:`watchtower.views.list_jobs`)."""
    services.ledger()
    return views.list_jobs(services.redactor, **filters)


def _page(req: falcon.Request) -> tuple[int, int]:
    page = params.query_int(req, "page", default=1, minimum=1, maximum=MAX_PAGE)
    per_page = params.query_int(req, "per_page", default=PER_PAGE, minimum=1, maximum=MAX_PER_PAGE)
    return page, per_page


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
        found, complete = views.search_ids(services.redactor, where, search, count_up_to + 1)
        count = len(found)
        oldest = sorted(found)[:limit]
        ids = [job.message_id for job in Job.select(Job.message_id).where(Job.id.in_(oldest)).order_by(Job.id)] \
            if oldest else []
    return Selection(ids, min(count, count_up_to), count > count_up_to, complete)


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
