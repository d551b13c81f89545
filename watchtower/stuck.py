"""Jobs the ledger has stopped hearing about: ``pending`` or ``processing`` rows marked ``unknown``.

A row moves with its message's events.  If the event that ends a job never
reaches the database (dropped by a recorder whose memory and spool were
full; lost with a host's disk), the row would stay ``pending`` or
``processing`` for ever, and every list and count would go on showing a job
that is long gone.  Dramatiq's brokers cannot settle it: RabbitMQ has no
lookup by message id, and a message that ran is gone from every broker.

So the age decides.  A ``pending`` or ``processing`` row whose newest event
is older than ``unknown_after`` seconds (default one day), and whose eta
(a delay, a retry's backoff) is older too, is marked ``unknown``: the ledger
does not know what became of the job.  ``unknown`` adds to the statuses of
the ledger's design (pending, processing, completed, failed, skipped)
because none of those says this truthfully: ``failed`` would invite a retry
of a job that may have completed, ``completed`` would hide a failure.

The mark changes the status only, not the row's ordering state (its
progress and progress time), so any later event of the job (a spool
replayed late, a redelivery, the job starting at last after a day in a
backlog) is newer than the row and puts the right status back.  Set
``unknown_after`` longer than the longest a job may wait in a queue or run;
0 turns the marking off.  Supervisors mark, every RECONCILE_EVERY seconds
(the update is idempotent: several supervisors may run it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import peewee

from .clock import now_ms
from .models import Job
from .statuses import JobStatus

__all__ = ["mark_unknown", "UnknownMarker", "RECONCILE_EVERY"]

logger = logging.getLogger(__name__)

#: Seconds between two markings by a supervisor.
RECONCILE_EVERY = 300.0


def mark_unknown(after: float, *, db: peewee.Database | None = None, now: int | None = None) -> int:
    """Mark ``unknown`` the pending and processing jobs with no news for ``after`` seconds; how many.

    ``now`` is epoch milliseconds (default: the clock); ``db`` defaults to
    the database the models are bound to.
    """
    if after <= 0:
        return 0
    cutoff = (now if now is not None else now_ms()) - int(after * 1000)
    count = int(
        Job.update(status=JobStatus.UNKNOWN)
        .where(
            Job.status.in_((JobStatus.PENDING, JobStatus.PROCESSING))
            & (Job.progress_at < cutoff * 1000)  # microseconds
            & (Job.eta.is_null() | (Job.eta < cutoff))
        )
        .execute(db)
    )
    if count:
        logger.warning(
            "marked %d jobs unknown: pending or processing with no news of them for %g s (their last events "
            "never reached the ledger)", count, after,
        )
    return count


class UnknownMarker:
    """Runs :func:`mark_unknown` every ``every`` seconds, from a loop that calls :meth:`tick`.

    The first time only ``every`` seconds after it is made: a supervisor that
    starts after an outage first lets the workers write the spools that
    hold the news of those jobs.
    """

    def __init__(self, after: float, *, every: float = RECONCILE_EVERY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.after = after
        self.every = every
        self.clock = clock
        self._due = clock() + every

    def tick(self, db: peewee.Database | None = None) -> int:
        """Mark if due (raises what the database raises: the caller's loop handles outages)."""
        now = self.clock()
        if self.after <= 0 or now < self._due:
            return 0
        self._due = now + self.every
        return mark_unknown(self.after, db=db)
