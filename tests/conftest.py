"""Shared fixtures: real databases, a private Redis namespace, a lab of worker processes, host apps.

Every test gets its own database (a new SQLite file, or a PostgreSQL or
MariaDB database created for it and dropped afterwards), its own Redis key
prefix and its own queue names, so tests never see each other's data and
never touch anything they did not create.  The helpers behind them live in
tests/support (the servers' addresses: tests/support/servers.py).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from tests.support.checkout import subprocess_env
from tests.support.host_apps import HOSTS, Host, listening_on
from tests.support.lab import Lab
from tests.support.polling import DEADLINE
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


@pytest.fixture
def start_host(request: pytest.FixtureRequest, sqlite_url: str, redis_namespace: str, queue_name: str,
               tmp_path: Path) -> Iterator[Callable[..., Host]]:
    """Serves the host app that the test's ``host`` parameter names, on the test's SQLite ledger."""
    db = store.connect(sqlite_url)
    started: list[tuple[subprocess.Popen[str], Host]] = []
    log = tmp_path / "host.log"

    def start(**env: str) -> Host:
        kind, target = HOSTS[request.node.callspec.params["host"]]
        with log.open("w") as errors:
            process = subprocess.Popen(
                [sys.executable, "-m", "apps.serve_host", kind, target],
                env=subprocess_env(
                    WATCHTOWER_DATABASE_URL=sqlite_url, WATCHTOWER_COMMAND_BUS="redis",
                    WATCHTOWER_REDIS_URL=REDIS_URL, WATCHTOWER_REDIS_PREFIX=redis_namespace,
                    WATCHTOWER_APP="apps.web",  # the broker that retries go to
                    WT_TEST_NAMESPACE=redis_namespace, WT_TEST_REDIS=REDIS_URL, WT_TEST_QUEUE=queue_name,
                    WT_TEST_DJANGO_DB=str(tmp_path / "django.db"), **env,
                ),
                cwd=tmp_path, stdout=subprocess.PIPE, stderr=errors, text=True,
            )
        host = Host(listening_on(process, log))
        started.append((process, host))
        return host

    yield start
    for process, host in started:
        for http in host.clients:
            http.close()
        process.terminate()
        try:
            process.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if log.exists():
        print(log.read_text()[-3000:])
    db.close()
