"""The buffered ledger writer: hooks append, a background thread writes.

``Recorder.record`` is what a Dramatiq hook calls: it appends to an
in-memory deque and returns, never touching the database.  One flusher
thread per process drains the deque every ``flush_interval`` seconds (or
sooner, once ``batch_size`` events are waiting) and writes each batch in one
transaction through :func:`watchtower.ledger.write_batch`.

When the database is slow or down, the batch in hand is kept and retried
with backoff while new events wait in the deque, up to ``buffer_size``
events in all.  Past that, new events are dropped, counted, and logged once
per ``DROP_LOG_INTERVAL`` seconds, never once per event.  Jobs are never
slowed: ``record`` does not block.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import peewee

from . import store
from .events import JobEvent, WorkerEvent
from .ledger import write_batch

__all__ = ["Recorder", "RecorderStats"]

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
    dropped: int  # events dropped since start (buffer full, or unwritten at exit)
    failures: int  # failed batch writes since start
    last_flush_seconds: float  # how long the last successful write took


class Recorder:
    """Buffers job and worker events and writes them in batches.

    ``database`` is a URL or an open Peewee database; with a URL the
    connection is opened (and the schema created) by the flusher thread on
    its first write, so constructing a Recorder does no I/O.
    """

    def __init__(
        self,
        database: str | peewee.Database,
        *,
        flush_interval: float = 0.25,
        buffer_size: int = 100_000,
        batch_size: int = 1_000,
        on_write: Callable[[list[JobEvent], float], None] | None = None,
    ) -> None:
        if flush_interval <= 0:
            raise ValueError(f"flush_interval must be positive, not {flush_interval!r}")
        if buffer_size < 1 or batch_size < 1:
            raise ValueError("buffer_size and batch_size must be at least 1")
        self._database = database
        self._db: peewee.Database | None = None if isinstance(database, str) else database
        self.flush_interval = flush_interval
        self.buffer_size = buffer_size
        self.batch_size = batch_size
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
        self._workers: collections.deque[WorkerEvent] = collections.deque()
        self._in_hand: list[JobEvent] = []
        self._wakeup = threading.Event()
        self._stop = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._done = threading.Condition()
        self._accepted = 0
        self._finished = 0  # written or dropped, in the order accepted
        self._written = 0
        self._dropped = 0
        self._dropped_unlogged = 0
        self._last_drop_log = 0.0
        self._failures = 0
        self._last_flush_seconds = 0.0
        self._start_lock = threading.Lock()

    # The hot path ---------------------------------------------------------

    def record(self, event: JobEvent) -> None:
        """Append one job event; never blocks, never raises for a full buffer."""
        if self._thread is None or self._pid != os.getpid():
            self._start()
        if len(self._jobs) + len(self._in_hand) >= self.buffer_size:
            self._dropped += 1
            self._dropped_unlogged += 1
            self._accepted += 1
            self._finished += 1
            return
        self._accepted += 1
        self._jobs.append(event)
        if len(self._jobs) >= self.batch_size:
            self._wakeup.set()

    def record_worker(self, event: WorkerEvent) -> None:
        """Append new values for a worker row (heartbeats, status changes)."""
        if self._thread is None or self._pid != os.getpid():
            self._start()
        self._workers.append(event)

    def every(self, seconds: float, callback: Callable[[], None]) -> None:
        """Call ``callback`` from the flusher thread about every ``seconds``."""
        self._periodic.append((seconds, callback, [0.0]))

    # Control --------------------------------------------------------------

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until every event recorded so far is written (or dropped).

        Returns False if that did not happen within ``timeout`` seconds.
        """
        if self._thread is None:
            return not self._jobs and not self._workers
        target = self._accepted
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._done:
            self._wakeup.set()
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
        left = len(self._jobs) + len(self._in_hand)
        if left:
            logger.error("watchtower recorder closing with %d unwritten events: they are lost", left)
            self._dropped += left
        self._thread = None

    def stats(self) -> RecorderStats:
        return RecorderStats(
            buffered=len(self._jobs) + len(self._in_hand),
            written=self._written,
            dropped=self._dropped,
            failures=self._failures,
            last_flush_seconds=self._last_flush_seconds,
        )

    # The flusher thread ---------------------------------------------------

    def _start(self) -> None:
        with self._start_lock:
            if self._pid != os.getpid():
                # A forked child: the parent's buffer and thread are the
                # parent's to write; start afresh.
                self._reset()
                if isinstance(self._database, str):
                    self._db = None
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="watchtower-recorder", daemon=True)
            self._thread.start()

    def _connect(self) -> peewee.Database:
        if self._db is None:
            assert isinstance(self._database, str)
            self._db = store.connect(self._database)
        return self._db

    def _run(self) -> None:
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
            except Exception as error:
                self._failures += 1
                backoff = min(MAX_BACKOFF, max(self.flush_interval, backoff * 2 or 0.1))
                logger.warning(
                    "watchtower recorder cannot write %d events (retrying in %.1fs): %s",
                    len(self._in_hand), backoff, error,
                )
                self._discard_connection()
                if stopping:
                    return
            self._log_drops()
            if stopping:
                return

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
            workers = [self._workers.popleft() for _ in range(len(self._workers))]
            if not self._in_hand and not workers:
                return
            started = time.perf_counter()
            try:
                write_batch(db, self._in_hand, workers)
            except Exception:
                self._workers.extendleft(reversed(workers))
                raise
            elapsed = time.perf_counter() - started
            batch, self._in_hand = self._in_hand, []
            self._last_flush_seconds = elapsed
            self._written += len(batch)
            with self._done:
                self._finished += len(batch)
                self._done.notify_all()
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

    def _log_drops(self) -> None:
        if not self._dropped_unlogged:
            return
        now = time.monotonic()
        if now - self._last_drop_log < DROP_LOG_INTERVAL:
            return
        with self._done:
            self._done.notify_all()
        logger.error(
            "watchtower recorder dropped %d events (buffer full at %d events; %d dropped in all)",
            self._dropped_unlogged, self.buffer_size, self._dropped,
        )
        self._dropped_unlogged = 0
        self._last_drop_log = now


_live_recorders: weakref.WeakSet[Recorder] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    """At interpreter exit, write what every recorder still holds."""
    for recorder in list(_live_recorders):
        try:
            recorder.close(timeout=5.0)
        except Exception:
            logger.exception("watchtower recorder failed to flush at exit")
