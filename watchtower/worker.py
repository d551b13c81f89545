"""One worker process: a Dramatiq worker plus its row, heartbeat, commands and limits.

``watchtower worker`` runs one :class:`WorkerProcess`: the user's app module
is imported (it sets the broker and declares the actors), WatchtowerMiddleware
is added if the app did not add it, ``process_boot`` is emitted (TimeLimit
starts its watchdog there), and a :class:`~watchtower.pausable.PausableWorker`
consumes the queues.  The main thread then loops every ``COMMAND_POLL``
seconds: it takes the commands sent to it since its last look from its queue
on the bus (``worker:<id>:commands``: stop, restart, pause, resume) and
applies them one after the other in the order sent, and it checks the
signals, the parent process and the memory limit.

The worker keeps its own row in the workers table (the middleware's own
registration is turned off): status ``running`` / ``paused`` / ``stopping`` /
``stopped``, a heartbeat every ``heartbeat_interval`` seconds with the job
counts and the resident memory, and on exit the exit code and reason.

Limits (flags of ``watchtower worker``, defaults from ``[supervisors.NAME]``;
their ranges and defaults are declared in :mod:`watchtower.options`):

- ``--tries N``: a job gets N attempts (Retries' default ``max_retries`` is
  N-1; an actor's or message's own ``max_retries`` wins);
- ``--timeout S``: TimeLimit's default limit, S seconds (0: none; an actor's
  own ``time_limit`` wins);
- ``--memory MB``: past this RSS the worker finishes the jobs in hand, gives
  back the rest and exits with :data:`EXIT_MEMORY` (0: no limit).  The
  limit cannot be below what the worker needs to exist: when the RSS
  measured right after boot (the app imported, no job run yet) is already
  above it, the worker says so once and keeps working, and recycles only
  when it grows by ``MB`` more (see :func:`recycle_threshold`);
- ``--sleep S``: the longest wait between two fetches of an empty queue;
- ``--rest S``: each thread rests S seconds after each job.

Pause gives back every message the worker holds (see
:mod:`watchtower.pausable`); resume takes up work again.  SIGTERM or SIGINT,
a ``stop`` command, or the death of ``--parent-pid`` stop it gracefully: no
new messages, the jobs in hand finish, the prefetched ones are requeued, the
ledger is written (within ``recorder.shutdown_timeout`` seconds of the stop's
start, counting the jobs' last moments; while the database is away, what is
unwritten goes to the recorder's spool at once), exit 0.  A ``restart``
command stops it the same way with :data:`EXIT_RESTART`, which asks whoever
runs it (its supervisor) for a fresh process at once.  A second
SIGTERM/SIGINT during that exits at once with :data:`EXIT_FAILED`.

Exit codes:

==  =========================================================================
0   graceful stop (signal, ``stop`` command, parent gone): stay stopped
1   unexpected failure, or killed by a second signal
2   bad arguments or settings, unknown supervisor, app module fails to import
3   reserved (earlier releases: the command bus could not be reached at start)
64  memory limit exceeded: recycled, a fresh process should take over
65  ``restart`` command: stopped gracefully, a fresh process should take over
==  =========================================================================

On code 2 the worker writes one ``Error: ...`` line to stderr and, if the
ledger's database is reachable and the worker id is known, its row gets
status ``stopped`` with the exit code and reason.

A command bus that does not answer at start is no reason to exit: the
worker logs a warning, runs its jobs, and takes its commands once the bus
answers.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass
from types import FrameType
from typing import Any

import dramatiq
import psutil
from dramatiq.middleware import Retries, TimeLimit

from .bus import CommandBus, WorkerCommand, worker_command_key
from .clock import now_ms
from .config import Settings, SupervisorSettings
from .dramatiq_internals import q_name, set_max_retries, set_time_limit
from .errors import BusError, ConfigError, WatchtowerError
from .events import ALIVE_AS, WorkerEvent
from .middleware import WatchtowerMiddleware
from .options import WORKER_OPTIONS
from .pausable import PausableWorker, install_idle_consumers
from .rescue import name_consumers
from .statuses import WorkerStatus

__all__ = [
    "WorkerOptions",
    "WorkerProcess",
    "resolve_options",
    "attach_middleware",
    "apply_limits",
    "record_failed_start",
    "recycle_threshold",
    "EXIT_OK",
    "EXIT_FAILED",
    "EXIT_USAGE",
    "EXIT_UNREACHABLE",
    "EXIT_MEMORY",
    "EXIT_RESTART",
]

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_MEMORY = 64
EXIT_RESTART = 65

#: Seconds between two looks at the bus, the signals and the parent.
COMMAND_POLL = 0.2
#: Seconds between two warnings that the bus cannot be read.
BUS_WARNING_INTERVAL = 30.0
_MB = 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class WorkerOptions:
    """The limits of one worker process, checked (their meaning, ranges and defaults: :mod:`watchtower.options`)."""

    queues: tuple[str, ...] | None  # None: every queue the app declares
    threads: int
    tries: int
    timeout: float
    memory: int
    sleep: float
    rest: float

    def as_row(self) -> dict[str, Any]:
        """The options as stored in the worker row's ``options`` JSON."""
        return {name: value for name, value in asdict(self).items() if name != "queues"}


def resolve_options(
    settings: Settings, supervisor: str | None, queues: tuple[str, ...], **flags: int | float | None
) -> WorkerOptions:
    """Flags first, then the supervisor's table (if one is named), then the defaults.

    ``flags`` are the worker options given on the command line (None: not
    given).  Raises ConfigError for an unknown supervisor or a flag out of
    its range; the settings' own values were checked when they were loaded.
    """
    base = settings.supervisor(supervisor) if supervisor else SupervisorSettings()
    values = {name: getattr(base, name) for name in WORKER_OPTIONS}
    for name, value in flags.items():
        if value is None:
            continue
        option = WORKER_OPTIONS[name]
        problem = option.problem(value)
        if problem is not None:
            raise ConfigError(f"{option.flag} must be {problem}, not {value!r}")
        values[name] = value
    chosen = tuple(queues) or (base.queues if supervisor else None)
    return WorkerOptions(queues=chosen, **values)


def attach_middleware(broker: dramatiq.Broker, settings: Settings, worker_id: str) -> WatchtowerMiddleware:
    """The app's WatchtowerMiddleware, or a new one added to ``broker``; set up for this worker."""
    for middleware in broker.middleware:
        if isinstance(middleware, WatchtowerMiddleware):
            break
    else:
        middleware = WatchtowerMiddleware(settings=settings, worker_id=worker_id, register_worker=False)
        broker.add_middleware(middleware)
    middleware.worker_id = worker_id
    middleware.register_worker = False  # the worker process keeps its own row
    return middleware


def apply_limits(broker: dramatiq.Broker, options: WorkerOptions) -> None:
    """Set Retries' and TimeLimit's defaults from ``--tries`` and ``--timeout``."""
    retries = [m for m in broker.middleware if isinstance(m, Retries)]
    for middleware in retries:
        set_max_retries(middleware, options.tries - 1)
    if not retries and options.tries > 1:
        logger.warning("the broker has no Retries middleware: --tries %d cannot apply", options.tries)
    limits = [m for m in broker.middleware if isinstance(m, TimeLimit)]
    for limit in limits:
        set_time_limit(limit, options.timeout * 1000 if options.timeout > 0 else float("inf"))
    if not limits and options.timeout > 0:
        logger.warning("the broker has no TimeLimit middleware: --timeout %s cannot apply", options.timeout)


def recycle_threshold(memory: int, boot_rss: int | None) -> int | None:
    """The RSS in bytes past which a worker recycles, or None for no limit.

    ``memory`` is the ``--memory`` limit in MB (0: none) and ``boot_rss`` the
    resident memory measured right after boot, before any job.  A worker
    that boots within the limit recycles past it.  One that is already over
    it (the app's import alone is bigger) would gain nothing by recycling:
    every fresh process would be as big, and the pool would crash-loop.  Its
    limit then counts from its footprint: it recycles once it has grown by
    ``memory`` MB past what it took to boot.
    """
    if not memory:
        return None
    limit = memory * _MB
    if boot_rss is None or boot_rss <= limit:
        return limit
    return boot_rss + limit


def record_failed_start(
    settings: Settings, worker_id: str, supervisor: str | None, code: int, reason: str
) -> None:
    """Best effort: mark the row of a worker that could not start as stopped, with why."""
    from . import store
    from .ledger import write_batch

    try:
        db = store.connect(settings.database_url)
        now = now_ms()
        write_batch(db, [], [WorkerEvent(worker_id, {
            "supervisor": supervisor,
            "hostname": settings.hostname,
            "pid": os.getpid(),
            "status": WorkerStatus.STOPPED,
            "stopped_at": now,
            "last_heartbeat": now,
            "exit_code": code,
            "exit_reason": reason[:2000],
        })])
        db.close()
    except Exception as error:
        logger.warning("cannot record the failed start of worker %s: %s", worker_id, error)


class WorkerProcess:
    """Runs one Dramatiq worker in this process until it is told to stop.

    Construct it with the app's broker (already imported), then call
    :meth:`run` from the main thread; it returns the exit code.
    """

    def __init__(
        self,
        *,
        broker: dramatiq.Broker,
        settings: Settings,
        options: WorkerOptions,
        worker_id: str,
        bus: CommandBus,
        supervisor: str | None = None,
        parent_pid: int | None = None,
    ) -> None:
        self.broker = broker
        self.settings = settings
        self.options = options
        self.worker_id = worker_id
        self.bus = bus
        self.supervisor = supervisor
        self.parent_pid = parent_pid
        self.command_key = worker_command_key(worker_id)
        self.middleware = attach_middleware(broker, settings, worker_id)
        self.recorder = self.middleware.recorder
        self.status = WorkerStatus.STARTING
        self.worker: PausableWorker | None = None
        self.rss: int | None = None
        self.boot_rss: int | None = None
        self._recycle_at: int | None = None  # bytes; None: no memory limit
        self._process = psutil.Process()
        self._parent = self._watch_parent(parent_pid)
        self._wake = threading.Event()
        self._signals: list[int] = []
        self._exit: tuple[int, str] | None = None
        self._memory_reason: str | None = None
        self._last_bus_warning = 0.0

    # Boot -----------------------------------------------------------------

    def _watch_parent(self, pid: int | None) -> psutil.Process | None:
        if pid is None:
            return None
        try:
            return psutil.Process(pid)
        except psutil.Error:
            raise ConfigError(f"--parent-pid {pid}: no such process") from None

    def boot(self) -> None:
        """Emit process_boot, write the row and start consuming (with the bus down, too)."""
        self._check_bus()
        apply_limits(self.broker, self.options)
        if self.parent_pid is not None:
            # Before the first fetch (see watchtower.rescue).  Only under a
            # supervisor, whose worker ids are unique: a process started by
            # hand may reuse an id (HOSTNAME-PID, a fixed --worker-id), and a
            # new process under a dead one's name would inherit its unacked
            # messages and keep the broker from ever taking them back.
            name_consumers(self.broker, self.worker_id)
        install_idle_consumers(self.broker)
        self.broker.emit_after("process_boot")
        queues = set(self.options.queues) if self.options.queues else None
        declared = {q_name(q) for q in self.broker.get_declared_queues()}
        for queue in sorted((queues or set()) - declared):
            logger.warning("queue %r is declared by no actor of the app: nothing will be consumed from it", queue)
        worker_timeout = max(10, int(self.options.sleep * 1000))
        self.worker = PausableWorker(
            self.broker,
            queues=queues,
            worker_timeout=worker_timeout,
            worker_threads=self.options.threads,
            rest=self.options.rest,
        )
        options = self.options.as_row()
        options.update(self._measure_footprint())
        started = now_ms()
        self.recorder.record_worker(WorkerEvent(self.worker_id, {
            "supervisor": self.supervisor,
            "hostname": self.settings.hostname,
            "pid": os.getpid(),
            "queues": json.dumps(sorted(queues or declared)),
            "options": json.dumps(options),
            "status": WorkerStatus.RUNNING,
            "started_at": started,
            "last_heartbeat": started,
            "stopped_at": None,
            "exit_code": None,
            "exit_reason": None,
            "jobs_processed": 0,
            "jobs_failed": 0,
        }))
        self.status = WorkerStatus.RUNNING
        self.recorder.every(self.settings.heartbeat_interval or 1.0, self._heartbeat)
        self.worker.start()
        logger.info(
            "worker %s consuming %s with %d threads",
            self.worker_id, ", ".join(sorted(queues or declared)) or "nothing", self.options.threads,
        )

    def _measure_footprint(self) -> dict[str, int]:
        """Measure the RSS after boot and set the recycle threshold; what the row shows of it (MB)."""
        self.boot_rss = self.rss = self._measure_rss()
        self._recycle_at = recycle_threshold(self.options.memory, self.boot_rss)
        limit = self.options.memory
        if self.boot_rss is None:
            return {}
        boot_mb = round(self.boot_rss / _MB)
        if self._recycle_at is not None and self._recycle_at > limit * _MB:
            logger.warning(
                "worker %s takes %d MB right after boot, before any job: more than its memory limit of %d MB, "
                "so recycling cannot help; it keeps working and recycles only past %d MB (%d MB more)",
                self.worker_id, boot_mb, limit, round(self._recycle_at / _MB), limit,
            )
        recycle_mb = round(self._recycle_at / _MB) if self._recycle_at is not None else 0
        return {"memory_at_boot": boot_mb, "memory_recycle_at": recycle_mb}

    def _measure_rss(self) -> int | None:
        try:
            return int(self._process.memory_info().rss)
        except psutil.Error:
            return None

    def _check_bus(self) -> None:
        """Say so if the command bus does not answer; the worker runs without it meanwhile.

        Exiting would cost its pool a process for as long as the bus is
        down (its supervisor would restart it into the same outage), and
        jobs need only the broker.  No command can be sent meanwhile (the
        API answers 503); the loop reads the bus as usual and takes the
        commands sent once it is back.
        """
        try:
            self.bus.ping()
        except BusError as error:
            self._last_bus_warning = time.monotonic()
            logger.warning("worker %s starts without its commands: %s; it takes them once the bus answers",
                           self.worker_id, error)

    # The loop -------------------------------------------------------------

    def run(self) -> int:
        """Boot, obey until told to stop, shut down; returns the exit code."""
        self._install_signal_handlers()
        try:
            self.boot()
        except WatchtowerError:
            raise  # a user error: one line and its exit code, from the command
        except Exception:
            logger.exception("worker %s failed to start", self.worker_id)
            self._exit = (EXIT_FAILED, "failed to start (see its log)")
            return self._shutdown()
        try:
            while self._exit is None:
                self._wake.wait(COMMAND_POLL)
                self._wake.clear()
                self._check_signals()
                self._check_parent()
                self._check_memory()
                if self._exit is None:
                    self._poll_command()
        except Exception:
            logger.exception("worker %s failed", self.worker_id)
            self._exit = (EXIT_FAILED, "unexpected error in the worker's loop (see its log)")
        return self._shutdown()

    def request_stop(self, code: int, reason: str) -> None:
        """Ask the loop to stop with ``code`` (the first request wins)."""
        if self._exit is None:
            self._exit = (code, reason)
            self._wake.set()

    def _install_signal_handlers(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            # Only record it: the loop acts (a handler must not block on locks).
            if self._exit is not None and self.status == WorkerStatus.STOPPING:
                logger.warning("second %s while stopping: exiting now", signal.Signals(signum).name)
                os._exit(EXIT_FAILED)
            self._signals.append(signum)
            self._wake.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def _check_signals(self) -> None:
        if self._signals:
            name = signal.Signals(self._signals[-1]).name
            logger.info("worker %s received %s: stopping", self.worker_id, name)
            self.request_stop(EXIT_OK, f"signal: {name}")

    def _check_parent(self) -> None:
        parent = self._parent
        if parent is None:
            return
        gone = not parent.is_running()
        if not gone:
            try:
                gone = parent.status() == psutil.STATUS_ZOMBIE
            except psutil.Error:
                gone = True
        if gone:
            logger.warning("worker %s: parent process %d is gone: stopping", self.worker_id, parent.pid)
            self.request_stop(EXIT_OK, f"parent process {parent.pid} is gone")

    def _check_memory(self) -> None:
        if self._memory_reason is not None:
            logger.warning("worker %s recycles: %s", self.worker_id, self._memory_reason)
            self.request_stop(EXIT_MEMORY, self._memory_reason)

    def _poll_command(self) -> None:
        """Apply every command sent since the last look, in the order sent."""
        try:
            values = self.bus.pop_all(self.command_key)
        except BusError as error:
            now = time.monotonic()
            if now - self._last_bus_warning >= BUS_WARNING_INTERVAL:
                self._last_bus_warning = now
                logger.warning("worker %s cannot read its commands: %s", self.worker_id, error)
            return
        for value in values:
            if self._exit is not None:
                logger.info("worker %s is stopping: ignores the command %s", self.worker_id, value)
                continue
            self._apply_command(value)

    def _apply_command(self, value: str) -> None:
        try:
            command = WorkerCommand(value)
        except ValueError:
            logger.warning("worker %s ignores the unknown command %r", self.worker_id, value)
            return
        logger.info("worker %s received the command %s", self.worker_id, command.value)
        match command:
            case WorkerCommand.STOP:
                self.request_stop(EXIT_OK, "command: stop")
            case WorkerCommand.RESTART:
                self.request_stop(EXIT_RESTART, "command: restart")
            case WorkerCommand.PAUSE:
                self.pause()
            case WorkerCommand.RESUME:
                self.resume()

    # Actions --------------------------------------------------------------

    def pause(self) -> None:
        """Give back every message held (after the jobs in hand) and stop consuming."""
        if self.worker is None or self.status != WorkerStatus.RUNNING:
            logger.info("worker %s is %s: nothing to pause", self.worker_id, self.status)
            return
        given_back = self.worker.release(timeout=self._stop_timeout_ms())
        self._set_status(WorkerStatus.PAUSED)
        logger.info("worker %s paused (%d prefetched messages given back)", self.worker_id, len(given_back))

    def resume(self) -> None:
        """Take up work again after :meth:`pause`."""
        if self.worker is None or self.status != WorkerStatus.PAUSED:
            logger.info("worker %s is %s: nothing to resume", self.worker_id, self.status)
            return
        self.worker.take_up()
        self._set_status(WorkerStatus.RUNNING)
        logger.info("worker %s resumed", self.worker_id)

    def _set_status(self, status: str, **fields: Any) -> None:
        self.status = status
        self.recorder.record_worker(WorkerEvent(self.worker_id, {"status": status, **fields}))

    def _stop_timeout_ms(self) -> int:
        # Long enough for a job that runs to its time limit, and then some.
        return int(max(600.0, self.options.timeout + 30.0) * 1000)

    def _heartbeat(self) -> None:
        """Runs on the recorder's thread: heartbeat, counts, memory (and its limit)."""
        self.rss = self._measure_rss()
        fields: dict[str, object] = self.middleware.worker_counts()
        fields["memory_rss"] = self.rss
        fields[ALIVE_AS] = self.status  # a row wrongly marked lost comes back with it
        self.recorder.record_worker(WorkerEvent(self.worker_id, fields))
        threshold, limit = self._recycle_at, self.options.memory
        if threshold is not None and self.rss is not None and self.rss > threshold and self._memory_reason is None:
            if threshold == limit * _MB:
                self._memory_reason = f"memory: RSS {self.rss / _MB:.0f} MB > limit {limit} MB"
            else:
                self._memory_reason = (
                    f"memory: RSS {self.rss / _MB:.0f} MB > {threshold / _MB:.0f} MB "
                    f"(limit {limit} MB past the {(self.boot_rss or 0) / _MB:.0f} MB it took to boot)"
                )
            self._wake.set()

    def _shutdown(self) -> int:
        code, reason = self._exit or (EXIT_OK, "")
        # One budget for the ledger's writes from here to the exit (this
        # wait, the middleware's at worker shutdown, the recorder's close).
        self.recorder.begin_shutdown()
        self._set_status(WorkerStatus.STOPPING)
        if self.worker is not None:
            try:
                self.worker.stop(timeout=self._stop_timeout_ms())
            except Exception:
                logger.exception("worker %s did not stop cleanly", self.worker_id)
                code = code or EXIT_FAILED
        fields: dict[str, object] = self.middleware.worker_counts()
        fields.update(
            status=WorkerStatus.STOPPED, stopped_at=now_ms(), exit_code=code, exit_reason=reason or None,
            memory_rss=self.rss,
        )
        self.recorder.record_worker(WorkerEvent(self.worker_id, fields))
        if not self.recorder.flush(timeout=self.recorder.shutdown_remaining()):
            # The recorder's close at exit puts them in the spool (and says so).
            stats = self.recorder.stats()
            logger.warning(
                "worker %s stops with %d ledger events unwritten (the database is away or slow): they go "
                "to the spool, for the next process on this host", self.worker_id, stats.buffered + stats.spooled,
            )
        for close in (self.broker.close, self.bus.close):
            try:
                close()
            except Exception:
                logger.debug("closing %r failed", close, exc_info=True)
        logger.info("worker %s stopped (exit code %d%s)", self.worker_id, code, f": {reason}" if reason else "")
        return code
