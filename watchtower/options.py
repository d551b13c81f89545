"""The worker options: the six limits a worker process runs with, each declared once.

A worker (``watchtower worker``, one ``dramatiq.Worker``) takes ``threads``,
``tries``, ``timeout``, ``memory``, ``sleep`` and ``rest``.  :data:`WORKER_OPTIONS`
below is the one place where each is written down: its name, its type, the
smallest and largest value anyone may give it, its default, its unit and what
it means (as Laravel Horizon's ``SupervisorOptions`` does).  Everything that
takes or passes these options derives from the table:

- the settings: a pool's keys and their types (``config.SUPERVISOR_KEYS``),
  their defaults (``config.SupervisorSettings``) and their range check;
- ``pool.check_options``: the options of ``WorkerManager.start_worker`` and
  of the start requests a supervisor finds in its inbox;
- the API's start request (``web.workers.start_request``) and the console's
  start form, which sends the same request;
- the flags of ``watchtower worker`` and ``watchtower supervise``
  (``commands.context.worker_option_flags``) and the worker's own check of
  those flags;
- the argv a supervisor starts a worker with (:func:`as_flags`), which the
  worker's flags parse back to the same values;
- the start request's schema in ``/openapi.json``.

The range is the same wherever a value comes from; 0 for ``timeout`` or
``memory`` means no limit.  A value out of range "must be from 1 to 256",
one of the wrong kind (a string, a fraction for a whole-number option)
"must be a whole number from 1 to 256", in every entry point's error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["WorkerOption", "WORKER_OPTIONS", "THREADS", "TRIES", "TIMEOUT", "MEMORY", "SLEEP", "REST", "as_flags"]

Number = TypeVar("Number", int, float)


@dataclass(frozen=True)
class WorkerOption(Generic[Number]):
    """One limit of a worker: ``--NAME VALUE`` on its command line, ``NAME`` in a pool's settings."""

    name: str
    kind: type[Number]
    smallest: Number
    largest: Number
    default: Number
    unit: str  # "seconds", "MB", or "" for a count
    help: str  # what it means, without its range or default

    @property
    def whole(self) -> bool:
        """Whether it takes whole numbers only."""
        return self.kind is int

    @property
    def flag(self) -> str:
        """The worker's command-line flag, ``--NAME``."""
        return f"--{self.name}"

    @property
    def metavar(self) -> str:
        """What the flag's value is, in ``--help``: ``N``, ``SECONDS`` or ``MB``."""
        return self.unit.upper() if self.unit else "N"

    @property
    def label(self) -> str:
        """The option as a form labels it: ``Timeout (seconds)``."""
        return self.name.capitalize() + (f" ({self.unit})" if self.unit else "")

    @property
    def bounds(self) -> str:
        """``from 1 to 256``: the range, as every error message says it."""
        return f"from {_text(self.smallest)} to {_text(self.largest)}"

    @property
    def help_text(self) -> str:
        """The flag's help: what it means, its range and its default."""
        return f"{self.help} ({self.bounds}, default {_text(self.default)})."

    def problem(self, value: Any) -> str | None:
        """What ``value`` must be instead, or None when it is right.

        The answer completes "must be ...": ``a whole number from 1 to 256``
        for a value of the wrong kind (a string, a boolean, a fraction for a
        whole-number option, NaN or infinity), ``from 1 to 256`` for a
        number out of range.
        """
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not numeric or (self.whole and not isinstance(value, int)) or not math.isfinite(value):
            return f"{'a whole number' if self.whole else 'a number'} {self.bounds}"
        if not self.smallest <= value <= self.largest:
            return self.bounds
        return None


THREADS = WorkerOption("threads", int, 1, 256, 8, "", "Worker threads per process")
TRIES = WorkerOption("tries", int, 1, 1000, 3, "", "Attempts per job; an actor's own max_retries wins")
TIMEOUT = WorkerOption(
    "timeout", float, 0.0, 7 * 24 * 3600.0, 60.0, "seconds",
    "A job's time limit, 0 for none; an actor's own time_limit wins",
)
MEMORY = WorkerOption(
    "memory", int, 0, 1024 * 1024, 128, "MB",
    "Recycle a worker past this resident memory, 0 for no limit; counted from its footprint after boot "
    "when that is already bigger",
)
SLEEP = WorkerOption("sleep", float, 0.0, 3600.0, 3.0, "seconds", "Longest wait between two looks at an empty queue")
REST = WorkerOption("rest", float, 0.0, 3600.0, 0.0, "seconds", "Pause of each thread after a job")

#: Every worker option by name, in the order forms and help list them.
WORKER_OPTIONS: dict[str, WorkerOption[Any]] = {
    option.name: option for option in (THREADS, TRIES, TIMEOUT, MEMORY, SLEEP, REST)
}


def _text(number: float) -> str:
    """``1048576`` or ``0.5``: a number as people write it (``:g`` would say ``1.04858e+06``)."""
    return str(int(number)) if float(number).is_integer() else repr(float(number))


def as_flags(values: Mapping[str, int | float]) -> list[str]:
    """``--NAME VALUE`` for each option in ``values`` (checked ones), as ``watchtower worker`` takes them."""
    flags: list[str] = []
    for name, option in WORKER_OPTIONS.items():
        if name in values:
            # repr: the shortest text that parses back to the same float.
            flags += [option.flag, repr(option.kind(values[name]))]
    return flags
