"""Worker records: what supervisors and the manager write about workers in the ledger.

A worker keeps its own row while it lives (status, heartbeat, counts).  The
functions here write what a worker cannot say itself: that it was started
(and by whom), how it ended when it died without a word, that its requests
were refused, and that a record whose worker stopped heart-beating is stale.

Every write is conditional or idempotent, because several supervisors may
act on the same rows at once (see :func:`clean_stale_workers`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

import peewee

from .clock import now_ms, to_ms
from .ledger import mark_lost
from .models import Job, Worker, database
from .statuses import JobStatus, WorkerStatus

__all__ = [
    "register_process",
    "record_exit",
    "record_refusal",
    "retire_crashloop",
    "vouch_for",
    "heartbeats",
    "stale_condition",
    "clean_stale_workers",
    "HeartbeatGrace",
]

logger = logging.getLogger(__name__)

# Rows that claim a live process (or, for crash-looping ones, a supervisor
# that keeps retrying): the ones that can go stale.
_CLAIMS_LIFE = (*WorkerStatus.ALIVE, WorkerStatus.CRASHLOOPING)


def register_process(
    worker_id: str, *, supervisor: str, hostname: str, pid: int, queues: Sequence[str],
    options: Mapping[str, int | float], restarts: int,
) -> None:
    """Record a process just spawned; its status stays what the worker wrote, if it wrote first."""
    fields = {
        "supervisor": supervisor,
        "hostname": hostname,
        "pid": pid,
        "queues": json.dumps(list(queues)),
        "options": json.dumps(dict(options)),
        "restarts": restarts,
    }
    Worker.insert(worker_id=worker_id, status=WorkerStatus.STARTING, started_at=now_ms(), **fields) \
        .on_conflict_ignore().execute()
    Worker.update(**fields).where(Worker.worker_id == worker_id).execute()


def record_exit(
    worker_id: str, *, code: int, status: str, reason: str, prefix: str = "", own_words: bool = False
) -> list[Job]:
    """Record how a process ended, and return the jobs it still held to pending as lost.

    ``own_words``: the worker exited by itself, so a reason it recorded
    (an app that fails to import, a memory recycle, a stop command) wins
    over ``reason``; each process has a row of its own, so what is there is
    its own.  ``prefix`` goes before either (the crash-loop summary).
    """
    row = Worker.get_or_none(Worker.worker_id == worker_id)
    if own_words and row is not None and row.exit_reason:
        reason = row.exit_reason
    reason = prefix + reason
    Worker.update(status=status, exit_code=code, exit_reason=reason, stopped_at=now_ms()) \
        .where(Worker.worker_id == worker_id).execute()
    return mark_lost(worker_id, reason)


def record_refusal(worker_id: str, *, supervisor: str, hostname: str, queues: Sequence[str], why: str) -> None:
    """Record a worker that was asked for but not started, and why."""
    now = now_ms()
    fields = {
        "supervisor": supervisor,
        "hostname": hostname,
        "status": WorkerStatus.STOPPED,
        "stopped_at": now,
        "exit_reason": f"not started: {why}",
    }
    if queues:
        fields["queues"] = json.dumps(list(queues))
    Worker.insert(worker_id=worker_id, started_at=now, **fields).on_conflict_ignore().execute()
    Worker.update(**fields).where(Worker.worker_id == worker_id).execute()


def retire_crashloop(worker_id: str) -> None:
    """A crash-looping row whose slot moved on (a newer attempt, a healthy process, shutdown)."""
    Worker.update(status=WorkerStatus.STOPPED).where(
        (Worker.worker_id == worker_id) & (Worker.status == WorkerStatus.CRASHLOOPING)
    ).execute()


def vouch_for(worker_ids: Iterable[str]) -> None:
    """Beat for crash-looping rows, which have no live process to beat for them.

    So that other supervisors see that their supervisor still tends them
    and do not clean them up as stale.
    """
    ids = list(worker_ids)
    if ids:
        Worker.update(last_heartbeat=now_ms()).where(
            Worker.worker_id.in_(ids) & (Worker.status == WorkerStatus.CRASHLOOPING)
        ).execute()


def heartbeats(worker_ids: Iterable[str]) -> dict[str, int | None]:
    """Worker id -> its last heartbeat in epoch ms (None before its first)."""
    ids = list(worker_ids)
    if not ids:
        return {}
    query = Worker.select(Worker.worker_id, Worker.last_heartbeat).where(Worker.worker_id.in_(ids))
    return {row.worker_id: to_ms(row.last_heartbeat) for row in query}


def stale_condition(cutoff_ms: int) -> peewee.Expression:
    """Rows claiming life whose last sign of it (heartbeat, else start) is before ``cutoff_ms``."""
    last_sign = peewee.fn.COALESCE(Worker.last_heartbeat, Worker.started_at, 0)
    return Worker.status.in_(_CLAIMS_LIFE) & (last_sign < cutoff_ms)


def clean_stale_workers(
    threshold: float,
    *,
    keep: Collection[str] = (),
    now: int | None = None,
    rescue: Callable[[Worker, list[Job]], object] | None = None,
) -> int:
    """Mark stale worker rows lost and their jobs lost; returns how many rows this call claimed.

    A caller that was itself cut off from the ledger should wait before it
    judges (see :class:`HeartbeatGrace`).  A judgment can still be wrong (a
    worker cut off from the ledger while this caller was not): the worker's
    next heartbeat gives its row back its status, and its own finish of an
    attempt marked lost undoes the mark (see :mod:`watchtower.ledger`).

    Safe to run from many supervisors at once: a row is claimed by one
    conditional UPDATE (only one caller sees it change) and ``mark_lost``
    moves each job once.  ``keep`` names workers the caller watches itself
    (its own live children).  ``rescue`` is called with each row claimed
    (worker id, hostname, pid, queues) and its jobs just marked lost, once
    that is committed: the caller puts the messages back (see
    :mod:`watchtower.rescue`).  Jobs still "processing" under a worker that
    is recorded lost and silent are swept too, so that a caller that died
    between claiming a row and marking its jobs leaves nothing behind.
    """
    now = now_ms() if now is None else now
    cutoff = now - int(threshold * 1000)
    candidates = [
        row
        for row in Worker.select(Worker.worker_id, Worker.hostname, Worker.pid, Worker.queues)
        .where(stale_condition(cutoff))
        if row.worker_id not in keep
    ]
    claimed = 0
    for row in candidates:
        worker_id = row.worker_id
        reason = f"worker {worker_id} sent no heartbeat for {threshold:g} s"
        # One transaction: a reader never sees the worker lost while its
        # jobs still show "processing" under it.
        with database.atomic():
            changed = (
                Worker.update(status=WorkerStatus.LOST, stopped_at=now, exit_reason=f"stale: {reason}")
                .where((Worker.worker_id == worker_id) & stale_condition(cutoff))
                .execute()
            )
            jobs = mark_lost(worker_id, reason, at_us=now * 1000) if changed else []
        if changed:
            claimed += 1
            logger.warning("marked stale worker %s lost (%d jobs back to pending)", worker_id, len(jobs))
            if rescue is not None:
                rescue(row, jobs)
    _sweep_orphans(cutoff, now)
    return claimed


def _sweep_orphans(cutoff: int, now: int) -> None:
    holders = {
        row.worker_id
        for row in Job.select(Job.worker_id).where(Job.status == JobStatus.PROCESSING).distinct()
        if row.worker_id
    }
    if not holders:
        return
    last_sign = peewee.fn.COALESCE(Worker.last_heartbeat, Worker.started_at, 0)
    dead = Worker.select(Worker.worker_id).where(
        Worker.worker_id.in_(sorted(holders))
        & Worker.status.in_((WorkerStatus.LOST, WorkerStatus.CRASHLOOPING))
        & (last_sign < cutoff)
    )
    for row in dead:
        jobs = mark_lost(row.worker_id, f"worker {row.worker_id} is gone", at_us=now * 1000)
        if jobs:
            logger.warning("returned %d jobs of gone worker %s to pending", len(jobs), row.worker_id)


class HeartbeatGrace:
    """When the heartbeats that a process reads from the ledger can be judged.

    When this process could not reach the ledger, the workers probably could
    not either: their heartbeats there are old for no fault of theirs.  A
    worker's recorder retries a failed write at most every
    :data:`~watchtower.recorder.MAX_BACKOFF` seconds, so its heartbeats are
    judged again only once it has had that long, and then a whole
    ``heartbeat_timeout``, to write after this process's first successful
    ledger operation since the failure.  The same holds after this process
    starts (a supervisor restarted in a loop starts when the ledger returns).

    ``now`` and the arguments of the methods are monotonic seconds.
    """

    def __init__(self, heartbeat_timeout: float, now: float) -> None:
        from .recorder import MAX_BACKOFF

        self.seconds = heartbeat_timeout + MAX_BACKOFF
        self.since = now
        self.down = False

    def failed(self) -> None:
        """An operation on the ledger failed."""
        self.down = True

    def answered(self, now: float) -> None:
        """An operation on the ledger succeeded: the grace starts at the first one after a failure."""
        if self.down:
            self.down = False
            self.since = now
            logger.info("the ledger answers again: heartbeats are judged again in %g s", self.seconds)

    def judges(self, now: float) -> bool:
        """Whether heartbeats read now say something about the workers."""
        return not self.down and now - self.since >= self.seconds
