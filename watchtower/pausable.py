"""A Dramatiq Worker that can give back everything it holds, and take up work again.

Dramatiq's own ``Worker.pause()`` parks the threads but keeps the prefetched
messages unacked in memory; on Redis the worker's heartbeat stops with them,
so after the broker's ``heartbeat_timeout`` another worker takes them and they
run twice after ``resume()``.  It also blocks about 3 s (a consumer parks only
after an empty fetch and its restart delay).

:class:`PausableWorker` pauses by *releasing*: the same steps as
``Worker.stop()`` (worker threads finish the jobs in hand, consumers stop,
what sits in the work queue, the delay queues and the consumers' fetch cache
is requeued, consumers are closed) without the ``worker_shutdown`` signals,
because the process is not shutting down.  Resuming boots fresh consumers and
threads.  A released worker holds no message at all, so nothing it had can be
redelivered behind its back.

Two waits of the stock threads are shortened so that a stop or a pause takes
effect within a fraction of a second whatever ``--sleep`` says:

- worker threads poll the in-memory work queue every ``THREAD_POLL`` seconds
  (stock: the worker timeout), and rest between jobs when asked to;
- consumers are wrapped (:class:`_IdleConsumer`): the broker's own consumer
  polls with a tiny timeout, and the idle wait (Dramatiq's exponential
  backoff, up to the worker timeout) happens here, in short slices that end
  as soon as the consumer thread is told to stop.

This module leans on Dramatiq 2.x internals (``ConsumerThread``,
``WorkerThread`` and its ``process_message``, ``_WorkerMiddleware``, the
Worker's ``_add_worker``, ``consumers``, ``workers`` and ``work_queue``, the
Redis consumer's ``message_cache``), all named in
:mod:`watchtower.dramatiq_internals`; ``tests/test_dramatiq_internals.py``
names the one that moved if they change.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from queue import PriorityQueue
from typing import Any

import dramatiq
from dramatiq.message import Message

from .dramatiq_internals import (
    BrokerConnectionError,
    MessageProxy,
    WorkerThread,
    compute_backoff,
    consumer_is_full,
    fetch_cache,
    join_all,
    queued_messages,
    remove_middleware,
    thread_running,
    worker_router,
)

__all__ = ["PausableWorker", "install_idle_consumers"]

logger = logging.getLogger(__name__)

#: Seconds between two looks at the work queue (and at the stop flag) by an idle thread.
THREAD_POLL = 0.1
#: Longest single sleep of an idle consumer, so that it notices a stop quickly.
IDLE_SLICE = 0.05
#: Timeout (ms) handed to the broker's consumer: it should poll, not wait.
INNER_TIMEOUT_MS = 10


class _RestingWorkerThread(WorkerThread):
    """A worker thread that rests ``rest`` seconds after each job and stops promptly."""

    def __init__(self, *, rest: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.timeout = THREAD_POLL
        self.rest = rest
        self._stopped = threading.Event()

    def process_message(self, message: MessageProxy) -> None:
        super().process_message(message)
        if self.rest > 0 and self.running:
            # After the ack (done in super()), so that resting holds nothing.
            self._stopped.wait(self.rest)

    def stop(self) -> None:
        super().stop()
        self._stopped.set()


class PausableWorker(dramatiq.Worker):
    """A ``dramatiq.Worker`` with :meth:`release` (pause) and :meth:`take_up` (resume).

    ``rest`` is the seconds each thread waits after a job; ``worker_timeout``
    (ms) is the longest idle wait between two fetches of an empty queue.
    """

    def __init__(
        self,
        broker: dramatiq.Broker,
        *,
        queues: set[str] | None = None,
        worker_timeout: int = 1000,
        worker_threads: int = 8,
        rest: float = 0.0,
    ) -> None:
        super().__init__(broker, queues=queues, worker_timeout=worker_timeout, worker_threads=worker_threads)
        self.rest = rest
        self.released = False
        self._router: dramatiq.Middleware | None = None
        self._lock = threading.Lock()

    # Life cycle -----------------------------------------------------------

    def start(self) -> None:
        """Boot: the ``worker_boot`` signals around :meth:`take_up`."""
        self.broker.emit_before("worker_boot", self)
        self._take_up()
        self.broker.emit_after("worker_boot", self)

    def stop(self, timeout: int = 600_000) -> None:
        """Shut down: the ``worker_shutdown`` signals around :meth:`release`."""
        self.broker.emit_before("worker_shutdown", self)
        self.release(timeout=timeout)
        self.broker.emit_after("worker_shutdown", self)

    def take_up(self) -> None:
        """Start consuming again after :meth:`release` (no-op if consuming)."""
        with self._lock:
            if self.released:
                self._take_up()

    def _take_up(self) -> None:
        self.released = False
        # Adding the router replays every declared queue to it, which starts
        # one consumer per queue (and delay queue), as Worker.start does.
        router = self._router = worker_router(self)
        self.broker.add_middleware(router)
        for _ in range(self.worker_threads):
            self._add_worker()

    def release(self, timeout: int = 600_000) -> list[str]:
        """Stop consuming and give back every message held; wait for jobs in hand.

        The order is Worker.stop's: worker threads first (the consumers keep
        heart-beating meanwhile, so the jobs in hand are not redelivered),
        then the consumers, then the requeue.  Returns the ids given back.
        """
        with self._lock:
            if self.released:
                return []
            self.released = True
            for thread in self.workers:
                thread.stop()
            join_all(self.workers, timeout)
            for consumer_thread in self.consumers.values():
                consumer_thread.stop()
            join_all(self.consumers.values(), timeout)

            given_back: list[str] = []
            by_queue: dict[str, list[MessageProxy]] = defaultdict(list)
            for message in queued_messages(self.work_queue):
                by_queue[message.queue_name].append(message)
            for queue_name, messages in by_queue.items():
                try:
                    self.consumers[queue_name].requeue_messages(messages)
                    given_back.extend(message.message_id for message in messages)
                except BrokerConnectionError:
                    logger.warning("cannot requeue %d messages of queue %s", len(messages), queue_name, exc_info=True)
            for consumer_thread in self.consumers.values():
                # Requeues its delay queue; our consumer wrapper gives back its fetch cache.
                consumer_thread.close()

            if self._router is not None:
                remove_middleware(self.broker, self._router)
            self._router = None
            # Fresh containers: a thread that outlived the timeout keeps the old ones.
            self.consumers = {}
            self.workers = []
            self.work_queue = PriorityQueue()
            if given_back:
                logger.info("gave back %d prefetched messages", len(given_back))
            return given_back

    def _add_worker(self) -> None:
        thread = _RestingWorkerThread(
            rest=self.rest,
            broker=self.broker,
            consumers=self.consumers,
            work_queue=self.work_queue,
            worker_timeout=self.worker_timeout,
        )
        thread.start()
        self.workers.append(thread)


class _IdleConsumer(dramatiq.Consumer):
    """Wraps a broker's consumer: idle waits in short slices, gives back its cache on close."""

    def __init__(self, inner: dramatiq.Consumer, idle_ms: int) -> None:
        self.inner = inner
        self.idle_ms = max(10, idle_ms)
        self.misses = 0
        # broker.consume() is called by the ConsumerThread that will use us.
        self.thread = threading.current_thread()

    def __iter__(self) -> _IdleConsumer:
        return self

    def __next__(self) -> MessageProxy | None:
        message = next(self.inner)
        if message is not None:
            self.misses = 0
            return message
        if consumer_is_full(self.inner):
            # Not idle, only full: look again soon, a thread will free a slot.
            self._sleep(IDLE_SLICE)
            return None
        self.misses, backoff_ms = compute_backoff(self.misses, max_backoff=self.idle_ms)
        self._sleep(backoff_ms / 1000)
        return None

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while thread_running(self.thread):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(IDLE_SLICE, left))

    def ack(self, message: MessageProxy) -> None:
        self.inner.ack(message)

    def nack(self, message: MessageProxy) -> None:
        self.inner.nack(message)

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        self.inner.requeue(messages)

    def close(self) -> None:
        self._give_back_cache()
        self.inner.close()

    def _give_back_cache(self) -> None:
        """Requeue what the Redis consumer fetched but never handed out.

        Dramatiq's stop leaves these in the worker's ack set, where they wait
        for the heartbeat timeout, or forever if the process lives on.
        """
        cache = fetch_cache(self.inner)
        if not cache:
            return
        messages = []
        for data in cache:
            if data is None:
                continue
            try:
                messages.append(MessageProxy(Message.decode(data)))
            except Exception:
                logger.exception("cannot decode a prefetched message to give it back")
        cache.clear()
        if messages:
            try:
                self.inner.requeue(messages)
            except BrokerConnectionError:
                logger.warning("cannot requeue %d fetched messages", len(messages), exc_info=True)


def install_idle_consumers(broker: dramatiq.Broker) -> None:
    """Make ``broker.consume`` return :class:`_IdleConsumer` wrappers (this process only)."""
    original = broker.consume

    def consume(queue_name: str, prefetch: int = 1, timeout: int = 30_000) -> dramatiq.Consumer:
        inner = original(queue_name=queue_name, prefetch=prefetch, timeout=INNER_TIMEOUT_MS)
        return _IdleConsumer(inner, timeout)

    broker.consume = consume  # type: ignore[method-assign]
