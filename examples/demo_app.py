"""The demo app: four actors on a Redis broker, recorded by Watchtower.

The app module of the quickstart (``examples/quickstart.py``) and of the
docker-compose stack, written as a Dramatiq user writes one: it sets the
broker, adds ``WatchtowerMiddleware`` (so that producers and workers both
record) and declares the actors.

- ``fast`` (queue ``demo``): a few milliseconds of work;
- ``slow`` (queue ``demo-slow``): one to a few seconds;
- ``flaky`` (queue ``demo``): fails its first attempt and succeeds on the retry;
- ``failing`` (queue ``demo``): fails every attempt: two retries, then a final
  failure and a dead letter.

Environment (the broker is the app's business, not Watchtower's, so these
are not ``WATCHTOWER_*`` settings): ``DEMO_REDIS_URL`` (default
``redis://127.0.0.1:6379/0``) and ``DEMO_REDIS_NAMESPACE`` (default
``dramatiq``, the key prefix of the queues).  Watchtower's own settings
(ledger, bus, pools) come from its configuration as usual.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage

from watchtower import WatchtowerMiddleware

REDIS_URL = os.environ.get("DEMO_REDIS_URL", "redis://127.0.0.1:6379/0")
NAMESPACE = os.environ.get("DEMO_REDIS_NAMESPACE", "dramatiq")

QUEUE = "demo"
SLOW_QUEUE = "demo-slow"

broker = RedisBroker(url=REDIS_URL, namespace=NAMESPACE)
broker.add_middleware(CurrentMessage())  # flaky reads its attempt number from it
middleware = WatchtowerMiddleware()  # its settings: WATCHTOWER_CONFIG, ./watchtower.toml, WATCHTOWER_*
broker.add_middleware(middleware)
dramatiq.set_broker(broker)

# Retries half a second to two seconds apart: Dramatiq's default backoff
# starts at 15 s, too slow for a demo that shows retries as they happen.
QUICK_RETRIES: dict[str, Any] = {"min_backoff": 500, "max_backoff": 2000}


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def fast(n: int) -> int:
    """A few milliseconds of work."""
    time.sleep(random.uniform(0.005, 0.05))
    return n * 2


@dramatiq.actor(queue_name=SLOW_QUEUE, max_retries=0, time_limit=120_000)
def slow(seconds: float) -> None:
    """Works for ``seconds`` (short sleeps, so that a time limit can interrupt it)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)


@dramatiq.actor(queue_name=QUEUE, max_retries=3, **QUICK_RETRIES)
def flaky(n: int) -> int:
    """Fails its first attempt (a flaky remote service), succeeds on the retry."""
    message = CurrentMessage.get_current_message()
    if message is not None and message.options.get("retries", 0) == 0:
        raise ConnectionError(f"flaky: the remote service did not answer for item {n}")
    return n


@dramatiq.actor(queue_name=QUEUE, max_retries=2, **QUICK_RETRIES)
def failing(n: int) -> None:
    """Fails every attempt: retried twice, then failed for good (and dead-lettered)."""
    raise ValueError(f"failing: item {n} can never be processed")
