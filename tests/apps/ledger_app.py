"""A Redis-broker app that records into the Watchtower ledger, as a user would write it.

Environment: ``WT_TEST_NAMESPACE`` (the broker namespace, required),
``WT_TEST_QUEUE`` (required), ``WT_TEST_DATABASE_URL`` (the ledger, required),
``WT_TEST_REDIS`` (URL), ``WT_TEST_WORKER_ID`` (this process's worker id),
``WT_TEST_HEARTBEAT_MS`` (the broker's heartbeat timeout: how long before the
messages of a silent worker go to another).

Traces in Redis, under ``<namespace>:t:``: ``runs`` (every run of
``count_run``), ``tries:<token>`` (every run of ``hang_once``).
"""

from __future__ import annotations

import os
import time

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from watchtower import WatchtowerMiddleware

NAMESPACE = os.environ["WT_TEST_NAMESPACE"]
QUEUE = os.environ["WT_TEST_QUEUE"]
URL = os.environ.get("WT_TEST_REDIS", "redis://127.0.0.1:6379/0")

heartbeat_ms = os.environ.get("WT_TEST_HEARTBEAT_MS")
broker = RedisBroker(
    url=URL,
    namespace=NAMESPACE,
    # With a short heartbeat timeout, maintenance on every command: a dead
    # worker's messages come back as soon as the timeout has passed.
    heartbeat_timeout=int(heartbeat_ms) if heartbeat_ms else 60_000,
    maintenance_chance=1_000_000 if heartbeat_ms else 1_000,
)
middleware = WatchtowerMiddleware(database_url=os.environ["WT_TEST_DATABASE_URL"],
                                  worker_id=os.environ.get("WT_TEST_WORKER_ID"))
broker.add_middleware(middleware)
dramatiq.set_broker(broker)
traces = redis.Redis.from_url(URL)


@dramatiq.actor(queue_name=QUEUE)
def count_run(producer: int, number: int) -> None:
    traces.incr(f"{NAMESPACE}:t:runs")


@dramatiq.actor(queue_name=QUEUE)
def hang_once(token: str) -> None:
    """Hangs on its first run (until its worker is killed); returns on the next."""
    if traces.incr(f"{NAMESPACE}:t:tries:{token}") == 1:
        time.sleep(600)
