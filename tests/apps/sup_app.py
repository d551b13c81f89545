"""The app the supervisor tests run: a Redis broker and an actor that naps and leaves traces.

Environment (``WT_TEST_*``, never ``WATCHTOWER_*``): ``WT_TEST_NAMESPACE``
(required: the broker's namespace and the prefix of the trace keys),
``WT_TEST_REDIS``, ``WT_TEST_QUEUE`` (default ``default``),
``WT_TEST_HEARTBEAT_MS`` (the broker's heartbeat timeout: how soon the
messages of a dead worker are redelivered) and ``WT_TEST_MAINTENANCE``
(the broker's maintenance chance per million commands); with
``WT_TEST_DRAMATIQ_PROMETHEUS=1`` the broker also has Dramatiq's own
Prometheus middleware, as many apps do (set ``dramatiq_prom_db`` too, or it
writes under the system's temporary directory).

``grow(token, megabytes)`` keeps what it allocates, as a leak would.

Traces under ``<namespace>:t:``: ``runs:<token>`` (finished executions),
``starts:<token>`` (a list of the pids that started it).
"""

from __future__ import annotations

import os
import time

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

NAMESPACE = os.environ["WT_TEST_NAMESPACE"]
URL = os.environ.get("WT_TEST_REDIS", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("WT_TEST_QUEUE", "default")
traces = redis.Redis.from_url(URL)

broker = RedisBroker(
    url=URL,
    namespace=NAMESPACE,
    heartbeat_timeout=int(os.environ.get("WT_TEST_HEARTBEAT_MS", "60000")),
    maintenance_chance=int(os.environ.get("WT_TEST_MAINTENANCE", "1000")),
)
if os.environ.get("WT_TEST_DRAMATIQ_PROMETHEUS") == "1":
    from dramatiq.middleware.prometheus import Prometheus

    broker.add_middleware(Prometheus())
dramatiq.set_broker(broker)


def trace(name: str) -> str:
    return f"{NAMESPACE}:t:{name}"


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def nap(token: str, seconds: float = 0.0) -> None:
    """Records which process started it, naps ``seconds``, counts a finished run."""
    traces.rpush(trace(f"starts:{token}"), os.getpid())
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.02)  # short sleeps, so that a time limit can interrupt
    traces.incr(trace(f"runs:{token}"))


#: What ``grow`` allocated: kept for the life of the process.
_grown: list[bytes] = []


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def grow(token: str, megabytes: int) -> None:
    """Allocates ``megabytes`` MB that stay resident until the process exits (a leak)."""
    _grown.append(b"\x01" * (megabytes * 1024 * 1024))  # written bytes: resident, unlike calloc's zeros
    traces.incr(trace(f"runs:{token}"))
