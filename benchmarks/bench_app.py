"""The app the supervised benchmarks run: a Redis broker and a no-op actor.

Environment (``WT_BENCH_*``, never ``WATCHTOWER_*``): ``WT_BENCH_NAMESPACE``
(required: the broker's namespace), ``WT_BENCH_REDIS``, ``WT_BENCH_QUEUE``
(default ``bench``).
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

NAMESPACE = os.environ["WT_BENCH_NAMESPACE"]
URL = os.environ.get("WT_BENCH_REDIS", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("WT_BENCH_QUEUE", "bench")

broker = RedisBroker(url=URL, namespace=NAMESPACE, heartbeat_timeout=2000)
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def noop(i: int = 0) -> None:
    """Does nothing: the benchmark measures the machinery around it."""
    return None
