"""The database command bus: two tables in the ledger's database.

- Values live in ``watchtower_commands`` (:class:`~watchtower.models.Command`),
  one row per key with its ``expires_at``.  ``put`` is an upsert; ``get``
  ignores expired rows.
- Lists live in ``watchtower_command_entries``
  (:class:`~watchtower.models.CommandEntry`), one row per entry, numbered by
  an auto-increment id that gives the list's order.

Draining a list must be atomic on SQLite, PostgreSQL and MariaDB alike.  The
design that needs no dialect-specific locking is *claim by delete*: read the
candidate rows, then delete them one by one by their unique random ``token``
(not by id: SQLite hands the id of a deleted last row to the next insert),
and keep an entry only if this caller's ``DELETE`` removed the row (row
count 1).  Every database
lets exactly one of two concurrent deletes of the same row report it (the
loser waits on the row lock, then finds nothing: PostgreSQL and InnoDB under
READ COMMITTED / REPEATABLE READ, SQLite by serialising writers), so no entry
is taken twice; an entry that one caller read but another deleted is simply
the other's; an entry pushed after the read waits for the next drain.  Inbox
lists hold a handful of entries, so one statement per entry costs nothing
that matters.

Expired rows are ignored by every read and deleted by a purge that runs at
most once per ``PURGE_INTERVAL`` seconds per bus object.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import TypeVar

import peewee

from .. import store
from ..clock import now_ms
from ..dialects import dialect_of
from ..errors import BusError, WatchtowerError
from ..models import Command, CommandEntry
from . import DEFAULT_TTL

__all__ = ["DatabaseCommandBus", "PURGE_INTERVAL"]

logger = logging.getLogger(__name__)

#: Seconds between two purges of expired rows by one bus object.
PURGE_INTERVAL = 60.0

T = TypeVar("T")


class DatabaseCommandBus:
    """The command bus on the ledger's database.

    ``database`` is a URL (the tables are created on first use) or a Peewee
    database already opened with :func:`watchtower.store.connect`.  Queries
    run against that database explicitly, so a bus is not affected by which
    database the models' proxy points at.  Safe to share between threads
    (Peewee keeps one connection per thread).
    """

    def __init__(self, *, database: str | peewee.Database) -> None:
        self._url = database if isinstance(database, str) else None
        self._db: peewee.Database | None = None if isinstance(database, str) else database
        self._lock = threading.Lock()
        self._last_purge = 0.0

    def __repr__(self) -> str:
        where = store.redact_url(self._url) if self._url else repr(self._db)
        return f"DatabaseCommandBus(database={where!r})"

    # Plumbing -------------------------------------------------------------

    def _database(self) -> peewee.Database:
        with self._lock:
            if self._db is None:
                assert self._url is not None
                try:
                    self._db = store.connect(self._url)
                except WatchtowerError as error:
                    raise BusError(f"the database command bus cannot be opened: {error}") from None
            return self._db

    def _run(self, what: Callable[[peewee.Database], T]) -> T:
        db = self._database()
        try:
            return what(db)
        except peewee.DatabaseError as error:  # also OperationalError, InterfaceError
            try:
                db.close()  # this thread's connection may be broken: reopen next time
            except Exception:
                pass
            reason = " ".join(str(error).split()) or type(error).__name__
            where = store.redact_url(self._url) if self._url else "its database"
            raise BusError(f"the database command bus at {where} failed: {reason}") from None

    def _maybe_purge(self, db: peewee.Database) -> None:
        now = time.monotonic()
        if now - self._last_purge < PURGE_INTERVAL:
            return
        self._last_purge = now
        self.purge_expired(db)

    def purge_expired(self, db: peewee.Database | None = None) -> int:
        """Delete every expired value and list entry; returns how many rows went."""
        db = db or self._database()
        cutoff = now_ms()
        try:
            removed = Command.delete().where(Command.expires_at <= cutoff).execute(db)
            removed += CommandEntry.delete().where(CommandEntry.expires_at <= cutoff).execute(db)
        except peewee.DatabaseError as error:
            # Two purges racing on MariaDB may deadlock; the next one catches up.
            logger.debug("purging expired command bus rows failed: %s", error)
            return 0
        if removed:
            logger.debug("purged %d expired command bus rows", removed)
        return int(removed)

    # Values ---------------------------------------------------------------

    def put(self, key: str, value: str, ttl: float = DEFAULT_TTL) -> None:
        """Set ``key`` to ``value`` for ``ttl`` seconds (an upsert)."""
        expires = now_ms() + _ttl_ms(ttl)

        def write(db: peewee.Database) -> None:
            query = Command.insert(key=key, value=value, expires_at=expires)
            dialect_of(db).upsert_query(query, [Command.key], [Command.value, Command.expires_at]).execute(db)
            self._maybe_purge(db)

        self._run(write)

    def get(self, key: str) -> str | None:
        """The value of ``key``, or None if it is missing or expired."""

        def read(db: peewee.Database) -> str | None:
            row = (
                Command.select(Command.value)
                .where((Command.key == key) & (Command.expires_at > now_ms()))
                .tuples()
                .execute(db)
            )
            values = [value for (value,) in row]
            return values[0] if values else None

        return self._run(read)

    def forget(self, key: str) -> None:
        """Delete ``key``."""
        self._run(lambda db: Command.delete().where(Command.key == key).execute(db))

    # Lists ----------------------------------------------------------------

    def push(self, key: str, value: str, ttl: float = DEFAULT_TTL) -> None:
        """Append ``value`` to the list at ``key``, to live ``ttl`` seconds."""
        expires = now_ms() + _ttl_ms(ttl)
        token = uuid.uuid4().hex
        self._run(lambda db: CommandEntry.insert(token=token, key=key, value=value, expires_at=expires).execute(db))

    def pop_all(self, key: str) -> list[str]:
        """Take every live entry of the list at ``key``, oldest first.

        Claim by delete (see the module's docstring): an entry is returned
        only by the caller whose DELETE removed its row.
        """

        def drain(db: peewee.Database) -> list[str]:
            candidates = list(
                CommandEntry.select(CommandEntry.token, CommandEntry.value)
                .where((CommandEntry.key == key) & (CommandEntry.expires_at > now_ms()))
                .order_by(CommandEntry.id)
                .tuples()
                .execute(db)
            )
            taken: list[str] = []
            for token, value in candidates:
                try:
                    deleted = CommandEntry.delete().where(CommandEntry.token == token).execute(db)
                except peewee.DatabaseError as error:
                    if not taken:
                        raise
                    # What this drain already deleted is the caller's: returned,
                    # not dropped with an exception; the rest waits for the next.
                    logger.warning("draining %s stopped after %d entries: %s", key, len(taken), error)
                    return taken
                if deleted == 1:
                    taken.append(value)
            self._maybe_purge(db)
            return taken

        return self._run(drain)

    # Health ---------------------------------------------------------------

    def ping(self) -> None:
        """Raise BusError unless the database answers."""
        self._run(lambda db: db.execute_sql("SELECT 1").fetchall())

    def close(self) -> None:
        """Close this thread's connection (a later call reconnects)."""
        with self._lock:
            db = self._db
        if db is not None and not db.is_closed():
            db.close()


def _ttl_ms(ttl: float) -> int:
    if ttl <= 0:
        raise ValueError(f"ttl must be a positive number of seconds, not {ttl!r}")
    return max(1, int(ttl * 1000))
