"""The SQL that differs between the databases the ledger runs on, one :class:`Dialect` per database.

``dialect_of(db)`` gives a connected database's dialect: the one
:mod:`watchtower.store` set on the database it opened, or for a Peewee
database made elsewhere (by a host app), the one its class implies.
Callers resolve it once per batch or connection, not per row.
"""

from __future__ import annotations

import peewee

from ..errors import DatabaseURLError
from .base import DerivedTables, Dialect, driver
from .mysql import MysqlDialect
from .postgresql import PostgresqlDialect
from .sqlite import SqliteDialect

__all__ = ["Dialect", "DerivedTables", "SQLITE", "POSTGRESQL", "MYSQL", "DIALECTS", "dialect_of", "driver"]

SQLITE = SqliteDialect()
POSTGRESQL = PostgresqlDialect()
MYSQL = MysqlDialect()

#: Each dialect by its name, the ``kind`` of a checked database URL.
DIALECTS: dict[str, Dialect] = {dialect.name: dialect for dialect in (SQLITE, POSTGRESQL, MYSQL)}


def dialect_of(db: peewee.Database) -> Dialect:
    """The dialect of ``db`` (or of the database a ``DatabaseProxy`` points at)."""
    if isinstance(db, peewee.DatabaseProxy):
        db = db.obj
    dialect = getattr(db, "dialect", None)
    if isinstance(dialect, Dialect):
        return dialect
    if isinstance(db, peewee.SqliteDatabase):
        return SQLITE
    if isinstance(db, peewee.PostgresqlDatabase):
        return POSTGRESQL
    if isinstance(db, peewee.MySQLDatabase):
        return MYSQL
    raise DatabaseURLError(f"unsupported database {type(db).__name__}")
