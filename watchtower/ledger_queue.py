"""The supervisor's row updates, run in order now or, while the ledger is away, once it is back.

A supervisor manages its processes without the ledger: when the database is
down, workers are still reaped and restarted, and what the ledger should
learn of it (a worker registered, its exit, a refused start request...)
waits here, in the order it happened.  After a failed write the queue leaves
the ledger alone for :data:`DB_RETRY` seconds, then runs the waiting updates
from the oldest; an update that fails for another reason than the database
is logged and dropped, so that one bad row cannot hold up the rest.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable

import peewee

from .errors import DatabaseUnavailable

__all__ = ["DB_RETRY", "DeferredLedger", "LedgerAction"]

logger = logging.getLogger(__name__)

#: Seconds to leave the ledger alone after one of its operations failed.
DB_RETRY = 5.0
#: Updates kept at most while the ledger is away (the oldest go first past it).
LIMIT = 100_000
#: Seconds between two warnings that the ledger is away.
WARN_EVERY = 30.0

#: One row update, run with the ledger bound.
LedgerAction = Callable[[], None]


class DeferredLedger:
    """Row updates of supervisor ``name``, run now or once the ledger answers again.

    ``clock``: monotonic seconds.  ``on_answer`` is called after every
    update the ledger took, ``on_outage`` after it failed one (the
    supervisor then judges heartbeats with care, puts the messages of dead
    workers back without the ledger, and closes its connection so that the
    next use opens a fresh one).
    """

    def __init__(
        self,
        name: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_answer: Callable[[], None] = lambda: None,
        on_outage: Callable[[], None] = lambda: None,
    ) -> None:
        self.name = name
        self.clock = clock
        self.on_answer = on_answer
        self.on_outage = on_outage
        self._todo: collections.deque[tuple[str, LedgerAction]] = collections.deque(maxlen=LIMIT)
        self._retry_at = 0.0
        self._warned_at = -1e9

    def __len__(self) -> int:
        """How many updates wait."""
        return len(self._todo)

    def defer(self, what: str, action: LedgerAction) -> None:
        """Queue a row update (``what`` names it in the log); it runs at the next :meth:`run`, or later."""
        self._todo.append((what, action))

    def available(self, now: float) -> bool:
        """Whether the ledger may be used now: no failure in the last :data:`DB_RETRY` seconds."""
        return now >= self._retry_at

    def caught_up(self, now: float) -> bool:
        """Whether an update queued now would run at once: the ledger available, nothing waiting."""
        return self.available(now) and not self._todo

    def run(self, now: float) -> None:
        """Run the waiting updates, oldest first, until one fails for want of the ledger."""
        if not self.available(now):
            return
        while self._todo:
            what, action = self._todo[0]
            try:
                action()
            except (peewee.PeeweeException, DatabaseUnavailable) as error:
                self.failed(what, error)
                return
            except Exception:
                logger.exception("supervisor %s: recording %s failed", self.name, what)
            else:
                self.on_answer()
            self._todo.popleft()

    def failed(self, what: str, error: Exception) -> None:
        """The ledger failed ``what`` (an update, or another use of the ledger): leave it alone for a while."""
        now = self.clock()
        self._retry_at = now + DB_RETRY
        if now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            logger.warning("supervisor %s: the ledger is unavailable (%s: %s); %d updates wait",
                           self.name, what, " ".join(str(error).split()), len(self._todo))
        self.on_outage()

    def drain(self, wait: float) -> int:
        """Try to run every waiting update for up to ``wait`` seconds (at exit); how many are left."""
        deadline = self.clock() + wait
        while self._todo and self.clock() < deadline:
            self._retry_at = 0.0
            self.run(self.clock())
            if self._todo:
                time.sleep(0.5)
        return len(self._todo)
