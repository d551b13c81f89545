"""Looking at a terminal: ``watchtower jobs``, ``failed``, ``show ID`` and ``status``.

Each prints a table for people, or with ``--json`` the same document the
API answers (``GET /jobs``, ``GET /failed``, ``GET /jobs/{id}``; ``status``
has no route: its shape is :mod:`watchtower.status`'s).  Nothing here
imports the web layer: the rows become dicts in :mod:`watchtower.views`.
"""

from __future__ import annotations

import json
from typing import Any

import click

from ..config import Settings
from ..errors import JobNotFound
from ..statuses import JobStatus
from ..views import MAX_PAGE, MAX_PER_PAGE, MAX_SEARCH, PER_PAGE, SEARCH_WINDOW
from .context import import_path_option, settings_from
from .output import age, echo_json, table

__all__ = ["jobs", "failed", "show", "status"]


def _ledger(settings: Settings) -> Any:
    from ..store import connect

    return connect(settings.database_url)


def _list_options(command: Any) -> Any:
    """The API's list filters as flags: --queue, --search, --page, --limit, --before, --json."""
    for option in reversed([
        click.option("--queue", default=None, help="Only the jobs of this queue."),
        click.option("--search", default=None,
                     help=f"Text in the actor's name or the arguments (the {SEARCH_WINDOW:,} newest jobs that pass "
                          "the other filters)."),
        click.option("--page", type=click.IntRange(1, MAX_PAGE), default=1, show_default=True,
                     help="Page number (from --before, when given)."),
        click.option("--limit", type=click.IntRange(1, MAX_PER_PAGE), default=PER_PAGE, show_default=True,
                     help="Jobs per page (the API's per_page)."),
        click.option("--before", type=click.IntRange(min=1), default=None, metavar="CURSOR",
                     help="Go on below this cursor (the next page's, printed after a full page)."),
        click.option("--json", "as_json", is_flag=True, help="The page as the API answers it (one JSON document)."),
    ]):
        command = option(command)
    return command


def _page(ctx: click.Context, status: str | None, queue: str | None, search: str | None, page: int, limit: int,
          before: int | None) -> dict[str, Any]:
    from ..redact import Redactor
    from ..views import list_jobs

    if search is not None and len(search) > MAX_SEARCH:
        raise click.BadParameter(f"at most {MAX_SEARCH} characters, not {len(search)}", param_hint="'--search'")
    settings = settings_from(ctx)
    _ledger(settings)
    return list_jobs(Redactor(settings.redact), status=status, queue=queue, search=search or None, page=page,
                     per_page=limit, before=before)


def _print_page(answer: dict[str, Any], *, failed: bool, command: str) -> None:
    rows = answer["data"]
    if not rows:
        click.echo("no failed jobs" if failed else "no jobs")
    elif failed:
        table(("ID", "QUEUE", "ACTOR", "ATTEMPTS", "FAILED", "RETRIED BY"), [
            (job["id"], job["queue"], job["actor"], job["attempts"], age(job["completed_at"]), job["retried_by"])
            for job in rows
        ])
    else:
        table(("ID", "QUEUE", "ACTOR", "STATUS", "ATTEMPTS", "QUEUED", "DURATION", "WORKER"), [
            (job["id"], job["queue"], job["actor"], job["status"], job["attempts"], age(job["queued_at"]),
             None if job["duration"] is None else f"{job['duration']:.3g}s", job["worker_id"])
            for job in rows
        ])
    if answer["has_more"]:
        click.echo(f"more: {command} --before {answer['next_cursor']}", err=True)
    if answer.get("search_complete") is False:
        click.echo(f"the search looked through the {answer['search_window']:,} newest jobs only", err=True)


@click.command("jobs")
@click.option("--status", type=click.Choice(JobStatus.ALL), default=None, help="Only the jobs in this status.")
@_list_options
@click.pass_context
def jobs(ctx: click.Context, status: str | None, queue: str | None, search: str | None, page: int, limit: int,
         before: int | None, as_json: bool) -> None:
    """List jobs, newest first, with the API's filters (GET /jobs)."""
    answer = _page(ctx, status, queue, search, page, limit, before)
    if as_json:
        echo_json(answer)
        return
    _print_page(answer, failed=False, command="watchtower jobs")


@click.command("failed")
@_list_options
@click.pass_context
def failed(ctx: click.Context, queue: str | None, search: str | None, page: int, limit: int, before: int | None,
           as_json: bool) -> None:
    """List failed jobs, newest first (GET /failed); retry one with watchtower retry ID."""
    answer = _page(ctx, JobStatus.FAILED, queue, search, page, limit, before)
    if as_json:
        echo_json(answer)
        return
    _print_page(answer, failed=True, command="watchtower failed")


@click.command("show")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="The record as the API answers it (GET /jobs/{id}).")
@click.pass_context
def show(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Show one job's whole record: its message (redacted), its times and its last traceback."""
    from ..models import Job
    from ..redact import Redactor
    from ..views import job_detail

    settings = settings_from(ctx)
    _ledger(settings)
    job = Job.find(job_id)
    if job is None:
        raise JobNotFound(f"no job has the id {job_id!r}")
    detail = job_detail(job, Redactor(settings.redact))
    if as_json:
        echo_json(detail)
        return
    duration = detail["duration"]
    fields = [
        ("id", detail["id"]),
        ("queue", detail["queue"]),
        ("actor", detail["actor"]),
        ("status", detail["status"]),
        ("attempts", f"{detail['attempts']}"
         + (f" ({detail['lost_attempts']} lost)" if detail["lost_attempts"] else "")),
        ("worker", detail["worker_id"]),
        *((name, f"{detail[name]} ({age(detail[name])})" if detail[name] else None)
          for name in ("queued_at", "eta", "started_at", "completed_at")),
        ("duration", None if duration is None else f"{duration:.3f} s"),
        ("retried_from", detail["retried_from"]),
        ("retried_by", detail["retried_by"]),
        ("broker_message_id", detail["broker_message_id"]),
    ]
    payload = detail["payload"] or {}
    if detail["payload_readable"]:
        fields += [(name, json.dumps(payload.get(name), ensure_ascii=False)) for name in ("args", "kwargs", "options")]
    else:
        fields.append(("payload", "not stored" if detail["payload"] is None else "not readable by this process"))
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        click.echo(f"{name.ljust(width)}  {'-' if value is None else value}")
    if detail["exception"]:
        click.echo("exception:")
        click.echo(detail["exception"].rstrip())


@click.command("status")
@click.option("--app", "app_module", default=None,
              help="Module that sets your broker (setting app): the broker's queue depths are shown too.")
@import_path_option
@click.option("--json", "as_json", is_flag=True, help="The report as one JSON document (see watchtower.status).")
@click.pass_context
def status(ctx: click.Context, app_module: str | None, paths: tuple[str, ...], as_json: bool) -> None:
    """Per host and supervisor, the workers by status and the jobs failed in the last hour; per queue, the depths."""
    from ..status import status_report

    settings = settings_from(ctx, app=app_module)
    db = _ledger(settings)
    depths, error = _broker_depths(settings, paths) if settings.app else (None, None)
    report = status_report(db, depths=depths, broker_error=error)
    if as_json:
        echo_json(report)
        return
    _print_status(report, settings)


def _broker_depths(settings: Settings, paths: tuple[str, ...]) -> tuple[dict[str, dict[str, int]] | None, str | None]:
    """The broker's queue depths, or None and why not (an app that cannot be imported is an error)."""
    from ..app import add_import_paths, load_app
    from ..scrape import queue_depths_for

    add_import_paths(paths)
    broker = load_app(settings.app)
    reader = queue_depths_for(broker)
    if reader is None:
        return None, f"queue depths cannot be read from a {type(broker).__name__}"
    try:
        return reader.depths(), None
    except Exception as error:  # the broker is down: the ledger's numbers are still worth showing
        return None, f"the broker did not answer: {type(error).__name__}: {' '.join(str(error).split())}"[:300]


def _print_status(report: dict[str, Any], settings: Settings) -> None:
    pools = report["supervisors"]
    if not pools:
        click.echo("no workers")
    for pool in pools:
        counts = ", ".join(f"{count} {name}" for name, count in pool["workers"].items() if count) or "no workers"
        who = f"supervisor {pool['supervisor']}" if pool["supervisor"] else "no supervisor"
        click.echo(f"{pool['hostname'] or '?'}  {who}: {counts}; "
                   f"{pool['failed_last_hour']} jobs failed in the last hour")
    click.echo()
    broker = report["broker"]
    queues = report["queues"]
    if queues:
        table(("QUEUE", "READY", "DELAYED", "DEAD", "PENDING", "PROCESSING", "DONE/1H", "FAILED/1H"), [
            (q["queue"], *((q["broker"] or {}).get(state) for state in ("ready", "delayed", "dead")),
             q["pending"], q["processing"], q["completed_last_hour"], q["failed_last_hour"])
            for q in queues
        ])
    else:
        click.echo("no queues seen yet")
    if broker["error"]:
        click.echo(f"READY, DELAYED, DEAD: {broker['error']}", err=True)
    elif not broker["read"]:
        click.echo("READY, DELAYED, DEAD come from the broker: give --app (or set app)", err=True)
    stats = report["jobs"]
    click.echo()
    click.echo(
        f"jobs: {stats['pending']} pending, {stats['processing']} processing, {stats['completed']} completed, "
        f"{stats['failed']} failed, {stats['skipped']} skipped; last hour: {stats['completed_last_hour']} completed, "
        f"{stats['failed_last_hour']} failed"
    )
