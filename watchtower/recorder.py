"""The buffered ledger writer: hooks append, a background thread writes.

``Recorder.record`` is what a Dramatiq hook calls: it appends to an
in-memory deque and returns, never touching the database.  One flusher
thread per process drains the deque every ``flush_interval`` seconds (or
sooner, once ``batch_size`` events are waiting) and writes each batch in one
transaction through :func:`watchtower.ledger.write_batch`.

When the database is slow or down, the batch in hand is kept and retried
with backoff while new events wait in the deque.  Past half of
``buffer_size`` events, a second thread moves the oldest ones, a batch at a
time, to this process's spool file on local disk (see :mod:`watchtower.spool`),
so that memory stays flat however long the outage lasts; when the database
is back, the flusher writes what memory holds first, then the spool's
batches in the order they were spooled.  The spools of processes that died
on this host are replayed the same way by the first recorder that finds
them.  Only when the spool is full (``spool_bytes``) or cannot be written,
and memory holds ``buffer_size`` events, are new events dropped, counted,
and logged once per ``drop_log_interval`` seconds (and at close), never once
per event.
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
benchmarks/RESULTS.md has the numbers).  While the database keeps up, the
spool is never touched: no file is created, nothing is written to disk.

Stopping: :meth:`Recorder.begin_shutdown` starts one budget of
``shutdown_timeout`` seconds for the whole stop of the process (a worker's
shutdown flush, the worker process's own wait, the close at exit), so that
a stop fits in ``docker stop``'s 10 s.  Within it the recorder writes what it
holds while the database answers (and, at the close, half a second more if
the jobs' last moments spent the budget); while the database is away it does
not wait at all, and what is unwritten goes to the spool, where the next
process on the host finds it.  Whatever is still buffered is written or spooled at
interpreter exit (atexit, and multiprocessing's finalizers in forked
children, which skip atexit).  What is lost at close (the spool full or
unusable) is counted, and said in a line that reaches stderr even when the
logging's own stream has been closed (the ``dramatiq`` command's worker
processes close theirs before the finalizers run).
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import peewee

from . import store
from .errors import DatabaseUnavailable, SpoolError
from .events import JobEvent, WorkerEvent
from .ledger import write_batch
from .spool import Batch, SpoolFile, database_key, ensure_directory, orphans

__all__ = ["Recorder", "RecorderStats", "is_outage", "refusals"]

logger = logging.getLogger(__name__)

#: Seconds between two "dropped N events" warnings.
DROP_LOG_INTERVAL = 10.0
#: The longest wait between two tries while the database is down.
MAX_BACKOFF = 5.0
#: Seconds between two looks for the spools of processes that died.
ORPHAN_SCAN_INTERVAL = 10.0
#: The longest a flusher pass spends writing spooled batches before it
#: writes the newer events in memory again.
REPLAY_SLICE = 1.0
#: Seconds the spooling thread waits before it tries a full or broken spool again.
SPOOL_RETRY = 1.0
#: Batches the spooling thread writes with one fsync.
SPILL_BATCHES = 16
#: Seconds between two looks of the spooling thread at memory while the database is away.
SPILL_POLL = 0.1
#: The default spool_bytes: one process's spool file at most.
SPOOL_BYTES = 256 * 1024 * 1024
#: The default shutdown_timeout, seconds: within ``docker stop``'s 10 s.
SHUTDOWN_TIMEOUT = 8.0
#: Seconds close() still gives a database that answers once the budget is spent.
CLOSE_FLOOR = 0.5


@dataclass(frozen=True)
class RecorderStats:
    """A snapshot of a recorder's own health."""

    buffered: int  # events waiting in memory, including a batch being retried
    written: int  # events written since start (also those of other processes' spools replayed here)
    dropped: int  # events dropped since start (buffer and spool full, refused by the database, unwritten at close)
    failures: int  # failed batch writes since start
    last_flush_seconds: float  # how long the last successful write took
    #: Why the database refuses the writes, while it does so for a reason
    #: that retrying cannot fix (None while writes succeed or merely wait
    #: for the database to come back).
    refusal: str | None = None
    #: Events of this process waiting in its spool file for the database.
    spooled: int = 0
    #: The spool file, while there is one.
    spool_path: str | None = None


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

    ``spool_dir`` is this ledger's spool directory (see
    :func:`watchtower.spool.spool_directory`; None: no spool, events past
    ``buffer_size`` are dropped), ``spool_bytes`` the largest this process's
    spool file may grow, ``shutdown_timeout`` the seconds a stop may spend
    writing (see :meth:`begin_shutdown`), ``hostname`` the host part of the
    spool file's name.

    A forked child starts with an empty buffer and a flusher of its own (the
    parent's buffer and spool are the parent's to write); periodic tasks
    registered with :meth:`every` stay with the process that registered them.
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
        spool_dir: str | os.PathLike[str] | None = None,
        spool_bytes: int = SPOOL_BYTES,
        shutdown_timeout: float = SHUTDOWN_TIMEOUT,
        hostname: str = "",
    ) -> None:
        if flush_interval <= 0:
            raise ValueError(f"flush_interval must be positive, not {flush_interval!r}")
        if buffer_size < 1 or batch_size < 1:
            raise ValueError("buffer_size and batch_size must be at least 1")
        if not 0 <= nice <= 19:
            raise ValueError(f"nice must be from 0 to 19, not {nice!r}")
        if spool_bytes < 0 or shutdown_timeout < 0:
            raise ValueError("spool_bytes and shutdown_timeout must not be negative")
        self._database = database
        self._db: peewee.Database | None = None if isinstance(database, str) else database
        self.flush_interval = flush_interval
        self.buffer_size = buffer_size
        self.batch_size = batch_size
        self.nice = nice
        self.drop_log_interval = drop_log_interval
        #: The spool directory, None when there is no spool (spool_bytes 0 too).
        self.spool_dir = Path(spool_dir) if spool_dir is not None and spool_bytes > 0 else None
        self.spool_bytes = spool_bytes
        self.shutdown_timeout = shutdown_timeout
        self.hostname = hostname
        # Memory holds at most buffer_size events.  While the database
        # answers, the spooling thread moves the oldest to disk once half of
        # that is held (a database too slow for the load), down to a
        # quarter.  While it is away, all of them, every SPILL_POLL seconds
        # and as soon as a tenth is held: memory is then only where events
        # wait for their turn to the disk, and bursts find it nearly empty.
        self._spill_when_up = (max(1, buffer_size // 2), buffer_size // 4)
        self._spill_when_away = (max(1, buffer_size // 10), 0)
        self._spill_at, self._spill_to = self._spill_when_up
        #: Called from the flusher thread after each batch written, with the
        #: batch and the seconds the write took (the metrics count them here).
        self.write_listeners: list[Callable[[list[JobEvent], float], None]] = []
        if on_write is not None:
            self.write_listeners.append(on_write)
        #: Called at the end of :meth:`close`, in the closing thread, once the
        #: counts are final (the flusher thread that samples them has stopped).
        self.close_listeners: list[Callable[[], None]] = []
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
        # One lock for the counters, the buffer and its bound, held only for a
        # few bytecodes (never during I/O): ``x += 1`` from several job
        # threads at once loses counts, and the drop counter must be exact.
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        self._accepted = 0  # events appended to the buffer
        self._finished = 0  # of those, written (or given up)
        self._written = 0
        self._dropped = 0
        self._dropped_unlogged = 0
        self._last_drop_log = float("-inf")
        self._failures = 0
        self._failing = False  # the last write failed: the database is away (or refuses)
        self._last_flush_seconds = 0.0
        self._refusal: str | None = None
        self._start_lock = threading.Lock()
        self._shutdown_deadline: float | None = None
        # The spool: this process's file (made on first use), the file of a
        # dead process being replayed, and the thread that fills the former.
        self._spiller: threading.Thread | None = None
        self._spill_wake = threading.Event()
        self._spool: SpoolFile | None = None
        self._spool_lock = threading.Lock()
        self._spooled = 0  # this process's events in its spool, not yet written
        self._spool_full = False
        self._spool_problem: str | None = None
        self._spool_retry_at = 0.0
        self._orphan: SpoolFile | None = None
        self._next_orphan_scan = 0.0

    # The hot path ---------------------------------------------------------

    def record(self, event: JobEvent) -> None:
        """Append one job event; never blocks, never raises for a full buffer."""
        if self._thread is None or self._pid != os.getpid():
            self._start()
        with self._lock:
            held = len(self._jobs) + len(self._in_hand)
            if held >= self.buffer_size:
                self._dropped += 1
                self._dropped_unlogged += 1
                return
            self._accepted += 1
            self._jobs.append(event)
        if held >= self._spill_at and self._spiller is not None:
            self._spill_wake.set()
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

    def begin_shutdown(self) -> None:
        """The process starts to stop: from now on, writes wait at most ``shutdown_timeout`` s in all.

        Called by whoever starts the stop (the middleware's
        ``before_worker_shutdown``, the worker process); the first call
        starts the clock, later ones change nothing.  Until the deadline,
        :meth:`flush` waits for a database that answers and returns at once
        while it is away; :meth:`close` then puts the rest in the spool.
        """
        if self._shutdown_deadline is None:
            self._shutdown_deadline = time.monotonic() + self.shutdown_timeout

    def cancel_shutdown(self) -> None:
        """The process goes on after all (a worker booted again): writes may wait as long as they are told."""
        self._shutdown_deadline = None

    def shutdown_remaining(self) -> float:
        """Seconds left of the shutdown budget (all of it while no stop has begun)."""
        if self._shutdown_deadline is None:
            return self.shutdown_timeout
        return max(0.0, self._shutdown_deadline - time.monotonic())

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until every event recorded so far is written (those spooled too).

        Returns False if that did not happen within ``timeout`` seconds
        (the database is slow or down; the events stay buffered or spooled).
        Once a shutdown has begun, the wait ends by its deadline, and at once
        while the database is away.
        """
        if self._thread is None or self._pid != os.getpid():
            return not self._jobs and not self._workers and not self._spooled
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        if self._shutdown_deadline is not None:
            deadline = self._shutdown_deadline if deadline is None else min(deadline, self._shutdown_deadline)
        with self._done:
            target = self._accepted
            while self._finished < target or self._workers:
                if self._failing and self._shutdown_deadline is not None:
                    return False  # stopping while the database is away: the spool takes the rest
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._wakeup.set()
                self._done.wait(min(0.05, remaining) if remaining is not None else 0.05)
        return True

    def close(self, timeout: float | None = None) -> None:
        """Write what is buffered within the shutdown budget (or ``timeout`` s), spool the rest, stop.

        What neither the database nor the spool could take is counted as
        dropped and said; :attr:`close_listeners` then see the final counts.
        This process's spool file is deleted if it is empty, or else left
        for the next process on the host.
        """
        thread = self._thread
        if thread is None or self._pid != os.getpid():
            return
        self.begin_shutdown()
        if timeout is None:
            timeout = self.shutdown_remaining()
            if not self._failing and timeout < CLOSE_FLOOR:
                # The budget went on the jobs, but the database answers: a
                # last write takes milliseconds, and is better than a spool
                # that only this host can write.
                self._shutdown_deadline = time.monotonic() + CLOSE_FLOOR
                timeout = CLOSE_FLOOR
        self.flush(timeout)
        self._stopping = True
        self._stop.set()
        self._wakeup.set()
        self._spill_wake.set()
        thread.join(timeout=min(max(0.2, self.shutdown_remaining()), max(1.0, self.flush_interval * 4)))
        if self._spiller is not None:
            self._spiller.join(timeout=2.0)
        with self._lock:
            left = self._in_hand + list(self._jobs)
            self._in_hand = []
            self._jobs.clear()
            workers = [WorkerEvent(worker_id, fields) for worker_id, fields in self._workers.items()]
            self._workers = {}
        kept = self._spool_at_close(left, workers)
        lost = len(left) - kept
        with self._done:
            self._spooled += kept
            self._dropped += lost
            self._finished += lost
            self._done.notify_all()
            waiting = self._spooled
        if waiting and self._spool is not None:
            _report(
                logging.WARNING,
                "watchtower recorder closing with %d unwritten events: they wait in the spool %s for the next "
                "process on this host that records into this ledger", waiting, self._spool.path,
            )
        if lost:
            why = self._spool_problem or ("the spool is full" if self._spool_full else "there is no spool")
            _report(logging.ERROR, "watchtower recorder closing with %d unwritten events: they are lost (%s)",
                    lost, why)
        self._log_drops(force=True)
        for listener in self.close_listeners:
            try:
                listener()
            except Exception:
                logger.exception("watchtower recorder's close listener %r failed", listener)
        if not thread.is_alive():  # else it may still be reading them; they are released at exit
            self._release_spools()
        self._thread = None
        self._spiller = None
        self._shutdown_deadline = None

    def stats(self) -> RecorderStats:
        spool = self._spool
        return RecorderStats(
            buffered=len(self._jobs) + len(self._in_hand),
            written=self._written,
            dropped=self._dropped,
            failures=self._failures,
            last_flush_seconds=self._last_flush_seconds,
            refusal=self._refusal,
            spooled=self._spooled,
            spool_path=str(spool.path) if spool is not None else None,
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
            if self.spool_dir is not None and self._spiller is None:
                self._spiller = threading.Thread(target=self._spill_run, name="watchtower-spooler", daemon=True)
                self._spiller.start()
            self._thread = threading.Thread(target=self._run, name="watchtower-recorder", daemon=True)
            self._thread.start()

    def _after_fork(self) -> None:
        """In a forked child: forget the parent's buffer, threads, spool, connection and tasks."""
        for spool in (self._spool, self._orphan):
            if spool is not None:
                spool.forget()  # its lock stays with the parent's descriptor
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
            if stopping and self._failing:
                return  # close() spools what is left: no last wait for a database that is away
            self._run_periodic()
            try:
                self._drain()
                backoff = 0.0
                self._failing = False
                self._spill_at, self._spill_to = self._spill_when_up
                self._refused_no_more()
            except Exception as error:
                self._failures += 1
                self._failing = True
                self._spill_at, self._spill_to = self._spill_when_away
                self._spill_wake.set()
                if is_outage(error):
                    backoff = min(MAX_BACKOFF, max(self.flush_interval, backoff * 2 or 0.1))
                    # This process's own buffer: each process (worker, producer) logs its own.
                    logger.warning(
                        "watchtower recorder cannot write to the ledger (retrying in %.1fs): %s; "
                        "waiting in process %d: %d job events (%d more in the spool), %d worker rows",
                        backoff, " ".join(str(error).split()), os.getpid(), self._waiting(), self._spooled,
                        len(self._workers),
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
            "(%s); events wait in memory (%d now, at most %d) and the write is tried again every %.0f s: "
            "mend the cause",
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
        """Write what was buffered when the drain began, in batches; then some of the spools.

        Events that arrive meanwhile wait for the next wake-up: chasing them
        would write a stream of tiny batches and compete with the jobs for
        the GIL.  The newer events in memory go first, so that memory stays
        low while a spool's backlog is written; then the spooled batches, for
        up to REPLAY_SLICE seconds a pass.
        """
        db = self._connect()
        remaining = len(self._jobs)
        while True:
            if not self._in_hand:
                with self._lock:  # the spooling thread takes from the same end
                    take = min(self.batch_size, remaining, len(self._jobs))
                    self._in_hand = [self._jobs.popleft() for _ in range(take)]
                remaining -= take
            with self._lock:
                workers = [WorkerEvent(worker_id, fields) for worker_id, fields in self._workers.items()]
                self._workers = {}
            if not self._in_hand and not workers:
                break
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
        if self.spool_dir is not None and not self._stopping:
            self._replay(db)  # (closing: what is still spooled waits for the next process)

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
        self._write_workers_one_by_one(db, workers)

    def _write_workers_one_by_one(self, db: peewee.Database, workers: Sequence[WorkerEvent]) -> None:
        for worker in workers:
            try:
                write_batch(db, [], [worker])
            except (peewee.DataError, peewee.IntegrityError) as error:
                logger.error("watchtower recorder dropped values for worker %s that the database refused: %s",
                             worker.worker_id, " ".join(str(error).split()))

    # The spool ------------------------------------------------------------

    def _spill_run(self) -> None:
        """The spooling thread: moves the oldest events in memory to disk (see ``_spill_when_up``)."""
        while not self._stop.is_set():
            self._spill_wake.wait(SPILL_POLL if self._failing else SPOOL_RETRY)
            self._spill_wake.clear()
            if self._stop.is_set():
                return
            try:
                if self._failing and self._spool is None:
                    self._own_spool()  # ready before memory fills: making it takes a few fsyncs
                took_all = self._spill()
            except Exception:
                logger.exception("watchtower recorder's spooling failed")
                took_all = False
            if not took_all:
                self._stop.wait(SPOOL_RETRY)  # full or broken: not before a while

    def _spill(self) -> bool:
        """Spool the oldest events past the spill mark, down to its floor; False if the spool took no more.

        Taken a batch at a time (the lock that record() waits for is held
        for one batch's pops only), written up to SPILL_BATCHES batches at a
        time with one fsync.
        """
        floor = self._spill_to
        if len(self._jobs) + len(self._in_hand) < (self._spill_at if not self._failing else floor + 1):
            return True
        while len(self._jobs) > floor:
            if self._spool_full:
                return False
            batches: list[list[JobEvent]] = []
            while len(batches) < SPILL_BATCHES:
                with self._lock:
                    take = min(self.batch_size, len(self._jobs) - floor)
                    if take <= 0:
                        break
                    batches.append([self._jobs.popleft() for _ in range(take)])
                    self._spooled += take  # counted before the write: the flusher may replay it at once
            if not batches:
                break
            taken = self._to_spool([(batch, ()) for batch in batches])
            if taken < len(batches):
                with self._lock:  # back where they were, in their order
                    for batch in reversed(batches[taken:]):
                        self._spooled -= len(batch)
                        self._jobs.extendleft(reversed(batch))
                return False
        return True

    def _spool_at_close(self, events: list[JobEvent], workers: list[WorkerEvent]) -> int:
        """Spool what close() found unwritten; returns how many job events the spool took."""
        if self.spool_dir is None or not (events or workers):
            return 0
        kept = 0
        for start in range(0, max(1, len(events)), self.batch_size):
            chunk = events[start:start + self.batch_size]
            if not self._to_spool([(chunk, workers if start == 0 else ())]):
                break
            kept += len(chunk)
        return kept

    def _to_spool(self, batches: Sequence[tuple[Sequence[JobEvent], Sequence[WorkerEvent]]]) -> int:
        """Append batches to this process's spool; how many it took (fewer: it is full or cannot be written)."""
        spool = self._own_spool()
        if spool is None:
            return 0
        try:
            taken = spool.append(batches)
        except OSError as error:
            self._spool_trouble(f"cannot write the spool {spool.path}: {error.strerror or error}")
            return 0
        if taken == len(batches):
            return taken
        if not self._spool_full:
            self._spool_full = True
            logger.error(
                "watchtower recorder's spool %s is full (recorder.spool_bytes = %d): events past the memory "
                "buffer are dropped until the database takes the spooled ones", spool.path, self.spool_bytes,
            )
        return taken

    def _own_spool(self) -> SpoolFile | None:
        """This process's spool file, made on first use; None while the directory cannot be used."""
        assert self.spool_dir is not None
        with self._spool_lock:
            if self._spool is not None:
                return self._spool
            if self._spool_problem is not None and time.monotonic() < self._spool_retry_at:
                return None
            try:
                description = database_key(self._database)[1] if isinstance(self._database, str) else None
                ensure_directory(self.spool_dir, description)
                self._spool = SpoolFile.create(self.spool_dir, max_bytes=self.spool_bytes, hostname=self.hostname)
            except (SpoolError, OSError) as error:
                self._spool_trouble(str(error))
                return None
            self._spool_problem = None
            logger.warning(
                "watchtower recorder: the ledger database is away or behind; events wait for it in the spool "
                "%s (up to %d bytes)", self._spool.path, self.spool_bytes,
            )
            return self._spool

    def _spool_trouble(self, problem: str) -> None:
        if problem != self._spool_problem:
            logger.error("watchtower recorder cannot use its spool: %s", problem)
        self._spool_problem = problem
        self._spool_retry_at = time.monotonic() + 30.0

    def _replay(self, db: peewee.Database) -> None:
        """Write spooled batches for up to REPLAY_SLICE seconds: this process's own, then those of dead ones."""
        until = time.monotonic() + REPLAY_SLICE
        spool = self._spool
        while spool is not None:
            if time.monotonic() >= until:
                self._wakeup.set()  # more to write: the next pass comes at once
                return
            batch = spool.next_batch(self.batch_size)
            if batch is None:
                break
            written = self._write_spooled(db, batch)
            spool.mark_written(batch.end)
            with self._done:
                self._spooled -= len(batch.jobs)
                self._finished += len(batch.jobs)
                self._written += written
                self._done.notify_all()
            self._spool_full = False
        now = time.monotonic()
        if self._orphan is None:
            if now < self._next_orphan_scan:
                return
            self._next_orphan_scan = now + ORPHAN_SCAN_INTERVAL
            self._orphan = self._adopt()
        while self._orphan is not None:
            if time.monotonic() >= until:
                self._wakeup.set()
                return
            if not self._replay_one(db, self._orphan):
                self._orphan = self._adopt()

    def _replay_one(self, db: peewee.Database, orphan: SpoolFile) -> bool:
        """Write the next batch of a dead process's spool; False (and the file deleted) when it is all written."""
        batch = orphan.next_batch(self.batch_size)
        if batch is None:
            if orphan.torn:
                logger.warning(
                    "watchtower recorder: the spool %s ends in %d bytes of a batch cut short (its process "
                    "died while writing it); the events of that batch are lost", orphan.path, orphan.torn,
                )
            orphan.close(delete=True)
            return False
        written = self._write_spooled(db, batch)
        orphan.mark_written(batch.end)
        with self._done:
            self._written += written
        return True

    def replay_spools(self) -> int:
        """Write the spools of this host's processes that are gone into the database, now; how many events.

        Runs in the calling thread (``watchtower spool --replay``); the
        spools of live processes are theirs.  Raises what the database
        raises (what was written stays written, the rest waits).
        """
        if self.spool_dir is None:
            return 0
        before = self._written
        db = self._connect()
        while (orphan := self._adopt()) is not None:
            try:
                while self._replay_one(db, orphan):
                    pass
            finally:
                orphan.close()  # a no-op once deleted; else the rest waits for the next replayer
        return self._written - before

    def _adopt(self) -> SpoolFile | None:
        """The spool file of a process that is gone, locked for this one; None if there is none."""
        assert self.spool_dir is not None
        own = self._spool.path if self._spool is not None else None
        for path in orphans(self.spool_dir, skip=own):
            try:
                adopted = SpoolFile.adopt(path)
            except SpoolError as error:
                logger.error("watchtower recorder leaves a file alone: %s (renamed .unreadable)", error)
                continue
            except OSError as error:
                logger.warning("watchtower recorder cannot open the spool %s: %s", path, error)
                continue
            if adopted is not None:
                if adopted.backlog_bytes():
                    logger.warning(
                        "watchtower recorder writes the spool %s of a process that is gone (%d bytes)",
                        path, adopted.backlog_bytes(),
                    )
                return adopted
        return None

    def _write_spooled(self, db: peewee.Database, batch: Batch) -> int:
        """Write one spooled batch; returns how many of its job events were written (the rest are refused)."""
        started = time.perf_counter()
        try:
            write_batch(db, batch.jobs, batch.workers)
        except (peewee.DataError, peewee.IntegrityError) as error:
            logger.error("watchtower recorder: the database refused a spooled batch (%s); writing it event by event",
                         " ".join(str(error).split()))
        else:
            self._notify(batch.jobs, time.perf_counter() - started)
            return len(batch.jobs)
        written = []
        for event in batch.jobs:
            try:
                write_batch(db, [event])
            except (peewee.DataError, peewee.IntegrityError) as error:
                logger.error("watchtower recorder dropped a %s event of message %s that the database refused: %s",
                             event.kind.value, event.message_id, " ".join(str(error).split()))
                with self._lock:
                    self._dropped += 1
                continue
            written.append(event)
        self._write_workers_one_by_one(db, batch.workers)
        self._notify(written, 0.0)
        return len(written)

    def _release_spools(self) -> None:
        """At close: delete this process's spool if it is empty, else leave it (unlocked) to the next process."""
        with self._spool_lock:
            spool, self._spool = self._spool, None
        if spool is not None:
            try:
                spool.close(delete=spool.backlog_bytes() == 0)
            except OSError as error:
                logger.warning("watchtower recorder cannot close its spool %s: %s", spool.path, error)
        orphan, self._orphan = self._orphan, None
        if orphan is not None:
            orphan.close()  # the rest of it for the next process

    # Listeners and periodic tasks -------------------------------------------

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
        if self.spool_dir is None:
            where = "no spool"
        elif self._spool_full:
            where = f"the spool full at {self.spool_bytes} bytes"
        elif self._spool_problem is not None:
            where = f"the spool unusable: {self._spool_problem}"
        else:
            where = "events came faster than the spool took them"
        _report(
            logging.ERROR, "watchtower recorder dropped %d events (memory buffer full at %d events, %s; "
            "%d dropped in all)", count, self.buffer_size, where, total,
        )


def _report(level: int, message: str, *args: object) -> None:
    """Log a line, and write it to stderr as well when no logging handler can take it.

    The ``dramatiq`` command's worker processes log through a pipe to their
    parent and close it before their exit hooks run: the recorder's last
    words at exit would be lost there.
    """
    logger.log(level, message, *args)
    if not logger.isEnabledFor(level) or _reaches_a_handler(level):
        return
    stream = sys.__stderr__
    if stream is None or stream.closed:
        return
    try:
        stream.write(f"{logging.getLevelName(level)} {logger.name}: {message % args}\n")
        stream.flush()
    except (OSError, ValueError):
        pass


def _reaches_a_handler(level: int) -> bool:
    """Whether a line of ``level`` from this module's logger reaches a handler that can still write."""
    current: logging.Logger | None = logger
    any_handler = False
    while current is not None:
        for handler in current.handlers:
            any_handler = True
            if level >= handler.level and not getattr(getattr(handler, "stream", None), "closed", False):
                return True
        if not current.propagate:
            break
        current = current.parent
    if any_handler:
        return False
    # No handler at all: logging's last resort writes to sys.stderr.
    return sys.stderr is not None and not getattr(sys.stderr, "closed", False)


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
            recorder.close()
        except Exception:
            logger.exception("watchtower recorder failed to flush at exit")
