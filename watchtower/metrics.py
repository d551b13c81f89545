"""Watchtower's metric objects: every metric a process counts, defined once.

Every name counted in a process lives here (one place for every name; the
names read at scrape time are in :mod:`watchtower.scrape` and
:mod:`watchtower.exposition`).  Three kinds of values make up a scrape:

- **counted in the processes** that see the events: jobs enqueued, started,
  finished..., the job duration and queue-wait histograms, jobs in progress,
  the recorder's health (worker processes), lost jobs and worker restarts
  (the supervisor).  In a supervised pool each process writes them to
  prometheus-client's multiprocess directory and the supervisor merges the
  files at scrape time;
- **read at scrape time** from the ledger and the broker (workers by status,
  queue depths), cached briefly: see :mod:`watchtower.scrape`;
- **build info**, a constant (:mod:`watchtower.exposition`).

The modules of the metrics, one concern each:

- here, the metric objects of this process (:func:`process_metrics`) and
  the series made at 0 before their first event (:func:`declare`,
  :func:`declare_supervisor`);
- :mod:`watchtower.metric_listeners`: what turns middleware, recorder and
  supervisor events into metric updates;
- :mod:`watchtower.instruments`: the counters, gauges and histograms
  themselves, and :mod:`watchtower.multiproc`: the multiprocess directory;
- :mod:`watchtower.exposition`: one scrape's text, from a fresh registry;
- :mod:`watchtower.metrics_server`: ``/metrics`` over HTTP.

How multiprocess mode is done right here (each point is a fault of
Dramatiq's own Prometheus middleware):

- Watchtower's values do not depend on where ``PROMETHEUS_MULTIPROC_DIR``
  points: its metric objects (:mod:`watchtower.instruments`) keep their
  values in the directory the middleware's settings name when it is made
  (``metrics_dir``; a supervisor sets it for each child), in files of their
  own, so that Dramatiq's Prometheus middleware (which moves the variable in
  ``after_process_boot``), or any other user of prometheus-client in the
  app, cannot take them elsewhere;
- every job series of every declared actor exists at 0 before its first
  message (:func:`declare`, from the middleware's ``after_declare_actor``),
  and the restarts of each supervisor by every reason from its start: a
  series born at 1 is invisible to ``rate()`` and ``increase()``;
- the supervisor wipes the directory when it starts
  (:func:`~watchtower.multiproc.prepare_multiprocess_dir`), holds a lock on
  it so that a second supervisor cannot share (and wipe) it, and calls
  :func:`~watchtower.multiproc.mark_process_dead` for every child that
  exits, however it died, so that the live gauges (``livesum``) stop
  counting dead processes while their counters stay;
- the exposition comes from a fresh registry (never prometheus-client's
  default one), so nothing is counted twice; the values this process keeps
  in memory (the supervisor's own) are merged in;
- durations are seconds; "enqueued" counts a message once (a retry's two
  enqueues, to ``q.DQ`` and back to ``q``, are not new jobs), so there is no
  delayed gauge to go negative and no retry counted twice;
- ``/metrics`` binds to ``http.host`` (127.0.0.1 by default); a busy port is a
  :class:`~watchtower.errors.MetricsServerError`, raised in the supervisor,
  never in a worker.

What a supervisor does for them, in order: see :mod:`watchtower.supervisor_server`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from . import multiproc
from .instruments import Counter, Gauge, Histogram, Values

__all__ = [
    "DURATION_BUCKETS",
    "FLUSH_BUCKETS",
    "RESTART_REASONS",
    "ProcessMetrics",
    "declare",
    "declare_supervisor",
    "made_process_metrics",
    "process_metrics",
]

logger = logging.getLogger(__name__)

#: Job duration and queue wait, seconds: from 5 ms jobs to 10 min ones (and
#: waits of an hour), about 2.5x apart.
DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
)
#: The recorder's batch writes, seconds.
FLUSH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_JOB_LABELS = ("queue", "actor")

#: The ``reason`` label of ``watchtower_worker_restarts_total``.
RESTART_REASONS = ("exit", "crash", "killed", "hung", "memory")


class ProcessMetrics:
    """The metric objects of this process (see :mod:`watchtower.instruments`).

    Their values live in ``directory`` (files a scrape of any process on the
    host reads) or, without one, in this process's memory.
    """

    def __init__(self, directory: str | None = None) -> None:
        #: Where the values live: None (this process's memory) or a directory.
        self.directory = directory
        self.values = values = Values(directory)

        def counter(name: str, help: str, labels: Sequence[str] = _JOB_LABELS) -> Counter:
            return Counter(values, name, help, labels)

        self.enqueued = counter("watchtower_jobs_enqueued_total",
                                "Messages sent to a queue (a retry is not counted again).")
        self.started = counter("watchtower_jobs_started_total", "Attempts started by a worker.")
        self.completed = counter("watchtower_jobs_completed_total", "Jobs that completed.")
        self.failed = counter("watchtower_jobs_failed_total",
                              "Jobs that failed for good (retries exhausted, throws, dead-lettered).")
        self.retried = counter("watchtower_jobs_retried_total", "Attempts that raised and were scheduled to run again.")
        self.skipped = counter("watchtower_jobs_skipped_total", "Jobs skipped by a middleware (AgeLimit).")
        self.lost = counter("watchtower_jobs_lost_total", "Attempts lost because their worker process died.")
        self.given_up = counter(
            "watchtower_jobs_given_up_total",
            "Jobs lost max_lost times and dead-lettered without another run (also counted as failed).",
        )
        self.duration = Histogram(
            values, "watchtower_job_duration_seconds", "How long attempts ran, seconds.", _JOB_LABELS,
            buckets=DURATION_BUCKETS,
        )
        self.queue_wait = Histogram(
            values, "watchtower_job_queue_wait_seconds", "From ready (enqueued, or eta reached) to started, seconds.",
            _JOB_LABELS, buckets=DURATION_BUCKETS,
        )
        self.in_progress = Gauge(values, "watchtower_jobs_in_progress", "Attempts running now.", _JOB_LABELS)
        self.restarts = counter(
            "watchtower_worker_restarts_total", "Worker processes restarted by their supervisor, by reason.",
            ("supervisor", "reason"),
        )
        self.recorder_buffered = Gauge(
            values, "watchtower_recorder_events_buffered", "Ledger events waiting to be written.",
        )
        self.recorder_spooled = Gauge(
            values, "watchtower_recorder_events_spooled",
            "Ledger events waiting in the recorders' spool files on local disk for the database.",
        )
        self.recorder_dropped = counter(
            "watchtower_recorder_events_dropped_total",
            "Ledger events dropped because the buffer and the spool were full (or refused by the database).", (),
        )
        self.recorder_written = counter("watchtower_recorder_events_written_total", "Ledger events written.", ())
        self.recorder_refused = Gauge(
            values, "watchtower_recorder_refused",
            "Processes whose ledger writes the database refuses for a reason that retrying cannot fix "
            "(a driver or programming error, a missing privilege).",
        )
        self.recorder_flush = Histogram(
            values, "watchtower_recorder_flush_duration_seconds",
            "How long one batch write of the ledger took, seconds.",
            buckets=FLUSH_BUCKETS,
        )
        self._children: dict[tuple[str, str], _JobChildren] = {}
        self._children_lock = threading.Lock()

    def collect(self) -> Iterator[Any]:
        """Every family from the values in memory (what this process has counted)."""
        yield from multiproc.families(self.values.totals())

    def for_job(self, queue: str, actor: str) -> _JobChildren:
        """The labelled children for one (queue, actor), looked up once.

        Made for every declared actor before its first message (see
        :func:`declare`), so that every series starts at 0.
        """
        key = (queue, actor)
        children = self._children.get(key)
        if children is None:
            with self._children_lock:
                children = self._children.get(key)
                if children is None:
                    children = self._children[key] = _JobChildren(self, queue, actor)
        return children


class _JobChildren:
    """The labelled children of the job metrics for one (queue, actor)."""

    __slots__ = (
        "completed",
        "duration",
        "enqueued",
        "failed",
        "in_progress",
        "queue_wait",
        "retried",
        "skipped",
        "started",
    )

    def __init__(self, metrics: ProcessMetrics, queue: str, actor: str) -> None:
        self.enqueued = metrics.enqueued.labels(queue, actor)
        self.started = metrics.started.labels(queue, actor)
        self.completed = metrics.completed.labels(queue, actor)
        self.failed = metrics.failed.labels(queue, actor)
        self.retried = metrics.retried.labels(queue, actor)
        self.skipped = metrics.skipped.labels(queue, actor)
        self.duration = metrics.duration.labels(queue, actor)
        self.queue_wait = metrics.queue_wait.labels(queue, actor)
        self.in_progress = metrics.in_progress.labels(queue, actor)
        metrics.lost.labels(queue, actor)  # counted by the supervisor: here only its 0
        metrics.given_up.labels(queue, actor)  # likewise (or by the worker that gives a redelivery up)


_process_metrics: ProcessMetrics | None = None
_process_metrics_lock = threading.Lock()


def process_metrics(directory: str | None = None) -> ProcessMetrics:
    """This process's metric objects, made on the first call with their values in ``directory``.

    The middleware makes them (:func:`watchtower.metric_listeners.install`) with the directory of its
    settings, the supervisor in memory; a later call with another directory
    keeps the first and says so.
    """
    global _process_metrics
    with _process_metrics_lock:
        if _process_metrics is None:
            _process_metrics = ProcessMetrics(directory)
        elif directory is not None and directory != _process_metrics.directory:
            logger.warning(
                "this process already counts its metrics in %s; not in %s as well",
                _process_metrics.directory or "its memory", directory,
            )
        return _process_metrics


def declare(queue: str, actor: str) -> None:
    """Make the job series of one (queue, actor), at 0, before its first message."""
    process_metrics().for_job(queue, actor)


def made_process_metrics() -> ProcessMetrics | None:
    """This process's metric objects if something made them already, else None (nothing is made)."""
    return _process_metrics


def declare_supervisor(supervisor: str) -> None:
    """Make ``supervisor``'s restart series, one per reason, at 0 (when it starts)."""
    for reason in RESTART_REASONS:
        process_metrics().restarts.labels(supervisor, reason)
