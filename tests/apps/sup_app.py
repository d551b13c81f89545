"""The app the supervisor and rescue tests run: a Redis or RabbitMQ broker, actors that leave traces.

Environment (``WT_TEST_*``, never ``WATCHTOWER_*``): ``WT_TEST_NAMESPACE``
(required: the broker's namespace and the prefix of the trace keys),
``WT_TEST_REDIS``, ``WT_TEST_QUEUE`` (default ``default``), ``WT_TEST_BROKER``
(``redis``, the default, or ``rabbitmq`` at ``WT_TEST_RABBITMQ``),
``WT_TEST_HEARTBEAT_MS`` (the broker's heartbeat timeout: how soon the
messages of a dead worker are redelivered) and ``WT_TEST_MAINTENANCE``
(the broker's maintenance chance per million commands); with
``WT_TEST_DRAMATIQ_PROMETHEUS=1`` the broker also has Dramatiq's own
Prometheus middleware, as many apps do (set ``dramatiq_prom_db`` too, or it
writes under the system's temporary directory).  Unset, the heartbeat
timeout and the maintenance chance are Dramatiq's defaults (60 s, 1 in 1000
commands), as the rescue tests want them.

``grow(token, megabytes)`` keeps what it allocates, as a leak would.

Traces under ``<namespace>:t:``: ``runs:<token>`` (finished executions),
``starts:<token>`` (a list of the pids that started it), ``cured:<token>``
(set by a test: ``poison`` completes from then on).
"""

from __future__ import annotations

import os
import signal
import time

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

NAMESPACE = os.environ["WT_TEST_NAMESPACE"]
URL = os.environ.get("WT_TEST_REDIS", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("WT_TEST_QUEUE", "default")
traces = redis.Redis.from_url(URL)

broker: dramatiq.Broker
if os.environ.get("WT_TEST_BROKER", "redis") == "rabbitmq":
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=os.environ.get("WT_TEST_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672/%2F"))
else:
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


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def poison(token: str, seconds: float = 0.0) -> None:
    """Runs ``seconds``, then kills its own worker process with SIGKILL (as the OOM killer would), until cured."""
    traces.rpush(trace(f"starts:{token}"), os.getpid())
    time.sleep(seconds)
    if not traces.exists(trace(f"cured:{token}")):
        os.kill(os.getpid(), signal.SIGKILL)
    traces.incr(trace(f"runs:{token}"))
