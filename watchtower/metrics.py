"""Prometheus metrics that stay true across many worker processes.

Every metric name lives here (one place for every name).  Three kinds of
values make up a scrape:

- **counted in the processes** that see the events: jobs enqueued, started,
  finished..., the job duration and queue-wait histograms, jobs in progress,
  the recorder's health (worker processes), lost jobs and worker restarts
  (the supervisor).  In a supervised pool each process writes them to
  prometheus-client's multiprocess directory and the supervisor merges the
  files at scrape time;
- **read at scrape time** from the ledger and the broker (workers by status,
  queue depths), cached briefly: see :mod:`watchtower.scrape`;
- **build info**, a constant.

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
  (:func:`prepare_multiprocess_dir`), holds a lock on it so that a second
  supervisor cannot share (and wipe) it, and calls :func:`mark_process_dead`
  for every child that exits, however it died, so that the live gauges
  (``livesum``) stop counting dead processes while their counters stay;
- the exposition comes from a fresh registry (never prometheus-client's
  default one), so nothing is counted twice; the values this process keeps
  in memory (the supervisor's own) are merged in;
- durations are seconds; "enqueued" counts a message once (a retry's two
  enqueues, to ``q.DQ`` and back to ``q``, are not new jobs), so there is no
  delayed gauge to go negative and no retry counted twice;
- ``/metrics`` binds to ``http.host`` (127.0.0.1 by default); a busy port is a
  :class:`~watchtower.errors.MetricsServerError`, raised in the supervisor,
  never in a worker.

What a supervisor does, in order:

1. ``held = open_multiprocess_dir(settings)`` (``metrics_dir``, or a fresh
   temporary directory) before it starts any worker, then serves and passes
   down ``replace(settings, metrics_dir=str(held.path))``;
2. starts every child with ``env.update(held.env())``, so that the child's
   prometheus-client writes there from its first import;
3. ``server = start_metrics_server(settings, supervisor=name)`` (or with
   ``app=`` the API app, which answers /metrics too); a MetricsServerError
   stops the supervisor before any worker starts;
4. for every child that exits, however: ``mark_process_dead(pid, held.path)``
   before it starts the replacement; ``record_restart(name, reason)`` per
   restart; ``record_lost(mark_lost(...))`` for the jobs of a dead worker;
5. on exit: ``server.stop()``, then ``held.release()``.
"""

from __future__ import annotations

import logging
import os
import platform
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from . import multiproc
from .events import PHASE_FINISHED, JobEvent, Kind
from .http_server import HTTPServer, start_http_server
from .instruments import Counter, Gauge, Histogram, Values
from .multiproc import (
    MULTIPROC_ENV,
    MultiprocessDir,
    fold_dead_processes,
    mark_process_dead,
    open_multiprocess_dir,
    prepare_multiprocess_dir,
)

if TYPE_CHECKING:
    from .config import Settings
    from .middleware import WatchtowerMiddleware
    from .recorder import Recorder

__all__ = [
    "CONTENT_TYPE",
    "RESTART_REASONS",
    "DURATION_BUCKETS",
    "FLUSH_BUCKETS",
    "JobMetrics",
    "MetricsServer",
    "MultiprocessDir",
    "declare",
    "declare_supervisor",
    "exposition",
    "fold_dead_processes",
    "install",
    "mark_process_dead",
    "open_multiprocess_dir",
    "prepare_multiprocess_dir",
    "record_given_up",
    "record_lost",
    "record_restart",
    "start_metrics_server",
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
#: The classic text format, version 0.0.4, that ``generate_latest`` writes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


# This process's metric objects ----------------------------------------------


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

        self.enqueued = counter("watchtower_jobs_enqueued_total", "Messages sent to a queue (a retry is not counted again).")
        self.started = counter("watchtower_jobs_started_total", "Attempts started by a worker.")
        self.completed = counter("watchtower_jobs_completed_total", "Jobs that completed.")
        self.failed = counter("watchtower_jobs_failed_total", "Jobs that failed for good (retries exhausted, throws, dead-lettered).")
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
        self.recorder_buffered = Gauge(values, "watchtower_recorder_events_buffered", "Ledger events waiting to be written.")
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
            values, "watchtower_recorder_flush_duration_seconds", "How long one batch write of the ledger took, seconds.",
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

    __slots__ = ("enqueued", "started", "completed", "failed", "retried", "skipped", "duration", "queue_wait",
                 "in_progress")

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

    The middleware makes them (:func:`install`) with the directory of its
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


# What the processes count -----------------------------------------------------


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


#: The ``reason`` label of ``watchtower_worker_restarts_total``.
RESTART_REASONS = ("exit", "crash", "killed", "hung", "memory")


def declare_supervisor(supervisor: str) -> None:
    """Make ``supervisor``'s restart series, one per reason, at 0 (when it starts)."""
    for reason in RESTART_REASONS:
        process_metrics().restarts.labels(supervisor, reason)


def record_restart(supervisor: str, reason: str) -> None:
    """Count one restart of a worker process of ``supervisor`` (a reason of :data:`RESTART_REASONS`)."""
    if reason not in RESTART_REASONS:
        raise ValueError(f"restart reason {reason!r}: expected one of {', '.join(RESTART_REASONS)}")
    process_metrics().restarts.labels(supervisor, reason).inc()


# The exposition --------------------------------------------------------------


def multiprocess_dir(settings: Settings) -> str | None:
    """The directory a scrape reads: ``metrics_dir``, else PROMETHEUS_MULTIPROC_DIR, else none."""
    return settings.metrics_dir or os.environ.get(MULTIPROC_ENV) or None


class _Merged:
    """Metric families from several collectors, with equal series added up.

    The multiprocess files and this process's in-memory metrics may both
    hold a family (a supervisor that imported prometheus-client too early);
    a scrape must show each family once.  ``_created`` samples are dropped:
    multiprocess mode has none, and they cannot be added up.
    """

    def __init__(self, collectors: Sequence[Any]) -> None:
        self._collectors = collectors

    def collect(self) -> Iterator[Any]:
        from prometheus_client.metrics_core import Metric

        families: dict[str, Any] = {}
        values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
        for collector in self._collectors:
            for family in collector.collect():
                if family.name not in families:
                    families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                    values[family.name] = {}
                series = values[family.name]
                for sample in family.samples:
                    if sample.name.endswith("_created"):
                        continue
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    series[key] = series.get(key, 0.0) + sample.value
        for name, family in families.items():
            for (sample_name, labels), value in values[name].items():
                family.add_sample(sample_name, dict(labels), value)
            yield family


class _Files:
    """The multiprocess directory's files (see :func:`watchtower.multiproc.read_metrics`)."""

    def __init__(self, directory: str) -> None:
        self._directory = directory

    def collect(self) -> Iterator[Any]:
        yield from multiproc.read_metrics(self._directory)


class _Local:
    """This process's own metric objects, unless the scraped files already hold them."""

    def __init__(self, directory: str | None) -> None:
        self._directory = directory

    def collect(self) -> Iterator[Any]:
        metrics = _process_metrics
        if metrics is None:
            return
        if metrics.directory is not None and self._directory is not None and \
                os.path.samefile(metrics.directory, self._directory):
            return  # the files hold them
        yield from metrics.collect()


def exposition(settings: Settings, *, broker: Any = None, supervisor: str | None = None) -> tuple[bytes, str]:
    """One scrape: the Prometheus text format and its content type.

    Built from a fresh registry: the multiprocess directory's files (if any,
    see :func:`multiprocess_dir`) merged with this process's own values, plus
    the values read from the ledger and the broker (cached briefly, see
    :mod:`watchtower.scrape`) and the build info.
    """
    from prometheus_client import CollectorRegistry, generate_latest

    from .scrape import sources_for

    registry = CollectorRegistry(auto_describe=False)
    directory = multiprocess_dir(settings)
    collectors: list[Any] = [_Local(directory)]
    if directory:
        if os.path.isdir(directory):
            collectors.insert(0, _Files(directory))
        else:
            logger.warning("metrics_dir %s does not exist: serving this process's metrics only", directory)
    registry.register(_Merged(collectors))
    registry.register(sources_for(settings, broker=broker, supervisor=supervisor))
    registry.register(_BuildInfo())
    # The classic text format, version 0.0.4: every name here is a legacy
    # name, and every Prometheus release reads it.
    return generate_latest(registry), CONTENT_TYPE


class _BuildInfo:
    def collect(self) -> Iterator[Any]:
        import dramatiq
        from prometheus_client.core import GaugeMetricFamily

        from . import __version__

        family = GaugeMetricFamily(
            "watchtower_build_info", "Versions of Watchtower, Python and Dramatiq (always 1).",
            labels=("version", "python_version", "dramatiq_version"),
        )
        family.add_metric((__version__, platform.python_version(), dramatiq.__version__), 1.0)
        yield family


# The /metrics server ------------------------------------------------------------

#: A running /metrics server: ``.host``, ``.port``, ``.url`` (ending in /metrics), ``.stop()``.
MetricsServer = HTTPServer


def metrics_app(settings: Settings, *, broker: Any = None, supervisor: str | None = None) -> Callable[..., Any]:
    """A WSGI app answering ``GET /metrics`` (and 404 elsewhere)."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ.get("PATH_INFO", "") not in ("/metrics", "/metrics/"):
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"not found: Prometheus metrics are at /metrics\n"]
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD"), ("Content-Type", "text/plain")])
            return [b"method not allowed\n"]
        try:
            body, content_type = exposition(settings, broker=broker, supervisor=supervisor)
        except Exception:
            logger.exception("cannot build the /metrics exposition")
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
            return [b"cannot build the metrics: see the supervisor's log\n"]
        start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
        return [body]

    return app


def start_metrics_server(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    broker: Any = None,
    supervisor: str | None = None,
    app: Callable[..., Any] | None = None,
) -> MetricsServer:
    """Serve ``/metrics`` on ``host:port`` (default ``http.host:http.port``) from a thread.

    The server is :func:`watchtower.http_server.start_http_server`'s, with its
    connection limit and idle timeout.  ``port=0`` picks a free port (see ``.port``).  ``app`` serves another WSGI
    app instead (the API app, which answers /metrics too).  A port in use, or
    an address this host does not have, raises MetricsServerError naming the
    setting to change; the supervisor reports it, its workers never see it.
    """
    bind: str = settings.http_host if host is None else host
    port = settings.http_port if port is None else port
    server = start_http_server(app or metrics_app(settings, broker=broker, supervisor=supervisor),
                               host=bind, port=port, path="/metrics", what="/metrics", name="watchtower-metrics")
    if bind not in ("127.0.0.1", "::1", "localhost"):
        logger.warning("serving /metrics on %s:%s, reachable from other hosts", bind, server.port)
    logger.info("serving Prometheus metrics at %s", server.url)
    return server
