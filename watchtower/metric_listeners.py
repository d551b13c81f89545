"""What turns events into metric updates: the middleware's, the recorder's and the supervisor's.

- :class:`JobMetrics`, a middleware listener: job events become the job
  counters, the duration and queue-wait histograms and the in-progress gauge;
- :class:`RecorderMetrics`: a recorder's writes and its sampled buffer,
  spool and drops become the recorder's health metrics;
- :func:`install` hangs both on a middleware and its recorder;
- :func:`record_lost`, :func:`record_given_up`, :func:`record_restart`: what
  the supervisor (and a worker that gives a redelivery up) counts.

The metric objects themselves are :mod:`watchtower.metrics`'.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .events import PHASE_FINISHED, JobEvent, Kind
from .metrics import RESTART_REASONS, process_metrics
from .multiproc import multiprocess_dir

if TYPE_CHECKING:
    from .middleware import WatchtowerMiddleware
    from .recorder import Recorder

__all__ = [
    "RECORDER_SAMPLE_INTERVAL",
    "JobMetrics",
    "RecorderMetrics",
    "install",
    "record_given_up",
    "record_lost",
    "record_restart",
]


class JobMetrics:
    """A middleware listener that counts job events (see WatchtowerMiddleware.listeners).

    Enqueues count on ENQUEUED and DELAYED only: a retry re-enqueues the same
    message twice (REQUEUED to the delay queue, MOVED back at its eta), and
    neither is a new job.
    """

    def __call__(self, event: JobEvent) -> None:
        children = process_metrics().for_job(event.queue, event.actor)
        kind = event.kind
        if kind is Kind.ENQUEUED or kind is Kind.DELAYED:
            children.enqueued.inc()
        elif kind is Kind.STARTED:
            children.started.inc()
            children.in_progress.inc()
            if event.started_at is not None and event.ready_at is not None:
                # Clocks of two hosts may disagree a little: never negative.
                children.queue_wait.observe(max(0.0, (event.started_at - event.ready_at) / 1000.0))
        elif kind.phase == PHASE_FINISHED:  # completed, retried, failed or skipped
            # A duration is measured only for an attempt that started in this
            # process (started_at is also set for a message skipped unstarted).
            if event.duration is not None:
                children.in_progress.dec()
                children.duration.observe(event.duration)
            getattr(children, kind.value).inc()  # the counter named like the outcome


class RecorderMetrics:
    """Counts a recorder's writes and samples its buffer, spool and drops.

    Sampled every RECORDER_SAMPLE_INTERVAL by the flusher thread, and once
    more when the recorder closes, so that drops at close are counted too.
    """

    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder
        self._dropped_seen = 0
        self._lock = threading.Lock()  # the flusher thread and the closing one

    def on_write(self, batch: list[JobEvent], seconds: float) -> None:
        metrics = process_metrics()
        metrics.recorder_written.inc(len(batch))
        metrics.recorder_flush.observe(seconds)

    def sample(self) -> None:
        stats = self._recorder.stats()
        metrics = process_metrics()
        metrics.recorder_buffered.set(stats.buffered)
        metrics.recorder_spooled.set(stats.spooled)
        metrics.recorder_refused.set(0 if stats.refusal is None else 1)
        with self._lock:
            if stats.dropped > self._dropped_seen:
                metrics.recorder_dropped.inc(stats.dropped - self._dropped_seen)
                self._dropped_seen = stats.dropped


#: How often a recorder's buffer and drops are sampled, seconds.
RECORDER_SAMPLE_INTERVAL = 1.0


def install(middleware: WatchtowerMiddleware) -> None:
    """Count ``middleware``'s job events and its recorder's health in this process's metrics.

    Called by the middleware's constructor, which fixes where this process's
    values live: ``metrics_dir`` (under a supervisor, the supervisor's
    directory), else ``PROMETHEUS_MULTIPROC_DIR`` as it is now, else memory.
    Nothing the app does later moves them.
    """
    process_metrics(multiprocess_dir(middleware.settings))
    middleware.listeners.append(JobMetrics())
    recorder_metrics = RecorderMetrics(middleware.recorder)
    middleware.recorder.write_listeners.append(recorder_metrics.on_write)
    middleware.recorder.every(RECORDER_SAMPLE_INTERVAL, recorder_metrics.sample)
    middleware.recorder.close_listeners.append(recorder_metrics.sample)


def record_lost(jobs: Iterable[Any]) -> None:
    """Count lost attempts: the jobs :func:`watchtower.ledger.mark_lost` returned.

    Call it right after ``mark_lost``, with what it returned, so that the
    counter and the ledger agree exactly.
    """
    metrics = process_metrics()
    for job in jobs:
        metrics.lost.labels(job.queue, job.actor).inc()


def record_given_up(queue: str, actor: str, *, failed: bool) -> None:
    """Count one job given up after max_lost losses (see :mod:`watchtower.poison`).

    ``failed``: count it in ``watchtower_jobs_failed_total`` too (the
    supervisor that gives up a job does; a worker that gives one up records
    a failed event, which its listener counts).
    """
    metrics = process_metrics()
    metrics.given_up.labels(queue, actor).inc()
    if failed:
        metrics.failed.labels(queue, actor).inc()


def record_restart(supervisor: str, reason: str) -> None:
    """Count one restart of a worker process of ``supervisor`` (a reason of :data:`RESTART_REASONS`)."""
    if reason not in RESTART_REASONS:
        raise ValueError(f"restart reason {reason!r}: expected one of {', '.join(RESTART_REASONS)}")
    process_metrics().restarts.labels(supervisor, reason).inc()

