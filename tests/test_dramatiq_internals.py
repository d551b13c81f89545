"""Contract tests: each Dramatiq internal that watchtower.dramatiq_internals names still holds.

One test per internal, named after it, against the installed Dramatiq (a
real Redis for the Redis broker's storage), so that a new release that
moves one fails the test naming it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from queue import PriorityQueue
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Retries, TimeLimit

from tests.support.polling import wait_until
from tests.support.servers import REDIS_URL, unique
from watchtower import dramatiq_internals as internals

DEADLINE = 30.0


@pytest.fixture
def redis_broker(redis_namespace: str) -> Iterator[RedisBroker]:
    broker = RedisBroker(url=REDIS_URL, namespace=redis_namespace, middleware=[])
    yield broker
    broker.close()


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(REDIS_URL)
    yield connection
    connection.close()


def _actor(broker: dramatiq.Broker, queue: str) -> Any:
    @dramatiq.actor(queue_name=queue, broker=broker, actor_name=unique("actor"))
    def noop(value: int = 0) -> None:
        return None

    return noop


def _stop(threads: Any) -> None:
    for thread in threads:
        thread.stop()
    for thread in threads:
        thread.join(DEADLINE)


# Queue names ----------------------------------------------------------------------


def test_q_name_and_dq_name_name_a_queues_delay_and_dead_letter_queues(queue_name: str) -> None:
    assert internals.dq_name(queue_name) == f"{queue_name}.DQ"
    for name in (queue_name, f"{queue_name}.DQ", f"{queue_name}.XQ"):
        assert internals.q_name(name) == queue_name
    assert internals.is_delay_queue(f"{queue_name}.DQ")
    assert not internals.is_delay_queue(queue_name) and not internals.is_delay_queue(f"{queue_name}.XQ")
    broker = StubBroker(middleware=[])
    _actor(broker, queue_name)
    assert broker.get_declared_delay_queues() == {internals.dq_name(queue_name)}


# Messages -------------------------------------------------------------------------


def test_message_proxy_keeps_its_message_in_underscore_message(redis_broker: RedisBroker, queue_name: str) -> None:
    actor = _actor(redis_broker, queue_name)
    sent = actor.send(1)
    consumer = redis_broker.consume(queue_name, prefetch=1, timeout=100)
    try:
        proxy = wait_until(lambda: next(consumer), timeout=DEADLINE, message="a message from Redis")
        # A plain MessageProxy (the hooks' fast path checks the exact type).
        assert type(proxy) is internals.MessageProxy
        message = internals.unwrap_proxy(proxy)
        assert type(message) is dramatiq.Message
        assert message.message_id == sent.message_id and message.args == (1,)
        consumer.ack(proxy)
    finally:
        consumer.close()
    assert internals.unwrap_proxy(sent) is sent  # a Message passes through


def test_unwrap_proxy_passes_a_subclass_proxy_through(queue_name: str) -> None:
    # The StubBroker hands out a subclass: the hooks then read through the proxy.
    broker = StubBroker(middleware=[])
    actor = _actor(broker, queue_name)
    actor.send(2)
    consumer = broker.consume(queue_name, prefetch=1, timeout=100)
    proxy = next(consumer)
    assert isinstance(proxy, internals.MessageProxy)
    assert internals.unwrap_proxy(proxy).args == (2,)


def test_message_proxy_has_an_instance_dict_of_its_own() -> None:
    message = dramatiq.Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={})
    proxy = internals.MessageProxy(message)
    internals.proxy_state(proxy)["_watchtower_probe"] = 42
    assert internals.proxy_state(proxy).get("_watchtower_probe") == 42
    assert not hasattr(message, "_watchtower_probe")  # kept on the proxy, not the message
    # A missing attribute goes to the message (why the hooks read the dict instead).
    with pytest.raises(AttributeError):
        _ = proxy.no_such_attribute


def test_message_proxy_keeps_the_stuffed_exception_in_underscore_exception() -> None:
    proxy = internals.MessageProxy(dramatiq.Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={}))
    assert internals.proxy_exception(proxy) is None
    error = ValueError("boom")
    proxy.stuff_exception(error)
    assert internals.proxy_exception(proxy) is error
    proxy.clear_exception()
    assert internals.proxy_exception(proxy) is None


# The worker -------------------------------------------------------------------------


def test_worker_router_starts_a_consumer_thread_per_declared_queue(redis_broker: RedisBroker, queue_name: str) -> None:
    _actor(redis_broker, queue_name)  # declares the queue and its delay queue
    worker = dramatiq.Worker(redis_broker, worker_timeout=100, worker_threads=1)
    router = internals.worker_router(worker)
    assert isinstance(router, internals.WorkerRouter)
    redis_broker.add_middleware(router)  # replays the declared queues to it
    try:
        assert set(worker.consumers) == {queue_name, f"{queue_name}.DQ"}
        assert all(isinstance(thread, internals.ConsumerThread) for thread in worker.consumers.values())
        wait_until(lambda: all(internals.thread_running(t) for t in worker.consumers.values()),
                   timeout=DEADLINE, message="the consumer threads to run")
        internals.remove_middleware(redis_broker, router)
        assert router not in redis_broker.middleware
        redis_broker.declare_queue(unique("later"))
        assert set(worker.consumers) == {queue_name, f"{queue_name}.DQ"}  # a removed router starts none
    finally:
        internals.remove_middleware(redis_broker, router)
        _stop(list(worker.consumers.values()))
        for thread in worker.consumers.values():
            thread.close()


def test_worker_keeps_its_threads_and_work_queue_in_attributes() -> None:
    worker = dramatiq.Worker(StubBroker(middleware=[]), queues={"a"}, worker_timeout=250, worker_threads=3)
    assert worker.consumers == {} and worker.workers == []
    assert isinstance(worker.work_queue, PriorityQueue)
    assert worker.worker_threads == 3 and worker.worker_timeout == 250
    assert internals.consumer_whitelist(worker) == {"a"}
    assert not internals.consumer_whitelist(dramatiq.Worker(StubBroker(middleware=[])))


def test_work_queue_items_carry_the_message_proxy(redis_broker: RedisBroker, queue_name: str) -> None:
    actor = _actor(redis_broker, queue_name)
    sent = {actor.send(i).message_id for i in range(3)}
    # Consumers only (no worker threads): what they fetch stays in the work queue.
    worker = dramatiq.Worker(redis_broker, worker_timeout=100, worker_threads=2)
    redis_broker.add_middleware(internals.worker_router(worker))
    try:
        wait_until(lambda: worker.work_queue.qsize() == 3, timeout=DEADLINE, message="3 messages in the work queue")
        _stop(list(worker.consumers.values()))
        taken = list(internals.queued_messages(worker.work_queue))
        assert {type(message) for message in taken} == {internals.MessageProxy}
        assert {message.message_id for message in taken} == sent
        assert worker.work_queue.empty()
        worker.consumers[queue_name].requeue_messages(taken)
    finally:
        worker.stop(timeout=10_000)


def test_worker_thread_takes_its_arguments_by_keyword_and_reads_timeout_each_turn() -> None:
    broker = StubBroker(middleware=[])
    thread = internals.WorkerThread(broker=broker, consumers={}, work_queue=PriorityQueue(), worker_timeout=600_000)
    assert thread.timeout == 600.0  # seconds
    thread.timeout = 0.05  # what the pausable worker's threads do
    thread.start()
    wait_until(lambda: internals.thread_running(thread), timeout=DEADLINE, message="the thread to run")
    thread.stop()
    assert not internals.thread_running(thread)
    # With the constructor's 600 s poll still in force it would not end in time.
    thread.join(DEADLINE)
    assert not thread.is_alive()


def test_worker_start_adds_each_thread_through_underscore_add_worker(queue_name: str) -> None:
    broker = StubBroker(middleware=[])
    _actor(broker, queue_name)
    added: list[int] = []

    class Counting(dramatiq.Worker):
        def _add_worker(self) -> None:
            added.append(len(self.workers))
            super()._add_worker()

    worker = Counting(broker, worker_timeout=100, worker_threads=3)
    worker.start()
    try:
        assert added == [0, 1, 2] and len(worker.workers) == 3
        assert all(isinstance(thread, internals.WorkerThread) for thread in worker.workers)
    finally:
        worker.stop(timeout=10_000)


def test_worker_thread_process_message_has_the_message_acked_before_it_returns(queue_name: str) -> None:
    acked: list[str] = []
    seen: list[tuple[str, list[str]]] = []

    class Acks(dramatiq.Middleware):
        def after_ack(self, broker: dramatiq.Broker, message: Any) -> None:
            acked.append(message.message_id)

    class Watching(internals.WorkerThread):
        def process_message(self, message: Any) -> None:
            super().process_message(message)
            seen.append((message.message_id, list(acked)))

    class Worker(dramatiq.Worker):
        def _add_worker(self) -> None:
            thread = Watching(broker=self.broker, consumers=self.consumers, work_queue=self.work_queue,
                              worker_timeout=self.worker_timeout)
            thread.start()
            self.workers.append(thread)

    broker = StubBroker(middleware=[Acks()])
    actor = _actor(broker, queue_name)
    sent = actor.send(1)
    worker = Worker(broker, worker_timeout=100, worker_threads=1)
    worker.start()
    try:
        wait_until(lambda: seen, timeout=DEADLINE, message="the message processed")
        assert seen == [(sent.message_id, [sent.message_id])]  # acked before process_message returned
    finally:
        worker.stop(timeout=10_000)


def test_consumer_thread_calls_broker_consume_by_keyword_from_its_own_thread(
    redis_broker: RedisBroker, queue_name: str
) -> None:
    _actor(redis_broker, queue_name)
    calls: list[tuple[dict[str, Any], threading.Thread]] = []
    original = redis_broker.consume

    def consume(**kwargs: Any) -> Any:  # keyword-only: a positional call fails here
        calls.append((kwargs, threading.current_thread()))
        return original(**kwargs)

    redis_broker.consume = consume  # type: ignore[method-assign]
    worker = dramatiq.Worker(redis_broker, queues={queue_name}, worker_timeout=100, worker_threads=1)
    redis_broker.add_middleware(internals.worker_router(worker))
    try:
        wait_until(lambda: len(calls) == 2, timeout=DEADLINE, message="a consume() per queue and delay queue")
        threads = {kwargs["queue_name"]: thread for kwargs, thread in calls}
        assert set(threads) == {queue_name, f"{queue_name}.DQ"}
        for kwargs, thread in calls:
            assert set(kwargs) == {"queue_name", "prefetch", "timeout"}
            assert thread is worker.consumers[kwargs["queue_name"]]
    finally:
        worker.stop(timeout=10_000)


def test_consumer_thread_has_stop_requeue_messages_and_close() -> None:
    for name in ("stop", "requeue_messages", "close"):
        assert callable(getattr(internals.ConsumerThread, name, None)), f"ConsumerThread.{name} is gone"


def test_redis_consumer_keeps_fetched_messages_in_message_cache(
    redis_broker: RedisBroker, queue_name: str, client: redis.Redis
) -> None:
    actor = _actor(redis_broker, queue_name)
    sent = [actor.send(i).message_id for i in range(5)]
    consumer = redis_broker.consume(queue_name, prefetch=5, timeout=100)
    try:
        first = wait_until(lambda: next(consumer), timeout=DEADLINE, message="a message from Redis")
        cache = internals.fetch_cache(consumer)
        assert isinstance(cache, list) and len(cache) == 4
        assert {dramatiq.Message.decode(data).message_id for data in cache} | {first.message_id} == set(sent)
        assert consumer.prefetch == 5 and consumer.outstanding_message_count == 5
        assert internals.consumer_is_full(consumer)
        consumer.ack(first)
        assert not internals.consumer_is_full(consumer)
        consumer.requeue([internals.MessageProxy(dramatiq.Message.decode(data)) for data in cache])
        cache.clear()
    finally:
        consumer.close()
    assert client.llen(internals.ready_key(redis_broker.namespace, queue_name)) == 4
    stub = StubBroker(middleware=[])
    stub.declare_queue("q")
    stub_consumer = stub.consume("q")
    assert internals.fetch_cache(stub_consumer) is None and not internals.consumer_is_full(stub_consumer)


def test_common_helpers_compute_backoff_iter_queue_join_all() -> None:
    misses, backoff = internals.compute_backoff(0, max_backoff=1000)
    assert misses == 1 and 0 < backoff <= 1000
    assert internals.compute_backoff(40, max_backoff=1000)[1] <= 1000
    queue: PriorityQueue[int] = PriorityQueue()
    for value in (3, 1, 2):
        queue.put(value)
    assert sorted(internals.iter_queue(queue)) == [1, 2, 3] and queue.empty()
    threads = [threading.Thread(target=lambda: None) for _ in range(2)]
    for thread in threads:
        thread.start()
    internals.join_all(threads, 10_000)
    assert not any(thread.is_alive() for thread in threads)


def test_retries_max_retries_set_after_building_applies(queue_name: str) -> None:
    broker = StubBroker(middleware=[Retries(max_retries=20, min_backoff=10, max_backoff=10)])
    broker.emit_after("process_boot")

    @dramatiq.actor(queue_name=queue_name, broker=broker, actor_name=unique("fails"))
    def fails() -> None:
        raise RuntimeError("always")

    internals.set_max_retries(next(m for m in broker.middleware if isinstance(m, Retries)), 0)
    fails.send()
    worker = dramatiq.Worker(broker, worker_timeout=100, worker_threads=1)
    worker.start()
    try:
        wait_until(lambda: len(internals.stub_dead_letters(broker, queue_name)) == 1,
                   timeout=DEADLINE, message="the message dead-lettered without a retry")
        # One attempt: Retries counts it (retries 1) and gives up at once; 20 would mean 21.
        assert internals.stub_dead_letters(broker, queue_name)[0].options.get("retries") == 1
    finally:
        worker.stop()


def test_time_limit_set_after_building_applies(queue_name: str) -> None:
    broker = StubBroker(middleware=[TimeLimit(time_limit=600_000, interval=10)])
    broker.emit_after("process_boot")
    stopped = threading.Event()

    @dramatiq.actor(queue_name=queue_name, broker=broker, actor_name=unique("slow"))
    def slow() -> None:
        deadline = time.monotonic() + DEADLINE
        try:
            # Short sleeps: the limit arrives as an asynchronous exception,
            # raised only between two bytecodes, never inside one long wait.
            while time.monotonic() < deadline:
                time.sleep(0.01)
        except dramatiq.middleware.TimeLimitExceeded:
            stopped.set()
            raise

    internals.set_time_limit(next(m for m in broker.middleware if isinstance(m, TimeLimit)), 50)
    slow.send()
    worker = dramatiq.Worker(broker, worker_timeout=100, worker_threads=1)
    worker.start()
    try:
        assert stopped.wait(DEADLINE), "the new 50 ms limit did not interrupt the actor"
    finally:
        worker.stop()


# The Redis broker's storage ----------------------------------------------------------


def test_redis_enqueue_writes_redis_message_id_and_keeps_the_id_in_the_ready_list(
    redis_broker: RedisBroker, queue_name: str, client: redis.Redis
) -> None:
    actor = _actor(redis_broker, queue_name)
    sent = actor.send(1)
    assert internals.redis_client(redis_broker) is redis_broker.client
    namespace = internals.redis_namespace(redis_broker)
    redis_id = sent.options[internals.REDIS_MESSAGE_ID]
    assert client.lrange(internals.ready_key(namespace, queue_name), 0, -1) == [redis_id.encode()]
    body = client.hget(internals.messages_key(namespace, queue_name), redis_id)
    assert dramatiq.Message.decode(body).message_id == sent.message_id


def test_redis_delayed_messages_sit_in_the_delay_queue_keys(
    redis_broker: RedisBroker, queue_name: str, client: redis.Redis
) -> None:
    actor = _actor(redis_broker, queue_name)
    sent = actor.send_with_options(args=(1,), delay=3_600_000)
    namespace = redis_broker.namespace
    assert client.hlen(internals.delayed_messages_key(namespace, queue_name)) == 1
    assert client.llen(internals.delayed_key(namespace, queue_name)) == 1
    assert client.llen(internals.ready_key(namespace, queue_name)) == 0
    assert client.hexists(internals.delayed_messages_key(namespace, queue_name),
                          sent.options[internals.REDIS_MESSAGE_ID])


def test_redis_unacked_ids_sit_in_the_consumers_ack_set_and_heartbeat(
    redis_broker: RedisBroker, queue_name: str, client: redis.Redis
) -> None:
    actor = _actor(redis_broker, queue_name)
    sent = actor.send(1)
    consumer = redis_broker.consume(queue_name, prefetch=1, timeout=100)
    namespace = redis_broker.namespace
    try:
        proxy = wait_until(lambda: next(consumer), timeout=DEADLINE, message="a message from Redis")
        ack_set = internals.ack_key(namespace, redis_broker.broker_id, queue_name)
        assert client.smembers(ack_set) == {sent.options[internals.REDIS_MESSAGE_ID].encode()}
        assert ack_set.encode() in set(client.scan_iter(match=internals.ack_keys_pattern(namespace), count=1000))
        assert client.zscore(internals.heartbeats_key(namespace), redis_broker.broker_id) is not None
        consumer.ack(proxy)
        assert client.scard(ack_set) == 0
    finally:
        consumer.close()


def test_redis_dead_letters_sit_in_xq_keyed_by_redis_message_id(
    redis_broker: RedisBroker, queue_name: str, client: redis.Redis
) -> None:
    actor = _actor(redis_broker, queue_name)
    sent = actor.send(1)
    consumer = redis_broker.consume(queue_name, prefetch=1, timeout=100)
    try:
        proxy = wait_until(lambda: next(consumer), timeout=DEADLINE, message="a message from Redis")
        consumer.nack(proxy)
    finally:
        consumer.close()
    namespace = redis_broker.namespace
    redis_id = sent.options[internals.REDIS_MESSAGE_ID]
    # Named from the canonical queue, whichever of q or q.DQ dead-lettered it.
    assert internals.dead_key(namespace, f"{queue_name}.DQ") == internals.dead_key(namespace, queue_name)
    assert client.zcard(internals.dead_key(namespace, queue_name)) == 1
    assert client.zscore(internals.dead_key(namespace, queue_name), redis_id) is not None
    body = client.hget(internals.dead_messages_key(namespace, queue_name), redis_id)
    assert dramatiq.Message.decode(body).message_id == sent.message_id


def test_redis_broker_id_set_before_the_first_fetch_names_the_consumers_ack_sets_and_heartbeat(
    redis_broker: RedisBroker, queue_name: str, client: redis.Redis
) -> None:
    assert internals.redis_broker_id(redis_broker) == redis_broker.broker_id
    internals.set_redis_broker_id(redis_broker, "host-a-default-1-abcdef")
    actor = _actor(redis_broker, queue_name)
    sent = actor.send(1)
    consumer = redis_broker.consume(queue_name, prefetch=1, timeout=100)
    namespace = redis_broker.namespace
    try:
        wait_until(lambda: next(consumer), timeout=DEADLINE, message="a message from Redis")
        assert client.smembers(internals.ack_key(namespace, "host-a-default-1-abcdef", queue_name)) == {
            sent.options[internals.REDIS_MESSAGE_ID].encode()
        }
        assert client.zscore(internals.heartbeats_key(namespace), "host-a-default-1-abcdef") is not None
        # The body stays in the queue's hash while the consumer holds it.
        assert client.hexists(internals.messages_key(namespace, queue_name), sent.options[internals.REDIS_MESSAGE_ID])
    finally:
        consumer.close()


def test_rabbitmq_proxy_keeps_the_redelivered_flag_in_its_own_dict(queue_name: str) -> None:
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    from tests.support.servers import RABBITMQ_URL

    broker = RabbitmqBroker(url=RABBITMQ_URL, middleware=[])
    try:
        _actor(broker, queue_name).send(1)
        first = broker.consume(queue_name, prefetch=1, timeout=100)
        delivered = wait_until(lambda: next(first), timeout=DEADLINE, message="a message from RabbitMQ")
        assert "redelivered" in vars(delivered) and internals.redelivered(delivered) is False
        first.close()  # unacknowledged: the broker hands it out again
        second = broker.consume(queue_name, prefetch=1, timeout=100)
        again = wait_until(lambda: next(second), timeout=DEADLINE, message="the message again")
        assert again.message_id == delivered.message_id and internals.redelivered(again) is True
        second.ack(again)
        second.close()
        assert internals.redelivered(dramatiq.broker.MessageProxy(again._message)) is False  # other brokers
    finally:
        broker.close()
        import pika

        connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
        for name in (queue_name, f"{queue_name}.DQ", f"{queue_name}.XQ"):
            connection.channel().queue_delete(queue=name)
        connection.close()


# The StubBroker ------------------------------------------------------------------------


def test_stub_broker_keeps_queues_and_dead_letters_by_queue(queue_name: str) -> None:
    broker = StubBroker(middleware=[])
    actor = _actor(broker, queue_name)
    actor.send(1)
    actor.send_with_options(args=(2,), delay=3_600_000)
    ready = internals.stub_queue(broker, queue_name)
    delayed = internals.stub_queue(broker, f"{queue_name}.DQ")
    assert ready is not None and ready.qsize() == 1
    assert delayed is not None and delayed.qsize() == 1
    assert internals.stub_queue(broker, "undeclared") is None
    consumer = broker.consume(queue_name)
    consumer.nack(next(consumer))
    letters = internals.stub_dead_letters(broker, queue_name)
    assert [message.args for message in letters] == [(1,)]
    letters.clear()  # the broker's own list, changed in place
    assert broker.dead_letters == []
    assert internals.stub_dead_letters(broker, "never") == []


def test_broker_connection_error_is_what_a_lost_connection_raises() -> None:
    # A redis broker's failures, and the errors its connection can raise, derive from it.
    assert issubclass(dramatiq.errors.ConnectionClosed, internals.BrokerConnectionError)
    assert issubclass(dramatiq.errors.ConnectionFailed, internals.BrokerConnectionError)
    assert issubclass(internals.BrokerConnectionError, dramatiq.errors.BrokerError)
