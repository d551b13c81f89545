"""``watchtower worker``: run one worker process (see :mod:`watchtower.worker`)."""

from __future__ import annotations

import os

import click

from ..errors import AppImportError, BusError, ConfigError, DatabaseUnavailable, WatchtowerError
from .context import import_path_option, settings_from, worker_option_flags


@click.command("worker")
@click.argument("queues", nargs=-1)
@click.option("--app", "app", default=None,
              help="The app module that sets the broker and declares the actors (setting app).")
@click.option("--worker-id", default=None, help="This worker's id (default HOSTNAME-PID).")
@click.option("--supervisor", default=None,
              help="The supervisor this worker belongs to; its [supervisors.NAME] gives the defaults.")
@worker_option_flags
@click.option("--parent-pid", type=int, default=None, help="Stop when this process is gone (the supervisor).")
@click.option("--hostname", default=None, help="The host name to record (setting hostname).")
@import_path_option
@click.pass_context
def worker(
    ctx: click.Context,
    queues: tuple[str, ...],
    app: str | None,
    worker_id: str | None,
    supervisor: str | None,
    parent_pid: int | None,
    hostname: str | None,
    paths: tuple[str, ...],
    **limits: int | float | None,
) -> None:
    """Run one Dramatiq worker process for QUEUES (default: the app's or the supervisor's queues).

    The limits (--threads ... --rest) default to the supervisor's, or to
    the defaults shown when no --supervisor is given.

    Exit codes: 0 stopped gracefully, 1 failed, 2 bad arguments or app import
    failure, 64 recycled past --memory, 65 stopped gracefully by the restart
    command (start it again).  A command bus that does not answer is waited
    for: the worker runs its jobs meanwhile.
    """
    from ..app import add_import_paths, load_app
    from ..bus import open_bus
    from ..worker import (
        EXIT_FAILED,
        EXIT_UNREACHABLE,
        EXIT_USAGE,
        WorkerProcess,
        record_failed_start,
        resolve_options,
    )

    settings = None
    try:
        settings = settings_from(ctx, app=app, hostname=hostname)
        worker_id = worker_id or f"{settings.hostname}-{os.getpid()}"
        options = resolve_options(settings, supervisor, queues, **limits)
        _share_settings(ctx)
        add_import_paths(paths)
        broker = load_app(settings.app)
        process = WorkerProcess(
            broker=broker,
            settings=settings,
            options=options,
            worker_id=worker_id,
            bus=open_bus(settings),
            supervisor=supervisor,
            parent_pid=parent_pid,
        )
        code = process.run()
    except WatchtowerError as error:
        match error:
            case ConfigError() | AppImportError():
                code = EXIT_USAGE
            case BusError() | DatabaseUnavailable():
                code = EXIT_UNREACHABLE
            case _:
                code = EXIT_FAILED
        click.echo(f"Error: {error}", err=True)
        if settings is not None and worker_id:
            record_failed_start(settings, worker_id, supervisor, code, str(error))
    ctx.exit(code)


def _share_settings(ctx: click.Context) -> None:
    """Hand the root options to the app's own WatchtowerMiddleware, which loads settings itself.

    The app module builds its middleware on import with ``load_settings()``:
    without this, ``--config`` and ``--database-url`` would reach the worker
    but not the ledger writer inside the app.
    """
    state = ctx.find_root().obj
    config = getattr(state, "config", None)
    if config:
        os.environ["WATCHTOWER_CONFIG"] = os.path.abspath(config)
    database_url = (getattr(state, "overrides", None) or {}).get("database_url")
    if database_url:
        os.environ["WATCHTOWER_DATABASE_URL"] = database_url
