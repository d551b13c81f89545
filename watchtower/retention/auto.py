"""Scheduling across hosts: the automatic prune, one process at a time, through a lease.

Every supervisor sharing a database may run :class:`AutoPruner`; the lease
``prune`` (see :mod:`watchtower.lease`) lets one of them prune each
``retention.interval``, and hands the work on when its holder stops.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import peewee

from ..clock import now_ms
from ..config import Settings
from ..lease import Lease, acquire, free_at
from .engine import prune
from .policy import PruneResult, Retention

__all__ = ["prune_if_due", "AutoPruner", "LEASE_NAME", "LEASE_TTL"]

logger = logging.getLogger(__name__)

#: The lease that keeps automatic pruning to one process at a time.
LEASE_NAME = "prune"
#: Seconds a pruner's lease lasts without renewal (it renews after every batch).
LEASE_TTL = 60.0


def prune_if_due(
    settings: Settings,
    *,
    owner: str,
    db: peewee.Database,
    clock: Callable[[], int] = now_ms,
    cancel: threading.Event | None = None,
    progress: Callable[[int], None] | None = None,
) -> PruneResult | None:
    """Prune now if automatic trimming is on, it is due, and no other process is at it.

    Due means ``retention.interval`` seconds have passed since the last
    automatic prune by any process sharing this database; the lease
    ``prune`` (see :mod:`watchtower.lease`) makes sure only one process
    prunes at a time.  Returns the result, or None when nothing was done.
    Database errors are logged, not raised: trimming is housekeeping and
    must never bring a supervisor down.
    """
    if not settings.retention_auto:
        return None
    lease: Lease | None = None
    next_in = settings.retention_interval
    try:
        now = clock()
        if free_at(db, LEASE_NAME) > now:
            return None  # held by someone, or pruned recently: known without a write
        lease = acquire(db, LEASE_NAME, owner=owner, ttl=LEASE_TTL, clock=clock)
        if lease is None:
            return None
        renewed = [time.monotonic()]

        def keep_lease() -> bool:
            if time.monotonic() - renewed[0] < LEASE_TTL / 3:
                return True
            renewed[0] = time.monotonic()
            assert lease is not None
            return lease.renew()

        logger.debug("automatic prune by %s", owner)
        result = prune(
            db, Retention.from_settings(settings), now=now, progress=progress,
            between_batches=keep_lease, cancel=cancel,
        )
        result.owner = owner
        if not result.complete:
            next_in = 0.0  # stopped midway: whoever comes next may finish the job
        return result
    except peewee.DatabaseError as error:
        logger.warning("automatic prune by %s failed (next try after retention.interval): %s", owner, error)
        return None
    finally:
        if lease is not None:
            try:
                lease.release(next_in_ms=round(next_in * 1000))
            except peewee.DatabaseError as error:
                logger.warning("cannot release the prune lease (it expires in %.0f s): %s", LEASE_TTL, error)


class AutoPruner:
    """Automatic trimming for a long-running loop (the supervisor's).

    ``tick()`` returns at once: when a prune may be due it runs
    :func:`prune_if_due` in a thread of its own, so that a long prune never
    delays the loop's real work (restarting workers).
    """

    #: Seconds between two looks at the lease, at most.
    CHECK_EVERY = 10.0

    def __init__(
        self, settings: Settings, *, owner: str, db: peewee.Database, clock: Callable[[], int] = now_ms
    ) -> None:
        self.settings = settings
        self.owner = owner
        self.db = db
        self.clock = clock
        self._thread: threading.Thread | None = None
        self._cancel = threading.Event()
        self._next_check = 0.0
        self._done: list[PruneResult] = []

    def tick(self) -> PruneResult | None:
        """Start a prune in the background if one may be due; the result of one that finished."""
        if self._done:
            return self._done.pop(0)
        if not self.settings.retention_auto or self._cancel.is_set():
            return None
        if self._thread is not None and self._thread.is_alive():
            return None
        now = time.monotonic()
        if now < self._next_check:
            return None
        self._next_check = now + min(self.CHECK_EVERY, self.settings.retention_interval)
        self._thread = threading.Thread(target=self._run, name="watchtower-prune", daemon=True)
        self._thread.start()
        return None

    def _run(self) -> None:
        try:
            result = prune_if_due(self.settings, owner=self.owner, db=self.db, clock=self.clock, cancel=self._cancel)
            if result is not None:
                logger.info("automatic prune by %s: %s", self.owner, result.summary())
                self._done.append(result)
        except Exception:
            logger.exception("automatic prune by %s failed", self.owner)
        finally:
            self.db.close()  # this thread's own connection

    def close(self, timeout: float = 10.0) -> None:
        """Stop a running prune after its current batch and wait for it."""
        self._cancel.set()
        if self._thread is not None:
            self._thread.join(timeout)
