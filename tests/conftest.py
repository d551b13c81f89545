"""Shared fixtures: real databases, a private Redis namespace, polling helpers.

Every test gets its own database (a new SQLite file, or a PostgreSQL or
MariaDB database created for it and dropped afterwards), its own Redis key
prefix and its own queue names, so tests never see each other's data and
never touch anything they did not create.

The servers are the machine's own (see .ci/run); their addresses can be
changed with WT_TEST_POSTGRES, WT_TEST_MYSQL,
WT_TEST_REDIS and WT_TEST_RABBITMQ.  A server that cannot be
reached fails the tests that need it; nothing is skipped.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

POSTGRES_ADMIN = os.environ.get("WT_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
MYSQL_ADMIN = os.environ.get("WT_TEST_MYSQL", "mysql://root@127.0.0.1:3306/test")
REDIS_URL = os.environ.get("WT_TEST_REDIS", "redis://127.0.0.1:6379/0")
RABBITMQ_URL = os.environ.get("WT_TEST_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672/%2F")

DATABASE_KINDS = ("sqlite", "postgresql", "mysql")


def unique(prefix: str = "wt") -> str:
    """A short name no other test uses (letters, digits and underscores)."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, message: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message or predicate}")
        time.sleep(interval)


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a child process that must import this checkout's watchtower."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHTOWER_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


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


@pytest.fixture(params=DATABASE_KINDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database of each kind in turn: SQLite file, PostgreSQL, MariaDB."""
    with fresh_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture
def postgres_url(tmp_path: Path) -> Iterator[str]:
    with fresh_database("postgresql", tmp_path) as url:
        yield url


@pytest.fixture
def redis_namespace() -> Iterator[str]:
    """A Redis key prefix of this test's own; its keys are deleted afterwards."""
    import redis

    namespace = unique("wt")
    yield namespace
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def queue_name() -> str:
    """A queue name of this test's own (RabbitMQ queues are shared by the server)."""
    return unique("q")
