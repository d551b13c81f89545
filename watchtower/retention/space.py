"""SQLite space: handing the pages a prune freed back to the file system.

Space: SQLite puts pages freed by a prune on its free list and reuses them
for new rows.  After a prune that freed a large part of the file (a first
prune of a big ledger, ``--all``) the pages go back to the file system, one
of two ways.  When little is left, one ``VACUUM`` rebuilds the file from
the rows that stay: it holds the write lock while it copies them, so it is
taken only when the prune's own batches show that this takes no longer
than :data:`WHOLE_VACUUM_BATCHES` batches (VACUUM's time grows with the
pages that stay; the batches measured how fast this machine writes these
tables just now).  Otherwise ``PRAGMA incremental_vacuum`` runs in short
steps; the ledger's file is in incremental auto-vacuum mode (set by
:mod:`watchtower.store` when it creates the file).  Each of those steps
searches SQLite's free list for every page it takes off the end of the
file, so their time grows with the free list: for a first prune of a
big ledger they take many times longer than one VACUUM of the few pages
left (benchmarks/RESULTS.md, fifth pass, has the numbers).  A file created
before that (auto_vacuum = NONE) reuses its free pages and shrinks only
through the whole VACUUM, which also switches it to incremental mode (every
connection asks for it).  PostgreSQL reuses the
space after (auto)vacuum; MySQL/InnoDB reuses it inside the table's file.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import peewee

from .policy import scalar

if TYPE_CHECKING:
    from .engine import BatchLoop

__all__ = ["give_back", "free_pages", "VACUUM_FREE_FRACTION", "WHOLE_VACUUM_BATCHES"]

logger = logging.getLogger(__name__)

#: Give free pages back to the file system when they are at least this
#: fraction of the file (after a big prune; not in the steady state of
#: hourly trimming, where new rows reuse the pages freed an hour earlier).
VACUUM_FREE_FRACTION = 0.25

#: Rebuild the file with one VACUUM when that should hold the write lock no
#: longer than this many batches (see the module doc).
WHOLE_VACUUM_BATCHES = 2.0


def free_pages(db: peewee.Database) -> int:
    """The length of the file's free list, in pages."""
    return scalar(db, "PRAGMA freelist_count", ())


def give_back(loop: BatchLoop, free_before: int) -> None:
    """Hand the pages the prune freed back to the file system (see the module doc).

    ``free_before``: the free list's length when the prune began.
    """
    db = loop.db
    # Only the pages free now: live writers free and reuse pages all the time.
    free = free_pages(db)
    pages = scalar(db, "PRAGMA page_count", ())
    if free < VACUUM_FREE_FRACTION * pages:
        return  # steady state: new rows will reuse these pages; moving them would double the writes
    freed = free - free_before
    if freed > 0 and loop.busy > 0:
        # VACUUM copies the pages that stay; the batches freed ``freed``
        # pages in ``busy`` seconds of writing.  VACUUM copies a page faster
        # than a batch frees one (benchmarks/RESULTS.md, fifth pass), so the
        # estimate errs long.
        estimate = (pages - free) * loop.busy / freed
        if estimate <= WHOLE_VACUUM_BATCHES * loop.batch_seconds:
            loop.result.vacuum = "whole"
            started = time.perf_counter()
            db.execute_sql("VACUUM")
            loop.result.longest_batch = max(loop.result.longest_batch, time.perf_counter() - started)
            return
    if scalar(db, "PRAGMA auto_vacuum", ()) != 2:
        logger.info(
            "the ledger's SQLite file is not in incremental auto-vacuum mode: run "
            "'PRAGMA auto_vacuum = INCREMENTAL; VACUUM;' on it once, with the workers stopped, to shrink it"
        )
        return
    loop.result.vacuum = "incremental"
    _incremental_vacuum(loop, free)


def _incremental_vacuum(loop: BatchLoop, free: int) -> None:
    """Hand ``free`` pages back, a few MB per transaction."""
    db = loop.db
    pages = 1024
    while free > 0:
        step = min(pages, free)
        started = time.perf_counter()
        # executescript: through execute() the pragma stops after one page.
        db.connection().executescript(f"PRAGMA incremental_vacuum({step});")
        elapsed = time.perf_counter() - started
        free -= step
        loop.result.longest_batch = max(loop.result.longest_batch, elapsed)
        if elapsed > 0:
            pages = int(min(65_536, max(64, pages / 2, min(pages * 2, step * loop.batch_seconds / elapsed))))
        if free > 0:
            loop.step_back()


