"""The app of the rescue tests: a Redis or RabbitMQ broker with its DEFAULT settings, and two actors.

Environment (``WT_TEST_*``): ``WT_TEST_NAMESPACE`` (required: the Redis
broker's namespace and the prefix of the trace keys), ``WT_TEST_REDIS``,
``WT_TEST_QUEUE``, ``WT_TEST_BROKER`` (``redis``, the default, or
``rabbitmq`` at ``WT_TEST_RABBITMQ``).  The Redis broker keeps Dramatiq's
defaults: heartbeat timeout 60 s, maintenance on 1 in 1000 commands.

Traces in Redis under ``<namespace>:t:``: ``starts:<token>`` (a list of the
pids that started it), ``runs:<token>`` (finished executions),
``cured:<token>`` (set by a test: ``poison`` completes from then on).
"""

from __future__ import annotations

import os
import signal
import time

import dramatiq
import redis

NAMESPACE = os.environ["WT_TEST_NAMESPACE"]
URL = os.environ.get("WT_TEST_REDIS", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("WT_TEST_QUEUE", "default")
traces = redis.Redis.from_url(URL)

if os.environ.get("WT_TEST_BROKER", "redis") == "rabbitmq":
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker: dramatiq.Broker = RabbitmqBroker(
        url=os.environ.get("WT_TEST_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672/%2F")
    )
else:
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=URL, namespace=NAMESPACE)  # heartbeat_timeout and maintenance_chance: defaults
dramatiq.set_broker(broker)


def trace(name: str) -> str:
    return f"{NAMESPACE}:t:{name}"


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def nap(token: str, seconds: float = 0.0) -> None:
    """Records which process started it, naps ``seconds``, counts a finished run."""
    traces.rpush(trace(f"starts:{token}"), os.getpid())
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.02)
    traces.incr(trace(f"runs:{token}"))


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def poison(token: str, seconds: float = 0.0) -> None:
    """Runs ``seconds``, then kills its own worker process with SIGKILL (as the OOM killer would), until cured."""
    traces.rpush(trace(f"starts:{token}"), os.getpid())
    time.sleep(seconds)
    if not traces.exists(trace(f"cured:{token}")):
        os.kill(os.getpid(), signal.SIGKILL)
    traces.incr(trace(f"runs:{token}"))
