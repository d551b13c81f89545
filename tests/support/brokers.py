"""Dramatiq brokers of each kind on the machine's servers, and what the tests read from RabbitMQ."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

from tests.support.servers import RABBITMQ_URL, REDIS_URL


@contextlib.contextmanager
def open_broker(
    kind: str, namespace: str, queue: str, *, middleware: list[dramatiq.Middleware] | None = None
) -> Iterator[dramatiq.Broker]:
    """A ``redis``, ``rabbitmq`` or ``stub`` broker; closed, and its RabbitMQ queues deleted, afterwards.

    ``middleware=None`` gives it Dramatiq's default middleware, ``[]`` none (a producer whose
    messages the workers record).  ``queue`` is the queue whose RabbitMQ queues are deleted.
    """
    if kind == "redis":
        broker: dramatiq.Broker = RedisBroker(url=REDIS_URL, namespace=namespace, middleware=middleware)
    elif kind == "rabbitmq":
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        broker = RabbitmqBroker(url=RABBITMQ_URL, middleware=middleware)
    elif kind == "stub":
        broker = StubBroker(middleware=middleware)
    else:
        raise ValueError(kind)
    try:
        yield broker
    finally:
        broker.close()
        if kind == "rabbitmq":
            delete_rabbitmq_queues(queue)


def delete_rabbitmq_queues(queue: str) -> None:
    """Delete ``queue`` and its delay and dead-letter queues (only ours: the name is unique)."""
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
    try:
        channel = connection.channel()
        for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
            channel.queue_delete(queue=name)
    finally:
        connection.close()


def rabbitmq_count(queue: str) -> int:
    """How many messages RabbitMQ holds in ``queue``."""
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
    try:
        return int(connection.channel().queue_declare(queue=queue, passive=True).method.message_count)
    finally:
        connection.close()
