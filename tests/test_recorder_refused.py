"""A ledger database that refuses the writes for a reason retrying cannot fix.

A missing privilege, a driver that rejects a statement, a programming
error: retrying alone will not help, so the recorder says so once, loudly,
with the cause; the ``watchtower_recorder_refused`` gauge and ``/health``
show it while it lasts, and nothing is lost if it is mended before the
buffer fills.  An outage (the server away) is not such a refusal.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import peewee
import psycopg
import pytest

from tests.support.checkout import subprocess_env
from tests.support.polling import wait_until
from tests.support.servers import REDIS_URL, unique
from tests.support.web_api import client, web_settings
from watchtower import store
from watchtower.models import Job, Worker
from watchtower.multiproc import read_metrics
from watchtower.recorder import is_outage
from watchtower.statuses import JobStatus
from watchtower.web import create_app

COUNT = 20


@pytest.fixture
def read_only_url(postgres_url: str) -> Iterator[tuple[str, str]]:
    """The ledger (tables made) and a URL for a role that may read it but not write: (url, role)."""
    store.connect(postgres_url).close()
    admin = store.check_database_url(postgres_url)
    role = unique("wt_ro")
    with psycopg.connect(dbname=admin.database, autocommit=True, **admin.params) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    host = postgres_url.split("@", 1)[1]
    try:
        yield f"postgresql://{role}@{host}", role
    finally:
        with psycopg.connect(dbname=admin.database, autocommit=True, **admin.params) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


def refused_processes(directory: Path) -> float | None:
    for family in read_metrics(str(directory)):
        if family.name == "watchtower_recorder_refused":
            return sum(sample.value for sample in family.samples)
    return None


def test_refused_writes_are_said_once_shown_in_health_and_metrics_and_kept_until_mended(
    tmp_path: Path, postgres_url: str, read_only_url: tuple[str, str], redis_namespace: str, queue_name: str
) -> None:
    url, role = read_only_url
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = subprocess_env(WT_TEST_NAMESPACE=redis_namespace, WT_TEST_QUEUE=queue_name, WT_TEST_REDIS=REDIS_URL,
                         WT_TEST_DATABASE_URL=url, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
                         WATCHTOWER_HEARTBEAT_INTERVAL="0.2")
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen([sys.executable, "-m", "dramatiq", "apps.driver_app", "--processes", "1",
                                   "--threads", "2"], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        # The producer records into the ledger with the owner's rights: the
        # enqueues land, the worker's events are the ones refused.
        producer = subprocess.run([sys.executable, "-m", "apps.driver_producer", str(COUNT)], cwd=tmp_path,
                                  env={**env, "WT_TEST_DATABASE_URL": postgres_url}, capture_output=True, timeout=120)
        assert producer.returncode == 0, producer.stderr
        total = COUNT + COUNT // 10 + 1

        def critical_lines() -> list[str]:
            return [line for line in log.read_text(errors="replace").splitlines()
                    if "refuses its writes" in line]

        wait_until(lambda: refused_processes(metrics_dir), 60, 0.2, "the refused gauge at 1")
        lines = wait_until(critical_lines, 30, 0.2, "the recorder's CRITICAL line")
        assert "CRITICAL" in lines[0] and "permission denied" in lines[0], lines[0]

        store.connect(postgres_url)
        api = client(create_app(web_settings(postgres_url, redis_namespace, metrics_dir=str(metrics_dir))))
        health = api.simulate_get("/watchtower/health")
        assert health.status_code == 503 and health.json["database"] == {"ok": True}
        assert health.json["recorder"]["ok"] is False
        assert "refuses the writes of 1 process(es)" in health.json["recorder"]["error"]
        assert Job.select().where(Job.status == JobStatus.COMPLETED).count() == 0  # nothing of the worker's yet

        # The write is tried again every 5 s (MAX_BACKOFF), and said only once.
        said = log.read_text(errors="replace").count("permission denied")
        deadline = time.monotonic() + 7
        while time.monotonic() < deadline:
            assert refused_processes(metrics_dir) == 1
            time.sleep(0.5)
        assert len(critical_lines()) == 1
        assert log.read_text(errors="replace").count("permission denied") == said

        # Mended: the role may now write (it takes the owner's rights).
        admin = store.check_database_url(postgres_url)
        with psycopg.connect(dbname=admin.database, autocommit=True, **admin.params) as conn:
            conn.execute(f"GRANT postgres TO {role}")
        wait_until(lambda: Job.select().where(Job.status.in_(JobStatus.FINISHED)).count() == total, 60, 0.2,
                   f"{total} finished jobs")
        wait_until(lambda: refused_processes(metrics_dir) == 0, 30, 0.2, "the refused gauge back at 0")
        health = api.simulate_get("/watchtower/health")
        assert health.status_code == 200 and health.json["recorder"] == {"ok": True}
        assert Worker.select().count() == 1
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    text = log.read_text(errors="replace")
    assert "writes again after its writes were refused" in text
    assert "cannot write" not in text  # not mistaken for an outage
    assert "dropped" not in text  # nothing lost
    store.models.database.obj.close()


def test_an_outage_is_not_a_refusal_but_a_driver_or_sql_error_is(postgres_url: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(Exception) as away:
        store.connect(f"postgresql://postgres@127.0.0.1:{port}/nowhere?connect_timeout=1")
    assert is_outage(away.value)

    db = store.connect(postgres_url)
    try:
        with pytest.raises(peewee.ProgrammingError) as wrong:
            db.execute_sql("SELECT * FROM no_such_table")
        assert not is_outage(wrong.value)
        db.rollback()
        # psycopg2 knows no %b: the very error that once made every batch fail.
        psycopg2_db = store.connect(postgres_url.replace("postgresql://", "postgresql+psycopg2://", 1))
        with pytest.raises(ValueError, match="unsupported format character") as driver:
            psycopg2_db.execute_sql("SELECT %b::text[]", [["a"]])
        assert not is_outage(driver.value)
        psycopg2_db.close()
    finally:
        db.close()
