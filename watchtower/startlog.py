"""The block a supervisor logs when it starts: where it answers, what it uses, what its pool runs.

One log record, so that it reads as one block in a terminal and in a log
file.  Each pool line gives the limits its workers run with, and every
limit that differs from what the ``dramatiq`` command would run an app
with is followed by Dramatiq's value: an app moved from ``dramatiq tasks``
to ``watchtower supervise tasks`` is not changed without a word (Watchtower
gives a job 3 tries and 60 s, Dramatiq 21 and 10 minutes).
"""

from __future__ import annotations

import os

from .config import Settings, SupervisorSettings
from .store import redact_url

__all__ = ["DRAMATIQ_DEFAULTS", "start_block", "pool_lines"]

#: What the ``dramatiq`` command runs an app with, in Watchtower's terms.
#: tries: Retries(max_retries=20) gives 21 attempts; timeout: TimeLimit's
#: 600,000 ms; sleep: Worker(worker_timeout=1000 ms); Dramatiq has no
#: memory limit and no rest between jobs, and its processes default to the
#: CPU count.
DRAMATIQ_DEFAULTS: dict[str, float | None] = {
    "threads": 8,
    "tries": 21,
    "timeout": 600.0,
    "memory": None,
    "sleep": 1.0,
    "rest": None,
}


def _number(value: float) -> str:
    return f"{value:g}"


def pool_lines(pool: SupervisorSettings) -> list[str]:
    """The lines that describe one pool, with Dramatiq's value beside each limit that differs."""
    cpus = os.cpu_count() or 1
    processes = f"{pool.min_processes} process" + ("" if pool.min_processes == 1 else "es")
    if pool.min_processes != pool.max_processes:
        processes += f" (up to {pool.max_processes} with those started on request)"
    if pool.min_processes != cpus:
        processes += f" [dramatiq: {cpus}, the CPU count]"
    threads = f"{pool.threads} threads each"
    if pool.threads != DRAMATIQ_DEFAULTS["threads"]:
        threads += f" [dramatiq: {DRAMATIQ_DEFAULTS['threads']:g}]"
    limits = [
        f"tries {pool.tries}" + (" [dramatiq: 21, Retries max_retries=20]" if pool.tries != 21 else ""),
        (f"timeout {_number(pool.timeout)} s" if pool.timeout else "timeout none")
        + (" [dramatiq: 600 s, TimeLimit]" if pool.timeout != 600 else ""),
        (f"memory {pool.memory} MB, then recycled" if pool.memory else "memory unlimited")
        + (" [dramatiq: no limit]" if pool.memory else ""),
        f"sleep {_number(pool.sleep)} s" + (" [dramatiq: worker_timeout 1 s]" if pool.sleep != 1 else ""),
        f"rest {_number(pool.rest)} s" + (" [dramatiq: none]" if pool.rest else ""),
    ]
    return [
        f"pool {pool.name}: {processes}, {threads}, queues {', '.join(pool.queues)} "
        "[dramatiq: every queue the app declares]",
        f"  limits: {'; '.join(limits)}",
        "  (an actor's own max_retries and time_limit win; prefetch is Dramatiq's, 2 messages per thread)",
    ]


def start_block(
    settings: Settings,
    pool: SupervisorSettings,
    *,
    pid: int,
    metrics_url: str | None,
    api_url: str | None,
    api_refusal: str | None = None,
) -> str:
    """The supervisor's start block (several lines, logged as one record)."""
    if settings.command_bus == "redis":
        bus = f"redis at {redact_url(settings.redis_url)}, keys {settings.redis_prefix}:*"
    else:
        bus = "database (the ledger's tables)"
    if api_url:
        api = api_url
    else:
        api = f"not served: {api_refusal}" if api_refusal else "not served"
    lines = [
        f"supervisor {pool.name} on {settings.hostname} (pid {pid}), app {settings.app}",
        f"  API:     {api}",
        f"  metrics: {metrics_url or 'not served'}",
        f"  ledger:  {redact_url(settings.database_url)}",
        f"  bus:     {bus}",
        *(f"  {line}" for line in pool_lines(pool)),
    ]
    return "\n".join(lines)
