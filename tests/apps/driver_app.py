"""A Redis-broker app recording into the ledger named by ``WT_TEST_DATABASE_URL``.

Environment: ``WT_TEST_NAMESPACE``, ``WT_TEST_QUEUE``, ``WT_TEST_DATABASE_URL``
(required), ``WT_TEST_REDIS``.  ``report_driver`` writes the module of the
connection that the ledger's URL opens in this process under
``<namespace>:t:driver``.
"""

from __future__ import annotations

import os

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from watchtower import WatchtowerMiddleware, store

NAMESPACE = os.environ["WT_TEST_NAMESPACE"]
QUEUE = os.environ["WT_TEST_QUEUE"]
URL = os.environ.get("WT_TEST_REDIS", "redis://127.0.0.1:6379/0")

broker = RedisBroker(url=URL, namespace=NAMESPACE)
broker.add_middleware(WatchtowerMiddleware(database_url=os.environ["WT_TEST_DATABASE_URL"]))
dramatiq.set_broker(broker)
traces = redis.Redis.from_url(URL)


@dramatiq.actor(queue_name=QUEUE)
def add(a: int, b: int) -> None:
    assert isinstance(a + b, int)


@dramatiq.actor(queue_name=QUEUE, max_retries=1, min_backoff=10, max_backoff=10)
def refuse(number: int) -> None:
    raise ValueError(f"refused {number}")


@dramatiq.actor(queue_name=QUEUE)
def report_driver() -> None:
    db = store.open_database(os.environ["WT_TEST_DATABASE_URL"])
    try:
        traces.set(f"{NAMESPACE}:t:driver", type(db.connection()).__module__.split(".")[0])
    finally:
        db.close()
