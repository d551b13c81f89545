"""Jobs and workers at a terminal: ``watchtower retry`` and ``watchtower workers``."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import click

from ..errors import JobConflict
from .context import import_path_option, settings_from

__all__ = ["retry", "workers"]


@click.command("retry")
@click.argument("job_id", required=False)
@click.option("--all-failed", is_flag=True, help="Retry every failed job not retried yet (oldest first).")
@click.option("--queue", default=None, help="With --all-failed: only the failed jobs of this queue.")
@click.option("--app", "app_module", default=None, help="Module that sets your broker (setting app).")
@import_path_option
@click.pass_context
def retry(
    ctx: click.Context, job_id: str | None, all_failed: bool, queue: str | None, app_module: str | None,
    paths: tuple[str, ...],
) -> None:
    """Enqueue failed job JOB_ID again (or every failed job) as a new job linked to it."""
    from ..app import add_import_paths, load_app
    from ..retry import retry_failed, retryable_failed_ids
    from ..store import connect

    if bool(job_id) == all_failed:
        raise click.UsageError("give either a JOB_ID or --all-failed")
    if queue is not None and not all_failed:
        raise click.UsageError("--queue goes with --all-failed")
    settings = settings_from(ctx, app=app_module)
    connect(settings.database_url)
    add_import_paths(paths)
    broker = load_app(settings.app)
    if job_id:
        result = retry_failed(job_id, broker=broker)
        click.echo(f"{result.failed_id} -> {result.new_id} ({result.actor} on {result.queue})")
        return
    ids = retryable_failed_ids(queue=queue)
    retried = skipped = 0
    for message_id in ids:
        try:
            result = retry_failed(message_id, broker=broker)
        except JobConflict as error:  # retried meanwhile, or no stored message
            click.echo(f"skipped: {error}", err=True)
            skipped += 1
            continue
        click.echo(f"{result.failed_id} -> {result.new_id} ({result.actor} on {result.queue})")
        retried += 1
    where = f" of queue {queue}" if queue else ""
    click.echo(f"retried {retried} failed jobs{where}" + (f", skipped {skipped}" if skipped else ""), err=True)


def _age(value: datetime | None) -> str:
    if value is None:
        return "-"
    seconds = max(0.0, (datetime.now(UTC) - value).total_seconds())
    return f"{seconds:.0f}s ago" if seconds < 120 else f"{seconds / 60:.0f}m ago"


@click.command("workers")
@click.option("--all", "show_all", is_flag=True, help="Also list stopped and lost workers.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per worker instead of a table.")
@click.pass_context
def workers(ctx: click.Context, show_all: bool, as_json: bool) -> None:
    """List the workers: id, supervisor, host, pid, status, queues, heartbeat, jobs."""
    from ..manager import WorkerManager
    from ..views import worker_record

    manager = WorkerManager(settings_from(ctx))
    rows = manager.get_all_workers() if show_all else manager.get_running_workers()
    if as_json:
        for row in rows:
            click.echo(json.dumps(worker_record(row)))
        return
    if not rows:
        click.echo("no workers" if show_all else "no live workers (--all lists stopped ones too)")
        return
    header = ("ID", "SUPERVISOR", "HOST", "PID", "STATUS", "QUEUES", "HEARTBEAT", "PROCESSED", "FAILED")
    table = [header]
    for row in rows:
        table.append((
            row.worker_id,
            row.supervisor or "-",
            row.hostname or "-",
            str(row.pid or "-"),
            row.status,
            ",".join(row.get_queues()) or "-",
            _age(row.last_heartbeat),
            str(row.jobs_processed),
            str(row.jobs_failed),
        ))
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
