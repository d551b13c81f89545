"""The ledger works with whichever database driver a user has installed.

Applications bring their own drivers: psycopg 3, psycopg2 or both for
PostgreSQL; PyMySQL, mysqlclient or both for MySQL and MariaDB.  Each case
runs a stock ``dramatiq`` worker and a producer in processes where the other
driver cannot be imported (``tests/support/import_blockers/sitecustomize.py``), and checks
every row the jobs left.  With no driver at all, the URL is refused at once,
in one line that names what to install.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tests.support.checkout import ROOT, subprocess_env
from tests.support.polling import wait_until
from tests.support.servers import REDIS_URL, fresh_database, unique
from watchtower import store
from watchtower.dialects import driver
from watchtower.errors import DatabaseDriverError, DatabaseUnavailable, DatabaseURLError
from watchtower.models import Job, Rollup, Worker
from watchtower.statuses import JobStatus, WorkerStatus

BLOCKERS = ROOT / "tests" / "support" / "import_blockers"
COUNT = 100  # add messages; a tenth as many refuse messages, and one report_driver

# (kind, modules made unimportable, the module the ledger's connections must come from)
CASES = [
    ("postgresql", "psycopg2", "psycopg"),  # psycopg 3 alone
    ("postgresql", "psycopg", "psycopg2"),  # psycopg2 alone
    ("postgresql", "", "psycopg"),  # both: psycopg 3 is chosen, whatever Peewee would prefer
    ("mysql", "MySQLdb", "pymysql"),  # PyMySQL alone
    ("mysql", "pymysql", "MySQLdb"),  # mysqlclient alone
    ("mysql", "", "pymysql"),  # both: PyMySQL
]


def _env(block: str, **extra: str) -> dict[str, str]:
    env = subprocess_env(WT_TEST_BLOCK=block, **extra)
    env["PYTHONPATH"] = f"{BLOCKERS}:{env['PYTHONPATH']}"
    return env


@pytest.mark.parametrize(("kind", "block", "expected"), CASES,
                         ids=[f"{kind}-{expected}-{'alone' if block else 'beside-the-other'}"
                              for kind, block, expected in CASES])
def test_a_stock_worker_records_every_job_through_the_driver_installed(
    tmp_path: Path, redis_namespace: str, queue_name: str, kind: str, block: str, expected: str
) -> None:
    with fresh_database(kind, tmp_path) as url:
        env = _env(block, WT_TEST_NAMESPACE=redis_namespace, WT_TEST_QUEUE=queue_name, WT_TEST_DATABASE_URL=url,
                   WT_TEST_REDIS=REDIS_URL, WATCHTOWER_HEARTBEAT_INTERVAL="0.2")
        worker_log, producer_log = tmp_path / "worker.log", tmp_path / "producer.log"
        with worker_log.open("wb") as out:
            worker = subprocess.Popen([sys.executable, "-m", "dramatiq", "apps.driver_app", "--processes", "1",
                                       "--threads", "4"], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            with producer_log.open("wb") as out:
                producer = subprocess.run([sys.executable, "-m", "apps.driver_producer", str(COUNT)], cwd=tmp_path,
                                          env=env, stdout=out, stderr=subprocess.STDOUT, timeout=120)
            assert producer.returncode == 0, producer_log.read_text()

            store.connect(url)  # this process: whichever driver it prefers
            total = COUNT + COUNT // 10 + 1
            wait_until(lambda: Job.select().where(Job.status.in_(JobStatus.FINISHED)).count() == total, 120, 0.2,
                       f"{total} finished jobs in the ledger")
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=60) == 0
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()

        logs = worker_log.read_text(errors="replace") + producer_log.read_text(errors="replace")
        assert "watchtower recorder" not in logs, logs[-3000:]  # not one batch refused or retried
        traces = redis.Redis.from_url(REDIS_URL)
        try:
            assert traces.get(f"{redis_namespace}:t:driver") == expected.encode()
        finally:
            traces.close()

        jobs = {job.message_id: job for job in Job.select()}
        assert len(jobs) == total
        added = [job for job in jobs.values() if job.actor == "add"]
        refused = [job for job in jobs.values() if job.actor == "refuse"]
        assert len(added) == COUNT and len(refused) == COUNT // 10
        assert sorted(job.get_payload()["args"] for job in added) == sorted([n, 1] for n in range(COUNT))
        for job in added:
            assert (job.status, job.attempts, job.queue, job.exception) == (JobStatus.COMPLETED, 1, queue_name, None)
            assert job.worker_id and job.queued_at <= job.started_at <= job.completed_at
        for job in refused:
            assert (job.status, job.attempts) == (JobStatus.FAILED, 2)
            assert f"ValueError: refused {job.get_payload()['args'][0]}" in job.exception
        counts: dict[str, int] = {}
        for rollup in Rollup.select():
            counts[rollup.kind] = counts.get(rollup.kind, 0) + rollup.count
        assert counts == {"enqueued": total, "started": total + COUNT // 10, "completed": COUNT + 1,
                          "retried": COUNT // 10, "failed": COUNT // 10}
        rows = list(Worker.select())
        assert rows and all(row.status == WorkerStatus.STOPPED for row in rows)
        assert sum(row.jobs_processed for row in rows) == total + COUNT // 10
        store.models.database.obj.close()


@pytest.mark.parametrize(("url", "block", "extra"), [
    ("postgresql://postgres@127.0.0.1:5432/postgres", "psycopg,psycopg2", "'dramatiq-watchtower[postgresql]'"),
    ("mysql://root@127.0.0.1:3306/test", "pymysql,MySQLdb", "'dramatiq-watchtower[mysql]'"),
])
def test_without_a_driver_the_command_refuses_in_one_line_naming_the_extra(
    tmp_path: Path, url: str, block: str, extra: str
) -> None:
    result = subprocess.run([sys.executable, "-m", "watchtower", "prune", "--dry-run"], cwd=tmp_path,
                            env=_env(block, WATCHTOWER_DATABASE_URL=url), capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: no ") and lines[0].endswith(f"pip install {extra}"), lines[0]


def test_a_driver_named_in_the_url_is_the_one_used(postgres_url: str) -> None:
    chosen = postgres_url.replace("postgresql://", "postgresql+psycopg2://", 1)
    db = store.connect(chosen)
    try:
        assert driver(db) == "psycopg2"
        assert type(db.connection()).__module__.startswith("psycopg2")
    finally:
        db.close()


def test_an_unknown_driver_in_the_url_is_refused_with_the_names_that_work() -> None:
    with pytest.raises(DatabaseURLError, match=r"unknown driver 'pg8000': write postgresql\+psycopg, "
                                               r"postgresql\+psycopg2, or postgresql://"):
        store.check_database_url("postgresql+pg8000://postgres@127.0.0.1/test")


def test_a_driver_older_than_the_oldest_tested_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import psycopg

    installed = ".".join(psycopg.__version__.split(".")[:3])
    future = store.Driver("psycopg", "psycopg", (99, 0), "'dramatiq-watchtower[postgresql]'")
    monkeypatch.setitem(store.DRIVERS, "postgresql", (future,))
    with pytest.raises(DatabaseDriverError, match=rf"psycopg: version {installed} is older than 99.0\): "
                                                  r"pip install 'dramatiq-watchtower\[postgresql\]'$"):
        store.check_database_url("postgresql://postgres@127.0.0.1/test")


@pytest.mark.parametrize("url", [
    "postgresql://postgres@127.0.0.1:5432/{name}",
    "postgresql+psycopg2://postgres@127.0.0.1:5432/{name}",
    "mysql://root@127.0.0.1:3306/{name}",
    "mysql+mysqldb://root@127.0.0.1:3306/{name}",
])
def test_a_missing_database_is_created_when_the_user_may(url: str) -> None:
    name = unique("wt_new")
    url = url.format(name=name)
    kind = store.check_database_url(url).kind
    try:
        db = store.connect(url)
        assert db.table_exists("watchtower_jobs")
        db.close()
        store.create_database(url)  # again: it exists, nothing happens
    finally:
        if kind == "postgresql":
            import psycopg

            with psycopg.connect(dbname="postgres", host="127.0.0.1", user="postgres", autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        else:
            import pymysql

            conn = pymysql.connect(host="127.0.0.1", user="root", autocommit=True)
            with conn.cursor() as cursor:
                cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
            conn.close()


def test_a_missing_database_the_user_may_not_create_is_explained() -> None:
    import psycopg

    role, name = unique("wt_nocreate"), unique("wt_new")
    with psycopg.connect(dbname="postgres", host="127.0.0.1", user="postgres", autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN NOCREATEDB")
    try:
        with pytest.raises(DatabaseUnavailable, match=rf"the ledger database '{name}' does not exist on 127.0.0.1 "
                                                      rf"and {role} may not create it .*createdb {name}"):
            store.connect(f"postgresql://{role}@127.0.0.1:5432/{name}")
    finally:
        with psycopg.connect(dbname="postgres", host="127.0.0.1", user="postgres", autocommit=True) as conn:
            conn.execute(f"DROP ROLE {role}")
