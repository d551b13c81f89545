"""The basic app plus an actor that fails until the test fixes it (for retries through the API).

``flaky(token)`` counts a run under ``<namespace>:t:runs:<token>`` and raises
unless ``<namespace>:t:fixed:<token>`` exists; it has no retries of its own,
so its first failure is final and dead-lettered.
"""

from __future__ import annotations

import dramatiq

from .basic import QUEUE, broker, trace, traces, work  # noqa: F401  (the broker and the basic actors)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def flaky(token: str, password: str = "") -> None:
    """Fails until the test sets the ``fixed`` trace."""
    traces.incr(trace(f"runs:{token}"))
    if not traces.exists(trace(f"fixed:{token}")):
        raise RuntimeError(f"not fixed yet ({token})")
