"""Concurrent writers upserting the same rows: no error escapes, every row converges.

Four connections write overlapping batches of the same messages at once,
as the recorders of four processes would.  InnoDB (and now and then
PostgreSQL) aborts one of two such transactions as a deadlock; write_batch
runs it again.  The triggers that keep the job counts run inside the same
transactions and must agree with the table at the end.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import uuid

import pytest

from watchtower import store
from watchtower.derived import read_counts
from watchtower.dialects import dialect_of
from watchtower.events import JobEvent, Kind
from watchtower.ledger import write_batch
from watchtower.models import Job, Rollup

WRITERS = 4
BATCHES = 25
MESSAGES = 120
KINDS = [Kind.ENQUEUED, Kind.STARTED, Kind.RETRIED, Kind.REQUEUED, Kind.COMPLETED, Kind.FAILED]


def random_event(rnd: random.Random, message_ids: list[str], queue: str, clock: list[int]) -> JobEvent:
    kind = rnd.choice(KINDS)
    clock[0] += rnd.randint(1, 5)
    return JobEvent(message_id=rnd.choice(message_ids), kind=kind, attempt=rnd.randint(1, 3), at=clock[0],
                    queue=queue, actor=rnd.choice(["a", "b"]), connection="redis", queued_at=1_700_000_000_000,
                    worker_id=f"w{rnd.randint(1, 4)}" if kind.phase > 1 else None)


def test_concurrent_upserts_of_the_same_rows_converge(database_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="watchtower.ledger")
    store.connect(database_url).close()  # the schema
    queue = f"q_{uuid.uuid4().hex[:8]}"
    message_ids = [str(uuid.uuid4()) for _ in range(MESSAGES)]
    written: list[list[JobEvent]] = [[] for _ in range(WRITERS)]
    errors: list[BaseException] = []
    start = threading.Barrier(WRITERS)

    def writer(n: int) -> None:
        rnd = random.Random(n)
        db = store.open_database(database_url)  # a connection of its own, as another process has
        clock = [1_700_000_000_000_000 + n]
        try:
            start.wait()
            for _ in range(BATCHES):
                batch = [random_event(rnd, message_ids, queue, clock) for _ in range(rnd.randint(20, 60))]
                write_batch(db, batch)
                written[n].extend(batch)
        except BaseException as error:  # reported below, with the writer that raised it
            errors.append(error)
        finally:
            db.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors

    everything = [event for events in written for event in events]
    newest: dict[str, JobEvent] = {}
    for event in everything:
        best = newest.get(event.message_id)
        if best is None or (event.progress, event.at) > (best.progress, best.at):
            newest[event.message_id] = event
    db = store.connect(database_url)
    rows = {job.message_id: job for job in Job.select().where(Job.queue == queue)}
    assert set(rows) == set(newest)
    for message_id, event in newest.items():
        job = rows[message_id]
        assert (job.status, job.attempts, job.progress, job.progress_at) == (
            event.kind.status, event.attempts, event.progress, event.at), message_id

    rollups: collections.Counter[str] = collections.Counter()
    for rollup in Rollup.select().where(Rollup.queue == queue):
        rollups[rollup.kind] += rollup.count
    expected = collections.Counter(e.kind.value for e in everything if e.kind is not Kind.REQUEUED)
    assert rollups == expected  # every event counted once, retried transactions included

    counts, _ = read_counts(db)
    by_status = collections.Counter(job.status for job in rows.values())
    assert {status: n for (q, status), n in counts.items() if q == queue} == dict(by_status)
    deadlocks = sum("deadlocked" in r.getMessage() for r in caplog.records)
    print(f"{dialect_of(db).name}: {len(everything)} events in {WRITERS * BATCHES} batches, "
          f"{deadlocks} deadlocked transactions run again")
    db.close()
