"""The job routes: list and show jobs, list, retry and delete failed jobs.

What a list holds, how it pages and how a search matches are the
functions of :mod:`watchtower.views`, which the command line shares.
"""

from __future__ import annotations

from typing import Any

import falcon

from .. import views
from ..errors import JobConflict, JobNotFound
from ..models import Job, JobStatus
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


def _find(services: Services, raw_id: str) -> Job:
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
        resp.media = job_detail(_find(self.services, job_id), self.services)


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
        job = _find(self.services, job_id)
        if job.status != JobStatus.FAILED:
            raise JobConflict(f"job {job.message_id} is {job.status}: only failed jobs can be deleted here")
        Job.delete().where((Job.id == job.id) & (Job.status == JobStatus.FAILED)).execute()
        resp.media = {"id": job.message_id, "deleted": True}


class RetryResource:
    """``POST /failed/{id}/retry``: enqueue the failed job's message again as a new, linked job."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def on_post(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        from ..retry import retry_failed

        message_id = params.job_id(job_id)
        self.services.ledger()
        # Check the job before loading the app, so that an unknown id is a
        # 404 even where the app's broker cannot be loaded.
        if Job.find(message_id, Job.id) is None:
            raise JobNotFound(f"no job has the id {message_id!r}")
        result = retry_failed(message_id, broker=self.services.broker())
        resp.status = falcon.HTTP_202
        resp.media = {
            "id": result.new_id,
            "retried_from": result.failed_id,
            "queue": result.queue,
            "actor": result.actor,
            "dead_letter_removed": result.dead_letter_removed,
        }
