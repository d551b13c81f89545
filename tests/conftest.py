"""Shared fixtures: real databases, a private Redis namespace, a lab of worker processes.

Every test gets its own database (a new SQLite file, or a PostgreSQL or
MariaDB database created for it and dropped afterwards), its own Redis key
prefix and its own queue names, so tests never see each other's data and
never touch anything they did not create.  The helpers behind them live in
tests/support (the servers' addresses: tests/support/servers.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from tests.support.lab import Lab
from tests.support.servers import DATABASE_KINDS, REDIS_URL, fresh_database, unique
from watchtower import store


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


@pytest.fixture
def lab(tmp_path: Path, redis_namespace: str, queue_name: str) -> Iterator[Lab]:
    """Worker processes on a SQLite ledger and a Redis bus of this test's own; killed afterwards."""
    database_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    db = store.connect(database_url)
    connection = redis.Redis.from_url(REDIS_URL)
    producer = RedisBroker(url=REDIS_URL, namespace=redis_namespace, middleware=[])
    lab = Lab(redis_namespace, queue_name, database_url, tmp_path, connection, producer)
    try:
        yield lab
    finally:
        lab.stop_all()
        producer.close()
        connection.close()
        db.close()
