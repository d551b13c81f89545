"""Leases: one holder at a time across processes and hosts, through the ledger's database.

A lease is a row of ``watchtower_leases``: a name, its holder, a token new
on every acquisition, the time the claim lapses (``expires_at``) and the
earliest time anyone may take it again once released (``next_at``).  Taking
it is one conditional statement, atomic in every supported database::

    UPDATE ... SET owner, token, expires_at WHERE name = ? AND expires_at <= now AND next_at <= now
    -- no row yet: INSERT ... ON CONFLICT DO NOTHING (only one inserter wins)

so of many processes trying at once exactly one gets a row count of 1.  The
holder renews the lease while it works and releases it with the time of the
next run; a holder that dies simply lets it expire, and another process
takes over after ``ttl``.

Times are the hosts' wall clocks in epoch milliseconds, so hosts whose
clocks disagree by more than a lease's ``ttl`` could overlap: keep clocks
in sync (NTP) and ``ttl`` well above their skew.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import peewee

from .clock import now_ms
from .dialects import dialect_of
from .models import Lease as LeaseRow

__all__ = ["Lease", "acquire", "free_at"]

logger = logging.getLogger(__name__)


@dataclass
class Lease:
    """A lease this process holds (returned by :func:`acquire`)."""

    db: peewee.Database
    name: str
    owner: str
    token: str
    ttl_ms: int
    expires_at: int
    clock: Callable[[], int] = now_ms

    def renew(self) -> bool:
        """Push the expiry ``ttl`` ahead; False if the lease was lost meanwhile.

        A lease is lost when its holder let it expire (it stalled past
        ``ttl``) and another process took it.
        """
        # Strictly later than the stored expiry: MySQL counts only rows
        # whose values changed.
        expires = max(self.clock() + self.ttl_ms, self.expires_at + 1)
        changed = _execute(
            self.db,
            f"UPDATE {_TABLE} SET expires_at = {{p}} WHERE name = {{p}} AND token = {{p}}",
            (expires, self.name, self.token),
        )
        if changed != 1:
            logger.warning("lease %s of %s was lost (it expired and another holder took it)", self.name, self.owner)
            return False
        self.expires_at = expires
        return True

    def release(self, *, next_in_ms: int = 0) -> None:
        """Give the lease up; nobody may take it again for ``next_in_ms``."""
        now = self.clock()
        _execute(
            self.db,
            f"UPDATE {_TABLE} SET expires_at = {{p}}, next_at = {{p}} WHERE name = {{p}} AND token = {{p}}",
            (now, now + next_in_ms, self.name, self.token),
        )


_TABLE = LeaseRow._meta.table_name


def acquire(
    db: peewee.Database, name: str, *, owner: str, ttl: float, clock: Callable[[], int] = now_ms
) -> Lease | None:
    """Take the lease ``name`` for ``ttl`` seconds if it is free and due, else None."""
    now = clock()
    token = uuid.uuid4().hex
    expires = now + int(ttl * 1000)
    taken = _execute(
        db,
        f"UPDATE {_TABLE} SET owner = {{p}}, token = {{p}}, expires_at = {{p}} "
        "WHERE name = {p} AND expires_at <= {p} AND next_at <= {p}",
        (owner, token, expires, name, now, now),
    )
    if taken != 1:
        # Only when no row exists yet: of concurrent inserters one wins.
        insert = dialect_of(db).insert_ignore(
            _TABLE, "name, owner, token, expires_at, next_at", "{p}, {p}, {p}, {p}, 0", key="name"
        )
        taken = _execute(db, insert, (name, owner, token, expires))
    if taken != 1:
        return None
    logger.debug("lease %s taken by %s until %d", name, owner, expires)
    return Lease(db, name, owner, token, int(ttl * 1000), expires, clock)


def free_at(db: peewee.Database, name: str) -> int:
    """The epoch ms from which lease ``name`` may be taken (0: never taken); a read only."""
    row = db.execute_sql(
        f"SELECT expires_at, next_at FROM {_TABLE} WHERE name = {db.param}", (name,)
    ).fetchone()
    return 0 if row is None else max(int(row[0]), int(row[1]))


def _execute(db: peewee.Database, sql: str, params: tuple[object, ...]) -> int:
    """Run one statement in its own transaction; the number of rows it changed."""
    with dialect_of(db).transaction(db):
        cursor = db.execute_sql(sql.format(p=db.param), params)
        return int(cursor.rowcount)
