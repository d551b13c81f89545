"""A Redis-broker app that records into the Watchtower ledger, as a user would write it.

Environment: ``WT_TEST_NAMESPACE`` (the broker namespace, required),
``WT_TEST_QUEUE`` (required), ``WT_TEST_DATABASE_URL`` (the ledger, required),
``WT_TEST_REDIS`` (URL).  Each run of ``count_run`` adds one to the Redis
counter ``<namespace>:t:runs``.
"""

from __future__ import annotations

import os

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from watchtower import WatchtowerMiddleware

NAMESPACE = os.environ["WT_TEST_NAMESPACE"]
QUEUE = os.environ["WT_TEST_QUEUE"]
URL = os.environ.get("WT_TEST_REDIS", "redis://127.0.0.1:6379/0")

broker = RedisBroker(url=URL, namespace=NAMESPACE)
broker.add_middleware(WatchtowerMiddleware(database_url=os.environ["WT_TEST_DATABASE_URL"]))
dramatiq.set_broker(broker)
traces = redis.Redis.from_url(URL)


@dramatiq.actor(queue_name=QUEUE)
def count_run(producer: int, number: int) -> None:
    traces.incr(f"{NAMESPACE}:t:runs")
