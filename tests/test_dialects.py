"""Each database's dialect, run against the real database: what each piece promises."""

from __future__ import annotations

from typing import Any

import peewee
import pytest

from watchtower import derived, store
from watchtower.dialects import DIALECTS, MYSQL, POSTGRESQL, SQLITE, dialect_of
from watchtower.models import Job, JobCount, Lease


@pytest.fixture
def db(database_url: str) -> Any:
    connected = store.connect(database_url)
    yield connected
    connected.close()


def test_each_connected_database_gets_its_dialect(db: peewee.Database, database_url: str) -> None:
    kind = store.check_database_url(database_url).kind
    assert dialect_of(db) is DIALECTS[kind]
    assert {"sqlite": SQLITE, "postgresql": POSTGRESQL, "mysql": MYSQL}[kind] is dialect_of(db)
    # A Peewee database made elsewhere (a host app's) gets one by its class.
    assert dialect_of(peewee.SqliteDatabase(":memory:")) is SQLITE


def test_the_upsert_keeps_the_newer_value(db: peewee.Database) -> None:
    dialect = dialect_of(db)
    table = Lease._meta.table_name

    def newer_expiry(old: Any, new: Any) -> list[str]:
        later = f"{new('expires_at')} > {old('expires_at')}"
        return [
            f"owner = CASE WHEN {later} THEN {new('owner')} ELSE {old('owner')} END",
            f"expires_at = CASE WHEN {later} THEN {new('expires_at')} ELSE {old('expires_at')} END",
        ]

    columns = ("name", "owner", "token", "expires_at", "next_at")
    with dialect.transaction(db):
        dialect.upsert_rows(db, table, columns, [("a", "first", "t", 10, 0)], key=("name",),
                            assignments=newer_expiry, types={"expires_at": "bigint", "next_at": "bigint"})
        dialect.upsert_rows(db, table, columns, [("a", "second", "t", 20, 0), ("b", "other", "t", 5, 0)],
                            key=("name",), assignments=newer_expiry,
                            types={"expires_at": "bigint", "next_at": "bigint"})
        dialect.upsert_rows(db, table, columns, [("a", "stale", "t", 15, 0)], key=("name",),
                            assignments=newer_expiry, types={"expires_at": "bigint", "next_at": "bigint"})
    rows = db.execute_sql(f"SELECT name, owner, expires_at FROM {table} ORDER BY name").fetchall()
    assert [tuple(row) for row in rows] == [("a", "second", 20), ("b", "other", 5)]


def test_insert_or_ignore_ignores_an_existing_key(db: peewee.Database) -> None:
    dialect = dialect_of(db)
    table = Lease._meta.table_name
    sql = dialect.insert_ignore(table, "name, owner, token, expires_at, next_at", "{p}, {p}, {p}, {p}, 0", key="name")
    changed = []
    for owner in ("first", "second"):
        with dialect.transaction(db):
            changed.append(db.execute_sql(sql.format(p=db.param), ("x", owner, "t", 1)).rowcount)
    assert changed == [1, 0]
    assert db.execute_sql(f"SELECT owner FROM {table} WHERE name = {db.param}", ("x",)).fetchone()[0] == "first"


def test_the_triggers_keep_the_job_counts(db: peewee.Database) -> None:
    for n in range(5):
        Job.insert(message_id=f"m-{n}", queue="q", actor="a", connection="redis", queued_at=n,
                   status="pending" if n < 3 else "completed").execute()
    Job.update(status="failed").where(Job.message_id == "m-0").execute()
    Job.delete().where(Job.message_id == "m-4").execute()
    counts, _rows = derived.read_counts(db)
    assert counts == {("q", "pending"): 2, ("q", "failed"): 1, ("q", "completed"): 1}
    derived.compact(db)  # folding shards changes no total
    assert derived.read_counts(db)[0] == counts
    assert JobCount.select().where(JobCount.count == 0, JobCount.shard == 0).count() == 0


def test_the_index_walk_returns_each_distinct_value_once_in_order(db: peewee.Database) -> None:
    dialect = dialect_of(db)
    table = Job._meta.table_name
    assert dialect.distinct_values(db, table, "actor") == []
    empty = dialect.in_distinct(db, Job.queued_day, table)
    assert empty is None or not Job.select().where(empty).exists()  # None: nothing to walk
    for n, actor in enumerate(["zeta", "alpha", "beta", "alpha", "zeta"]):
        Job.insert(message_id=f"m-{n}", queue="q", actor=actor, connection="redis", queued_at=n,
                   queued_day=n % 2 * 7, status="pending").execute()
    assert dialect.distinct_values(db, table, "actor") == ["alpha", "beta", "zeta"]
    assert dialect.distinct_values(db, table, "queued_day") == [0, 7]
    on_days = dialect.in_distinct(db, Job.queued_day, table)
    assert on_days is not None and Job.select().where(on_days).count() == 5


def test_the_search_matches_ignore_case_and_take_wildcards_literally(db: peewee.Database) -> None:
    dialect = dialect_of(db)
    Job.insert(message_id="m-1", queue="q", actor="Send_Mail", connection="redis", queued_at=1, status="pending",
               payload='{"args": ["100% Done"]}').execute()
    Job.insert(message_id="m-2", queue="q", actor="sendXmail", connection="redis", queued_at=2, status="pending",
               payload='{"args": ["1000 done"]}').execute()

    def found(condition: Any) -> list[str]:
        if condition is None:
            return []
        return sorted(job.message_id for job in Job.select(Job.message_id).where(condition))

    assert found(dialect.contains_ascii_folded(Job.payload, "0% DONE")) == ["m-1"]
    assert found(dialect.contains_folded(db, Job._meta.table_name, Job.actor, "SEND_")) == ["m-1"]
    assert found(dialect.contains_folded(db, Job._meta.table_name, Job.actor, "nothing")) == []


def test_the_schema_lock_can_be_taken_again_after_release(db: peewee.Database) -> None:
    dialect = dialect_of(db)
    for _ in range(2):
        with dialect.schema_lock(db):
            assert db.execute_sql("SELECT 1").fetchone()[0] == 1
