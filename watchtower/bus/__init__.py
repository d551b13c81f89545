"""The command bus: how supervisors, the API and workers tell each other what to do.

Two kinds of entries live on it:

- a **value** per key, with a time to live (the seed's ``put`` / ``get`` /
  ``forget``);
- a **list** per key (``push`` / ``pop_all``), drained atomically so that
  of two takers racing for it each entry goes to exactly one, and an entry
  pushed during a drain waits for the next one.  Two kinds of lists: a
  worker's commands at ``worker:<id>:commands`` (the plain strings of
  :class:`WorkerCommand`, applied in the order sent), and a supervisor's
  inbox at ``supervisor:<name>:inbox`` (start requests).

Each entry of a list has its own time to live: an entry nobody took within
``ttl`` seconds is gone, like a value.

Drivers: :class:`~watchtower.bus.redis.RedisCommandBus` and
:class:`~watchtower.bus.database.DatabaseCommandBus`, chosen by the
``command_bus`` setting through :func:`open_bus`.  Every driver raises
:class:`~watchtower.errors.BusError` (one line, naming the bus) when its
server cannot be reached.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import Settings

__all__ = [
    "CommandBus",
    "WorkerCommand",
    "open_bus",
    "worker_command_key",
    "supervisor_inbox_key",
    "DEFAULT_TTL",
    "COMMAND_TTL",
]

#: Seconds an entry lives when no ``ttl`` is given (the seed's default).
DEFAULT_TTL = 300
#: Seconds a worker command waits for its worker.  Longer than the worker
#: can be busy applying the previous one (a pause waits for the jobs in hand
#: to finish, up to their time limit), so that none expires in the queue;
#: short enough that commands to a worker that never came do not pile up.
COMMAND_TTL = 24 * 3600


class WorkerCommand(str, Enum):
    """The commands a worker obeys; the bus carries their values (``"stop"``...).

    ``stop``: finish the jobs in hand and exit for good (a supervisor does
    not replace it); ``restart``: the same graceful exit, and its supervisor
    starts a fresh process in its place at once; ``pause`` / ``resume``.
    """

    STOP = "stop"
    RESTART = "restart"
    PAUSE = "pause"
    RESUME = "resume"


@runtime_checkable
class CommandBus(Protocol):
    """What every command bus driver provides.  Keys and values are strings."""

    def put(self, key: str, value: str, ttl: float = DEFAULT_TTL) -> None:
        """Set ``key`` to ``value`` for ``ttl`` seconds (replacing what was there)."""

    def get(self, key: str) -> str | None:
        """The value of ``key``, or None if it is missing or expired."""

    def forget(self, key: str) -> None:
        """Delete ``key`` (nothing happens if it is missing)."""

    def push(self, key: str, value: str, ttl: float = DEFAULT_TTL) -> None:
        """Append ``value`` to the list at ``key``; the entry lives ``ttl`` seconds."""

    def pop_all(self, key: str) -> list[str]:
        """Take every live entry of the list at ``key``, oldest first.

        Atomic: of several callers racing for one list, each entry goes to
        exactly one of them, and none is lost.
        """

    def ping(self) -> None:
        """Return if the bus answers; raise BusError saying why not."""

    def close(self) -> None:
        """Release the bus's connections (it reconnects if used again)."""


def worker_command_key(worker_id: str) -> str:
    """The list from which the worker ``worker_id`` takes its commands, in the order sent.

    A list (``push`` / ``pop_all``), not one value read and then deleted: a
    command sent between the read and the delete would be lost, and of two
    quick commands only the last would be seen.
    """
    return f"worker:{worker_id}:commands"


def supervisor_inbox_key(name: str) -> str:
    """The list a supervisor called ``name`` drains for requests (start a worker...)."""
    return f"supervisor:{name}:inbox"


def open_bus(settings: Settings) -> CommandBus:
    """The bus that ``settings.command_bus`` names, not yet connected."""
    if settings.command_bus == "redis":
        from .redis import RedisCommandBus

        return RedisCommandBus(url=settings.redis_url, prefix=settings.redis_prefix)
    if settings.command_bus == "database":
        from .database import DatabaseCommandBus

        return DatabaseCommandBus(database=settings.database_url)
    raise ConfigError(f"setting 'command_bus' must be database or redis, not {settings.command_bus!r}")
