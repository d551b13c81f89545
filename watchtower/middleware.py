"""WatchtowerMiddleware: Dramatiq's hooks turned into ledger events.

``broker.add_middleware(WatchtowerMiddleware())`` is all a user writes.  The
hooks build a :class:`~watchtower.events.JobEvent` and hand it to the
recorder (an append to a deque) and to any listeners (the metrics); they
never touch the database and never raise into Dramatiq.

Where the outcome of an attempt is decided:

- ``after_process_message`` runs before Retries has looked at the exception
  when this middleware is added after it (the usual case: ``after_*`` hooks
  run in reverse order), so it only notes the exception and the end time;
  the traceback is written in the ack's hooks, where the text Retries wrote
  is there to reuse (see :mod:`watchtower.tracebacks`);
- ``after_ack`` / ``after_nack`` see the final word: an ack after an
  exception means Retries scheduled another attempt, a nack means the
  message was dead-lettered (retries exhausted, ``throws``, age limit).
- The delay consumer also acks messages it moves from ``q.DQ`` to ``q``;
  those acks are not outcomes and are ignored.

A message RabbitMQ delivers again (its last holder's connection closed) is
looked up in the ledger before it runs: a job lost ``max_lost`` times is
given up, dead-lettered without running (see :mod:`watchtower.poison`).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import dramatiq
from dramatiq.middleware import Retries, SkipMessage

from . import metric_listeners, metrics
from .config import Settings, load_settings
from .dramatiq_internals import (
    REDIS_MESSAGE_ID,
    consumer_whitelist,
    is_delay_queue,
    proxy_exception,
    q_name,
    redelivered,
)
from .dramatiq_internals import proxy_state as _proxy_state
from .dramatiq_internals import unwrap_proxy as _unwrap
from .events import ALIVE_AS, JobEvent, Kind, WorkerEvent
from .payload import SendEncoder, encode_message
from .recorder import Recorder
from .spool import spool_directory
from .statuses import WorkerStatus
from .tracebacks import EXCEPTION_LIMIT, format_exception, within
from .tracebacks import cap as _cap

__all__ = ["WatchtowerMiddleware", "EXCEPTION_LIMIT", "broker_kind"]

logger = logging.getLogger(__name__)

# The key under which a MessageProxy's __dict__ holds its _Attempt.
_STATE = "_watchtower_attempt"


class _Attempt:
    """What the hooks note about one run of a message, kept on its MessageProxy.

    One object in the proxy's ``__dict__`` (``proxy_state``), read with ``dict.get``: a missing
    attribute of a MessageProxy is looked up on the message behind it and
    raises AttributeError there, which costs more than the rest of a hook.
    """

    __slots__ = ("clock", "duration", "exception", "finished", "given_up", "number", "raised", "skipped", "started")

    def __init__(self, number: int | None = None, started: int | None = None, clock: float | None = None) -> None:
        self.number = number  # the attempt, set when it started here
        self.started = started  # epoch ms
        self.clock = clock  # perf_counter() at the start
        self.finished: int | None = None  # epoch ms
        self.duration: float | None = None  # seconds
        self.raised = False  # the attempt ended in an exception
        self.exception: str | None = None  # its traceback, capped, when written before the outcome
        self.skipped = False
        self.given_up = False  # lost max_lost times: dead-lettered without running


def _attempt(message: Any) -> _Attempt | None:
    return _proxy_state(message).get(_STATE)


#: Option set on a message moved from the delay queue, so the worker that
#: runs it knows when it became ready (Dramatiq deletes the eta then).
READY_AT_OPTION = "watchtower_ready_at"

F = TypeVar("F", bound=Callable[..., Any])


def _guarded(hook: F) -> F:
    """A hook that logs and counts its own failures instead of raising them."""

    @functools.wraps(hook)
    def wrapper(self: WatchtowerMiddleware, *args: Any, **kwargs: Any) -> None:
        try:
            hook(self, *args, **kwargs)
        except Exception:
            self.hook_errors += 1
            now = time.monotonic()
            if now - self._last_error_log >= 10.0:
                self._last_error_log = now
                logger.exception("watchtower hook %s failed (%d failures so far)", hook.__name__, self.hook_errors)

    return wrapper  # type: ignore[return-value]


def broker_kind(broker: dramatiq.Broker) -> str:
    """``redis``, ``rabbitmq``, ``stub``, or another broker's class name without "Broker" (the rows' ``connection``)."""
    # Through the class's bases, so that an app's own subclass of
    # RedisBroker still counts as Redis (and its message ids are kept).
    for cls in type(broker).__mro__:
        name = cls.__name__.lower()
        for kind in ("redis", "rabbitmq", "stub"):
            if kind in name:
                return kind
    return type(broker).__name__.lower().removesuffix("broker")


def _use_send_encoder() -> None:
    """Make Dramatiq's global encoder a SendEncoder if the app has left it at the default.

    Same bytes as the default JSONEncoder, so brokers, workers and other
    processes see no difference; the producer's hook then reuses the text
    the broker had encoded (see :class:`~watchtower.payload.SendEncoder`).
    An app that sets its own encoder (before or after) keeps it, and the
    hook encodes the payload itself.
    """
    if type(dramatiq.get_encoder()) is dramatiq.JSONEncoder:
        dramatiq.set_encoder(SendEncoder())


class WatchtowerMiddleware(dramatiq.Middleware):
    """Records every message's life into the Watchtower ledger.

    Parameters (all keyword-only, all optional):

    - ``settings``: a loaded :class:`~watchtower.config.Settings`; by default
      they are loaded from the usual places (file, environment);
    - ``database_url``: overrides ``settings.database_url``;
    - ``recorder``: a ready :class:`~watchtower.recorder.Recorder` to use
      instead of making one;
    - ``worker_id``: this process's worker id (default ``HOST-PID``);
    - ``register_worker``: keep this process's row in the workers table
      (status, heartbeat, counts).  ``watchtower worker`` turns it off and
      keeps the row itself.
    """

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        database_url: str | None = None,
        recorder: Recorder | None = None,
        worker_id: str | None = None,
        register_worker: bool = True,
    ) -> None:
        if settings is None:
            settings = load_settings(overrides={"database_url": database_url})
        self.settings = settings
        if recorder is None:
            url = database_url or settings.database_url
            recorder = Recorder(
                url,
                flush_interval=settings.recorder_flush_interval,
                buffer_size=settings.recorder_buffer_size,
                batch_size=settings.recorder_batch_size,
                nice=settings.recorder_nice,
                spool_dir=spool_directory(settings.recorder_spool_dir, url),
                spool_bytes=settings.recorder_spool_bytes,
                shutdown_timeout=settings.recorder_shutdown_timeout,
                hostname=settings.hostname,
            )
        self.recorder = recorder
        self._database_url = database_url or settings.database_url
        self._lookup: Any = None  # the ledger, for redelivered messages (see watchtower.poison)
        self.worker_id = worker_id
        self.register_worker = register_worker
        self.listeners: list[Callable[[JobEvent], None]] = []
        self.hook_errors = 0
        self._last_error_log = 0.0
        self._connection = "unknown"
        self._retries = True
        _use_send_encoder()
        # Ids of delayed messages this process's delay consumer holds: their
        # next enqueue without a delay is a move, not a new job.
        self._delayed_here: set[str] = set()
        self._counts_lock = threading.Lock()
        self.jobs_processed = 0
        self.jobs_failed = 0
        self.in_progress = 0
        self._worker: dramatiq.Worker | None = None
        self._heartbeat_on = False
        try:
            # Prometheus counters of the events and of the recorder's health,
            # their values kept where these settings say (see metric_listeners.install).
            metric_listeners.install(self)
        except Exception:
            logger.exception("watchtower metrics are off in this process: they could not be set up")

    # Setup ----------------------------------------------------------------

    @_guarded
    def after_declare_actor(self, broker: dramatiq.Broker, actor: dramatiq.Actor[Any, Any]) -> None:
        # Its series at 0 before its first message.  Dramatiq calls this for
        # the actors declared before the middleware was added, too.
        metrics.declare(actor.queue_name, actor.actor_name)

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        self._inspect(broker)

    def _inspect(self, broker: dramatiq.Broker) -> None:
        self._connection = broker_kind(broker)
        self._retries = any(isinstance(m, Retries) for m in broker.middleware)

    @_guarded
    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        # Here, not after the boot: Dramatiq starts the worker threads before
        # it emits after_worker_boot, and the first jobs may start meanwhile.
        if self.worker_id is None:
            self.worker_id = f"{self.settings.hostname}-{os.getpid()}"  # the name supervisors know this host by

    @_guarded
    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._inspect(broker)
        self.recorder.cancel_shutdown()  # a worker runs (again): writes may take their time
        self._worker = worker
        hostname = self.settings.hostname
        if self.register_worker and self.worker_id is not None:
            now = time.time_ns() // 1_000_000
            self.recorder.record_worker(WorkerEvent(self.worker_id, {
                "hostname": hostname,
                "pid": os.getpid(),
                "queues": sorted({q_name(q) for q in (consumer_whitelist(worker) or broker.get_declared_queues())}),
                "status": WorkerStatus.RUNNING,
                "started_at": now,
                "last_heartbeat": now,
                "stopped_at": None,
            }))
            if not self._heartbeat_on:  # once, however many workers this broker runs in turn
                self._heartbeat_on = True
                self.recorder.every(self.settings.heartbeat_interval, self._heartbeat)

    def _heartbeat(self) -> None:
        if self.worker_id is None or self._worker is None:
            return
        fields = {**self.worker_counts(), ALIVE_AS: WorkerStatus.RUNNING}  # a row wrongly marked lost comes back
        self.recorder.record_worker(WorkerEvent(self.worker_id, fields))

    def worker_counts(self) -> dict[str, object]:
        """This process's heartbeat and counts, as worker-row fields."""
        return {
            "last_heartbeat": time.time_ns() // 1_000_000,
            "jobs_processed": self.jobs_processed,
            "jobs_failed": self.jobs_failed,
        }

    @_guarded
    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        # The stop's one budget for the ledger starts now: the jobs in hand
        # finish, then this hook, the worker process and the exit share it.
        self.recorder.begin_shutdown()
        if self.register_worker and self.worker_id is not None:
            self.recorder.record_worker(WorkerEvent(self.worker_id, {"status": WorkerStatus.STOPPING}))

    @_guarded
    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._worker = None  # no heartbeats for a worker that has stopped
        if self.register_worker and self.worker_id is not None:
            fields = self.worker_counts()
            fields.update(status=WorkerStatus.STOPPED, stopped_at=time.time_ns() // 1_000_000, exit_code=0)
            self.recorder.record_worker(WorkerEvent(self.worker_id, fields))
        # Within what is left of the budget, and not at all while the
        # database is away: the close at exit spools what is unwritten.
        self.recorder.flush(timeout=self.recorder.shutdown_remaining())

    # Events ---------------------------------------------------------------

    def _emit(self, event: JobEvent) -> None:
        self.recorder.record(event)
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:
                self.hook_errors += 1
                logger.exception("watchtower listener %r failed", listener)

    def _event(self, message: dramatiq.Message, kind: Kind, attempt: int, **fields: Any) -> JobEvent:
        """An event about ``message`` (a Message, not its proxy: see _unwrap)."""
        connection = self._connection
        # The leading fields by position: this runs in the producer's send().
        return JobEvent(
            message.message_id, kind, attempt, time.time_ns() // 1000, q_name(message.queue_name),
            message.actor_name, connection, message.message_timestamp,
            # Only Redis has an id of its own (dead letters are keyed by it);
            # a message sent on from another broker may still carry a stale one.
            broker_message_id=message.options.get(REDIS_MESSAGE_ID) if connection == "redis" else None,
            **fields,
        )

    @_guarded
    def before_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message, delay: int | None) -> None:
        if not delay and message.message_id in self._delayed_here:
            message.options[READY_AT_OPTION] = time.time_ns() // 1_000_000

    @_guarded
    def after_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message, delay: int | None) -> None:
        if self._connection == "unknown":
            self._inspect(broker)
        options = message.options
        attempt = options.get("retries", 0) + 1
        payload = None
        if not delay and message.message_id in self._delayed_here:
            self._delayed_here.discard(message.message_id)
            kind = Kind.MOVED
        elif attempt > 1:
            kind = Kind.REQUEUED
        else:
            kind = Kind.DELAYED if delay else Kind.ENQUEUED
            encoder = dramatiq.get_encoder()
            payload = (encoder.sent_text(message) if type(encoder) is SendEncoder else None) or encode_message(message)
        self._emit(self._event(
            message, kind, attempt,
            payload=payload,
            eta=options.get("eta") if delay else None,
            exception=_cap(options.get("traceback")),
        ))

    @_guarded
    def before_delay_message(self, broker: dramatiq.Broker, message: Any) -> None:
        self._delayed_here.add(message.message_id)

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        # A give-up must reach Dramatiq as SkipMessage: not guarded as a whole.
        if redelivered(message) and self._give_up_redelivered(message):
            raise SkipMessage("given up: lost max_lost times")
        self._record_start(message)

    def _give_up_redelivered(self, message: Any) -> bool:
        """Whether a message the broker delivered again is to be given up (and get ready for it)."""
        raw = _unwrap(message)
        attempt = raw.options.get("retries", 0) + 1
        try:
            from .poison import check_redelivered

            if self._lookup is None:
                from .store import open_database

                self._lookup = open_database(self._database_url)
            reason = check_redelivered(
                self._lookup, raw.message_id, attempt, self.worker_id, max_lost=self.settings.max_lost
            )
        except Exception:
            self.hook_errors += 1
            logger.warning("cannot look up redelivered message %s in the ledger: it runs", raw.message_id,
                           exc_info=True)
            return False
        if reason is None:
            return False
        state = _proxy_state(message)[_STATE] = _Attempt(attempt)
        state.exception = reason
        state.given_up = True
        message.fail()  # Dramatiq nacks a failed message: to the dead-letter queue
        queue = q_name(raw.queue_name)
        metric_listeners.record_given_up(queue, raw.actor_name, failed=False)
        logger.warning("gave up job %s of %s/%s: %s", raw.message_id, queue, raw.actor_name, reason)
        return True

    @_guarded
    def _record_start(self, message: Any) -> None:
        raw = _unwrap(message)
        options = raw.options
        attempt = options.get("retries", 0) + 1
        started = time.time_ns() // 1_000_000
        _proxy_state(message)[_STATE] = _Attempt(attempt, started, time.perf_counter())
        with self._counts_lock:
            self.in_progress += 1
        ready = options.get(READY_AT_OPTION) or max(raw.message_timestamp, options.get("eta") or 0)
        self._emit(self._event(
            raw, Kind.STARTED, attempt,
            worker_id=self.worker_id,
            started_at=started,
            ready_at=ready,
            exception=_cap(options.get("traceback")),
        ))

    @_guarded
    def after_process_message(
        self, broker: dramatiq.Broker, message: Any, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        self._finish(message, exception)

    @_guarded
    def after_skip_message(self, broker: dramatiq.Broker, message: Any) -> None:
        state = self._finish(message, None)
        state.skipped = not state.given_up

    def _finish(self, message: Any, exception: BaseException | None) -> _Attempt:
        state = _attempt(message)
        if state is None:  # skipped before this middleware's before_process_message ran
            state = _proxy_state(message)[_STATE] = _Attempt()
        state.finished = time.time_ns() // 1_000_000
        if state.clock is not None:
            state.duration = time.perf_counter() - state.clock
            with self._counts_lock:
                self.in_progress -= 1
        if exception is not None:
            state.raised = True
            if proxy_exception(message) is not exception:
                # The worker keeps its exception on the message until the ack,
                # whose hook writes the traceback (see _traceback); one that
                # came some other way is written now, while it is at hand.
                state.exception = format_exception(exception)
        return state

    @_guarded
    def after_ack(self, broker: dramatiq.Broker, message: Any) -> None:
        raw = _unwrap(message)
        if is_delay_queue(raw.queue_name):
            return  # the delay consumer moved it to its queue: not an outcome
        state = _attempt(message)
        if state is not None and state.skipped:
            kind = Kind.SKIPPED
        elif state is not None and state.raised:
            kind = Kind.RETRIED if self._retries else Kind.FAILED
        else:
            kind = Kind.COMPLETED
        self._outcome(message, raw, state, kind)

    @_guarded
    def after_nack(self, broker: dramatiq.Broker, message: Any) -> None:
        state = _attempt(message)
        kind = Kind.SKIPPED if state is not None and state.skipped else Kind.FAILED
        self._outcome(message, _unwrap(message), state, kind)

    def _outcome(self, message: Any, raw: dramatiq.Message, state: _Attempt | None, kind: Kind) -> None:
        if state is None:  # the hooks never saw it run (no such actor, say)
            state = _Attempt()
        options = raw.options
        attempt = state.number
        if attempt is None:  # never started: skipped before it ran, or no such actor
            attempt = options.get("retries", 0) + 1
        exception = state.exception
        if exception is None and (state.raised or kind is Kind.FAILED):
            exception = self._traceback(message, options, state)
        if exception is None:
            # The last failure's traceback, which the row keeps: the event
            # that ends an attempt must carry every value that older events
            # may disagree on, or the row would depend on arrival order.
            exception = _cap(options.get("traceback"))
        finished = state.finished or time.time_ns() // 1_000_000
        started = state.started
        if started is not None:
            with self._counts_lock:
                self.jobs_processed += 1
                if kind is Kind.FAILED or kind is Kind.RETRIED:
                    self.jobs_failed += 1
        self._emit(self._event(
            raw, kind, attempt,
            payload=encode_message(raw) if kind is Kind.FAILED or kind is Kind.SKIPPED else None,
            worker_id=self.worker_id,  # also for a message skipped before it started
            # Never started (skipped by AgeLimit): picked up and ended at once,
            # rather than leave the row showing an earlier attempt's start.
            started_at=started if started is not None else finished,
            finished_at=finished if kind.is_final else None,
            duration=state.duration,
            exception=exception,
        ))

    def _traceback(self, message: Any, options: dict[str, Any], state: _Attempt) -> str | None:
        """The traceback of the exception that ended this attempt, capped (see :mod:`watchtower.tracebacks`).

        Runs in the ack's hooks, after every ``after_process_message``: by
        then Retries has written the attempt's traceback into the options
        (and counted the attempt in ``retries``) unless it let the exception
        through (``throws``).  That text is kept when no traceback of the
        chain is deeper than the 30 frames Retries writes; otherwise the
        traceback is written here, on the worker's thread, once.
        """
        failure = proxy_exception(message)
        if failure is None:
            return None
        text = options.get("traceback")
        if text is not None and state.number is not None and options.get("retries") == state.number and within(failure):
            return _cap(text)
        return format_exception(failure)
