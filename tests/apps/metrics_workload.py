"""A Dramatiq app for the metrics tests, and a worker process running it.

Configured through the environment (never WATCHTOWER_* variables: the
settings loader refuses unknown ones): WT_APP_REDIS, WT_APP_NAMESPACE,
WT_APP_QUEUE, WT_APP_DATABASE_URL, WT_APP_WORKER_ID.

``python -m apps.metrics_workload`` runs a dramatiq.Worker (2 threads) until its
stdin closes, then stops it and flushes the ledger, as a worker process of
the supervisor would.
"""

from __future__ import annotations

import os
import sys
import time

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from watchtower.config import load_settings
from watchtower.middleware import WatchtowerMiddleware

QUEUE = os.environ["WT_APP_QUEUE"]
REDIS = redis.Redis.from_url(os.environ["WT_APP_REDIS"])
NAMESPACE = os.environ["WT_APP_NAMESPACE"]

broker = RedisBroker(url=os.environ["WT_APP_REDIS"], namespace=NAMESPACE)
middleware = WatchtowerMiddleware(
    settings=load_settings(env={}, overrides={
        "database_url": os.environ["WT_APP_DATABASE_URL"],
        "recorder.flush_interval": 0.05,
    }),
    worker_id=os.environ.get("WT_APP_WORKER_ID"),
)
broker.add_middleware(middleware)
dramatiq.set_broker(broker)

RETRY = {"min_backoff": 50, "max_backoff": 100}


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def ok(n: int = 0) -> int:
    return n


@dramatiq.actor(queue_name=QUEUE, max_retries=3, **RETRY)
def flaky(key: str) -> None:
    """Fails its first attempt, then succeeds."""
    if REDIS.incr(f"{NAMESPACE}:flaky:{key}") == 1:
        raise RuntimeError("first attempt fails")


@dramatiq.actor(queue_name=QUEUE, max_retries=1, **RETRY)
def boom() -> None:
    """Fails every attempt: one retry, then a final failure."""
    raise ValueError("always")


@dramatiq.actor(queue_name=QUEUE, max_retries=0, time_limit=600_000)
def hang(key: str) -> None:
    """Says it started, then runs until its process is killed."""
    REDIS.set(f"{NAMESPACE}:started:{key}", os.getpid())
    time.sleep(300)


def main() -> None:
    broker.emit_after("process_boot")
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    print("ready", flush=True)
    sys.stdin.read()  # the test closes stdin to stop this worker
    worker.stop(timeout=10_000)
    middleware.recorder.flush(timeout=10)


if __name__ == "__main__":
    main()
