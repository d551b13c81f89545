"""The pool's bookkeeping, free of processes: worker options, restart backoff, slots.

A supervisor keeps one :class:`Slot` per worker it is responsible for: the
``min_processes`` slots of its pool, plus one per start request it accepted.
A slot outlives its processes: when its process dies the slot waits out a
backoff and spawns a new process, under a new worker id (each process has a
row of its own, so the history of a crash stays readable).  A process that
stops gracefully by itself (exit 0: the ``stop`` command) takes its slot
with it.

How long a slot waits is :class:`RestartPolicy`'s decision.  A process that
dies soon after it started counts as a failure in a row; a slot with a few
such failures in a row is *crash-looping* and its restarts slow down
exponentially, so that an app that cannot even be imported costs a few
process starts a minute instead of a fork bomb.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import IO, Any

from .config import SupervisorSettings
from .errors import WorkerError
from .options import WORKER_OPTIONS

__all__ = [
    "check_options",
    "check_queues",
    "worker_options",
    "new_worker_id",
    "RestartPolicy",
    "SlotKind",
    "Slot",
    "Child",
]

def check_options(options: Mapping[str, Any] | None) -> dict[str, int | float]:
    """``options`` checked against :data:`~watchtower.options.WORKER_OPTIONS`: known names, values in range.

    Raises WorkerError naming the option, the value and what is allowed.
    """
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise WorkerError(f"worker options must be a mapping of {', '.join(WORKER_OPTIONS)}, not {options!r}")
    checked: dict[str, int | float] = {}
    for name, value in options.items():
        option = WORKER_OPTIONS.get(name)
        if option is None:
            raise WorkerError(f"unknown worker option {name!r}: the options are {', '.join(WORKER_OPTIONS)}")
        problem = option.problem(value)
        if problem is not None:
            raise WorkerError(f"worker option {name!r} must be {problem}, not {value!r}")
        checked[name] = option.kind(value)
    return checked


def check_queues(queues: Any) -> tuple[str, ...]:
    """One queue name or a list of them, as a tuple; WorkerError if malformed."""
    if isinstance(queues, str):
        queues = [queues]
    if (
        not isinstance(queues, (list, tuple))
        or not queues
        or not all(isinstance(q, str) and q.strip() and len(q) <= 255 for q in queues)
    ):
        raise WorkerError(f"queue must be a queue name or a non-empty list of them, not {queues!r}")
    return tuple(q.strip() for q in queues)


def worker_options(
    supervisor: SupervisorSettings, options: Mapping[str, int | float] | None = None
) -> dict[str, int | float]:
    """The limits a worker of ``supervisor`` runs with: the pool's, overridden by ``options``."""
    merged: dict[str, int | float] = {name: getattr(supervisor, name) for name in WORKER_OPTIONS}
    merged.update(options or {})
    return merged


def new_worker_id(hostname: str, supervisor: str, number: int) -> str:
    """``<hostname>-<supervisor>-<n>-<random>``: unique across hosts and restarts."""
    # The worker id column holds 128 characters; host and supervisor names
    # are shortened rather than refused.
    return f"{hostname[:60]}-{supervisor[:48]}-{number}-{secrets.token_hex(3)}"


@dataclass(frozen=True, kw_only=True)
class RestartPolicy:
    """When a slot whose process died may start the next one.

    A process that lived less than ``quick`` seconds adds one to its slot's
    failures in a row; one that lived longer starts the count again at one.
    The first ``free`` failures in a row restart at once; after that the
    wait starts at ``initial`` seconds and grows by ``factor`` up to
    ``limit``.  From ``crashloop_after`` failures in a row the slot is
    crash-looping (its worker row says so).

    With the defaults an app that fails on import is started 3 times in its
    first seconds, then after waits of 1, 2, 4, 8, 16, 32 and 60 seconds:
    one start a minute once the first dozen are past.
    """

    quick: float = 10.0
    free: int = 2
    initial: float = 1.0
    factor: float = 2.0
    limit: float = 60.0
    crashloop_after: int = 3

    def failures_after(self, failures: int, lifetime: float) -> int:
        """The slot's failures in a row once a process that lived ``lifetime`` s has died."""
        return failures + 1 if lifetime < self.quick else 1

    def delay(self, failures: int) -> float:
        """Seconds to wait before the next start, after ``failures`` in a row."""
        if failures <= self.free:
            return 0.0
        return min(self.limit, self.initial * self.factor ** (failures - self.free - 1))

    def is_crashlooping(self, failures: int) -> bool:
        return failures >= self.crashloop_after


class SlotKind(Enum):
    """Why a slot exists: the pool's floor, or a start request."""

    POOL = "pool"
    REQUEST = "request"


@dataclass(eq=False)
class Child:
    """One running worker process of a slot."""

    worker_id: str
    popen: subprocess.Popen[bytes]
    started: float  # monotonic
    log: IO[bytes]  # the process's output, read back as it grows
    log_path: str
    tail: bytes = b""  # the last few KiB of its output, for the exit reason
    pending: bytes = b""  # output after its last newline, not yet copied
    kill_reason: str | None = None  # set when the supervisor killed it on purpose
    terminated: bool = False  # SIGTERM sent: a graceful stop the supervisor asked for

    @property
    def pid(self) -> int:
        return self.popen.pid

    def read_output(self, *, final: bool = False) -> bytes:
        """What it wrote since the last call, in whole lines (everything when ``final``)."""
        data = self.log.read()
        if data:
            self.tail = (self.tail + data)[-4096:]
        pending = self.pending + data
        cut = len(pending) if final else pending.rfind(b"\n") + 1
        self.pending = pending[cut:]
        return pending[:cut]

    def last_line(self) -> str | None:
        """The last non-empty line it wrote (often the error that killed it)."""
        for line in reversed(self.tail.decode("utf-8", "replace").splitlines()):
            if line.strip():
                return line.strip()[:500]
        return None


@dataclass(eq=False)
class Slot:
    """A place for one worker process, kept filled by the supervisor."""

    kind: SlotKind
    queues: tuple[str, ...]
    options: dict[str, int | float]
    next_id: str | None = None  # the id the next process takes (a start request names its own)
    child: Child | None = None
    failures: int = 0  # quick deaths in a row
    restarts: int = 0  # processes started after the first
    not_before: float = 0.0  # monotonic time of the next allowed start
    crashloop_row: str | None = None  # the dead worker row that shows the crash loop
    processes: int = 0  # processes it has started
