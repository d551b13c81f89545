"""Opening the ledger's database from a URL and creating or checking its schema.

Supported URLs::

    sqlite:///relative/path.db      sqlite:////absolute/path.db
    postgresql://user:password@host:5432/dbname   (also postgres://)
    mysql://user:password@host:3306/dbname        (also mariadb://)

The driver is chosen on purpose, not left to Peewee's preference: for
PostgreSQL psycopg 3, else psycopg2; for MySQL and MariaDB PyMySQL, else
mysqlclient (``MySQLdb``).  A URL may name one as SQLAlchemy's do:
``postgresql+psycopg2://...``, ``postgresql+psycopg://...``,
``mysql+pymysql://...``, ``mysql+mysqldb://...``.  A driver that is missing
or too old is refused when the URL is checked, with the package to install.

``?option=value`` pairs after the URL are passed to the driver (for example
``?connect_timeout=5``).  SQLite runs in WAL mode with a busy timeout so that
many processes can record into one file at once, and in incremental
auto-vacuum mode so that a prune can give freed space back to the file system.
"""

from __future__ import annotations

import importlib
import itertools
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
from .clock import DAY_MS
from .dialects import MYSQL, POSTGRESQL, SQLITE, Dialect, dialect_of
from .dialects.sqlite import SQLITE_BUSY_TIMEOUT
from .errors import DatabaseDriverError, DatabaseUnavailable, DatabaseURLError, SchemaError

__all__ = [
    "connect", "create_database", "open_database", "ensure_schema", "check_database_url", "SCHEMA_VERSION",
    "DRIVERS",
]

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


@dataclass(frozen=True)
class Driver:
    """A DB-API driver the ledger can use, and what to install to get it."""

    name: str  # as in a URL's scheme: postgresql+<name>://
    module: str  # what is imported
    minimum: tuple[int, ...]  # the oldest release tested
    install: str  # what to pip install
    version: str = "__version__"  # the module's attribute that holds its version


#: For each kind of server, the drivers the ledger can use, the preferred first.
DRIVERS: dict[str, tuple[Driver, ...]] = {
    "sqlite": (Driver("sqlite3", "sqlite3", (), "(part of Python)"),),
    "postgresql": (
        Driver("psycopg", "psycopg", (3, 1), "'dramatiq-watchtower[postgresql]'"),
        Driver("psycopg2", "psycopg2", (2, 9, 5), "'dramatiq-watchtower[postgresql]' (psycopg 3) or psycopg2-binary"),
    ),
    "mysql": (
        Driver("pymysql", "pymysql", (1, 1), "'dramatiq-watchtower[mysql]'", "VERSION"),
        Driver("mysqldb", "MySQLdb", (2, 2), "'dramatiq-watchtower[mysql]' (PyMySQL) or mysqlclient", "version_info"),
    ),
}

_KIND_NAMES = {"postgresql": "PostgreSQL", "mysql": "MySQL/MariaDB"}

@dataclass(frozen=True)
class DatabaseURL:
    kind: str  # sqlite, postgresql or mysql
    database: str
    params: dict[str, Any]
    driver: str = "sqlite3"  # a name from DRIVERS[kind]


def check_database_url(url: str, *, source: str = "the argument") -> DatabaseURL:
    """Parse ``url`` and choose its driver.

    Raises DatabaseURLError saying how to write a good URL, or
    DatabaseDriverError naming what to install when no driver it may use
    can be imported.
    """
    if not isinstance(url, str) or "://" not in url:
        raise DatabaseURLError(f"database_url {url!r} from {source} is not a URL: {_HOW}")
    parsed = urllib.parse.urlparse(url)
    scheme, _, asked = parsed.scheme.lower().partition("+")
    kind = _SCHEMES.get(scheme)
    if kind is None:
        raise DatabaseURLError(
            f"database_url {redact_url(url)!r} from {source} has the unknown scheme {parsed.scheme!r}: {_HOW}"
        )
    driver = choose_driver(kind, asked or None, url=redact_url(url), source=source)
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
    return DatabaseURL(kind, urllib.parse.unquote(name), params, driver.name)


def choose_driver(kind: str, asked: str | None = None, *, url: str = "", source: str = "the argument") -> Driver:
    """The driver for a ``kind`` of database: ``asked`` (a name from DRIVERS), or the first that imports.

    Raises DatabaseDriverError, in one line that names what to install,
    when the driver asked for (or every driver of ``kind``) cannot be
    imported or is older than the oldest release tested.
    """
    drivers = DRIVERS[kind]
    if asked is not None:
        named = [d for d in drivers if d.name == asked]
        if not named:
            names = ", ".join(f"{kind}+{d.name}" for d in drivers)
            raise DatabaseURLError(
                f"database_url {url!r} from {source} names the unknown driver {asked!r}: write {names}, "
                f"or {kind}:// for the first of them that is installed"
            )
        drivers = tuple(named)
    problems = []
    for candidate in drivers:
        problem = _driver_problem(candidate)
        if problem is None:
            return candidate
        problems.append(f"{candidate.name}: {problem}")
    if asked is not None:
        raise DatabaseDriverError(
            f"database_url {url} names the driver {asked}, which cannot be used ({problems[0]}): "
            f"pip install {drivers[0].install}"
        )
    raise DatabaseDriverError(
        f"no {_KIND_NAMES.get(kind, kind)} driver can be used for {url or 'the ledger'} ({'; '.join(problems)}): "
        f"pip install {drivers[0].install}"
    )


def _driver_problem(candidate: Driver) -> str | None:
    """Why ``candidate`` cannot be used here, or None if it can."""
    try:
        module = importlib.import_module(candidate.module)
    except ImportError as error:  # missing, or its C library is (psycopg without libpq)
        return " ".join(str(error).split())
    version = _version_numbers(getattr(module, candidate.version, ""))
    if version and version < candidate.minimum:
        return f"version {'.'.join(map(str, version))} is older than {'.'.join(map(str, candidate.minimum))}"
    return None


def _version_numbers(version: object) -> tuple[int, ...]:
    """``'2.9.9 (dt dec pq3 ext lo64)'`` or ``(2, 3, 2, 'final', 0)`` -> ``(2, 9, 9)``, ``(2, 3, 2)``."""
    parts = version if isinstance(version, tuple) else str(version).split(" ")[0].split(".")
    numbers = []
    for part in parts:
        digits = "".join(itertools.takewhile(str.isdigit, str(part)))
        if not digits:
            break
        numbers.append(int(digits))
    return tuple(numbers)


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
                # watchtower.retention.space hand pages freed by a prune back to the
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
        return _PostgresqlDatabase(
            spec.database, driver=spec.driver, prefer_psycopg3=spec.driver == "psycopg",
            field_types={"BIGTEXT": "TEXT"}, **params,
        )
    params = {"connect_timeout": 5, "charset": "utf8mb4", **spec.params}
    return _MySQLDatabase(spec.database, driver=spec.driver, field_types={"BIGTEXT": "LONGTEXT"}, **params)


class _PostgresqlDatabase(peewee.PostgresqlDatabase):
    """PostgreSQL through the driver chosen for it.

    Peewee would take psycopg2 whenever it is importable, even beside
    psycopg 3; ``prefer_psycopg3`` makes it take the one chosen, and each
    new connection is checked to come from that driver.
    """

    dialect: Dialect = POSTGRESQL

    def __init__(self, database: str, *, driver: str, **kwargs: Any) -> None:
        self.driver = driver
        super().__init__(database, **kwargs)

    def _connect(self) -> Any:
        # Peewee's connection hook (held by tests/test_peewee_internals.py), absent from its type stubs.
        return _checked(super()._connect(), self.driver)  # type: ignore[misc]


class _MySQLDatabase(peewee.MySQLDatabase):
    """MySQL or MariaDB through the driver chosen for it (Peewee takes PyMySQL if it imports)."""

    dialect: Dialect = MYSQL

    def __init__(self, database: str, *, driver: str, **kwargs: Any) -> None:
        self.driver = driver
        super().__init__(database, **kwargs)

    def _connect(self) -> Any:
        module = importlib.import_module(_module_of(self.driver))
        return module.connect(database=self.database, autocommit=True, **self.connect_params)


def _module_of(name: str) -> str:
    return next(d.module for drivers in DRIVERS.values() for d in drivers if d.name == name)


def _checked(conn: Any, name: str) -> Any:
    """``conn``, if it is a connection of the driver ``name``; otherwise closed, and an error."""
    module = type(conn).__module__.split(".")[0]
    if module != _module_of(name):
        conn.close()
        raise DatabaseDriverError(f"Peewee opened a {module} connection where the ledger chose {name}")
    return conn


class _SqliteDatabase(peewee.SqliteDatabase):
    """SQLite whose connection setup survives many processes opening a fresh file.

    Switching a new file to WAL needs an exclusive lock, and SQLite reports
    "database is locked" at once (without its busy handler) while another
    process holds one, for example a second worker creating the schema at
    the same moment.  Each pragma is retried until the busy timeout.
    """

    dialect: Dialect = SQLITE

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
                try:
                    ensure_schema(db)
                except peewee.OperationalError as error:
                    if not _is_missing_database(error):
                        raise
                    create_database(url)
                    ensure_schema(db)
            except peewee.DatabaseError as error:  # also OperationalError, InterfaceError
                reason = " ".join(str(error).split())
                raise DatabaseUnavailable(f"cannot open the ledger database {redact_url(url)}: {reason}") from error
    return db


def _is_missing_database(error: BaseException) -> bool:
    """Whether connecting failed because the URL's database does not exist on the server."""
    text = str(error)
    original = error.__context__
    code = original.args[0] if original is not None and original.args else None
    return code == 1049 or ('database "' in text and "does not exist" in text)  # MySQL ER_BAD_DB_ERROR; PostgreSQL


def create_database(url: str) -> None:
    """Create the (PostgreSQL or MySQL) database ``url`` names, if it does not exist yet.

    ``connect`` calls it when the server says the database is missing, so a
    ledger on a fresh server needs no step by hand when the URL's user may
    create databases.  When the user may not, DatabaseUnavailable says how to
    create it.  Several processes may try at once: one creates it, the others
    find it made.
    """
    spec = check_database_url(url)
    if spec.kind == "sqlite":
        return  # SQLite makes its file on connect
    name = spec.database
    user = spec.params.get("user", "the default user")
    module = importlib.import_module(_module_of(spec.driver))
    params = {key: value for key, value in spec.params.items()}
    params.setdefault("connect_timeout", 5)
    try:
        if spec.kind == "postgresql":
            # CREATE DATABASE runs outside a transaction, from another database of the server.
            conn = module.connect(dbname="postgres", **params)
            conn.autocommit = True
            quoted = '"' + name.replace('"', '""') + '"'
            statement = f"CREATE DATABASE {quoted}"
        else:
            params.setdefault("charset", "utf8mb4")
            conn = module.connect(autocommit=True, **params)
            quoted = "`" + name.replace("`", "``") + "`"
            statement = f"CREATE DATABASE IF NOT EXISTS {quoted} CHARACTER SET utf8mb4"
    except Exception as error:
        raise DatabaseUnavailable(
            f"the ledger database {name!r} does not exist on {spec.params.get('host')}, and connecting to create it "
            f"failed: {' '.join(str(error).split())}"
        ) from error
    try:
        cursor = conn.cursor()
        try:
            cursor.execute(statement)
            logger.info("created the ledger database %s", redact_url(url))
        except Exception as error:
            text = str(error)
            if "already exists" in text:  # made by another process meanwhile
                return
            how = f"createdb {name}" if spec.kind == "postgresql" else f"CREATE DATABASE {quoted}"
            raise DatabaseUnavailable(
                f"the ledger database {name!r} does not exist on {spec.params.get('host')} and {user} may not create "
                f"it ({' '.join(text.split())}): create it first ({how}) or let {user} create databases"
            ) from error
        finally:
            cursor.close()
    finally:
        conn.close()


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
    dialect = dialect_of(db)
    with dialect.schema_lock(db):
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
                _migrate_to_2(db, dialect)
                models.Meta.update(value="2").where(models.Meta.key == "schema_version").execute()
        derived_tables = (models.JobCount._meta.table_name, models.HourlyRollup._meta.table_name)
        existed = {table: db.table_exists(table) for table in derived_tables}
        db.create_tables(models.MODELS, safe=True)
        # Job counts and hourly rollups, kept by triggers.
        derived.install(db, existed=existed)
        models.Meta.insert(key="schema_version", value=str(SCHEMA_VERSION)).on_conflict_ignore().execute()


def _migrate_to_2(db: peewee.Database, dialect: Dialect) -> None:
    """Version 1 to 2: the job table's unique key becomes (queued_day, message_id).

    Adds and fills ``queued_day`` (the UTC day of ``queued_at``, truncated
    as :func:`watchtower.clock.day_of` does), makes the new unique index and
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
        db.execute_sql(f"UPDATE {table} SET queued_day = {dialect.int_divide('queued_at', str(DAY_MS))}")
        db.execute_sql(
            f"CREATE UNIQUE INDEX IF NOT EXISTS {table}_queued_day_message_id ON {table} (queued_day, message_id)"
        )
        db.execute_sql(dialect.drop_index(table, f"{table}_message_id"))
    logger.info("the ledger's schema is version 2 (%.1f s)", time.monotonic() - started)

