"""MetricsCollector against direct SQL over the job and worker tables, on every database."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator

import peewee
import pytest

from watchtower import MetricsCollector, derived
from watchtower.dialects import dialect_of
from watchtower.events import JobEvent, Kind
from watchtower.ledger import mark_lost, write_batch
from watchtower.models import Job, JobCount, Worker
from watchtower.statuses import WorkerStatus
from watchtower.store import connect

NOW = 1_800_000_000.0  # the collector's clock, epoch seconds
NOW_MS = int(NOW * 1000)
QUEUES = ("default", "emails", "reports")


def life(n: int, rng: random.Random) -> list[JobEvent]:
    """The events of one message with a random fate, spread over the last 30 hours."""
    queue = QUEUES[n % len(QUEUES)]
    actor = f"{queue}_task_{n % 2}"
    message_id = f"m{n:06d}"
    queued = NOW_MS - rng.randrange(0, 30 * 3_600_000)

    def event(kind: Kind, attempt: int, at_ms: int, **fields) -> JobEvent:
        return JobEvent(message_id, kind, attempt, at_ms * 1000 + n % 1000, queue, actor, "redis", queued, **fields)

    events = [event(Kind.ENQUEUED, 1, queued, payload="{}")]
    fate = rng.choice(["pending", "processing", "completed", "completed", "failed", "skipped", "retried"])
    if fate == "pending":
        return events
    if fate == "skipped":
        return [*events, event(Kind.SKIPPED, 1, queued + 5, finished_at=queued + 5)]
    attempt, at = 1, queued
    if fate == "retried":
        started = at + rng.randrange(1, 1000)
        finished = started + rng.randrange(1, 5000)
        events += [
            event(Kind.STARTED, 1, started, started_at=started, worker_id="w1"),
            event(Kind.RETRIED, 1, finished, started_at=started, duration=(finished - started) / 1000),
            event(Kind.REQUEUED, 2, finished + 1),
        ]
        attempt, at, fate = 2, finished + 100, "completed"
    started = min(at + rng.randrange(1, 1000), NOW_MS - 2)
    events.append(event(Kind.STARTED, attempt, started, started_at=started, worker_id="w1"))
    if fate == "processing":
        return events
    finished = min(started + rng.randrange(1, 60_000), NOW_MS - 1)
    kind = Kind.COMPLETED if fate == "completed" else Kind.FAILED
    return [*events, event(kind, attempt, finished, started_at=started, finished_at=finished,
                           duration=(finished - started) / 1000)]


def load(db: peewee.Database, first: int, count: int, seed: int, batch: int = 400) -> None:
    """Write ``count`` messages' events in shuffled batches, as recorders of many processes would."""
    rng = random.Random(seed)
    events = [e for n in range(first, first + count) for e in life(n, rng)]
    rng.shuffle(events)
    for start in range(0, len(events), batch):
        write_batch(db, events[start:start + batch])


def sql(db: peewee.Database, query: str, *params) -> list[tuple]:
    return [tuple(row) for row in db.execute_sql(query.replace("?", db.param), params).fetchall()]


@pytest.fixture
def db(database_url: str) -> Iterator[peewee.Database]:
    database = connect(database_url)
    yield database
    database.close()


def check_against_sql(db: peewee.Database, collector: MetricsCollector) -> None:
    minute = int(NOW // 60)
    # The hourly rollups are the minute rollups added up, exactly.
    hourly: dict[tuple, list] = {}
    for row_minute, queue, actor, kind, count, duration in sql(
            db, "SELECT minute, queue, actor, kind, count, duration_sum FROM watchtower_rollups"):
        total = hourly.setdefault((row_minute // 60, queue, actor, kind), [0, 0.0])
        total[0] += count
        total[1] += duration
    kept = {tuple(row[:4]): row[4:] for row in sql(
        db, "SELECT hour, queue, actor, kind, count, duration_sum FROM watchtower_rollups_hourly WHERE count <> 0")}
    assert set(kept) == {key for key, (count, _) in hourly.items() if count}
    for key, (count, duration) in kept.items():
        assert count == hourly[key][0] and duration == pytest.approx(hourly[key][1]), key

    stats = collector.get_stats()
    by_status = dict(sql(db, "SELECT status, COUNT(*) FROM watchtower_jobs GROUP BY status"))
    for status in ("pending", "processing", "completed", "failed", "skipped"):
        assert stats[status] == by_status.get(status, 0), status
    assert stats["total_jobs"] == sql(db, "SELECT COUNT(*) FROM watchtower_jobs")[0][0]
    hour_ago = (minute - 59) * 60_000
    for status in ("completed", "failed"):
        expected = sql(db, "SELECT COUNT(*) FROM watchtower_jobs WHERE status = ? AND completed_at >= ?",
                       status, hour_ago)
        assert stats[f"{status}_last_hour"] == expected[0][0], status
    workers = dict(sql(db, "SELECT status, COUNT(*) FROM watchtower_workers GROUP BY status"))
    assert stats["active_workers"] == workers.get("running", 0)
    assert stats["paused_workers"] == workers.get("paused", 0)
    assert collector.get_worker_stats() == {
        "total": sum(workers.values()), **{status: workers.get(status, 0) for status in WorkerStatus.ALL}
    }

    depths = {row["queue"]: row for row in collector.get_queue_depths()}
    for queue, status, count in sql(db, "SELECT queue, status, COUNT(*) FROM watchtower_jobs GROUP BY queue, status"):
        if status in ("pending", "processing"):
            assert depths[queue][status] == count, (queue, status)
    assert set(depths) == {q for (q,) in sql(db, "SELECT DISTINCT queue FROM watchtower_jobs")}

    first_hour = minute // 60 - 23
    hourly = collector.get_hourly_throughput()
    assert len(hourly) == 24 and hourly[0]["hour"].timestamp() == first_hour * 3600
    finished = sql(db, "SELECT completed_at, status FROM watchtower_jobs WHERE status IN ('completed', 'failed') "
                       "AND completed_at >= ?", first_hour * 3_600_000)
    for entry in hourly:
        start = int(entry["hour"].timestamp() * 1000)
        for status in ("completed", "failed"):
            expected = sum(1 for at, s in finished if s == status and start <= at < start + 3_600_000)
            assert entry[status] == expected, (entry["hour"], status)
        assert entry["total"] == entry["completed"] + entry["failed"]

    recent = collector.get_recent_throughput()
    assert len(recent) == 10 and recent[-1]["minute"].timestamp() == minute * 60
    for entry in recent:
        start = int(entry["minute"].timestamp() * 1000)
        expected = sum(1 for at, _ in finished if start <= at < start + 60_000)
        assert entry["total"] == expected

    since = first_hour * 3_600_000
    averages = {row["queue"]: row for row in collector.get_average_durations()}
    rows = sql(db, "SELECT queue, COUNT(*), SUM(completed_at - started_at) FROM watchtower_jobs "
                   "WHERE status IN ('completed', 'failed') AND completed_at >= ? GROUP BY queue", since)
    assert set(averages) == {queue for queue, _, _ in rows}
    for queue, jobs, total_ms in rows:
        assert averages[queue]["jobs"] == jobs
        assert averages[queue]["average_seconds"] == pytest.approx(float(total_ms) / 1000 / jobs)


def test_answers_match_direct_sql(db: peewee.Database):
    load(db, 0, 3000, seed=1)
    for n, status in enumerate(["running", "running", "paused", "stopped", "lost", "running"]):
        Worker.insert(worker_id=f"w{n}", supervisor="default", status=status).execute()
    collector = MetricsCollector(db, clock=lambda: NOW)
    check_against_sql(db, collector)
    stats = collector.get_stats()
    assert stats["total_jobs"] == 3000
    assert min(stats[s] for s in ("pending", "processing", "completed", "failed", "skipped")) > 0

    # Whatever else changes rows: a dead worker's jobs go back to pending,
    # prune deletes old ones.
    assert mark_lost("w1", "killed")
    deleted = Job.delete().where(Job.completed_at < NOW_MS - 25 * 3_600_000).execute()
    assert deleted
    check_against_sql(db, collector)
    assert collector.get_stats()["processing"] == 0


def test_counts_stay_exact_under_concurrent_writers_and_compaction(database_url: str, db: peewee.Database):
    """Each thread is a database session of its own, as recorders of many processes are."""
    errors: list[BaseException] = []

    def writer(index: int) -> None:
        try:
            load(db, index * 1000, 1000, seed=index, batch=200)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)
        finally:
            db.close()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    collector = MetricsCollector(db, clock=lambda: NOW)
    check_against_sql(db, collector)

    shards_before = JobCount.select().count()
    derived.compact(db)
    check_against_sql(db, collector)
    if dialect_of(db).name != "sqlite":  # the four writers' sessions ended: their shards are folded
        assert JobCount.select(JobCount.shard).distinct().count() < shards_before
        assert JobCount.select().where(JobCount.shard != 0).count() <= len(derived.read_counts(db)[0]) * 2


def test_a_ledger_older_than_the_derived_tables_is_counted_once(database_url: str, db: peewee.Database):
    load(db, 0, 500, seed=3)
    db.execute_sql("DROP TABLE watchtower_job_counts")
    db.execute_sql("DROP TABLE watchtower_rollups_hourly")
    db.close()
    db = connect(database_url)  # creates the tables again and fills them from the jobs and rollups
    check_against_sql(db, MetricsCollector(db, clock=lambda: NOW))


def test_the_collector_opens_its_own_database_from_settings(database_url: str, db: peewee.Database):
    from watchtower.config import load_settings

    load(db, 0, 200, seed=4)
    collector = MetricsCollector(load_settings(overrides={"database_url": database_url}, env={}), clock=lambda: NOW)
    try:
        assert collector.db is not db
        check_against_sql(db, collector)
    finally:
        collector.db.close()
