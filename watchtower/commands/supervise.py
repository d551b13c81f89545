"""``watchtower supervise``: run one supervisor's pool of workers until SIGTERM."""

from __future__ import annotations

import os

import click

from ..cli import State, cli, settings_from
from ..config import Settings, as_text, env_name, value_of

__all__ = ["supervise"]


@cli.command("supervise")
@click.option("--supervisor", "name", default="default", show_default=True,
              help="The [supervisors.NAME] table of the configuration to run.")
@click.option("--app", default=None, help="The module that sets the broker and declares the actors (setting app).")
@click.pass_context
def supervise(ctx: click.Context, name: str, app: str | None) -> None:
    """Run a pool of worker processes: start, watch, restart and clean up after them.

    SIGTERM or SIGINT stops every worker gracefully (each finishes its jobs in
    hand) and exits 0.
    """
    from ..supervisor import Supervisor

    settings = settings_from(ctx, app=app)
    settings.supervisor(name)  # an unknown name is a one-line error before anything starts
    state = ctx.find_object(State)
    supervisor = Supervisor(settings, name=name, env=worker_environment(settings, state.config if state else None))
    ctx.exit(supervisor.run())


def worker_environment(settings: Settings, config: str | None) -> dict[str, str]:
    """This process's environment plus what makes a worker load the same settings.

    The workers are started with ``python -m watchtower``: they find the same
    file (passed by path) and get the command line's settings as the
    ``WATCHTOWER_*`` variables of the same keys.
    """
    env = dict(os.environ)
    if config is not None:
        env["WATCHTOWER_CONFIG"] = os.path.abspath(config)
    for key, source in settings.sources.items():
        if source.startswith("command line"):
            env[env_name(key)] = as_text(value_of(settings, key))
    return env
