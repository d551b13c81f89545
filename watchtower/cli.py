"""The ``watchtower`` command: one Click group, one module per command family.

Settings are loaded here, once, from the file, the environment and the
flags, and passed down on the context object.  Every WatchtowerError becomes
one line on stderr and exit code 2 (bad settings or input, an app that
cannot be imported) or 1 (anything else Watchtower refused); a bad flag is
one line and exit code 2 too; a traceback means a bug.
"""

from __future__ import annotations

import logging
import sys

import click

from . import commands
from .commands.context import EXIT_FAILED, EXIT_USAGE, State, settings_from
from .errors import AppImportError, ConfigError, WatchtowerError

__all__ = ["main", "cli"]

@click.group()
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None,
              help="Settings file (default: WATCHTOWER_CONFIG, ./watchtower.toml or [tool.watchtower] "
                   "in ./pyproject.toml).")
@click.option("--database-url", default=None, help="The ledger's database URL (setting database_url).")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.version_option(package_name="dramatiq-watchtower", prog_name="watchtower")
@click.pass_context
def cli(ctx: click.Context, config: str | None, database_url: str | None, log_level: str) -> None:
    """Watchtower: supervise Dramatiq workers and keep a ledger of every job."""
    logging.basicConfig(
        level=getattr(logging, log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
        stream=sys.stderr,
    )
    ctx.obj = State(config, {"database_url": database_url})


def main() -> None:
    """Entry point of the console script: user errors become one line, not a traceback."""
    try:
        # Without standalone mode, click returns the code given to ctx.exit(code)
        # instead of raising Exit: pass it on to the process.
        code = cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(EXIT_FAILED)
    except click.UsageError as error:
        # One line, as every other error: the usage text is one --help away.
        command = error.ctx.command_path if error.ctx is not None else "watchtower"
        click.echo(f"Error: {error.format_message()} (see {command} --help)", err=True)
        sys.exit(error.exit_code)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except (ConfigError, AppImportError) as error:
        click.echo(f"Error: {error}", err=True)
        sys.exit(EXIT_USAGE)
    except WatchtowerError as error:
        click.echo(f"Error: {error}", err=True)
        sys.exit(EXIT_FAILED)
    except click.exceptions.Exit as exit_:
        sys.exit(exit_.exit_code)
    if isinstance(code, int) and not isinstance(code, bool) and code:
        sys.exit(code)


@cli.command("migrate")
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Create the ledger's tables if they are missing (also done on first use)."""
    from .store import SCHEMA_VERSION, connect

    settings = settings_from(ctx)
    connect(settings.database_url)
    click.echo(f"ledger ready at {settings.database_url} (schema version {SCHEMA_VERSION})")


for command in commands.ALL:
    cli.add_command(command)
