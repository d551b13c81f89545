"""The supervisor: keeps one pool of worker processes running, healthy and obedient.

``watchtower supervise --supervisor NAME`` runs one :class:`Supervisor`.  Its
control flow is Horizon's: one loop in the main thread, and signal handlers
that only *record* a pending signal for the loop to act on.  Each pass
(every ``TICK`` seconds):

1. acts on a recorded SIGTERM/SIGINT: every worker gets SIGTERM, and the
   loop waits for them (their longest job time limit plus a margin) before
   it kills what is left;
2. reaps exited workers: records the exit code and reason on their rows,
   returns the jobs they held to pending as lost, puts the messages they
   held back on their queues at once (dead-lettering the jobs lost
   ``max_lost`` times: see :mod:`watchtower.rescue`), and schedules a
   restart with :class:`~watchtower.pool.RestartPolicy`'s backoff, except
   for a worker that stopped gracefully by itself (exit 0: the ``stop``
   command, a signal someone else sent it), whose slot goes; one that exits
   for a ``restart`` command is replaced at once, as no failure;
3. every second, reads its workers' heartbeats and kills a worker that is
   alive but silent past ``heartbeat_timeout`` (it is then replaced);
4. drains its inbox on the command bus for start requests;
5. starts what is missing up to ``min_processes`` (plus accepted requests,
   up to ``max_processes``);
6. every few seconds, marks lost the stale worker records of any host and
   supervisor (idempotently: see :func:`watchtower.records.clean_stale_workers`),
   and puts the messages those workers held back as in 2;
   with ``retention.auto``, it also starts a prune in a thread of its own when
   one is due (one supervisor at a time: see :mod:`watchtower.retention.auto`); every
   few minutes it marks ``unknown`` the jobs with no news for
   ``unknown_after`` seconds (see :mod:`watchtower.stuck`).

The processes are managed without the ledger: when its database is down,
workers are still reaped and restarted, a dead worker's messages still go
back to their queues (without the poison check, which needs the ledger's
counts), and the row updates wait in a queue until it is back
(:mod:`watchtower.ledger_queue`).  Heartbeats (steps 3 and 6) are judged only
once the workers have had time to write again after the ledger came back
(see :class:`~watchtower.records.HeartbeatGrace`).  Workers are started in
sessions of their own, so a terminal's Ctrl-C reaches only the supervisor,
which then stops them in order; each worker also watches the supervisor's
pid and stops when it is gone (after a ``kill -9`` of the supervisor).

This module is the loop and its decisions.  The processes themselves are
:mod:`watchtower.process_pool`'s (Horizon's ProcessPool), the slots and the
restart backoff :mod:`watchtower.pool`'s, the row updates that wait for the
ledger :mod:`watchtower.ledger_queue`'s, and the metrics directory and HTTP
server it runs :mod:`watchtower.supervisor_server`'s.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import IO, Any

import peewee

from . import metric_listeners, records, store
from .app import find_app
from .bus import CommandBus, open_bus, supervisor_inbox_key
from .clock import now_ms
from .config import Settings
from .errors import DatabaseUnavailable, WatchtowerError, WorkerError
from .ledger_queue import DeferredLedger
from .models import Job, Worker
from .oom import OomCounter
from .options import as_flags
from .pool import (
    Child,
    RestartPolicy,
    Slot,
    SlotKind,
    check_options,
    check_queues,
    worker_options,
)
from .process_pool import ProcessPool
from .rescue import Rescuer
from .retention import AutoPruner
from .startlog import start_block
from .statuses import WorkerStatus
from .stuck import UnknownMarker
from .supervisor_server import SupervisorServer
from .worker import EXIT_MEMORY, EXIT_OK, EXIT_RESTART

__all__ = ["Supervisor", "check_app", "TICK"]

logger = logging.getLogger(__name__)

#: Seconds between two passes of the loop.
TICK = 0.1
#: Seconds between two reads of the workers' heartbeats, and of the inbox.
HEARTBEAT_CHECK_EVERY = 1.0
INBOX_EVERY = 0.5
#: Seconds between two cleanups of stale records (at most; less when heartbeat_timeout is short).
CLEANUP_EVERY = 15.0
#: Added to the longest job time limit when waiting for workers to stop.
SHUTDOWN_MARGIN = 30.0
#: Assumed job time limit when a worker has none (timeout 0).
UNLIMITED_JOB_WAIT = 60.0
#: Seconds the supervisor keeps trying to write its last row updates when it exits.
FINAL_WRITE_WAIT = 10.0


def check_app(spec: str | None) -> str:
    """The module named by the ``app`` setting, if it can be found (it is not imported).

    Whether it imports cleanly is the workers' business: an app that raises
    on import makes them crash-loop, which the supervisor shows.
    """
    return find_app(spec)


class Supervisor:
    """Runs the pool that ``settings.supervisor(name)`` declares.

    Keyword-only: ``name`` of the supervisor; ``bus`` and ``database``
    ready-made (opened from the settings otherwise); ``env``, the
    environment for the workers (the CLI passes the config file and its
    flags down this way; default: this process's); ``policy``, the restart
    backoff; ``clock``, monotonic seconds; ``output``, where the workers'
    output is copied (this process's stderr by default); ``import_paths``,
    the directories the workers put first on ``sys.path`` for the app
    (``watchtower worker --path``; default: their working directory, which
    is this process's).

    SIGHUP, or :meth:`request_reload`, stops every worker as SIGTERM does and
    sets :attr:`reload_requested`: ``watchtower supervise`` then starts
    itself afresh, in the same process, as ``dramatiq`` does on SIGHUP.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        name: str = "default",
        bus: CommandBus | None = None,
        database: peewee.Database | None = None,
        env: Mapping[str, str] | None = None,
        policy: RestartPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        output: IO[bytes] | None = None,
        tick: float = TICK,
        import_paths: Sequence[str] = (),
    ) -> None:
        self.settings = settings
        self.name = name
        self.config = settings.supervisor(name)  # ConfigError naming the known ones
        self.hostname = settings.hostname
        self.policy = policy or RestartPolicy()
        self.clock = clock
        self.tick = tick
        self._bus = bus
        self._db = database
        self._pool = ProcessPool(name=name, hostname=self.hostname, command=self._command,
                                 env=dict(os.environ if env is None else env), output=output)
        self._import_paths = tuple(import_paths)
        self.reload_requested = False
        self._signals: list[int] = []
        self._stopping = False
        self._deadline: float | None = None
        self._heartbeat_grace = records.HeartbeatGrace(settings.heartbeat_timeout, clock())
        self._ledger = DeferredLedger(name, clock=clock, on_answer=self._ledger_answered, on_outage=self._ledger_away)
        self._due = {"heartbeats": 0.0, "inbox": 0.0, "cleanup": 0.0}
        self._last_warning: dict[str, float] = {}
        self._server: SupervisorServer | None = None
        self._pruner: AutoPruner | None = None
        self._rescuer: Rescuer | None = None
        # Dead workers whose messages wait for their exit to be recorded
        # (the poison check needs the ledger): worker id -> its queues.
        self._unrescued: dict[str, tuple[str, ...]] = {}
        self._oom = OomCounter()
        self._unknown = UnknownMarker(self.settings.unknown_after, clock=self.clock)

    # The outside world ----------------------------------------------------

    @property
    def bus(self) -> CommandBus:
        if self._bus is None:
            self._bus = open_bus(self.settings)
        return self._bus

    def check(self) -> None:
        """Refuse to start with a clear error: app missing, ledger or bus unreachable."""
        check_app(self.settings.app)
        if self._db is None:
            self._db = store.connect(self.settings.database_url)
        self.bus.ping()

    def children(self) -> dict[str, int]:
        """Worker id -> pid of the processes running now."""
        return self._pool.children()

    # The loop -------------------------------------------------------------

    def run(self) -> int:
        """Run until SIGTERM or SIGINT, then stop every worker; returns the exit code (0)."""
        self.check()
        assert self._db is not None
        server = self._server = SupervisorServer.start(self.settings, name=self.name, database=self._db)
        self._pool.env.update(server.env())
        # After the metrics: the app the rescuer imports may add a middleware
        # that sets up this process's metrics, which must stay in memory here.
        self._rescuer = Rescuer(app=self.settings.app, max_lost=self.settings.max_lost, clock=self.clock)
        self._rescuer.start()
        handled = [signal.SIGTERM, signal.SIGINT]
        if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # under nohup a hangup stays ignored
            handled.append(signal.SIGHUP)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        try:
            self._pool.open()
            self._pruner = AutoPruner(self.settings, owner=f"{self.hostname}/{self.name}/{os.getpid()}", db=self._db)
            self._heartbeat_grace = records.HeartbeatGrace(self.settings.heartbeat_timeout, self.clock())
            self._pool.slots = [
                Slot(kind=SlotKind.POOL, queues=self.config.queues, options=worker_options(self.config))
                for _ in range(self.config.min_processes)
            ]
            logger.info("%s", start_block(
                self.settings, self.config, pid=os.getpid(), metrics_url=self.metrics_url,
                api_url=server.api_url, api_refusal=server.api_refusal,
            ))
            while not (self._stopping and not self.children()):
                self._pass()
                time.sleep(self.tick)
            self._finish()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._pool.close()  # only after a bug does a worker still run here
            server.stop()
            if self._pruner is not None:
                self._pruner.close()  # a prune in progress stops after its batch
        logger.info("supervisor %s stopped", self.name)
        return 0

    def _on_signal(self, signum: int, frame: Any) -> None:
        # Only recorded: the loop acts on it between two passes.
        self._signals.append(signum)

    def request_reload(self) -> None:
        """Stop every worker gracefully and return from :meth:`run` to be started afresh (as SIGHUP does).

        Safe to call from any thread (``--watch`` calls it from its watcher).
        Once the supervisor is stopping it does nothing: a second SIGHUP
        would kill the workers, as a second SIGTERM does.
        """
        if not self._stopping:
            self._signals.append(signal.SIGHUP)

    def _pass(self) -> None:
        now = self.clock()
        while self._signals:
            self._on_stop_signal(self._signals.pop(0), now)
        self._reap(now)
        if self._rescuer is not None:
            self._rescuer.tick()  # the broker only: also while the ledger is down
        if self._stopping:
            if self._deadline is not None and now >= self._deadline:
                self._pool.kill_all(f"still running {self._grace():g} s after SIGTERM")
                self._deadline = None
            self._ledger.run(now)
            return
        if now >= self._due["heartbeats"]:
            self._due["heartbeats"] = now + HEARTBEAT_CHECK_EVERY
            self._guarded("heartbeats", self._check_heartbeats, now)
        if now >= self._due["inbox"]:
            self._due["inbox"] = now + INBOX_EVERY
            self._guarded("inbox", self._drain_inbox)
        for slot in self._pool.slots:
            if slot.child is None and now >= slot.not_before:
                self._spawn(slot, now)
        if now >= self._due["cleanup"]:
            self._due["cleanup"] = now + min(CLEANUP_EVERY, self.settings.heartbeat_timeout)
            self._guarded("cleanup", self._housekeeping)
            if self._server is not None:
                self._server.fold_producers(skip=set(self.children().values()))
        self._ledger.run(now)

    def _guarded(self, what: str, step: Callable[..., None], *args: Any) -> None:
        """Run a housekeeping step; its failure is logged, never fatal to the pool."""
        if what != "inbox" and not self._ledger.available(self.clock()):
            return
        try:
            step(*args)
            if what != "inbox":
                self._heartbeat_grace.answered(self.clock())
        except (peewee.PeeweeException, DatabaseUnavailable) as error:
            self._ledger.failed(what, error)
        except WatchtowerError as error:  # the bus
            self._warn(what, "supervisor %s: %s failed: %s", self.name, what, error)
        except Exception:
            logger.exception("supervisor %s: %s failed", self.name, what)

    def _warn(self, key: str, message: str, *args: Any) -> None:
        """Log a repeated warning at most every 30 s."""
        now = self.clock()
        if now - self._last_warning.get(key, -1e9) >= 30.0:
            self._last_warning[key] = now
            logger.warning(message, *args)

    # Starting workers -----------------------------------------------------

    def _spawn(self, slot: Slot, now: float) -> None:
        worker_id = self._pool.next_worker_id(slot)
        try:
            child = self._pool.start(slot, worker_id, now)
        except OSError as error:
            slot.failures += 1
            slot.not_before = now + max(1.0, self.policy.delay(slot.failures))
            logger.error("supervisor %s cannot start a worker: %s", self.name, error)
            self._ledger.defer("spawn failure", partial(
                records.record_refusal, worker_id, supervisor=self.name, hostname=self.hostname, queues=slot.queues,
                why=f"cannot start the process: {error}",
            ))
            return
        logger.info("started worker %s (pid %d) for %s", worker_id, child.pid, ", ".join(slot.queues))
        self._ledger.defer("register", partial(
            records.register_process, worker_id, supervisor=self.name, hostname=self.hostname, pid=child.pid,
            queues=slot.queues, options=slot.options, restarts=slot.restarts,
        ))

    def _command(self, worker_id: str, slot: Slot) -> list[str]:
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        root = ["--log-level", level] if level in ("DEBUG", "INFO", "WARNING", "ERROR") else []
        command = [
            sys.executable, "-m", "watchtower", *root, "worker", *slot.queues,
            "--app", str(self.settings.app),
            "--worker-id", worker_id,
            "--supervisor", self.name,
            "--hostname", self.hostname,
            "--parent-pid", str(os.getpid()),
        ]
        for path in self._import_paths:
            command += ["--path", path]
        return command + as_flags(slot.options)

    # Watching workers -----------------------------------------------------

    def _reap(self, now: float) -> None:
        for slot, child, code in self._pool.reap():
            self._on_exit(slot, child, code, now)

    def _on_exit(self, slot: Slot, child: Child, code: int, now: float) -> None:
        lifetime = now - child.started
        if self._server is not None:
            self._server.mark_dead(child.pid)
        # A worker that chose to exit (stop or restart) did not fail, however young.
        chosen = code in (EXIT_OK, EXIT_RESTART) and child.kill_reason is None
        slot.failures = 0 if chosen else self.policy.failures_after(slot.failures, lifetime)
        crashlooping = not self._stopping and self.policy.is_crashlooping(slot.failures)
        delay = self.policy.delay(slot.failures)
        oom = code == -signal.SIGKILL and self._oom.rose()
        reason = child.kill_reason or _describe_exit(code, child.last_line(), oom=oom)
        prefix = ""
        if crashlooping:
            status = WorkerStatus.CRASHLOOPING
            prefix = (
                f"crash-looping: {slot.failures} exits in a row within {self.policy.quick:g} s of start, "
                f"next start in {delay:g} s; last: "
            )
        else:
            status = WorkerStatus.LOST if code < 0 else WorkerStatus.STOPPED
        log = logger.info if chosen or child.terminated else logger.warning
        log("worker %s (pid %d) exited after %.1f s: %s%s", child.worker_id, child.pid, lifetime, prefix, reason)
        own_words = code >= 0 and child.kill_reason is None  # it exited by itself: it may have said why
        self._unrescued[child.worker_id] = slot.queues
        ledger_now = self._ledger.caught_up(now)
        self._ledger.defer("exit", partial(
            self._record_exit, child.worker_id, slot.queues, code=code, status=status, reason=reason,
            prefix=prefix, own_words=own_words,
        ))
        if not ledger_now:
            self._rescue_without_ledger()
        # Exit 0 means "stopped, stay stopped": its slot goes, even a pool slot
        # (then the pool runs below min_processes until asked for a worker).
        retire = self._stopping or code == EXIT_OK
        if crashlooping:
            if slot.crashloop_row not in (None, child.worker_id):
                self._ledger.defer("retire", partial(records.retire_crashloop, slot.crashloop_row))
            slot.crashloop_row = child.worker_id
        if retire:
            self._pool.slots.remove(slot)
            if slot.crashloop_row is not None:
                self._ledger.defer("retire", partial(records.retire_crashloop, slot.crashloop_row))
            if not self._stopping and len(self._pool.slots) < self.config.min_processes:
                logger.warning(
                    "supervisor %s: worker %s stopped and is not replaced: %d workers run, below min_processes %d, "
                    "until a start request or a restart of the supervisor",
                    self.name, child.worker_id, len(self._pool.slots), self.config.min_processes,
                )
        else:
            slot.not_before = now + delay
            metric_listeners.record_restart(self.name, _restart_reason(code, child))

    def _record_exit(self, worker_id: str, queues: tuple[str, ...], **how: Any) -> None:
        jobs = records.record_exit(worker_id, **how)
        metric_listeners.record_lost(jobs)
        if jobs:
            logger.warning("returned %d jobs of worker %s to pending as lost", len(jobs), worker_id)
        self._unrescued.pop(worker_id, None)
        if self._rescuer is not None:
            self._rescuer.rescue(worker_id, queues, jobs, last_exit=how["reason"])

    def _rescue_without_ledger(self) -> None:
        """Put back the messages of the dead workers whose exit the ledger has not taken yet."""
        if self._rescuer is None:
            return
        for worker_id, queues in list(self._unrescued.items()):
            self._rescuer.put_back(worker_id, queues)  # kept for a later try if the broker is away too
            del self._unrescued[worker_id]

    def _rescue_stale(self, row: Worker, jobs: list[Job]) -> None:
        if self._rescuer is not None:
            self._rescuer.rescue_stale(row, jobs, threshold=self.settings.heartbeat_timeout, hostname=self.hostname)

    def _check_heartbeats(self, now: float) -> None:
        watched = {slot.child.worker_id: (slot, slot.child) for slot in self._pool.slots if slot.child is not None}
        records.vouch_for(slot.crashloop_row for slot in self._pool.slots if slot.crashloop_row is not None)
        beats = records.heartbeats(watched)
        wall = now_ms()
        # Heartbeats read while the ledger was recovering from an outage may
        # be old for no fault of the workers.
        trust = self._heartbeat_grace.judges(now)
        for worker_id, (slot, child) in watched.items():
            if now - child.started >= self.policy.quick and slot.crashloop_row is not None:
                records.retire_crashloop(slot.crashloop_row)  # it is healthy again
                slot.crashloop_row = None
            last = max(beats.get(worker_id) or 0, wall - int((now - child.started) * 1000))
            silent = (wall - last) / 1000
            if (trust and silent > self.settings.heartbeat_timeout
                    and child.kill_reason is None and not child.terminated):
                child.kill_reason = f"hung: no heartbeat for {silent:.0f} s, killed by its supervisor"
                logger.warning("worker %s (pid %d) is %s", worker_id, child.pid, child.kill_reason)
                child.popen.kill()

    # Requests -------------------------------------------------------------

    def _drain_inbox(self) -> None:
        for text in self.bus.pop_all(supervisor_inbox_key(self.name)):
            self._accept(text)

    def _accept(self, text: str) -> None:
        try:
            request = json.loads(text)
            worker_id = request["worker_id"]
            if not isinstance(worker_id, str) or not 0 < len(worker_id) <= 128:
                raise ValueError("worker_id must be a string of 1 to 128 characters")
        except (ValueError, KeyError, TypeError) as error:
            logger.warning("supervisor %s ignored a malformed start request %.200r: %s", self.name, text, error)
            return
        running = len(self._pool.slots)
        try:
            queues = check_queues(request.get("queues", request.get("queue", list(self.config.queues))))
            options = worker_options(self.config, check_options(request.get("options")))
            if running >= self.config.max_processes:
                raise WorkerError(
                    f"supervisor {self.name!r} on {self.hostname} already runs {running} workers, "
                    f"its max_processes"
                )
        except WorkerError as error:
            logger.warning("supervisor %s refused to start worker %s: %s", self.name, worker_id, error)
            self._ledger.defer("refusal", partial(
                records.record_refusal, worker_id, supervisor=self.name, hostname=self.hostname, queues=(),
                why=str(error),
            ))
            return
        logger.info("supervisor %s accepted a request for worker %s", self.name, worker_id)
        self._pool.slots.append(Slot(kind=SlotKind.REQUEST, queues=queues, options=options, next_id=worker_id))

    # Housekeeping ---------------------------------------------------------

    def _housekeeping(self) -> None:
        if self._heartbeat_grace.judges(self.clock()):
            records.clean_stale_workers(
                self.settings.heartbeat_timeout, keep=set(self.children()), rescue=self._rescue_stale
            )
        if self._pruner is not None:
            self._pruner.tick()  # returns at once: a due prune runs in a thread of its own
        self._unknown.tick()  # jobs whose last events never came (see watchtower.stuck)

    @property
    def metrics_url(self) -> str | None:
        """Where /metrics is served (None before run())."""
        return self._server.metrics_url if self._server is not None else None

    # The ledger -----------------------------------------------------------

    def _ledger_answered(self) -> None:
        self._heartbeat_grace.answered(self.clock())

    def _ledger_away(self) -> None:
        """The ledger failed: heartbeats wait for it, dead workers' messages go back without it."""
        self._heartbeat_grace.failed()
        self._rescue_without_ledger()
        if self._db is not None:
            try:
                self._db.close()  # a broken connection is replaced on the next use
            except Exception:
                pass

    # Stopping -------------------------------------------------------------

    def _grace(self) -> float:
        limits = [slot.options.get("timeout") or UNLIMITED_JOB_WAIT for slot in self._pool.slots if slot.child]
        return max(limits, default=0.0) + SHUTDOWN_MARGIN

    def _on_stop_signal(self, signum: int, now: float) -> None:
        name = signal.Signals(signum).name
        if self._stopping:
            logger.warning("supervisor %s: %s again, killing the workers now", self.name, name)
            self.reload_requested = self.reload_requested and signum == signal.SIGHUP
            self._deadline = now
            return
        self._stopping = True
        self.reload_requested = signum == signal.SIGHUP
        self._deadline = now + self._grace()
        logger.info("supervisor %s: %s, stopping %d workers (waiting up to %g s)",
                    self.name, name, len(self.children()), self._grace())
        for slot in list(self._pool.slots):
            if slot.child is None:
                self._pool.slots.remove(slot)
                if slot.crashloop_row is not None:
                    self._ledger.defer("retire", partial(records.retire_crashloop, slot.crashloop_row))
                continue
            self._pool.terminate(slot.child)

    def _finish(self) -> None:
        """The last row updates; a ledger that is down gets a few seconds to come back."""
        if self._ledger:
            self._rescue_without_ledger()
        left = self._ledger.drain(FINAL_WRITE_WAIT)
        if left:
            logger.error("supervisor %s: %d worker updates could not be recorded", self.name, left)
        if self._bus is not None:
            self._bus.close()


def _restart_reason(code: int, child: Child) -> str:
    """The ``reason`` label of the restarts counter."""
    if child.kill_reason is not None:
        return "hung"
    if code < 0:
        return "killed"
    return {EXIT_RESTART: "exit", EXIT_MEMORY: "memory"}.get(code, "crash")


def _describe_exit(code: int, last_line: str | None, *, oom: bool = False) -> str:
    if code < 0:
        if oom:
            # See watchtower.oom: the cgroup's count of OOM kills rose just now.
            return "killed by SIGKILL: out of memory (the kernel's OOM killer)"
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    if code == EXIT_OK:
        return "exited with code 0"
    if code == EXIT_RESTART:
        return f"exited with code {code} to be restarted"
    return f"exited with code {code}: {last_line}" if last_line else f"exited with code {code}"
