"""What every ``watchtower`` command shares: the settings on the click context, exit codes, ``--path``,
the worker options' flags.

The root group (:mod:`watchtower.cli`) puts a :class:`State` on the context;
each command loads its settings through :func:`settings_from`, with its own
flags on top.  The command modules import this module, never the root group,
which adds them (``cli.add_command``): the group depends on its commands,
not the other way round.
"""

from __future__ import annotations

from typing import Any

import click

from ..config import Settings, load_settings
from ..options import WORKER_OPTIONS

__all__ = ["EXIT_FAILED", "EXIT_USAGE", "State", "settings_from", "import_path_option", "worker_option_flags"]

#: Exit codes: 0 ok, 1 refused or failed, 2 bad configuration or input.
EXIT_FAILED = 1
EXIT_USAGE = 2


class State:
    """What the root group hands to every command."""

    def __init__(self, config: str | None, overrides: dict[str, Any]) -> None:
        self.config = config
        self.overrides = overrides
        self._settings: Settings | None = None

    def settings(self, **more: Any) -> Settings:
        """The settings, with this command's own flags applied on top."""
        if more:
            return load_settings(self.config, overrides={**self.overrides, **more})
        if self._settings is None:
            self._settings = load_settings(self.config, overrides=self.overrides)
        return self._settings


def settings_from(ctx: click.Context, **more: Any) -> Settings:
    """Load the settings for a command (its flags given as dotted keys in ``more``)."""
    return ctx.ensure_object(State).settings(**more) if ctx.obj else load_settings(overrides=more)


def import_path_option(command: Any) -> Any:
    """``--path DIR`` / ``-P DIR`` (repeatable), as Dramatiq's: where the app is imported from."""
    return click.option(
        "--path", "-P", "paths", multiple=True, metavar="DIR", type=click.Path(file_okay=False),
        help="Put DIR first on sys.path to import the app (repeatable; default: the current directory).",
    )(command)


def worker_option_flags(command: Any, *, short: dict[str, str] | None = None) -> Any:
    """A ``--NAME`` flag for each worker option (``short`` adds aliases such as ``{"threads": "-t"}``).

    Each flag has its option's type, and is None when not given (the
    settings fill it in).  Its range is checked by whoever takes the value
    (the settings, the worker), so that a value out of range gets the one
    message of :mod:`watchtower.options` and says where it came from.
    """
    for option in reversed(WORKER_OPTIONS.values()):
        aliases = [short[option.name]] if short and option.name in short else []
        command = click.option(
            option.flag, *aliases, option.name, type=option.kind, default=None, metavar=option.metavar,
            help=option.help_text,
        )(command)
    return command
