"""The store: database URLs, the schema and its version, the models' scopes."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.checkout import subprocess_env
from tests.support.ledger_fill import as_version_1
from watchtower import clock, models, store
from watchtower.clock import now_ms
from watchtower.errors import DatabaseUnavailable, DatabaseURLError, SchemaError
from watchtower.events import JobEvent, Kind, WorkerEvent
from watchtower.ledger import write_batch
from watchtower.models import Job, Meta, Worker
from watchtower.statuses import JobStatus, WorkerStatus


@pytest.mark.parametrize(
    ("url", "kind", "database", "params"),
    [
        ("sqlite:///ledger.db", "sqlite", "ledger.db", {}),
        ("sqlite:////var/lib/wt/ledger.db", "sqlite", "/var/lib/wt/ledger.db", {}),
        ("postgresql://wt:p%40ss@db.example:5433/ledger?connect_timeout=3", "postgresql", "ledger",
         {"host": "db.example", "port": 5433, "user": "wt", "password": "p@ss", "connect_timeout": 3}),
        ("postgres://db.example/ledger", "postgresql", "ledger", {"host": "db.example"}),
        ("mysql://root@127.0.0.1:3306/wt", "mysql", "wt", {"host": "127.0.0.1", "port": 3306, "user": "root"}),
        ("mariadb://root:@h/wt", "mysql", "wt", {"host": "h", "user": "root", "password": ""}),
    ],
)
def test_good_urls(url: str, kind: str, database: str, params: dict[str, object]) -> None:
    spec = store.check_database_url(url)
    assert (spec.kind, spec.database, spec.params) == (kind, database, params)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ledger.db", "is not a URL"),
        ("oracle://host/db", "unknown scheme 'oracle'"),
        ("sqlite://", "names no file"),
        ("sqlite:///", "names no file"),
        ("postgresql://host", "must name a host and a database"),
        ("postgresql:///dbname", "must name a host and a database"),
        ("mysql://root@host:notaport/db", "bad port"),
    ],
)
def test_bad_urls_say_how_to_write_a_good_one(url: str, why: str) -> None:
    with pytest.raises(DatabaseURLError) as caught:
        store.check_database_url(url, source="the test")
    message = str(caught.value)
    assert why in message and repr(url) in message and "from the test" in message
    assert "sqlite:///path/to/file.db" in message  # how to write it


def test_redact_url_hides_the_password() -> None:
    assert store.redact_url("postgresql://wt:hunter2@db/ledger") == "postgresql://wt:***@db/ledger"
    assert store.redact_url("sqlite:///x.db") == "sqlite:///x.db"


def refused_port() -> int:
    """A loopback port nobody listens on (bound and released just now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("scheme", ["postgresql", "mysql"])
def test_an_unreachable_server_is_database_unavailable(scheme: str) -> None:
    url = f"{scheme}://wt:hunter2@127.0.0.1:{refused_port()}/ledger"
    with pytest.raises(DatabaseUnavailable) as caught:
        store.connect(url)
    assert "cannot open the ledger database" in str(caught.value)
    assert "hunter2" not in str(caught.value) and "***" in str(caught.value)


def test_a_sqlite_file_in_a_missing_directory_is_database_unavailable(tmp_path: Path) -> None:
    with pytest.raises(DatabaseUnavailable, match="cannot open the ledger database"):
        store.connect(f"sqlite:///{tmp_path / 'missing' / 'ledger.db'}")


def test_schema_is_created_once_and_carries_its_version(database_url: str) -> None:
    db = store.connect(database_url)
    tables = set(db.get_tables())
    assert {model._meta.table_name for model in models.MODELS} <= tables
    assert Meta.get(Meta.key == "schema_version").value == str(store.SCHEMA_VERSION)
    write_batch(db, [event("m-1", Kind.ENQUEUED)])

    again = store.connect(database_url)  # a second start: nothing recreated, nothing lost
    assert set(again.get_tables()) == tables
    assert Meta.select().where(Meta.key == "schema_version").count() == 1
    assert Job.get(Job.message_id == "m-1").status == JobStatus.PENDING
    again.close()
    db.close()


def test_a_newer_schema_is_refused(database_url: str) -> None:
    db = store.connect(database_url)
    Meta.update(value=str(store.SCHEMA_VERSION + 1)).where(Meta.key == "schema_version").execute()
    Job.drop_table()  # as if the newer release had reshaped it
    db.close()
    with pytest.raises(SchemaError,
                       match=f"version {store.SCHEMA_VERSION + 1}, newer than this release's {store.SCHEMA_VERSION}"):
        store.connect(database_url)
    assert Job._meta.table_name not in store.open_database(database_url).get_tables()  # not recreated


def test_a_version_1_ledger_is_migrated_and_keeps_every_row(database_url: str) -> None:
    kind = store.check_database_url(database_url).kind
    db = store.connect(database_url)
    as_version_1(db, kind)
    table = Job._meta.table_name
    day = clock.DAY_MS
    # Around a day's edges: the last and first millisecond of a UTC day.
    queued = {"m-early": 20_000 * day - 1, "m-edge": 20_000 * day, "m-later": 20_003 * day + 5}
    for message_id, at in queued.items():
        db.execute_sql(
            f"INSERT INTO {table} (message_id, queue, actor, connection, status, queued_at, attempts, progress, "
            f"progress_at, lost_attempts) VALUES ({', '.join([db.param] * 10)})",
            (message_id, "default", "send_mail", "redis", "pending", at, 0, 9, at * 1000, 0),
        )
    db.close()

    db = store.connect(database_url)  # the next start migrates
    assert Meta.get(Meta.key == "schema_version").value == "2"
    assert {job.message_id: job.queued_day for job in Job.select()} == {
        message_id: clock.day_of(at) for message_id, at in queued.items()}
    indexes = {index.name: (index.columns, index.unique) for index in db.get_indexes(table)}
    assert f"{table}_message_id" not in indexes
    assert indexes[f"{table}_queued_day_message_id"] == (["queued_day", "message_id"], True)
    # A late event of a migrated job updates its row; it does not add one.
    at = queued["m-edge"]
    write_batch(db, [JobEvent(message_id="m-edge", kind=Kind.COMPLETED, attempt=1, at=at * 1000 + 50,
                              queue="default", actor="send_mail", connection="redis", queued_at=at)])
    assert Job.select().count() == 3
    job = Job.find("m-edge")
    assert job is not None and job.status == JobStatus.COMPLETED
    assert Job.find("m-early") is not None and Job.find("m-unknown") is None
    db.close()

    again = store.connect(database_url)  # migrated once: the next start changes nothing
    assert Meta.get(Meta.key == "schema_version").value == "2"
    assert Job.select().count() == 3
    again.close()


def test_find_looks_on_every_day_that_has_jobs(sqlite_url: str) -> None:
    db = store.connect(sqlite_url)
    day = clock.DAY_MS
    events = [
        JobEvent(message_id=f"m-{n}", kind=Kind.ENQUEUED, attempt=1, at=(n * 7 * day + 3) * 1000, queue="default",
                 actor="a", connection="redis", queued_at=n * 7 * day + 3)
        for n in range(40)
    ]
    write_batch(db, events)
    assert models.queued_days(db) == [n * 7 for n in range(40)]
    for n in (0, 17, 39):
        job = Job.find(f"m-{n}")
        assert job is not None and job.queued_day == n * 7
    assert Job.find("m-40") is None
    db.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_actor_names_walks_every_distinct_name_once(kind: str, request: pytest.FixtureRequest) -> None:
    db = store.connect(request.getfixturevalue(f"{'sqlite' if kind == 'sqlite' else 'postgres'}_url"))
    assert models.actor_names(db) == []
    names = ["zeta", "alpha", "ünïcode", "beta"]
    events = [
        JobEvent(message_id=f"m-{n}", kind=Kind.ENQUEUED, attempt=1, at=n, queue="default",
                 actor=names[n % len(names)], connection="redis", queued_at=n)
        for n in range(40)
    ]
    write_batch(db, events)
    assert models.actor_names(db) == sorted({row.actor for row in Job.select(Job.actor)})
    assert set(models.actor_names(db)) == set(names)
    db.close()


CONNECT = """
import sys
from watchtower import store
from watchtower.dialects import dialect_of
db = store.connect(sys.argv[1])
print(dialect_of(db).name)
"""


def test_many_processes_create_the_schema_at_once(database_url: str) -> None:
    """Workers started together against an empty database all get a usable ledger."""
    children = [
        subprocess.Popen([sys.executable, "-c", CONNECT, database_url], env=subprocess_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    try:
        outputs = [child.communicate(timeout=120) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    for child, (_, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err
        assert "locked" not in err
    db = store.connect(database_url)
    assert Meta.select().count() == 1
    db.close()


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(sqlite_url: str) -> None:
    db = store.connect(sqlite_url)
    assert db.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute_sql("PRAGMA busy_timeout").fetchone()[0] == int(store.SQLITE_BUSY_TIMEOUT * 1000)
    db.close()


def event(message_id: str, kind: Kind, attempt: int = 1, **fields: object) -> JobEvent:
    at = now_ms() * 1000
    return JobEvent(message_id=message_id, kind=kind, attempt=attempt, at=at + kind.phase,
                    queue=fields.pop("queue", "default"), actor=fields.pop("actor", "send_mail"),  # type: ignore[arg-type]
                    connection="redis", queued_at=at // 1000 - 1000, **fields)  # type: ignore[arg-type]


def test_scopes_and_methods_read_the_ledger(sqlite_url: str) -> None:
    db = store.connect(sqlite_url)
    start = now_ms()
    write_batch(db, [
        event("done", Kind.COMPLETED, worker_id="w1", started_at=start, finished_at=start + 1500),
        event("broken", Kind.FAILED, 3, worker_id="w1", started_at=start, finished_at=start + 10, exception="Boom"),
        event("waiting", Kind.ENQUEUED, queue="emails"),
        event("running", Kind.STARTED, worker_id="w2", started_at=start),
    ], [
        WorkerEvent("w1", {"supervisor": "default", "status": WorkerStatus.RUNNING, "started_at": start - 60_000,
                           "last_heartbeat": now_ms(), "jobs_processed": 2, "jobs_failed": 1, "queues": ["default"]}),
        WorkerEvent("w2", {"supervisor": "mail", "status": WorkerStatus.RUNNING, "last_heartbeat": start - 120_000}),
    ])
    assert [job.message_id for job in Job.completed()] == ["done"]
    assert [job.message_id for job in Job.failed()] == ["broken"]
    assert [job.message_id for job in Job.pending()] == ["waiting"]
    assert [job.message_id for job in Job.processing()] == ["running"]
    assert [job.message_id for job in Job.with_status("failed")] == ["broken"]
    with pytest.raises(ValueError, match="unknown job status 'broke'"):
        Job.with_status("broke")
    assert [job.message_id for job in Job.on_queue("emails")] == ["waiting"]
    # Newest first; one batch inserts its rows in message-id order.
    assert [job.message_id for job in Job.recent(2)] == ["waiting", "running"]

    done = Job.get(Job.message_id == "done")
    assert done.is_completed() and not done.is_failed() and done.job_id == "done"
    assert done.get_duration() == pytest.approx(1.5)
    assert done.get_job_class() == "send_mail"
    assert done.worker is not None and done.worker.worker_id == "w1"
    broken = Job.get(Job.message_id == "broken")
    assert broken.is_failed() and broken.attempts == 3 and broken.exception == "Boom"
    assert Job.get(Job.message_id == "waiting").get_duration() is None
    assert Job.get(Job.message_id == "running").worker.worker_id == "w2"
    assert Job.get(Job.message_id == "waiting").worker is None
    w1 = Worker.get(Worker.worker_id == "w1")
    assert w1.is_running() and w1.is_healthy(30) and 59 < w1.get_uptime() < 3600
    assert w1.get_jobs_processed_count() == 2 and w1.get_jobs_failed_count() == 1
    assert w1.get_queues() == ["default"]
    assert {job.message_id for job in w1.jobs} == {"done", "broken"}
    assert [w.worker_id for w in Worker.running().order_by(Worker.worker_id)] == ["w1", "w2"]
    assert [w.worker_id for w in Worker.for_supervisor("mail")] == ["w2"]
    assert [w.worker_id for w in Worker.stale(60)] == ["w2"]
    assert not Worker.get(Worker.worker_id == "w2").is_healthy(60)
    assert [
        w.worker_id for w in Worker.with_status(WorkerStatus.RUNNING).where(Worker.supervisor == "default")
    ] == ["w1"]
    db.close()
