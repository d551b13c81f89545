"""Every undocumented part of Dramatiq that Watchtower relies on, in one place.

Read off Dramatiq 2.2.1 (``dramatiq/broker.py``, ``worker.py``, ``common.py``,
``brokers/redis.py`` and its ``dispatch.lua``, ``brokers/stub.py``,
``middleware/retries.py``, ``middleware/time_limit.py``).  Any minor release
may move them, hence the upper bound on ``dramatiq`` in pyproject.toml;
``tests/test_dramatiq_internals.py`` has one test per item below, named after
it, run against the installed Dramatiq (a real Redis for the Redis items).

Messages (the middleware's hooks, per message):

- ``MessageProxy._message``: the Message behind a proxy (:func:`unwrap_proxy`);
  consumers of the Redis and Stub brokers hand out plain ``MessageProxy``
  objects, not subclasses;
- a ``MessageProxy`` has an instance ``__dict__`` of its own, where the hooks
  keep their per-attempt state (:data:`proxy_state`);
- ``MessageProxy._exception``: what ``stuff_exception`` stored
  (:func:`proxy_exception`).

The worker (:mod:`watchtower.pausable`):

- ``dramatiq.worker.WorkerThread``, subclassed: keyword arguments ``broker``,
  ``consumers``, ``work_queue``, ``worker_timeout``; its loop reads
  ``self.timeout`` (seconds) and ``self.running`` on every turn; ``stop()``;
  its loop hands each proxy to ``process_message(message)``, which has the
  message acked (or nacked) before it returns;
- ``Worker._add_worker()``, overridden by :class:`~watchtower.pausable.PausableWorker`:
  ``Worker.start`` adds each of its ``worker_threads`` threads through it;
- ``dramatiq.worker._WorkerMiddleware(worker)`` (:func:`worker_router`): added
  to a broker, it starts one ``ConsumerThread`` per declared queue and delay
  queue in ``worker.consumers`` (through ``Worker._add_consumer``); taken out
  of ``broker.middleware`` (:func:`remove_middleware`) it starts no more;
- ``Worker.consumers`` (dict of ``ConsumerThread``), ``Worker.workers``,
  ``Worker.work_queue`` (a PriorityQueue of items whose ``.message`` is the
  proxy: :func:`queued_messages`), ``Worker.worker_threads``,
  ``Worker.worker_timeout``, ``Worker.consumer_whitelist``
  (:func:`consumer_whitelist`);
- ``ConsumerThread``: ``stop()``, ``requeue_messages(messages)``, ``close()``
  (which also requeues its delay queue), ``running``; it calls
  ``broker.consume(queue_name=..., prefetch=..., timeout=...)`` from its own
  thread;
- the Redis consumer's ``message_cache`` (fetched, not yet handed out: raw
  encoded messages), ``prefetch`` and ``outstanding_message_count``
  (:func:`fetch_cache`, :func:`consumer_is_full`);
- ``dramatiq.common.compute_backoff``, ``iter_queue``, ``join_all``;
- ``Retries.max_retries`` and ``TimeLimit.time_limit``, read on every message,
  so setting them after the broker is built takes effect
  (:func:`set_max_retries`, :func:`set_time_limit`).

The Redis broker's storage (dispatch.lua), under ``broker.namespace`` with
``broker.client`` (:func:`redis_namespace`, :func:`redis_client`):

- ``ns:q`` the list of ready ids, ``ns:q.msgs`` the hash of their bodies;
- ``ns:q.DQ`` / ``ns:q.DQ.msgs`` the delayed ones;
- ``ns:q.XQ`` the dead letters (a sorted set scored by nack time) and
  ``ns:q.XQ.msgs`` their bodies, keyed by the ``redis_message_id`` option
  (:data:`REDIS_MESSAGE_ID`) that every Redis enqueue writes;
- ``ns:__acks__.<broker_id>.<q>`` the set of a consumer's unacked ids,
  ``ns:__heartbeats__`` the sorted set of consumers' heartbeats;
- ``RedisBroker.broker_id``: the name every consumer of the broker writes
  its ack sets and heartbeat under, read on every command, so that a new
  value set before the first fetch names them all (:func:`redis_broker_id`,
  :func:`set_redis_broker_id`).  Its maintenance puts an unacked id back
  only when the body is still in ``ns:q.msgs``; a nack moves the body to
  ``ns:q.XQ.msgs`` and scores the id by the time in ms.

RabbitMQ: the consumer's proxy keeps the delivery's ``redelivered`` flag in
its own ``__dict__`` (:func:`redelivered`).

The StubBroker: ``queues`` (name to Queue of encoded messages) and
``dead_letters_by_queue`` (name to the list its consumers append to).

Queue names (``dramatiq.common``): ``q.DQ`` is the delay queue of ``q``
and ``q.XQ`` its dead letters; ``q_name`` gives ``q`` back from any of them
(:func:`q_name`, :func:`dq_name`, :func:`is_delay_queue`).

Across releases: the broker's connection error is ``BrokerConnectionError``
since Dramatiq 2.1 and ``ConnectionError`` in 2.0
(:data:`BrokerConnectionError`).
"""

from __future__ import annotations

from collections.abc import Iterator
from queue import Queue
from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.common import compute_backoff, dq_name, iter_queue, join_all, q_name
from dramatiq.worker import ConsumerThread, WorkerThread, _WorkerMiddleware

__all__ = [
    "ConsumerThread",
    "MessageProxy",
    "REDIS_MESSAGE_ID",
    "WorkerRouter",
    "WorkerThread",
    "ack_key",
    "ack_keys_pattern",
    "compute_backoff",
    "consumer_is_full",
    "consumer_whitelist",
    "dead_key",
    "dead_messages_key",
    "delayed_key",
    "delayed_messages_key",
    "dq_name",
    "fetch_cache",
    "heartbeats_key",
    "is_delay_queue",
    "iter_queue",
    "join_all",
    "messages_key",
    "proxy_exception",
    "proxy_state",
    "q_name",
    "queued_messages",
    "ready_key",
    "redelivered",
    "redis_broker_id",
    "redis_client",
    "redis_namespace",
    "remove_middleware",
    "set_max_retries",
    "set_redis_broker_id",
    "set_time_limit",
    "stub_dead_letters",
    "stub_queue",
    "thread_running",
    "unwrap_proxy",
    "worker_router",
]

# Queue names --------------------------------------------------------------------


def is_delay_queue(queue: str) -> bool:
    """Whether ``queue`` is the delay queue of another (``q.DQ``)."""
    return dq_name(q_name(queue)) == queue


# Messages ----------------------------------------------------------------------


def unwrap_proxy(message: Any) -> Any:
    """The ``dramatiq.Message`` behind a MessageProxy (anything else is returned as is).

    A proxy hands every attribute read to its message through ``__getattr__``,
    a Python call per read: the hooks read the message itself.
    """
    return message._message if type(message) is MessageProxy else message


#: The instance ``__dict__`` of a MessageProxy (``vars``), where the hooks keep
#: their state: a dict lookup, never the proxy's forwarding ``__getattr__``.
proxy_state = vars


def proxy_exception(message: Any) -> BaseException | None:
    """The exception ``stuff_exception`` stored in ``message``, if any."""
    return getattr(message, "_exception", None)


def redelivered(message: Any) -> bool:
    """Whether RabbitMQ delivered ``message`` before (its consumer's connection closed, say).

    False for the proxies of other brokers, which have no such flag: a dict
    lookup, never the proxy's forwarding ``__getattr__``.
    """
    return bool(vars(message).get("redelivered", False))


# The worker ---------------------------------------------------------------------

#: The middleware class a Worker adds to start its consumers.
WorkerRouter = _WorkerMiddleware


def worker_router(worker: dramatiq.Worker) -> dramatiq.Middleware:
    """The middleware that starts ``worker``'s consumers (one per declared queue) once added."""
    return _WorkerMiddleware(worker)


def remove_middleware(broker: dramatiq.Broker, middleware: dramatiq.Middleware) -> None:
    """Take ``middleware`` out of ``broker`` (Dramatiq has no call for it): it gets no more signals."""
    if middleware in broker.middleware:
        broker.middleware.remove(middleware)


def queued_messages(work_queue: Any) -> Iterator[MessageProxy]:
    """Empty a Worker's work queue without blocking, yielding the messages it held."""
    for item in iter_queue(work_queue):
        yield item.message


def consumer_whitelist(worker: dramatiq.Worker) -> set[str] | None:
    """The queues ``worker`` was told to consume (None or empty: every declared queue)."""
    return worker.consumer_whitelist  # type: ignore[no-any-return]


def thread_running(thread: Any) -> bool:
    """Whether a Dramatiq thread (consumer or worker) has not been told to stop.

    True for a thread that is not one of Dramatiq's (no ``running``).
    """
    return getattr(thread, "running", True)


def fetch_cache(consumer: Any) -> list[Any] | None:
    """The Redis consumer's fetched, not yet handed out messages (encoded), or None."""
    return getattr(consumer, "message_cache", None)


def consumer_is_full(consumer: Any) -> bool:
    """Whether a consumer holds as many messages as its prefetch allows (False if it cannot tell)."""
    prefetch = getattr(consumer, "prefetch", None)
    return prefetch is not None and getattr(consumer, "outstanding_message_count", 0) >= prefetch


def set_max_retries(middleware: Any, max_retries: int) -> None:
    """A Retries middleware's default for actors without their own ``max_retries``."""
    middleware.max_retries = max_retries


def set_time_limit(middleware: Any, time_limit_ms: float) -> None:
    """A TimeLimit middleware's default for actors without their own ``time_limit`` (ms)."""
    middleware.time_limit = time_limit_ms


# The Redis broker's storage -------------------------------------------------------

#: The option every Redis enqueue writes: the id the broker keys the message by.
#: The broker's connection error: ``BrokerConnectionError`` since Dramatiq 2.1,
#: ``ConnectionError`` in 2.0 (a public name, renamed; the old one is an alias
#: until 3.0).
BrokerConnectionError: type[Exception] = getattr(dramatiq.errors, "BrokerConnectionError", None) or \
    dramatiq.errors.ConnectionError

REDIS_MESSAGE_ID = "redis_message_id"


def redis_client(broker: Any) -> Any:
    """The redis-py client a RedisBroker talks through."""
    return broker.client


def redis_broker_id(broker: Any) -> str:
    """The name a RedisBroker's consumers keep their ack sets and heartbeat under."""
    return broker.broker_id  # type: ignore[no-any-return]


def set_redis_broker_id(broker: Any, broker_id: str) -> None:
    """Name a RedisBroker's consumers ``broker_id`` from its next command on."""
    broker.broker_id = broker_id


def redis_namespace(broker: Any) -> str:
    """The prefix of every key a RedisBroker writes."""
    return broker.namespace  # type: ignore[no-any-return]


def ready_key(namespace: str, queue: str) -> str:
    """The list of ids ready to be consumed from ``queue``."""
    return f"{namespace}:{queue}"


def messages_key(namespace: str, queue: str) -> str:
    """The hash of the bodies of ``queue``'s ready and in-flight messages."""
    return f"{namespace}:{queue}.msgs"


def delayed_key(namespace: str, queue: str) -> str:
    """The list of ids of ``queue``'s delayed messages."""
    return f"{namespace}:{q_name(queue)}.DQ"


def delayed_messages_key(namespace: str, queue: str) -> str:
    """The hash of the bodies of ``queue``'s delayed messages (its length: how many)."""
    return f"{namespace}:{q_name(queue)}.DQ.msgs"


def dead_key(namespace: str, queue: str) -> str:
    """The sorted set of ``queue``'s dead-letter ids, scored by nack time (ms)."""
    return f"{namespace}:{q_name(queue)}.XQ"


def dead_messages_key(namespace: str, queue: str) -> str:
    """The hash of the bodies of ``queue``'s dead letters, keyed by REDIS_MESSAGE_ID."""
    return f"{namespace}:{q_name(queue)}.XQ.msgs"


def ack_key(namespace: str, broker_id: str, queue: str) -> str:
    """The set of ids of ``queue`` that the consumer ``broker_id`` fetched and has not acked."""
    return f"{namespace}:__acks__.{broker_id}.{queue}"


def ack_keys_pattern(namespace: str) -> str:
    """A SCAN pattern matching every consumer's set of unacked ids."""
    return f"{namespace}:__acks__.*"


def heartbeats_key(namespace: str) -> str:
    """The sorted set of consumers' ``broker_id`` scored by their last heartbeat (ms)."""
    return f"{namespace}:__heartbeats__"


# The StubBroker ------------------------------------------------------------------------


def stub_queue(broker: Any, queue: str) -> Queue[Any] | None:
    """The StubBroker's Queue of encoded messages named ``queue`` (None if undeclared)."""
    return broker.queues.get(queue)  # type: ignore[no-any-return]


def stub_dead_letters(broker: Any, queue: str) -> list[Any]:
    """The StubBroker's dead letters of ``queue``: the very list its consumers append to.

    A new empty list (not the broker's) when the queue has none yet.
    """
    return broker.dead_letters_by_queue.get(q_name(queue), [])  # type: ignore[no-any-return]
