"""The command families of ``watchtower``; importing this package registers them.

Each module adds its commands to :data:`watchtower.cli.cli`.
"""
from . import worker  # noqa: F401
from . import prune  # noqa: F401
from . import supervise  # noqa: F401
from . import jobs, serve, spool  # noqa: F401
from . import look, steer  # noqa: F401
