"""A Redis-broker app whose actors leave traces in Redis for the tests to read.

Environment: ``WT_TEST_NAMESPACE`` (required: the broker namespace and the
prefix of every trace key), ``WT_TEST_REDIS`` (URL), ``WT_TEST_QUEUE`` (the
actors' queue, default ``default``), ``WT_TEST_HEARTBEAT_MS`` (the broker's
heartbeat timeout), ``WT_TEST_MAINTENANCE`` (the broker's maintenance chance
per million commands), ``WT_TEST_COUNT_FETCHES`` (count fetches per queue).

``hold(token)`` runs until the test sets ``release:<token>``;
``grow(token, megabytes)`` keeps what it allocates, as a leak would.

Trace keys, all under ``<namespace>:t:``: ``runs:<token>`` (executions),
``attempts:<token>``, ``started:<token>`` / ``finished:<token>`` (epoch
seconds), ``fetches:<queue>``.
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


def trace(name: str) -> str:
    return f"{NAMESPACE}:t:{name}"


class CountingRedisBroker(RedisBroker):
    """Counts every fetch per queue (to observe how often an idle worker looks)."""

    def _dispatch(self, command):  # type: ignore[no-untyped-def]
        dispatch = super()._dispatch(command)
        if command != "fetch":
            return dispatch

        def counted(queue_name, *args):  # type: ignore[no-untyped-def]
            traces.incr(trace(f"fetches:{queue_name}"))
            return dispatch(queue_name, *args)

        return counted


broker_class = CountingRedisBroker if os.environ.get("WT_TEST_COUNT_FETCHES") else RedisBroker
broker = broker_class(
    url=URL,
    namespace=NAMESPACE,
    heartbeat_timeout=int(os.environ.get("WT_TEST_HEARTBEAT_MS", "60000")),
    maintenance_chance=int(os.environ.get("WT_TEST_MAINTENANCE", "1000")),
)
dramatiq.set_broker(broker)

_FAST_RETRY = {"min_backoff": 50, "max_backoff": 100}


def _run(token: str, seconds: float = 0.0) -> None:
    traces.set(trace(f"started:{token}"), repr(time.time()))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.02)  # short sleeps: TimeLimit's exception lands between them
    traces.incr(trace(f"runs:{token}"))
    traces.set(trace(f"finished:{token}"), repr(time.time()))


@dramatiq.actor(queue_name=QUEUE)
def work(token: str, seconds: float = 0.0) -> None:
    """Runs for ``seconds`` and leaves started/finished/runs traces."""
    _run(token, seconds)


@dramatiq.actor(queue_name=QUEUE, time_limit=30_000)
def work_with_own_limit(token: str, seconds: float = 0.0) -> None:
    """Like ``work``, with a time limit of its own (30 s)."""
    _run(token, seconds)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def hold(token: str) -> None:
    """Runs until the test sets ``release:<token>`` (at most 120 s), leaving the traces of ``work``."""
    traces.set(trace(f"started:{token}"), repr(time.time()))
    deadline = time.monotonic() + 120
    while not traces.exists(trace(f"release:{token}")) and time.monotonic() < deadline:
        time.sleep(0.02)
    traces.incr(trace(f"runs:{token}"))
    traces.set(trace(f"finished:{token}"), repr(time.time()))


@dramatiq.actor(queue_name=QUEUE, **_FAST_RETRY)
def fail(token: str) -> None:
    """Counts an attempt and raises."""
    traces.incr(trace(f"attempts:{token}"))
    raise ValueError(f"failing on purpose ({token})")


@dramatiq.actor(queue_name=QUEUE, max_retries=0, **_FAST_RETRY)
def fail_without_retries(token: str) -> None:
    """Counts an attempt and raises; its own max_retries is 0."""
    traces.incr(trace(f"attempts:{token}"))
    raise ValueError(f"failing on purpose ({token})")


#: What ``grow`` allocated: kept for the life of the process.
_grown: list[bytes] = []


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def grow(token: str, megabytes: int) -> None:
    """Allocates ``megabytes`` MB that stay resident until the process exits (a leak)."""
    _grown.append(b"\x01" * (megabytes * 1024 * 1024))  # written bytes: resident, unlike calloc's zeros
    traces.incr(trace(f"runs:{token}"))
