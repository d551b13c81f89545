"""``watchtower prune``: delete old job records (and old rollups and worker records)."""

from __future__ import annotations

import sys

import click
import peewee

from ..errors import DatabaseUnavailable
from ..retention import Retention, plan, prune
from ..store import connect, redact_url
from .context import settings_from

__all__ = ["prune_command"]


@click.command("prune")
@click.option("--completed", "completed_days", type=float, default=None, metavar="DAYS",
              help="Keep completed jobs this many days (setting retention.completed_days, default 7).")
@click.option("--failed", "failed_days", type=float, default=None, metavar="DAYS",
              help="Keep failed jobs this many days (setting retention.failed_days, default 30).")
@click.option("--skipped", "skipped_days", type=float, default=None, metavar="DAYS",
              help="Keep skipped jobs this many days (setting retention.skipped_days, default 30).")
@click.option("--all", "all_jobs", is_flag=True,
              help="Delete every job record, whatever its status or age (asks first).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before --all.")
@click.option("--dry-run", is_flag=True, help="Show what would be deleted and delete nothing.")
@click.pass_context
def prune_command(
    ctx: click.Context,
    completed_days: float | None,
    failed_days: float | None,
    skipped_days: float | None,
    all_jobs: bool,
    yes: bool,
    dry_run: bool,
) -> None:
    """Delete finished jobs older than their retention, old rollups and old worker records.

    Pending and processing jobs are never pruned by age.  Deletion runs in
    short batches, so workers keep recording meanwhile, and stopping it
    halfway leaves a consistent ledger.
    """
    if all_jobs and any(days is not None for days in (completed_days, failed_days, skipped_days)):
        raise click.UsageError(
            "--all deletes every job record: it cannot be combined with --completed, --failed or --skipped"
        )
    settings = settings_from(ctx, **{
        "retention.completed_days": completed_days,
        "retention.failed_days": failed_days,
        "retention.skipped_days": skipped_days,
    })
    retention = Retention.from_settings(settings)
    db = connect(settings.database_url)
    try:
        _prune(db, retention, all_jobs=all_jobs, yes=yes, dry_run=dry_run)
    except peewee.DatabaseError as error:
        reason = " ".join(str(error).split())
        raise DatabaseUnavailable(
            f"prune stopped by the ledger database {redact_url(settings.database_url)}: {reason} "
            "(what was deleted stays deleted; run it again to finish)"
        ) from error
    finally:
        db.close()


def _prune(db: peewee.Database, retention: Retention, *, all_jobs: bool, yes: bool, dry_run: bool) -> None:
    """Count, ask, prune, summarise."""
    show_progress = sys.stderr.isatty()
    # Counting first costs an index scan: only for what needs the count.
    planned = plan(db, retention, all_jobs=all_jobs) if dry_run or all_jobs or show_progress else None
    if planned is not None and dry_run:
        click.echo(planned.summary())
        return
    if planned is not None and all_jobs and not yes:
        _confirm_all(planned.jobs_total)
    if planned is not None and planned.jobs_total and show_progress:
        with click.progressbar(length=planned.jobs_total, label="pruning jobs", file=sys.stderr) as bar:
            result = prune(db, retention, all_jobs=all_jobs, progress=bar.update)
    else:
        result = prune(db, retention, all_jobs=all_jobs)
    click.echo(result.summary())


def _confirm_all(count: int) -> None:
    """Ask on the terminal before deleting every job; refuse without one."""
    if not sys.stdin.isatty():
        raise click.ClickException(
            f"--all would delete all {count} job records and needs a confirmation: "
            "run it on a terminal, or add --yes"
        )
    if not click.confirm(f"Delete all {count} job records (every status)?", default=False):
        click.echo("Nothing deleted.", err=True)
        raise click.Abort()
