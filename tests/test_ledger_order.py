"""The ledger converges whatever order events arrive in.

Hypothesis writes the life stories of many jobs (enqueued or delayed,
started, retried with a re-enqueue and a move from the delay queue,
completed, failed or skipped, lost when a worker dies and redelivered to
another, marked lost by mistake while its worker lives on and finishes the
attempt), then feeds their events to the ledger in random orders and random
batch splits, directly through ``write_batch`` and through two Recorders at
once.  Every final row must equal what the story says, field by field, and
the per-minute rollups must count every event exactly once.  A mistaken
mark leaves no trace: the row, its ``lost_attempts`` and the "lost" rollup
are what they would be without it.

The expected row is read off the story (the worker of the last attempt, the
eta of the last delay...), not computed with the ledger's own rule.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.servers import make_database_url
from watchtower import clock, models, store
from watchtower.dialects import dialect_of
from watchtower.events import JobEvent, Kind
from watchtower.ledger import mark_lost, write_batch
from watchtower.models import Job, LostMark, Rollup
from watchtower.recorder import Recorder

OUTCOMES = ("completed", "failed", "skipped")


@dataclass
class Mark:
    """A worker marked lost: it died (``real``), or it was only cut off from the ledger and lives on."""

    worker: str
    at: int  # when it was marked (microseconds)
    real: bool
    # Events that reached the database before the mark (the worker wrote
    # its "started" before it died, or before it was cut off).
    needs: list[JobEvent] = field(default_factory=list)

    @property
    def reason(self) -> str:
        return "worker died" if self.real else "worker cut off"


@dataclass
class Story:
    """One job's life, and what its row must say at the end."""

    message_id: str
    events: list[JobEvent] = field(default_factory=list)  # every event but the marks' needs
    marks: list[Mark] = field(default_factory=list)  # in the order they happen
    expected: dict[str, Any] = field(default_factory=dict)
    expected_lost: int = 0


@st.composite
def plans(draw: st.DrawFn) -> dict[str, Any]:
    """The shape of one job's life: how many attempts, how it ends, if it is lost."""
    attempts = draw(st.integers(min_value=1, max_value=4))
    outcome = draw(st.sampled_from(OUTCOMES))
    lost_at = draw(st.none() | st.integers(min_value=1, max_value=attempts))
    cut_off_at = draw(st.none() | st.integers(min_value=1, max_value=attempts))
    return {
        "attempts": attempts,
        "outcome": outcome,
        "delayed": draw(st.booleans()),
        "redis": draw(st.booleans()),  # the broker gives each enqueue an id of its own
        "lost_at": lost_at,
        # Did the dying worker's "started" reach the database before it died?
        "lost_written": draw(st.booleans()),
        # The attempt whose (live) worker is marked lost by mistake, and
        # whether the mark comes once it has finished (its events still unwritten).
        "cut_off_at": cut_off_at,
        "late_mark": draw(st.booleans()),
        "workers": draw(st.lists(st.sampled_from(["w-a", "w-b", "w-c"]), min_size=attempts, max_size=attempts)),
    }


def build_story(plan: dict[str, Any], queue: str, clock: Iterator[int]) -> Story:
    """The events the middleware emits for ``plan``, in the order they happen."""
    message_id = str(uuid.uuid4())
    story = Story(message_id)
    base = dict(message_id=message_id, queue=queue, actor="act", connection="redis" if plan["redis"] else "rabbitmq")
    queued_at = next(clock) // 1000
    base["queued_at"] = queued_at
    broker_ids = iter(f"b-{message_id[:8]}-{n}" for n in range(100))

    def broker_id() -> str | None:
        return next(broker_ids) if plan["redis"] else None

    def event(kind: Kind, attempt: int, **fields: Any) -> JobEvent:
        made = JobEvent(kind=kind, attempt=attempt, at=next(clock), **base, **fields)
        story.events.append(made)
        return made

    first_payload = f'{{"message_id":"{message_id}","options":{{}}}}'
    current_id = broker_id()
    eta = None
    if plan["delayed"]:
        eta = queued_at + 5  # the clock ticks 10 ms per event: moved after its eta
        event(Kind.DELAYED, 1, payload=first_payload, eta=eta, broker_message_id=current_id)
        current_id = broker_id()
        event(Kind.MOVED, 1, broker_message_id=current_id)
    else:
        event(Kind.ENQUEUED, 1, payload=first_payload, broker_message_id=current_id)

    last_traceback: str | None = None  # what Dramatiq keeps in options["traceback"]
    exception: str | None = None  # the row's expected exception
    started_at = None
    n = plan["attempts"]
    for attempt in range(1, n + 1):
        worker = f'{plan["workers"][attempt - 1]}-{attempt}'
        final = attempt == n
        skipped = final and plan["outcome"] == "skipped"
        if plan["lost_at"] == attempt:
            # A worker started it and died; the broker redelivers the same
            # attempt to ``worker`` after the supervisor marked it lost.
            dead = f"dead-{message_id[:8]}"
            lost_start = next(clock) // 1000
            started = event(Kind.STARTED, attempt, worker_id=dead, started_at=lost_start,
                            exception=last_traceback, broker_message_id=current_id)
            story.events.remove(started)
            if plan["lost_written"]:
                story.marks.append(Mark(dead, next(clock), real=True, needs=[started]))
                story.expected_lost = 1
                started_at = lost_start
                exception = last_traceback or "lost: worker died"
            else:
                story.marks.append(Mark(dead, next(clock), real=True))  # marked too, but it has nothing to mark
        cut_off = None
        if not skipped:
            started_at = next(clock) // 1000
            started = event(Kind.STARTED, attempt, worker_id=worker, started_at=started_at,
                            exception=last_traceback, broker_message_id=current_id)
            if plan["cut_off_at"] == attempt:
                # ``worker`` goes on, but its next writes reach the database
                # only after a cleanup marked it lost.
                story.events.remove(started)
                cut_off = Mark(worker, 0, real=False, needs=[started])
                story.marks.append(cut_off)
                if not plan["late_mark"]:
                    cut_off.at = next(clock)
        if not final:
            # Retries re-enqueues to the delay queue (after_process_message),
            # then the attempt is acked; later the delay consumer moves it.
            failure = f"Traceback: attempt {attempt} of {message_id} failed (full)"
            last_traceback = f"Traceback: attempt {attempt} failed (from options)"
            eta = next(clock) // 1000 + 5
            requeued_id = broker_id()
            event(Kind.REQUEUED, attempt + 1, eta=eta, exception=last_traceback, broker_message_id=requeued_id)
            event(Kind.RETRIED, attempt, worker_id=worker, started_at=started_at, exception=failure,
                  broker_message_id=current_id, duration=0.01)
            if cut_off is not None and not cut_off.at:
                cut_off.at = next(clock)  # the late mark: it finished, its events unwritten
            current_id = broker_id()
            event(Kind.MOVED, attempt + 1, broker_message_id=current_id)
            exception = last_traceback
            continue
        finished_at = next(clock) // 1000
        outcome = plan["outcome"]
        final_payload = f'{{"message_id":"{message_id}","options":{{"retries":{attempt - 1}}}}}'
        if outcome == "completed":
            event(Kind.COMPLETED, attempt, worker_id=worker, started_at=started_at, finished_at=finished_at,
                  exception=last_traceback, broker_message_id=current_id, duration=0.01)
            payload = first_payload
        elif outcome == "failed":
            exception = f"Traceback: final failure of {message_id}"
            event(Kind.FAILED, attempt, worker_id=worker, started_at=started_at, finished_at=finished_at,
                  exception=exception, payload=final_payload, broker_message_id=current_id, duration=0.01)
            payload = final_payload
        else:
            started_at = finished_at  # skipped before it started: picked up and ended at once
            event(Kind.SKIPPED, attempt, worker_id=worker, started_at=started_at, finished_at=finished_at,
                  exception=last_traceback, payload=final_payload, broker_message_id=current_id)
            payload = final_payload
        if cut_off is not None and not cut_off.at:
            cut_off.at = next(clock)
        story.expected = {
            "status": outcome,
            "attempts": attempt,
            "worker_id": worker,
            "started_at": started_at,
            "completed_at": finished_at,
            "exception": exception,
            "eta": eta,
            "broker_message_id": current_id,
            "payload": payload,
            "queued_at": queued_at,
            "queue": queue,
            "actor": "act",
        }
    return story


def row_of(job: Job) -> dict[str, Any]:
    return {
        "status": job.status,
        "attempts": job.attempts,
        "worker_id": job.worker_id,
        "started_at": clock.to_ms(job.started_at),
        "completed_at": clock.to_ms(job.completed_at),
        "exception": job.exception,
        "eta": clock.to_ms(job.eta),
        "broker_message_id": job.broker_message_id,
        "payload": job.payload,
        "queued_at": clock.to_ms(job.queued_at),
        "queue": job.queue,
        "actor": job.actor,
    }


def make_stories(plan_list: list[dict[str, Any]]) -> tuple[str, list[Story]]:
    queue = f"q_{uuid.uuid4().hex[:10]}"
    start = 1_700_000_000_000_000 + random.Random(queue).randrange(10**9)
    clock = iter(range(start, start + 10**12, 10_007))
    return queue, [build_story(plan, queue, clock) for plan in plan_list]


def split(events: list[JobEvent], rnd: random.Random) -> list[list[JobEvent]]:
    """``events`` shuffled and cut into batches of random sizes."""
    events = list(events)
    rnd.shuffle(events)
    batches = []
    while events:
        size = rnd.randint(1, max(1, len(events)))
        batches.append(events[:size])
        events = events[size:]
    return batches


#: The harness marks workers lost at two moments: between the first and
#: second writes, and between the second and third.
MOMENTS = 2


def stages(stories: list[Story], rnd: random.Random) -> tuple[list[list[JobEvent]], list[list[Mark]]]:
    """The events in ``MOMENTS + 1`` writes, and the marks made between them.

    A mark comes after the events it needs and before every event that
    happened after it; anything else may arrive before or after it (the
    producer's "enqueued" can be the last).
    """
    writes: list[list[JobEvent]] = [[] for _ in range(MOMENTS + 1)]
    marks: list[list[Mark]] = [[] for _ in range(MOMENTS)]
    for story in stories:
        moments = sorted(rnd.sample(range(MOMENTS), len(story.marks)))  # story.marks are in time order

        def earliest(event: JobEvent, story: Story = story, moments: list[int] = moments) -> int:
            """The first write after every mark that came before ``event`` happened."""
            return max((moment + 1 for mark, moment in zip(story.marks, moments, strict=True) if mark.at < event.at),
                       default=0)

        for mark, moment in zip(story.marks, moments, strict=True):
            marks[moment].append(mark)
            for needed in mark.needs:  # before its own mark
                writes[rnd.randint(earliest(needed), moment)].append(needed)
        for event in story.events:
            writes[rnd.randint(earliest(event), MOMENTS)].append(event)
    return writes, marks


def mark_workers(db: Any, marks: list[Mark]) -> None:
    for mark in marks:
        mark_lost(mark.worker, mark.reason, at_us=mark.at, db=db)


def check(stories: list[Story], queue: str) -> None:
    rows = {job.message_id: job for job in Job.select().where(Job.queue == queue)}
    assert len(rows) == len(stories)
    for story in stories:
        job = rows[story.message_id]
        assert row_of(job) == story.expected, story.events
        assert job.lost_attempts == story.expected_lost
        assert job.progress == job.attempts * 8 + 4  # a final phase: nothing can overwrite it
    # Rollups: every event counted once, whatever the batches.
    expected = Counter()
    for story in stories:
        for event in story.events + [needed for mark in story.marks for needed in mark.needs]:
            kind = {Kind.DELAYED: "enqueued", Kind.REQUEUED: None, Kind.MOVED: None}.get(event.kind, event.kind.value)
            if kind:
                expected[kind] += 1
        expected["lost"] += story.expected_lost
    counted = Counter()
    for rollup in Rollup.select().where(Rollup.queue == queue):
        counted[rollup.kind] += rollup.count
    assert counted == +expected
    # Only the marks of workers that died stay: a mistaken one is undone.
    kept = Counter(mark.worker_id for mark in LostMark.select().where(LostMark.queue == queue))
    real = [mark.worker for story in stories for mark in story.marks if mark.real and story.expected_lost]
    assert kept == Counter(real)


@pytest.fixture(scope="module", params=["sqlite", "postgresql", "mysql"])
def ledger_db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    """One database per kind for the whole module (each example uses its own queue)."""
    url, drop = make_database_url(request.param, Path(tmp_path_factory.mktemp("order")))
    db = store.connect(url)
    try:
        yield url, db
    finally:
        db.close()
        drop()


def examples(kind: str, many: int) -> int:
    """Modest on the servers: each example is a few dozen round trips."""
    return many if kind == "sqlite" else max(5, many // 8)


story_lists = st.lists(plans(), min_size=1, max_size=10)


def test_write_batch_converges_in_any_order(ledger_db: tuple[str, Any]) -> None:
    _, db = ledger_db
    kind = dialect_of(db).name

    @settings(max_examples=examples(kind, 200), deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(plan_list=story_lists, rnd=st.randoms(use_true_random=False))
    def run(plan_list: list[dict[str, Any]], rnd: random.Random) -> None:
        models.database.initialize(db)
        queue, stories = make_stories(plan_list)
        writes, marks = stages(stories, rnd)
        for moment, events in enumerate(writes):
            for batch in split(events, rnd):
                write_batch(db, batch)
            if moment < MOMENTS:
                mark_workers(db, marks[moment])
        check(stories, queue)
        ran.append(len(stories))

    ran: list[int] = []
    run()
    print(f"{kind}: {len(ran)} examples, {sum(ran)} jobs")
    assert len(ran) >= examples(kind, 200) // 2  # the property was really exercised


def test_two_recorders_at_once_converge(ledger_db: tuple[str, Any]) -> None:
    url, db = ledger_db
    kind = dialect_of(db).name
    # Two recorders with their own connections, as two processes would have.
    recorders = [Recorder(url, flush_interval=0.01, batch_size=7) for _ in range(2)]
    try:
        @settings(max_examples=examples(kind, 60), deadline=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
        @given(plan_list=story_lists, rnd=st.randoms(use_true_random=False))
        def run(plan_list: list[dict[str, Any]], rnd: random.Random) -> None:
            queue, stories = make_stories(plan_list)
            writes, marks = stages(stories, rnd)
            for moment, events in enumerate(writes):
                shares: list[list[JobEvent]] = [[], []]
                rnd.shuffle(events)
                for event in events:
                    shares[rnd.randrange(2)].append(event)
                feeders = [threading.Thread(target=_feed, args=(r, share))
                           for r, share in zip(recorders, shares, strict=True)]
                for thread in feeders:
                    thread.start()
                for thread in feeders:
                    thread.join()
                for recorder in recorders:
                    assert recorder.flush(timeout=30)
                if moment < MOMENTS:
                    models.database.initialize(db)
                    mark_workers(db, marks[moment])
            models.database.initialize(db)
            check(stories, queue)
            ran.append(len(stories))

        ran: list[int] = []
        run()
        print(f"{kind}: {len(ran)} examples, {sum(ran)} jobs")
        assert len(ran) >= examples(kind, 60) // 2
        assert all(r.stats().dropped == 0 for r in recorders)
    finally:
        for recorder in recorders:
            recorder.close()
        models.database.initialize(db)


def _feed(recorder: Recorder, events: list[JobEvent]) -> None:
    for event in events:
        recorder.record(event)
