"""The machine's servers, names of a test's own on them, and fresh databases.

The servers are the machine's own (see .ci/run); their addresses can be
changed with WT_TEST_POSTGRES, WT_TEST_MYSQL, WT_TEST_REDIS and
WT_TEST_RABBITMQ.  A server that cannot be reached fails the tests that need
it; nothing is skipped.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

POSTGRES_ADMIN = os.environ.get("WT_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
MYSQL_ADMIN = os.environ.get("WT_TEST_MYSQL", "mysql://root@127.0.0.1:3306/test")
REDIS_URL = os.environ.get("WT_TEST_REDIS", "redis://127.0.0.1:6379/0")
RABBITMQ_URL = os.environ.get("WT_TEST_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672/%2F")

DATABASE_KINDS = ("sqlite", "postgresql", "mysql")


def unique(prefix: str = "wt") -> str:
    """A short name no other test uses (letters, digits and underscores)."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def _create_postgres_database() -> tuple[str, Callable[[], None]]:
    import psycopg

    from watchtower.store import check_database_url

    admin = check_database_url(POSTGRES_ADMIN)
    name = unique("wt")
    with psycopg.connect(dbname=admin.database, autocommit=True, **admin.params) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(dbname=admin.database, autocommit=True, **admin.params) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    base = POSTGRES_ADMIN.rsplit("/", 1)[0]
    return f"{base}/{name}", drop


def _create_mysql_database() -> tuple[str, Callable[[], None]]:
    import pymysql

    from watchtower.store import check_database_url

    admin = check_database_url(MYSQL_ADMIN)
    name = unique("wt")
    params = dict(admin.params)
    conn = pymysql.connect(database=admin.database, autocommit=True, **params)
    with conn.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    conn.close()

    def drop() -> None:
        conn = pymysql.connect(database=admin.database, autocommit=True, **params)
        with conn.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()

    base = MYSQL_ADMIN.rsplit("/", 1)[0]
    return f"{base}/{name}", drop


def make_database_url(kind: str, tmp_path: Path) -> tuple[str, Callable[[], None]]:
    """A URL of a new, empty database of ``kind``, and the function that drops it."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}", lambda: None
    if kind == "postgresql":
        return _create_postgres_database()
    if kind == "mysql":
        return _create_mysql_database()
    raise ValueError(kind)


@contextlib.contextmanager
def fresh_database(kind: str, tmp_path: Path) -> Iterator[str]:
    """A new, empty database of ``kind``; closed and dropped afterwards."""
    url, drop = make_database_url(kind, tmp_path)
    try:
        yield url
    finally:
        from watchtower import models

        if models.database.obj is not None:
            models.database.obj.close()
        drop()
