"""The poison guard: a job whose worker died under it ``max_lost`` times is not run again.

Dramatiq counts no retry for an attempt whose worker died: the broker hands
the message out again, and a job that kills its worker every time (an
allocation the kernel's OOM killer ends, a crash in C code) would run, and
kill a worker, for ever.  The ledger counts those lost attempts
(``Job.lost_attempts``, see :func:`watchtower.ledger.mark_lost`); once they
reach the ``max_lost`` setting (3 by default) the job is given up: its
message is dead-lettered as an exhausted retry would be, its row is failed
with the reason (how many times it was lost and how its worker last ended),
and ``watchtower_jobs_given_up_total`` counts it.  A given-up job can be
retried like any failed one.

Where the decision is taken depends on who hands the message out again:

- Redis: the supervisor that rescues the dead worker's messages
  (:mod:`watchtower.rescue`) dead-letters the poison ones instead of putting
  them back (:func:`poison_jobs`);
- RabbitMQ: the broker redelivers by itself, to another worker, which looks
  the job up in the ledger before running it, only for messages the broker
  marks as redelivered (:func:`check_redelivered`), and dead-letters it
  without running it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import peewee

from .events import PHASE_STARTED
from .ledger import LOSS_FIELDS, LOST_PREFIX, mark_attempt_lost
from .models import Job, Worker
from .statuses import JobStatus

__all__ = ["poison_jobs", "give_up_reason", "check_redelivered", "LOSS_WAIT"]

logger = logging.getLogger(__name__)

#: Seconds a worker that received a redelivered message waits for the
#: supervisor of the message's last holder to record how that holder ended.
LOSS_WAIT = 3.0
_LOSS_POLL = 0.1


def poison_jobs(jobs: Iterable[Job], max_lost: int) -> list[Job]:
    """The jobs among ``jobs`` (returned by ``mark_lost``) lost ``max_lost`` times or more."""
    return [job for job in jobs if (job.lost_attempts or 0) >= max_lost]


def give_up_reason(lost: int, max_lost: int, last_exit: str | None) -> str:
    """The failed row's reason: how many times the job was lost, and how its worker last ended."""
    return (
        f"given up: lost {lost} times (max_lost {max_lost}), not run again; "
        f"last exit: {last_exit or 'unknown'}"
    )


def check_redelivered(
    db: peewee.Database,
    message_id: str,
    attempt: int,
    worker_id: str | None,
    *,
    max_lost: int,
    wait: float = LOSS_WAIT,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> str | None:
    """For a message the broker delivered again: the reason to give it up, or None to run it.

    When the ledger still shows the attempt running under another worker,
    that worker lost it (its connection to the broker closed).  Its
    supervisor usually records the loss, with how the process ended,
    within a moment: this waits up to ``wait`` seconds for it, then records
    the loss itself.  Raises the database's errors (the caller runs the
    message then).
    """
    started = attempt * 8 + PHASE_STARTED
    job = Job.find(message_id, *LOSS_FIELDS, database=db)
    if job is None:
        return None
    deadline = clock() + wait
    while _held_elsewhere(job, started, worker_id) and clock() < deadline:
        sleep(_LOSS_POLL)
        job = Job.find(message_id, *LOSS_FIELDS, database=db) or job
    if _held_elsewhere(job, started, worker_id) and not _mark_lost_here(db, job):
        job = Job.find(message_id, *LOSS_FIELDS, database=db) or job  # someone else just did
    lost = job.lost_attempts or 0
    if job.status != JobStatus.PENDING or lost < max_lost:
        return None
    return give_up_reason(lost, max_lost, _last_exit(db, job))


def _held_elsewhere(job: Job, started: int, worker_id: str | None) -> bool:
    return job.status == JobStatus.PROCESSING and job.progress == started and job.worker_id != worker_id


def _mark_lost_here(db: peewee.Database, job: Job) -> bool:
    """Record the attempt that ``job``'s holder lost, as its supervisor would have."""
    holder = job.worker_id
    if not mark_attempt_lost(job, f"worker {holder} stopped holding it (the broker delivered it again)", db=db):
        return False
    from . import metric_listeners

    metric_listeners.record_lost([job])
    logger.warning("job %s of %s was lost by worker %s (the broker delivered it again)",
                   job.message_id, job.queue, holder)
    return True


def _last_exit(db: peewee.Database, job: Job) -> str | None:
    """How the worker that last lost ``job`` ended: its recorded exit, else the loss's reason."""
    holder = Worker.select(Worker.exit_reason).where(Worker.worker_id == job.worker_id).first(db) \
        if job.worker_id else None
    if holder is not None and holder.exit_reason:
        return str(holder.exit_reason)
    text = str(job.exception or "")
    return text[len(LOST_PREFIX):] if text.startswith(LOST_PREFIX) else None
