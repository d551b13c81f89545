"""The poison guard's ledger side: lost attempts counted once, the give-up decided on redelivery.

A real SQLite ledger; the supervisor that records a loss meanwhile is played
by the ``sleep`` the check waits with (no real waiting).
"""

from __future__ import annotations

from collections.abc import Callable

import peewee
import pytest

from watchtower import store
from watchtower.clock import day_of, now_ms
from watchtower.events import PHASE_FINISHED, PHASE_LOST, PHASE_STARTED
from watchtower.ledger import LOSS_FIELDS, give_up, mark_lost
from watchtower.models import Job, Rollup, Worker
from watchtower.poison import check_redelivered, give_up_reason, poison_jobs
from watchtower.statuses import JobStatus, WorkerStatus


@pytest.fixture
def db(sqlite_url: str) -> peewee.Database:
    return store.connect(sqlite_url)


def running_job(message_id: str, worker_id: str, *, attempt: int = 1, lost: int = 0) -> Job:
    queued = now_ms()
    Job.insert(
        message_id=message_id, queue="q", actor="crash", status=JobStatus.PROCESSING, worker_id=worker_id,
        queued_at=queued, queued_day=day_of(queued), progress=attempt * 8 + PHASE_STARTED, progress_at=1,
        lost_attempts=lost, broker_message_id=f"redis-{message_id}",
    ).execute()
    return Job.get(Job.message_id == message_id)


def rollups(kind: str) -> int:
    return sum(r.count for r in Rollup.select().where(Rollup.kind == kind))


def no_wait() -> tuple[Callable[[], float], Callable[[float], None]]:
    now = [0.0]
    return (lambda: now[0]), (lambda seconds: now.__setitem__(0, now[0] + seconds))


def test_mark_lost_counts_each_lost_attempt_once_and_says_how_many(db: peewee.Database) -> None:
    running_job("m1", "w1", lost=2)
    running_job("m2", "w2")
    lost = mark_lost("w1", "killed by SIGKILL")
    assert [(j.message_id, j.lost_attempts, j.status, j.broker_message_id) for j in lost] == [
        ("m1", 3, JobStatus.PENDING, "redis-m1")
    ]
    assert mark_lost("w1", "again") == []
    assert [j.message_id for j in poison_jobs(lost, 3)] == ["m1"] and poison_jobs(lost, 4) == []
    assert Job.get(Job.message_id == "m2").status == JobStatus.PROCESSING
    assert rollups("lost") == 1


def test_give_up_fails_the_row_it_finds_at_the_lost_attempt_and_keeps_a_message_to_retry(db: peewee.Database) -> None:
    running_job("m1", "w1", lost=2)
    (job,) = mark_lost("w1", "killed by SIGKILL")
    reason = give_up_reason(job.lost_attempts, 3, "killed by SIGKILL")
    assert reason == "given up: lost 3 times (max_lost 3), not run again; last exit: killed by SIGKILL"
    assert give_up(job, reason, payload='{"the": "message"}')
    row = Job.get(Job.message_id == "m1")
    assert (row.status, row.exception, row.payload, row.progress) == (
        JobStatus.FAILED, reason, '{"the": "message"}', 8 + PHASE_FINISHED
    )
    assert row.completed_at is not None
    assert not give_up(job, reason)  # once
    assert rollups("failed") == 1


def test_give_up_leaves_a_row_that_moved_on(db: peewee.Database) -> None:
    running_job("m1", "w1", lost=2)
    (job,) = mark_lost("w1", "killed")
    Job.update(status=JobStatus.PROCESSING, progress=8 + PHASE_STARTED, worker_id="w2").execute()  # run again
    assert not give_up(job, "given up")
    assert Job.get(Job.message_id == "m1").status == JobStatus.PROCESSING


def test_a_redelivery_waits_for_the_holders_supervisor_and_gives_up_at_max_lost(db: peewee.Database) -> None:
    running_job("m1", "w-dead", lost=2)
    Worker.insert(worker_id="w-dead", status=WorkerStatus.RUNNING).execute()
    clock, advance = no_wait()
    waited: list[float] = []

    def supervisor_records_the_exit(seconds: float) -> None:
        waited.append(seconds)
        advance(seconds)
        if len(waited) == 3:
            Worker.update(status=WorkerStatus.LOST, exit_reason="killed by SIGKILL").execute()
            mark_lost("w-dead", "killed by SIGKILL")

    reason = check_redelivered(db, "m1", 1, "w-alive", max_lost=3, clock=clock, sleep=supervisor_records_the_exit)
    assert reason == "given up: lost 3 times (max_lost 3), not run again; last exit: killed by SIGKILL"
    assert len(waited) == 3
    assert rollups("lost") == 1


def test_a_redelivery_nobody_recorded_is_counted_by_the_worker_that_received_it(db: peewee.Database) -> None:
    running_job("m1", "w-gone")
    clock, advance = no_wait()
    assert check_redelivered(db, "m1", 1, "w-alive", max_lost=3, clock=clock, sleep=advance) is None  # 1 of 3
    row = Job.get(Job.message_id == "m1")
    assert (row.status, row.lost_attempts, row.progress) == (JobStatus.PENDING, 1, 8 + PHASE_LOST)
    assert row.exception == "lost: worker w-gone stopped holding it (the broker delivered it again)"
    assert rollups("lost") == 1

    Job.update(lost_attempts=2, status=JobStatus.PROCESSING, progress=8 + PHASE_STARTED).execute()
    reason = check_redelivered(db, "m1", 1, "w-alive", max_lost=3, clock=clock, sleep=advance)
    assert reason == ("given up: lost 3 times (max_lost 3), not run again; "
                      "last exit: worker w-gone stopped holding it (the broker delivered it again)")


@pytest.mark.parametrize(
    "change",
    [
        {"status": JobStatus.COMPLETED},  # done already: a duplicate delivery runs as Dramatiq would
        {"worker_id": "w-alive"},  # its own attempt, handed back to this worker
        {"progress": 2 * 8 + PHASE_STARTED},  # another attempt
    ],
    ids=["finished", "own", "other-attempt"],
)
def test_a_redelivery_that_lost_nothing_runs(db: peewee.Database, change: dict[str, object]) -> None:
    running_job("m1", "w-other", lost=5)
    Job.update(**change).execute()
    clock, advance = no_wait()
    assert check_redelivered(db, "m1", 1, "w-alive", max_lost=3, clock=clock, sleep=advance) is None
    assert Job.get(Job.message_id == "m1").lost_attempts == 5


def test_an_unknown_redelivery_runs(db: peewee.Database) -> None:
    assert check_redelivered(db, "never-recorded", 1, "w", max_lost=1) is None


def test_loss_fields_are_what_give_up_needs(db: peewee.Database) -> None:
    running_job("m1", "w1")
    job = Job.select(*LOSS_FIELDS).get()
    assert {"id", "progress", "lost_attempts", "broker_message_id", "queue", "actor"} <= set(job.__data__)
