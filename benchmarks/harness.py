"""What the benchmark scripts share: the servers' addresses, polling, timing, throwaway databases.

Every script runs as ``python3 benchmarks/NAME.py`` from the repository root
(benchmarks/run.py runs them all so, tests/test_benchmarks_smoke.py runs them
small): Python puts benchmarks/ on ``sys.path`` by itself, so ``import
harness`` works, and ``watchtower`` is installed (editable).  Importing this
module also puts the repository root on ``sys.path``, once for every script,
so that a benchmark can use the tests' helpers (``tests.support``: a private
PostgreSQL server, the fast ledger fill).

The servers are the machine's own; ``WT_BENCH_POSTGRES``, ``WT_BENCH_MYSQL``,
``WT_BENCH_REDIS`` and ``WT_BENCH_RABBITMQ`` change their addresses.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: The repository root.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from tests.support.polling import wait_until  # noqa: E402 (importable once the root is on sys.path)

POSTGRES_ADMIN = os.environ.get("WT_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
MYSQL_ADMIN = os.environ.get("WT_BENCH_MYSQL", "mysql://root@127.0.0.1:3306/test")
REDIS_URL = os.environ.get("WT_BENCH_REDIS", "redis://127.0.0.1:6379/0")
RABBITMQ_URL = os.environ.get("WT_BENCH_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672/%2F")


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "", interval: float = 0.01) -> Any:
    """Poll ``predicate`` until it is truthy; returns its value (SystemExit after ``timeout`` s).

    The tests' :func:`~tests.support.polling.wait_until`, polled every 10 ms by
    default (the latencies measured with it are the time until a predicate
    first holds), and ending a script with one line instead of a traceback.
    """
    try:
        return wait_until(predicate, timeout=timeout, interval=interval, message=what)
    except AssertionError as error:
        raise SystemExit(str(error)) from None


def time_get(client: Any, path: str, runs: int, headers: dict[str, str] | None = None) -> list[float]:
    """Milliseconds each of ``runs`` GETs of ``path`` took through a Falcon test client.

    Two requests first, not timed, that must answer 200 (caches warm, the path right).
    """
    for _ in range(2):
        answer = client.simulate_get(path, headers=headers)
        assert answer.status_code == 200, (path, answer.status_code, answer.text[-500:])
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        client.simulate_get(path, headers=headers)
        times.append((time.perf_counter() - started) * 1000)
    return times


def stop_process(process: subprocess.Popen[Any], timeout: float = 60.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited after ``timeout`` s."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()


def postgres_database() -> tuple[str, Callable[[], None]]:
    """A new database on the PostgreSQL server, and the function that drops it."""
    import psycopg

    from watchtower.store import check_database_url

    admin = check_database_url(POSTGRES_ADMIN)
    name = f"wtbench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dbname=admin.database, autocommit=True, **admin.params) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(dbname=admin.database, autocommit=True, **admin.params) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return POSTGRES_ADMIN.rsplit("/", 1)[0] + "/" + name, drop
