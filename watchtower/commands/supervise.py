"""``watchtower supervise [APP]``: run one supervisor's pool of workers until SIGTERM.

The flags speak Dramatiq's language: ``watchtower supervise tasks -p 2 -t 3
-Q default -Q emails`` runs what ``dramatiq tasks -p 2 -t 3 -Q default
emails`` runs, with no configuration file.  ``-p N`` is a fixed pool of N
processes (``min_processes`` and ``max_processes`` both N, whatever the
file says); ``--min-processes`` and ``--max-processes`` set each alone.
Every pool flag overrides the same key of the file and the environment
(``supervisors.NAME.KEY``).
"""

from __future__ import annotations

import io
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import IO

import click
import psutil

from ..config import Settings, as_text, env_name, pool_key, value_of
from ..errors import ConfigError, WatchtowerError
from .context import State, import_path_option, settings_from, worker_option_flags

__all__ = ["supervise", "worker_environment"]

logger = logging.getLogger(__name__)


@click.command("supervise")
@click.argument("app_arg", metavar="[APP]", required=False)
@click.option("--processes", "-p", type=click.IntRange(min=1), default=None, metavar="N",
              help="A pool of N worker processes (sets min_processes and max_processes; default 1).")
@click.option("--queues", "-Q", multiple=True, metavar="QUEUE",
              help="A queue to consume (repeatable, or comma-separated; default: the pool's, 'default').")
@click.option("--supervisor", "name", default="default", show_default=True,
              help="The pool to run: [supervisors.NAME] of the configuration, or a new one made from these flags.")
@click.option("--min-processes", type=int, default=None, metavar="N", help="Worker processes kept running.")
@click.option("--max-processes", type=int, default=None, metavar="N",
              help="Worker processes at most, with those started on request.")
@partial(worker_option_flags, short={"threads": "-t"})
@click.option("--app", "app_option", default=None, help="The same as APP (setting app).")
@import_path_option
@click.option("--watch", "watch", multiple=True, metavar="DIR", type=click.Path(exists=True, file_okay=False),
              help="Reload the workers when a Python file under DIR changes (development; repeatable; "
                   "needs the watch extra).")
@click.option("--pid-file", type=click.Path(dir_okay=False), default=None,
              help="Write the supervisor's pid to this file (refused while it names a live process).")
@click.option("--log-file", type=click.Path(dir_okay=False), default=None,
              help="Append the supervisor's and its workers' logs to this file instead of stderr.")
@click.pass_context
def supervise(
    ctx: click.Context,
    app_arg: str | None,
    processes: int | None,
    queues: tuple[str, ...],
    name: str,
    min_processes: int | None,
    max_processes: int | None,
    app_option: str | None,
    paths: tuple[str, ...],
    watch: tuple[str, ...],
    pid_file: str | None,
    log_file: str | None,
    **limits: int | float | None,
) -> None:
    """Run a pool of worker processes for APP: start, watch, restart and clean up after them.

    APP is the module that sets the broker and declares the actors
    (``tasks``, ``myapp.tasks`` or ``myapp.tasks:broker``), imported from
    the current directory (or --path).  SIGTERM or SIGINT stops every worker
    gracefully (each finishes its jobs in hand) and exits 0; SIGHUP (and
    --watch) starts the workers afresh with the current code.
    """
    from ..app import add_import_paths
    from ..supervisor import Supervisor

    if app_arg and app_option and app_arg != app_option:
        raise click.UsageError(f"APP {app_arg!r} and --app {app_option!r} differ: give one of them")
    if processes is not None and (min_processes is not None or max_processes is not None):
        raise click.UsageError("-p sets both min_processes and max_processes: give it alone, "
                               "or --min-processes and --max-processes")
    pool = {
        "min_processes": processes if processes is not None else min_processes,
        "max_processes": processes if processes is not None else max_processes,
        "queues": _queue_names(queues),
        **limits,
    }
    settings = settings_from(ctx, app=app_arg or app_option,
                             **{pool_key(name, key): value for key, value in pool.items()})
    settings.supervisor(name)  # an unknown name is a one-line error before anything starts
    if watch:
        from ..reload import require_watchfiles

        require_watchfiles()
    output = _log_to(log_file) if log_file else None
    import_paths = add_import_paths(paths)
    state = ctx.find_object(State)
    supervisor = Supervisor(
        settings, name=name, env=worker_environment(settings, state.config if state else None),
        output=output, import_paths=import_paths,
    )
    with _pid_file(pid_file):
        watcher = None
        if watch:
            from ..reload import CodeWatcher

            watcher = CodeWatcher(watch, lambda changed: supervisor.request_reload())
            watcher.start()
        try:
            code = supervisor.run()
        finally:
            if watcher is not None:
                watcher.stop()
        if supervisor.reload_requested:
            _start_afresh()
    ctx.exit(code)


def _queue_names(given: tuple[str, ...]) -> list[str] | None:
    """``-Q a -Q b,c`` as ``[a, b, c]`` (None when no -Q was given)."""
    if not given:
        return None
    names = [part.strip() for value in given for part in value.split(",")]
    if not all(names):
        raise click.BadParameter("a queue name must not be empty", param_hint="'-Q' / '--queues'")
    return names


def _start_afresh() -> None:
    """Run this very command again in this process (SIGHUP, --watch): the new workers import the new code."""
    logger.info("starting afresh: %s", " ".join(sys.orig_argv))
    logging.shutdown()  # flush the log file before the process image is replaced
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def _log_to(path: str) -> IO[bytes]:
    """Send the log (and the workers' output, through the returned file) to ``path``, appended."""
    try:
        stream = open(os.path.abspath(path), "ab")
    except OSError as error:
        raise ConfigError(f"--log-file {path!r} cannot be opened: {error.strerror}") from None
    text = io.TextIOWrapper(stream, encoding="utf-8", errors="backslashreplace", write_through=True,
                            line_buffering=True)
    root = logging.getLogger()
    for handler in root.handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setStream(text)
    return stream


@contextmanager
def _pid_file(path: str | None) -> Iterator[None]:
    """Write this process's pid to ``path`` for as long as the block runs; refuse a live one's file."""
    if path is None:
        yield
        return
    path = os.path.abspath(path)
    try:
        with open(path) as handle:
            text = handle.read().strip()
    except FileNotFoundError:
        text = ""
    except OSError as error:
        raise WatchtowerError(f"the pid file {path} cannot be read: {error.strerror}") from None
    other = int(text) if text.isdigit() else 0
    # The same pid is this process started afresh (SIGHUP, --watch).
    if other and other != os.getpid() and psutil.pid_exists(other):
        raise WatchtowerError(
            f"the pid file {path} names process {other}, which is running (another supervisor?); "
            "stop it, or remove the file if that process is not a supervisor"
        )
    try:
        with open(f"{path}.tmp", "w") as handle:
            handle.write(f"{os.getpid()}\n")
        os.replace(f"{path}.tmp", path)
    except OSError as error:
        raise WatchtowerError(f"the pid file {path} cannot be written: {error.strerror}") from None
    try:
        yield
    finally:
        try:
            with open(path) as handle:
                if handle.read().strip() == str(os.getpid()):
                    os.unlink(path)
        except OSError:
            pass


def worker_environment(settings: Settings, config: str | None) -> dict[str, str]:
    """This process's environment plus what makes a worker load the same settings.

    The workers are started with ``python -m watchtower``: they find the same
    file (passed by path) and get the command line's settings (a pool's
    flags too) as the ``WATCHTOWER_*`` variables of the same keys.
    """
    env = dict(os.environ)
    if config is not None:
        env["WATCHTOWER_CONFIG"] = os.path.abspath(config)
    for key, source in settings.sources.items():
        if source.startswith("command line"):
            env[env_name(key)] = as_text(value_of(settings, key))
    return env
