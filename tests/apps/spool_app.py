"""A Redis-broker app with WatchtowerMiddleware, its settings from the WATCHTOWER_* environment as a user's would be.

Environment: ``WT_TEST_NAMESPACE`` (the broker namespace), ``WT_TEST_QUEUE``,
``WT_TEST_REDIS`` (URL).  ``run`` counts its runs in Redis under
``<namespace>:t:runs``.
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
broker.add_middleware(WatchtowerMiddleware())
dramatiq.set_broker(broker)
traces = redis.Redis.from_url(URL)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def run(number: int) -> None:
    traces.incr(f"{NAMESPACE}:t:runs")
