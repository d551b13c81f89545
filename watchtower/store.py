"""Opening the ledger's database from a URL and creating or checking its schema.

Supported URLs::

    sqlite:///relative/path.db      sqlite:////absolute/path.db
    postgresql://user:password@host:5432/dbname   (also postgres://)
    mysql://user:password@host:3306/dbname        (also mariadb://)

``?option=value`` pairs after the URL are passed to the driver (for example
``?connect_timeout=5``).  SQLite runs in WAL mode with a busy timeout so that
many processes can record into one file at once, and in incremental
auto-vacuum mode so that a prune can give freed space back to the file system.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

import peewee

from . import derived, models
from .errors import DatabaseUnavailable, DatabaseURLError, SchemaError

__all__ = ["connect", "open_database", "ensure_schema", "check_database_url", "SCHEMA_VERSION", "dialect"]

logger = logging.getLogger(__name__)

#: Bumped whenever a release changes the tables; ``ensure_schema`` refuses a
#: database written by a newer release and migrates older ones.
#: 2: the job table's unique key is (queued_day, message_id), not message_id.
SCHEMA_VERSION = 2

_SCHEMES = {
    "sqlite": "sqlite",
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "mysql": "mysql",
    "mariadb": "mysql",
}

_HOW = (
    "write it as sqlite:///path/to/file.db, postgresql://user@host:5432/dbname "
    "or mysql://user:password@host:3306/dbname"
)

# SQLite: how long a writer waits for the lock before giving up, in seconds.
# Long, because the recorder's writes are short and off the jobs' threads.
SQLITE_BUSY_TIMEOUT = 30.0


@dataclass(frozen=True)
class DatabaseURL:
    kind: str  # sqlite, postgresql or mysql
    database: str
    params: dict[str, Any]


def check_database_url(url: str, *, source: str = "the argument") -> DatabaseURL:
    """Parse ``url``, or raise DatabaseURLError saying how to write a good one."""
    if not isinstance(url, str) or "://" not in url:
        raise DatabaseURLError(f"database_url {url!r} from {source} is not a URL: {_HOW}")
    parsed = urllib.parse.urlparse(url)
    kind = _SCHEMES.get(parsed.scheme.lower())
    if kind is None:
        raise DatabaseURLError(
            f"database_url {url!r} from {source} has the unknown scheme {parsed.scheme!r}: {_HOW}"
        )
    query = {key: value for key, value in urllib.parse.parse_qsl(parsed.query)}
    if kind == "sqlite":
        path = url.split("://", 1)[1].split("?", 1)[0]
        if not path.startswith("/") or len(path) < 2:
            raise DatabaseURLError(f"database_url {url!r} from {source} names no file: {_HOW}")
        return DatabaseURL(kind, path[1:], dict(query))
    name = parsed.path.lstrip("/")
    if not parsed.hostname or not name:
        raise DatabaseURLError(
            f"database_url {url!r} from {source} must name a host and a database: {_HOW}"
        )
    try:
        port = parsed.port
    except ValueError:
        raise DatabaseURLError(f"database_url {url!r} from {source} has a bad port: {_HOW}") from None
    params: dict[str, Any] = {"host": parsed.hostname}
    if port is not None:
        params["port"] = port
    if parsed.username:
        params["user"] = urllib.parse.unquote(parsed.username)
    if parsed.password is not None:
        params["password"] = urllib.parse.unquote(parsed.password)
    for key, value in query.items():
        params[key] = int(value) if value.isdigit() else value
    return DatabaseURL(kind, urllib.parse.unquote(name), params)


def open_database(url: str) -> peewee.Database:
    """A Peewee database for ``url``, not yet connected."""
    spec = check_database_url(url)
    if spec.kind == "sqlite":
        return _SqliteDatabase(
            spec.database,
            timeout=SQLITE_BUSY_TIMEOUT,
            pragmas={
                "busy_timeout": int(SQLITE_BUSY_TIMEOUT * 1000),
                # Before any table exists (it is a no-op afterwards): lets
                # watchtower.prune hand pages freed by a prune back to the
                # file system with PRAGMA incremental_vacuum.
                "auto_vacuum": "incremental",
                "journal_mode": "wal",
                "synchronous": "normal",
            },
            field_types={"BIGTEXT": "TEXT"},
            **spec.params,
        )
    if spec.kind == "postgresql":
        params = {"connect_timeout": 5, **spec.params}
        # The ledger speaks psycopg 3 (COPY, %b); Peewee takes psycopg2 when both
        # are installed unless told otherwise.
        return peewee.PostgresqlDatabase(spec.database, field_types={"BIGTEXT": "TEXT"}, prefer_psycopg3=True,
                                         **params)
    params = {"connect_timeout": 5, "charset": "utf8mb4", **spec.params}
    return peewee.MySQLDatabase(spec.database, field_types={"BIGTEXT": "LONGTEXT"}, **params)


class _SqliteDatabase(peewee.SqliteDatabase):
    """SQLite whose connection setup survives many processes opening a fresh file.

    Switching a new file to WAL needs an exclusive lock, and SQLite reports
    "database is locked" at once (without its busy handler) while another
    process holds one, for example a second worker creating the schema at
    the same moment.  Each pragma is retried until the busy timeout.
    """

    def _set_pragmas(self, conn: sqlite3.Connection) -> None:
        deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT
        cursor = conn.cursor()
        try:
            for pragma, value in self._pragmas:  # type: ignore[attr-defined]
                while True:
                    try:
                        cursor.execute(f"PRAGMA {pragma} = {value};")
                        break
                    except sqlite3.OperationalError as error:
                        if "locked" not in str(error) or time.monotonic() > deadline:
                            raise
                        time.sleep(0.01)
        finally:
            cursor.close()


def dialect(db: peewee.Database) -> str:
    """``sqlite``, ``postgresql`` or ``mysql``."""
    if isinstance(db, peewee.SqliteDatabase):
        return "sqlite"
    if isinstance(db, peewee.PostgresqlDatabase):
        return "postgresql"
    if isinstance(db, peewee.MySQLDatabase):
        return "mysql"
    raise DatabaseURLError(f"unsupported database {type(db).__name__}")


def connect(url: str, *, create: bool = True) -> peewee.Database:
    """Open ``url``, bind the models to it, and create or check the schema.

    This is what a program calls once before using ``Job``, ``Worker`` and the
    rest; calling it again with another URL re-binds the models.
    """
    db = open_database(url)
    # One binding at a time: the recorder's thread and a command bus may
    # connect at once, and ensure_schema needs the proxy pointing at its db.
    with _connect_lock:
        models.database.initialize(db)
        if create:
            try:
                ensure_schema(db)
            except peewee.DatabaseError as error:  # also OperationalError, InterfaceError
                reason = " ".join(str(error).split())
                raise DatabaseUnavailable(f"cannot open the ledger database {redact_url(url)}: {reason}") from error
    return db


_connect_lock = threading.RLock()


def _reinit_connect_lock() -> None:
    # A thread of the parent (a recorder connecting) may hold the lock at
    # the fork; in the child that thread is gone and the lock would stay held.
    global _connect_lock
    _connect_lock = threading.RLock()


os.register_at_fork(after_in_child=_reinit_connect_lock)


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for messages and logs."""
    parsed = urllib.parse.urlparse(url)
    if parsed.password is None:
        return url
    netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)
    return urllib.parse.urlunparse(parsed._replace(netloc=netloc))


def ensure_schema(db: peewee.Database) -> None:
    """Create the tables if they are missing; refuse a schema newer than ours.

    ``db`` must be the database the models are bound to (``connect`` does
    that first).  Many processes may start at once against an empty
    database, so creation runs under a lock the database itself provides.
    """
    if models.database.obj is not db:
        raise SchemaError("ensure_schema() needs the models bound to this database: call connect(url)")
    kind = dialect(db)
    with _schema_lock(db, kind):
        # The version first: a newer release may have changed the tables, and
        # this one must not add its own beside them.
        if db.table_exists(models.Meta._meta.table_name):
            row = models.Meta.get_or_none(models.Meta.key == "schema_version")
            version = int(row.value) if row is not None else SCHEMA_VERSION
            if version > SCHEMA_VERSION:
                raise SchemaError(
                    f"the ledger's schema is version {version}, newer than this release's {SCHEMA_VERSION}: "
                    "upgrade dramatiq-watchtower"
                )
            if version < 2 and db.table_exists(models.Job._meta.table_name):
                _migrate_to_2(db, kind)
                models.Meta.update(value="2").where(models.Meta.key == "schema_version").execute()
        derived_tables = (models.JobCount._meta.table_name, models.HourlyRollup._meta.table_name)
        existed = {table: db.table_exists(table) for table in derived_tables}
        db.create_tables(models.MODELS, safe=True)
        # Job counts and hourly rollups, kept by triggers.
        derived.install(db, kind, existed=existed)
        models.Meta.insert(key="schema_version", value=str(SCHEMA_VERSION)).on_conflict_ignore().execute()


def _migrate_to_2(db: peewee.Database, kind: str) -> None:
    """Version 1 to 2: the job table's unique key becomes (queued_day, message_id).

    Adds and fills ``queued_day`` (the UTC day of ``queued_at``, truncated
    as :func:`watchtower.models.day_of` does), makes the new unique index and
    drops the one on ``message_id``.  Each step can run again, so an
    interrupted migration finishes on the next start.  Processes of the
    older release must be stopped first: their upserts name the old key.
    """
    table = models.Job._meta.table_name
    started = time.monotonic()
    logger.info("migrating the ledger's schema to version 2 (the job table's unique key)")
    with db.atomic():  # one transaction where the database has transactional DDL (SQLite, PostgreSQL)
        if "queued_day" not in {column.name for column in db.get_columns(table)}:
            db.execute_sql(f"ALTER TABLE {table} ADD COLUMN queued_day BIGINT NOT NULL DEFAULT 0")
        divide = "DIV" if kind == "mysql" else "/"
        db.execute_sql(f"UPDATE {table} SET queued_day = queued_at {divide} {models.DAY_MS}")
        db.execute_sql(
            f"CREATE UNIQUE INDEX IF NOT EXISTS {table}_queued_day_message_id ON {table} (queued_day, message_id)"
        )
        on_table = f" ON {table}" if kind == "mysql" else ""
        db.execute_sql(f"DROP INDEX IF EXISTS {table}_message_id{on_table}")
    logger.info("the ledger's schema is version 2 (%.1f s)", time.monotonic() - started)


class _schema_lock:
    """A database-wide lock around schema creation (SQLite: an immediate transaction)."""

    def __init__(self, db: peewee.Database, kind: str) -> None:
        self.db, self.kind = db, kind
        self._atomic: Any = None

    def __enter__(self) -> None:
        if self.kind == "sqlite":
            self._atomic = self.db.atomic("IMMEDIATE")
            self._atomic.__enter__()
        elif self.kind == "postgresql":
            self.db.execute_sql("SELECT pg_advisory_lock(727274)")
        else:
            self.db.execute_sql("SELECT GET_LOCK('watchtower_schema', 60)")

    def __exit__(self, *exc: Any) -> None:
        if self.kind == "sqlite":
            self._atomic.__exit__(*exc)
        elif self.kind == "postgresql":
            self.db.execute_sql("SELECT pg_advisory_unlock(727274)")
        else:
            self.db.execute_sql("SELECT RELEASE_LOCK('watchtower_schema')")
