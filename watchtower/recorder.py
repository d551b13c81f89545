"""The buffered ledger writer: hooks append, a background thread writes.

``Recorder.record`` is what a Dramatiq hook calls: it appends to an
in-memory deque and returns, never touching the database.  One flusher
thread per process drains the deque every ``flush_interval`` seconds (or
sooner, once ``batch_size`` events are waiting) and writes each batch in one
transaction through :func:`watchtower.ledger.write_batch`.

When the database is slow or down, the batch in hand is kept and retried
with backoff while new events wait in the deque, up to ``buffer_size``
events in all.  Past that, new events are dropped, counted, and logged once
per ``drop_log_interval`` seconds (and at close), never once per event.
A write refused for a reason that retrying cannot fix (a driver or
programming error, a missing privilege: see :func:`is_outage`) is logged
once at CRITICAL with its cause and kept in :attr:`RecorderStats.refusal`
(the ``watchtower_recorder_refused`` gauge and ``/health`` show it); the
events are kept and the write tried again every ``MAX_BACKOFF`` seconds,
in case someone mends it.
Jobs are never slowed: ``record`` does not block, and the flusher thread
runs ``nice`` steps below the process's other threads (Linux, where
niceness is per thread): on a busy machine the jobs' threads, and the
broker beside them, get the CPU first and the ledger's writes take what is
left (benchmarks/producer_profile.py measures what that buys a producer;
benchmarks/RESULTS.md has the numbers).  Whatever is still
buffered is written at interpreter exit (atexit, and multiprocessing's
finalizers in forked children, which skip atexit).
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import peewee

from . import store
from .errors import DatabaseUnavailable
from .events import JobEvent, WorkerEvent
from .ledger import write_batch

__all__ = ["Recorder", "RecorderStats", "is_outage", "refusals"]

logger = logging.getLogger(__name__)

#: Seconds between two "dropped N events" warnings.
DROP_LOG_INTERVAL = 10.0
#: The longest wait between two tries while the database is down.
MAX_BACKOFF = 5.0


@dataclass(frozen=True)
class RecorderStats:
    """A snapshot of a recorder's own health."""

    buffered: int  # events waiting, including a batch being retried
    written: int  # events written since start
    dropped: int  # events dropped since start (buffer full, refused by the database, unwritten at close)
    failures: int  # failed batch writes since start
    last_flush_seconds: float  # how long the last successful write took
    #: Why the database refuses the writes, while it does so for a reason
    #: that retrying cannot fix (None while writes succeed or merely wait
    #: for the database to come back).
    refusal: str | None = None


def is_outage(error: BaseException) -> bool:
    """Whether a failed write may succeed by itself later: the database is away, busy or restarting.

    Lost or refused connections, timeouts and lock waits are outages
    (Peewee's OperationalError and InterfaceError, InternalError for an
    aborted transaction, DatabaseUnavailable from connecting).  Anything
    else (ProgrammingError, a driver's TypeError or ValueError, a missing
    driver) is a fault in the setup or the code: retrying alone cannot fix it.
    """
    if isinstance(error, DatabaseUnavailable):
        cause = error.__cause__
        return cause is None or is_outage(cause)
    return isinstance(error, (peewee.OperationalError, peewee.InterfaceError, peewee.InternalError, OSError))


class Recorder:
    """Buffers job and worker events and writes them in batches.

    ``database`` is a URL or an open Peewee database; with a URL the
    connection is opened (and the schema created) by the flusher thread on
    its first write, so constructing a Recorder does no I/O.

    A forked child starts with an empty buffer and a flusher of its own (the
    parent's buffer is the parent's to write); periodic tasks registered
    with :meth:`every` stay with the process that registered them.
    """

    def __init__(
        self,
        database: str | peewee.Database,
        *,
        flush_interval: float = 0.25,
        buffer_size: int = 100_000,
        batch_size: int = 1_000,
        nice: int = 0,
        on_write: Callable[[list[JobEvent], float], None] | None = None,
        drop_log_interval: float = DROP_LOG_INTERVAL,
    ) -> None:
        if flush_interval <= 0:
            raise ValueError(f"flush_interval must be positive, not {flush_interval!r}")
        if buffer_size < 1 or batch_size < 1:
            raise ValueError("buffer_size and batch_size must be at least 1")
        if not 0 <= nice <= 19:
            raise ValueError(f"nice must be from 0 to 19, not {nice!r}")
        self._database = database
        self._db: peewee.Database | None = None if isinstance(database, str) else database
        self.flush_interval = flush_interval
        self.buffer_size = buffer_size
        self.batch_size = batch_size
        self.nice = nice
        self.drop_log_interval = drop_log_interval
        #: Called from the flusher thread after each batch written, with the
        #: batch and the seconds the write took (the metrics count them here).
        self.write_listeners: list[Callable[[list[JobEvent], float], None]] = []
        if on_write is not None:
            self.write_listeners.append(on_write)
        self._periodic: list[tuple[float, Callable[[], None], list[float]]] = []
        self._reset()
        _live_recorders.add(self)

    def _reset(self) -> None:
        self._jobs: collections.deque[JobEvent] = collections.deque()
        # Worker rows: the newest value of each field, merged as it comes, so
        # that heartbeats during a long outage do not pile up.
        self._workers: dict[str, dict[str, object]] = {}
        self._in_hand: list[JobEvent] = []
        self._wakeup = threading.Event()
        self._stop = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        # One lock for the counters and the buffer's bound, held only for a
        # few bytecodes (never during I/O): ``x += 1`` from several job
        # threads at once loses counts, and the drop counter must be exact.
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        self._accepted = 0  # events appended to the buffer
        self._finished = 0  # of those, written (or given up at close)
        self._written = 0
        self._dropped = 0
        self._dropped_unlogged = 0
        self._last_drop_log = float("-inf")
        self._failures = 0
        self._last_flush_seconds = 0.0
        self._refusal: str | None = None
        self._start_lock = threading.Lock()

    # The hot path ---------------------------------------------------------

    def record(self, event: JobEvent) -> None:
        """Append one job event; never blocks, never raises for a full buffer."""
        if self._thread is None or self._pid != os.getpid():
            self._start()
        with self._lock:
            if len(self._jobs) + len(self._in_hand) >= self.buffer_size:
                self._dropped += 1
                self._dropped_unlogged += 1
                return
            self._accepted += 1
            self._jobs.append(event)
        if len(self._jobs) >= self.batch_size:
            self._wakeup.set()

    def record_worker(self, event: WorkerEvent) -> None:
        """Record new values for a worker row (heartbeats, status changes)."""
        if self._thread is None or self._pid != os.getpid():
            self._start()
        with self._lock:
            self._workers.setdefault(event.worker_id, {}).update(event.fields)

    def every(self, seconds: float, callback: Callable[[], None]) -> None:
        """Call ``callback`` from the flusher thread about every ``seconds``."""
        self._periodic.append((seconds, callback, [0.0]))

    # Control --------------------------------------------------------------

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until every event recorded so far is written.

        Returns False if that did not happen within ``timeout`` seconds
        (the database is slow or down; the events stay buffered).
        """
        if self._thread is None or self._pid != os.getpid():
            return not self._jobs and not self._workers
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._done:
            target = self._accepted
            while self._finished < target or self._workers:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._wakeup.set()
                self._done.wait(min(0.05, remaining) if remaining is not None else 0.05)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Flush what is buffered (for up to ``timeout`` s) and stop the thread.

        What could not be written by then is counted as dropped and logged.
        """
        thread = self._thread
        if thread is None or self._pid != os.getpid():
            return
        self.flush(timeout)
        self._stopping = True
        self._stop.set()
        self._wakeup.set()
        thread.join(timeout=max(1.0, self.flush_interval * 4))
        with self._lock:
            left = len(self._jobs) + len(self._in_hand)
            self._dropped += left
            self._finished += left
            self._jobs.clear()
            self._in_hand = []
        if left:
            logger.error("watchtower recorder closing with %d unwritten events: they are lost", left)
        self._log_drops(force=True)
        self._thread = None

    def stats(self) -> RecorderStats:
        return RecorderStats(
            buffered=len(self._jobs) + len(self._in_hand),
            written=self._written,
            dropped=self._dropped,
            failures=self._failures,
            last_flush_seconds=self._last_flush_seconds,
            refusal=self._refusal,
        )

    # The flusher thread ---------------------------------------------------

    def _start(self) -> None:
        with self._start_lock:
            if self._pid != os.getpid():
                self._after_fork()  # forked by a path that skipped the fork hook
            if self._thread is not None:
                return
            multiprocessing = sys.modules.get("multiprocessing")
            if multiprocessing is not None and multiprocessing.parent_process() is not None:
                # A forked multiprocessing child (the ``dramatiq`` command's
                # worker processes) ends with os._exit(), which skips atexit;
                # multiprocessing runs its own finalizers first.
                from multiprocessing.util import Finalize

                Finalize(None, _close_all, exitpriority=-100)
            self._thread = threading.Thread(target=self._run, name="watchtower-recorder", daemon=True)
            self._thread.start()

    def _after_fork(self) -> None:
        """In a forked child: forget the parent's buffer, thread, connection and tasks."""
        self._reset()
        self._periodic = []
        if isinstance(self._database, str):
            self._db = None

    def _connect(self) -> peewee.Database:
        if self._db is None:
            assert isinstance(self._database, str)
            self._db = store.connect(self._database)
        return self._db

    def _run(self) -> None:
        self._lower_priority()
        backoff = 0.0
        while True:
            if backoff:
                # The database failed: wait out the backoff (flush() requests
                # do not shorten it; close() does).
                self._stop.wait(backoff)
            else:
                self._wakeup.wait(self.flush_interval)
            self._wakeup.clear()
            stopping = self._stopping
            self._run_periodic()
            try:
                self._drain()
                backoff = 0.0
                self._refused_no_more()
            except Exception as error:
                self._failures += 1
                if is_outage(error):
                    backoff = min(MAX_BACKOFF, max(self.flush_interval, backoff * 2 or 0.1))
                    # This process's own buffer: each process (worker, producer) logs its own.
                    logger.warning(
                        "watchtower recorder cannot write to the ledger (retrying in %.1fs): %s; "
                        "waiting in process %d: %d job events, %d worker rows",
                        backoff, " ".join(str(error).split()), os.getpid(), self._waiting(), len(self._workers),
                    )
                else:
                    backoff = MAX_BACKOFF
                    self._refused(error)
                self._discard_connection()
                if stopping:
                    return
            self._log_drops()
            if stopping:
                return

    def _waiting(self) -> int:
        return len(self._in_hand) + len(self._jobs)

    def _refused(self, error: Exception) -> None:
        """The database refused a write for a reason retrying cannot fix: say so once, loudly."""
        cause = f"{type(error).__name__}: {' '.join(str(error).split())}"[:500]
        if cause == self._refusal:
            logger.debug("watchtower recorder still refused: %s", cause)
            return
        self._refusal = cause
        logger.critical(
            "watchtower recorder: the ledger database refuses its writes for a reason that retrying cannot fix "
            "(%s); events wait in memory (%d now, at most %d) and the write is tried again every %.0f s: mend the cause",
            cause, self._waiting(), self.buffer_size, MAX_BACKOFF, exc_info=error,
        )

    def _refused_no_more(self) -> None:
        if self._refusal is not None:
            logger.warning("watchtower recorder writes again after its writes were refused (%s)", self._refusal)
            self._refusal = None

    def _lower_priority(self) -> None:
        """Run this (the flusher) thread ``nice`` steps below the others, where the system allows it.

        On Linux a thread is a task of its own, and its niceness is set by
        its thread id; lowering one's own priority needs no privilege.
        Elsewhere (macOS takes a process id only) nothing changes.
        """
        if not self.nice or not hasattr(os, "setpriority") or not sys.platform.startswith("linux"):
            return
        try:
            thread = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, thread, os.getpriority(os.PRIO_PROCESS, thread) + self.nice)
        except OSError as error:
            logger.debug("watchtower recorder keeps its thread's priority: %s", error)

    def _drain(self) -> None:
        """Write what was buffered when the drain began, in batches.

        Events that arrive meanwhile wait for the next wake-up: chasing them
        would write a stream of tiny batches and compete with the jobs for
        the GIL.
        """
        db = self._connect()
        remaining = len(self._jobs)
        while True:
            if not self._in_hand:
                take = min(self.batch_size, remaining, len(self._jobs))
                self._in_hand = [self._jobs.popleft() for _ in range(take)]
                remaining -= take
            with self._lock:
                workers = [WorkerEvent(worker_id, fields) for worker_id, fields in self._workers.items()]
                self._workers = {}
            if not self._in_hand and not workers:
                return
            started = time.perf_counter()
            try:
                self._write(db, workers)
            except Exception:
                with self._lock:  # put them back under what came meanwhile
                    for worker in workers:
                        self._workers[worker.worker_id] = {**worker.fields, **self._workers.get(worker.worker_id, {})}
                raise
            elapsed = time.perf_counter() - started
            with self._done:
                batch, self._in_hand = self._in_hand, []
                self._last_flush_seconds = elapsed
                self._written += len(batch)
                self._finished += len(batch)
                self._done.notify_all()
            if batch:
                self._notify(batch, elapsed)

    def _write(self, db: peewee.Database, workers: list[WorkerEvent]) -> None:
        """Write the batch in hand; if the database refuses some of it, write the rest.

        A value the database rejects (a queue name longer than its column,
        say) would otherwise fail the same batch forever and stop recording.
        Such a batch is written one event at a time and the refused events
        are dropped.  Any other error leaves the unwritten events in hand.
        """
        try:
            write_batch(db, self._in_hand, workers)
            return
        except (peewee.DataError, peewee.IntegrityError) as error:
            logger.error("watchtower recorder: the database refused a batch (%s); writing it event by event",
                         " ".join(str(error).split()))
        while self._in_hand:
            event = self._in_hand[0]
            try:
                write_batch(db, [event])
            except (peewee.DataError, peewee.IntegrityError) as error:
                logger.error("watchtower recorder dropped a %s event of message %s that the database refused: %s",
                             event.kind.value, event.message_id, " ".join(str(error).split()))
                with self._done:
                    self._dropped += 1
                    self._finished += 1
                    self._in_hand.pop(0)
                continue
            with self._done:
                self._written += 1
                self._finished += 1
                self._in_hand.pop(0)
                self._done.notify_all()
            self._notify([event], 0.0)
        for worker in workers:
            try:
                write_batch(db, [], [worker])
            except (peewee.DataError, peewee.IntegrityError) as error:
                logger.error("watchtower recorder dropped values for worker %s that the database refused: %s",
                             worker.worker_id, " ".join(str(error).split()))

    def _notify(self, batch: list[JobEvent], elapsed: float) -> None:
        for listener in self.write_listeners:
            try:
                listener(batch, elapsed)
            except Exception:
                logger.exception("watchtower recorder's write listener %r failed", listener)

    def _run_periodic(self) -> None:
        now = time.monotonic()
        for seconds, callback, last in self._periodic:
            if now - last[0] >= seconds:
                last[0] = now
                try:
                    callback()
                except Exception:
                    logger.exception("watchtower periodic task %r failed", callback)

    def _discard_connection(self) -> None:
        if self._db is None:
            return
        try:
            self._db.close()
        except Exception:
            pass  # the connection is already broken; a new one is opened next time

    def _log_drops(self, *, force: bool = False) -> None:
        """Log the drops since the last report, at most once per drop_log_interval."""
        now = time.monotonic()
        with self._lock:
            count = self._dropped_unlogged
            if not count or (not force and now - self._last_drop_log < self.drop_log_interval):
                return
            self._dropped_unlogged = 0
            self._last_drop_log = now
            total = self._dropped
        logger.error(
            "watchtower recorder dropped %d events (buffer full at %d events; %d dropped in all)",
            count, self.buffer_size, total,
        )


_live_recorders: weakref.WeakSet[Recorder] = weakref.WeakSet()


def refusals() -> list[str]:
    """The causes of refusal of this process's recorders whose writes the database refuses."""
    return [cause for recorder in list(_live_recorders) if (cause := recorder.stats().refusal) is not None]


def _after_fork_in_child() -> None:
    # Runs in the child right after os.fork(), before any other thread
    # exists there: the one moment the parent's locks are safe to replace.
    for recorder in list(_live_recorders):
        recorder._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _close_all() -> None:
    """At interpreter exit, write what every recorder still holds."""
    for recorder in list(_live_recorders):
        try:
            recorder.close(timeout=5.0)
        except Exception:
            logger.exception("watchtower recorder failed to flush at exit")
