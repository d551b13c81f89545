"""``watchtower spool``: what waits in this host's spool for the ledger, and writing it now."""

from __future__ import annotations

import json

import click
import peewee

from ..errors import DatabaseUnavailable
from ..recorder import Recorder
from ..spool import describe, spool_directory
from ..store import redact_url
from .context import settings_from

__all__ = ["spool_command"]


@click.command("spool")
@click.option("--replay", is_flag=True, help="Write the spools of processes that are gone into the ledger now.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def spool_command(ctx: click.Context, replay: bool, as_json: bool) -> None:
    """List the spool files on this host for the configured ledger (events that wait for its database).

    Workers and producers write the spools of processes that died by
    themselves; ``--replay`` does it at once, for a host that no process
    will record on again (one being taken down).  Files of processes that
    still run are theirs and are left alone.
    """
    settings = settings_from(ctx)
    directory = spool_directory(settings.recorder_spool_dir, settings.database_url)
    written = None
    if replay:
        recorder = Recorder(settings.database_url, spool_dir=directory, batch_size=settings.recorder_batch_size)
        try:
            written = recorder.replay_spools()
        except (peewee.PeeweeException, DatabaseUnavailable, OSError) as error:
            raise DatabaseUnavailable(
                f"cannot write the spool into the ledger {redact_url(settings.database_url)}: "
                f"{' '.join(str(error).split())} (what was written stays written; run it again)"
            ) from error
    files = describe(directory)
    if as_json:
        click.echo(json.dumps({"directory": str(directory), "files": files, "written": written}))
        return
    if written is not None:
        click.echo(f"wrote {written} events from the spools of processes that are gone")
    if not files:
        click.echo(f"nothing waits in {directory}")
    for entry in files:
        state = "in use by its process" if entry["in_use"] else "its process is gone"
        click.echo(f"{entry['path']}: {entry['bytes']} bytes waiting ({state})")
