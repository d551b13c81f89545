"""What the middleware observes about a message, and how events are ordered.

Events from producers and workers reach the database through separate
buffers, so in any order.  Each event therefore carries its place in the
message's life, and a row takes an event's values only when the event is
newer than the newest one it has already applied:

    progress = attempt * 8 + phase      (then the event's time breaks ties)

    phase 1  enqueued   (also: delayed, re-enqueued for a retry, moved
                         from the delay queue back to the queue)
    phase 2  lost       (the worker running it died; written by the supervisor)
    phase 3  started
    phase 4  finished   (completed, retried, failed or skipped)

Attempt ``n`` is the ``n``-th run, ``message.options["retries"] + 1`` when it
starts.  A retry's enqueue carries attempt ``n + 1``, so it sorts after the
attempt that failed even when it reaches the database first; a late
"enqueued" of attempt 1 never overwrites "completed".  A message the broker
redelivers after its worker died runs the same attempt again: its "started"
beats the "lost" (phase 2) that the supervisor wrote.

Fields that an event does not know (a "started" knows no payload) are left as
they are; see :mod:`watchtower.ledger`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .clock import day_of
from .statuses import JobStatus

__all__ = ["Kind", "JobEvent", "WorkerEvent", "ALIVE_AS", "PHASE_ENQUEUED", "PHASE_LOST", "PHASE_STARTED",
           "PHASE_FINISHED"]

PHASE_ENQUEUED = 1
PHASE_LOST = 2
PHASE_STARTED = 3
PHASE_FINISHED = 4


class Kind(str, Enum):
    """What happened to a message."""

    ENQUEUED = "enqueued"  # sent by a producer, ready at once
    DELAYED = "delayed"  # sent by a producer with a delay (eta)
    REQUEUED = "requeued"  # sent again by Retries for the next attempt
    MOVED = "moved"  # moved from the delay queue to the queue at its eta
    STARTED = "started"
    COMPLETED = "completed"
    RETRIED = "retried"  # the attempt raised and Retries scheduled another
    FAILED = "failed"  # final: retries exhausted, throws, or dead-lettered
    SKIPPED = "skipped"  # final: skipped by a middleware (AgeLimit)
    LOST = "lost"  # the worker running it died

    @property
    def phase(self) -> int:
        return _PHASE[self]

    @property
    def status(self) -> str:
        return _STATUS[self]

    @property
    def is_final(self) -> bool:
        return self in (Kind.COMPLETED, Kind.FAILED, Kind.SKIPPED)


_PHASE = {
    Kind.ENQUEUED: PHASE_ENQUEUED,
    Kind.DELAYED: PHASE_ENQUEUED,
    Kind.REQUEUED: PHASE_ENQUEUED,
    Kind.MOVED: PHASE_ENQUEUED,
    Kind.LOST: PHASE_LOST,
    Kind.STARTED: PHASE_STARTED,
    Kind.COMPLETED: PHASE_FINISHED,
    Kind.RETRIED: PHASE_FINISHED,
    Kind.FAILED: PHASE_FINISHED,
    Kind.SKIPPED: PHASE_FINISHED,
}

_STATUS = {
    Kind.ENQUEUED: JobStatus.PENDING,
    Kind.DELAYED: JobStatus.PENDING,
    Kind.REQUEUED: JobStatus.PENDING,
    Kind.MOVED: JobStatus.PENDING,
    Kind.LOST: JobStatus.PENDING,
    Kind.STARTED: JobStatus.PROCESSING,
    Kind.COMPLETED: JobStatus.COMPLETED,
    Kind.RETRIED: JobStatus.PENDING,
    Kind.FAILED: JobStatus.FAILED,
    Kind.SKIPPED: JobStatus.SKIPPED,
}


@dataclass(slots=True)
class JobEvent:
    """One thing that happened to one message.

    Times are epoch milliseconds, except ``at`` (microseconds, to order
    events of the same phase).  ``None`` means "this event does not know".
    """

    message_id: str
    kind: Kind
    attempt: int
    at: int
    queue: str
    actor: str
    connection: str
    queued_at: int
    payload: str | None = None  # the whole message, see encode_message
    worker_id: str | None = None
    eta: int | None = None
    ready_at: int | None = None
    started_at: int | None = None
    finished_at: int | None = None
    duration: float | None = None  # seconds, for finished attempts
    exception: str | None = None
    broker_message_id: str | None = None

    @property
    def progress(self) -> int:
        return self.attempt * 8 + self.kind.phase

    @property
    def queued_day(self) -> int:
        """The UTC day of ``queued_at``: with the message id, the row's unique key."""
        return day_of(self.queued_at)

    @property
    def attempts(self) -> int:
        """How many attempts had started when this event happened."""
        return self.attempt - 1 if self.kind.phase == PHASE_ENQUEUED else self.attempt

    def is_newer_than(self, progress: int, at: int) -> bool:
        """The ordering rule: newer progress, or the same progress and not older."""
        mine = self.progress
        return mine > progress or (mine == progress and self.at >= at)


@dataclass(slots=True)
class WorkerEvent:
    """New values for some columns of one worker row (created if missing).

    One key of ``fields`` is not a column: :data:`ALIVE_AS`, sent with each
    heartbeat, is the status the beating worker has.
    """

    worker_id: str
    fields: dict[str, object]


#: A heartbeat's field naming the worker's own status (running, paused...).
#: A row that a stale-worker cleanup marked lost while the worker was only
#: cut off from the ledger takes that status back from the first heartbeat
#: written after the mark (see :func:`watchtower.ledger.write_batch`).
ALIVE_AS = "alive_as"
