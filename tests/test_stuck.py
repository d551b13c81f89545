"""Jobs whose last events never came: marked ``unknown`` by age, shown by the API, undone by any later event."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.web_api import client, web_settings
from watchtower import store
from watchtower.clock import now_ms
from watchtower.events import JobEvent, Kind
from watchtower.ledger import write_batch
from watchtower.models import Job
from watchtower.statuses import JobStatus
from watchtower.stuck import UnknownMarker, mark_unknown
from watchtower.web import create_app

DAY_MS = 86_400_000


def event(message_id: str, kind: Kind, at_ms: int, **fields: Any) -> JobEvent:
    return JobEvent(message_id, kind, 1, at_ms * 1000, "default", "act", "redis", fields.pop("queued_at", at_ms),
                    **fields)


@pytest.fixture
def db(database_url: str) -> Iterator[Any]:
    database = store.connect(database_url)
    yield database
    database.close()


def status(message_id: str) -> str:
    job = Job.find(message_id, Job.status)
    assert job is not None
    return str(job.status)


def test_pending_and_processing_rows_without_news_become_unknown_and_nothing_else_does(db: Any) -> None:
    now = now_ms()
    old = now - 2 * DAY_MS
    write_batch(db, [
        event("waiting-for-ever", Kind.ENQUEUED, old),
        event("started-for-ever", Kind.ENQUEUED, old),
        event("started-for-ever", Kind.STARTED, old + 5, started_at=old + 5, worker_id="w"),
        event("delayed-a-week", Kind.DELAYED, old, eta=now + 5 * DAY_MS),
        event("retry-soon", Kind.REQUEUED, old, eta=now + 60_000),
        event("recent", Kind.ENQUEUED, now - 3_600_000),
        event("done-long-ago", Kind.ENQUEUED, old),
        event("done-long-ago", Kind.COMPLETED, old + 9, started_at=old + 5, finished_at=old + 9),
    ])
    assert mark_unknown(86_400, db=db, now=now) == 2
    assert status("waiting-for-ever") == status("started-for-ever") == JobStatus.UNKNOWN
    assert status("delayed-a-week") == status("retry-soon") == status("recent") == JobStatus.PENDING
    assert status("done-long-ago") == JobStatus.COMPLETED
    assert mark_unknown(86_400, db=db, now=now) == 0  # idempotent
    assert mark_unknown(0, db=db, now=now) == 0  # 0 turns it off


def test_a_later_event_of_an_unknown_job_puts_its_true_status_back(db: Any) -> None:
    now = now_ms()
    old = now - 2 * DAY_MS
    write_batch(db, [event("late", Kind.ENQUEUED, old), event("later", Kind.ENQUEUED, old)])
    assert mark_unknown(86_400, db=db, now=now) == 2
    # The spool of a process that died is replayed a day late; a backlog finally reaches another.
    write_batch(db, [event("late", Kind.COMPLETED, old + 9, started_at=old + 5, finished_at=old + 9, queued_at=old),
                     event("later", Kind.STARTED, now, started_at=now, worker_id="w", queued_at=old)])
    assert status("late") == JobStatus.COMPLETED
    assert status("later") == JobStatus.PROCESSING


def test_the_api_lists_and_counts_unknown_jobs(database_url: str, db: Any, redis_namespace: str) -> None:
    now = now_ms()
    write_batch(db, [event("lost-track", Kind.ENQUEUED, now - 2 * DAY_MS), event("fine", Kind.ENQUEUED, now)])
    now = [1_000.0]
    marker = UnknownMarker(86_400, every=300, clock=lambda: now[0])
    assert marker.tick(db) == 0  # not in its first minutes: spools may still be on their way
    now[0] += 300
    assert marker.tick(db) == 1
    assert marker.tick(db) == 0  # not due again yet
    api = client(create_app(web_settings(database_url, redis_namespace)))
    page = api.simulate_get("/watchtower/jobs", params={"status": "unknown"}).json
    assert [job["id"] for job in page["data"]] == ["lost-track"]
    assert page["data"][0]["status"] == "unknown"
    assert [job["id"] for job in api.simulate_get("/watchtower/jobs", params={"status": "pending"}).json["data"]] == [
        "fine"]
    assert api.simulate_get("/watchtower/api/poll").json["stats"]["unknown"] == 1
