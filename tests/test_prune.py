"""Retention: which rows a prune deletes, on every database, and the command around it."""

from __future__ import annotations

import inspect
import os
import pty
import select
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.support.checkout import subprocess_env
from tests.support.ledger_fill import completed_job_events, insert_jobs, job_row
from tests.support.polling import wait_until
from watchtower import Recorder, derived, store
from watchtower.cli import cli
from watchtower.clock import DAY_MS, now_ms
from watchtower.models import HourlyRollup, Job, LostMark, Rollup, Worker
from watchtower.retention import Retention, plan, prune
from watchtower.statuses import JobStatus, WorkerStatus


def _remaining(status: str | None = None) -> set[str]:
    query = Job.select(Job.message_id)
    if status is not None:
        query = query.where(Job.status == status)
    return {job.message_id for job in query}


def _statuses() -> dict[str, int]:
    return {status: Job.select().where(Job.status == status).count() for status in JobStatus.ALL}


def _batches_of(monkeypatch: pytest.MonkeyPatch, rows: int) -> None:
    """Prune batches that start at ``rows`` rows and never go below (with a tiny batch_seconds, all of them)."""
    import watchtower.retention.engine as prune_module

    monkeypatch.setattr(prune_module, "FIRST_BATCH", rows)
    monkeypatch.setattr(prune_module, "MIN_BATCH", rows)


# What goes and what stays -------------------------------------------------


def test_prune_by_age_keeps_exactly_the_rows_inside_their_retention(database_url: str) -> None:
    db = store.connect(database_url)
    now = now_ms()
    retention = Retention()  # completed 7, failed 30, skipped 30, rollups 2, workers 7 days
    cutoffs = retention.job_cutoffs(now)
    rows, expected_gone = [], set()
    for status, cutoff in cutoffs.items():
        for label, at in (("older", cutoff - 1), ("at", cutoff), ("newer", cutoff + 1), ("fresh", now)):
            message_id = f"{status}-{label}"
            rows.append(job_row(status, at, message_id=message_id, worker_id="w-old-stopped"))
            if label == "older":
                expected_gone.add(message_id)
    # Unfinished jobs stay whatever their times say.
    for status in (JobStatus.PENDING, JobStatus.PROCESSING):
        rows.append(job_row(status, None, message_id=f"{status}-ancient"))
    insert_jobs(db, rows)
    Job.update(completed_at=now - 400 * DAY_MS, queued_at=now - 400 * DAY_MS).where(
        Job.status.in_([JobStatus.PENDING, JobStatus.PROCESSING])
    ).execute()

    # Rollups go by whole clock hours: those of hours that ended 2 days ago.
    minute_cutoff = (now - 2 * DAY_MS) // 3_600_000 * 60
    for minute in (minute_cutoff - 61, minute_cutoff - 1, minute_cutoff, minute_cutoff + 1):
        Rollup.insert(minute=minute, queue="default", actor="task", kind="completed", count=3).execute()

    worker_cutoff = now - 7 * DAY_MS
    workers = {
        "w-old-stopped": dict(status=WorkerStatus.STOPPED, stopped_at=worker_cutoff - 1,
                              last_heartbeat=worker_cutoff - 5),
        "w-at-stopped": dict(status=WorkerStatus.STOPPED, stopped_at=worker_cutoff, last_heartbeat=worker_cutoff - 5),
        "w-old-lost": dict(status=WorkerStatus.LOST, last_heartbeat=worker_cutoff - 1),
        "w-old-running": dict(status=WorkerStatus.RUNNING, last_heartbeat=worker_cutoff - DAY_MS),
        "w-old-crashlooping": dict(status=WorkerStatus.CRASHLOOPING, stopped_at=worker_cutoff - DAY_MS),
    }
    for worker_id, fields in workers.items():
        Worker.insert(worker_id=worker_id, **fields).execute()
        # A lost mark of each: those of pruned workers go with them.
        LostMark.insert(worker_id=worker_id, message_id=f"m-{worker_id}", queued_day=0, attempt=1, at=0,
                        queue="default", actor="task", exception="lost: worker died").execute()

    before = _remaining()
    planned = plan(db, retention, now=now)
    result = prune(db, retention, now=now)

    assert _remaining() == before - expected_gone
    assert result.jobs == {JobStatus.COMPLETED: 1, JobStatus.FAILED: 1, JobStatus.SKIPPED: 1}
    assert planned.jobs == result.jobs and planned.rollups == result.rollups and planned.workers == result.workers
    assert {r.minute for r in Rollup.select()} == {minute_cutoff, minute_cutoff + 1}
    assert result.rollups == 2
    # The hourly sums (kept by triggers) lose the pruned hours, and keep the rest right.
    assert {(h.hour, h.count) for h in HourlyRollup.select()} == {(minute_cutoff // 60, 6)}
    # So do the job counts per queue and status.
    counts, _ = derived.read_counts(db)
    assert {status: n for (_, status), n in counts.items()} == {s: n for s, n in _statuses().items() if n}
    assert {w.worker_id for w in Worker.select()} == {"w-at-stopped", "w-old-running", "w-old-crashlooping"}
    assert {m.worker_id for m in LostMark.select()} == {"w-at-stopped", "w-old-running", "w-old-crashlooping"}
    assert result.workers == 2
    # Jobs that name a pruned worker are intact; the relation just comes back empty.
    kept = Job.get(Job.message_id == "completed-at")
    assert kept.worker_id == "w-old-stopped" and kept.worker is None
    assert result.summary().startswith(
        "pruned 3 jobs (completed 1, failed 1, skipped 1), 2 rollup rows, 2 worker records in "
    )


def test_batches_split_on_equal_completion_times_without_losing_or_sparing_rows(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tiny batches over rows that share completion times: the bound of a
    # batch falls inside a run of equal times again and again.
    _batches_of(monkeypatch, 7)
    db = store.connect(database_url)
    now = now_ms()
    cutoff = now - 7 * DAY_MS
    expired = [job_row(JobStatus.COMPLETED, cutoff - 1 - (i // 5)) for i in range(300)]
    young = [job_row(JobStatus.COMPLETED, cutoff + (i // 5)) for i in range(40)]
    insert_jobs(db, expired + young)

    result = prune(db, Retention(), now=now, batch_seconds=1e-9, pause=0)

    assert result.jobs[JobStatus.COMPLETED] == 300
    assert result.batches >= 300 // 12
    assert _remaining() == {row[0] for row in young}


def _real_counts(db: Any) -> dict[tuple[str, str], int]:
    return {(queue, status): int(n) for queue, status, n in db.execute_sql(
        "SELECT queue, status, COUNT(*) FROM watchtower_jobs GROUP BY queue, status").fetchall()}


def test_the_job_counts_follow_every_batch_across_queues_and_statuses(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The triggers take every batch's rows off the counts per queue and
    # status (SQLite and MySQL row by row, PostgreSQL per statement).
    _batches_of(monkeypatch, 9)
    db = store.connect(database_url)
    now = now_ms()
    rows = []
    for i in range(240):
        status = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.SKIPPED)[i % 3]
        age = (40 if i % 2 else 1) * DAY_MS  # half of them expired, whatever their status
        rows.append(job_row(status, now - age - i, queue=("emails", "reports", "default", "bulk")[i % 4]))
    rows += [job_row(JobStatus.PENDING, None, queue="emails"), job_row(JobStatus.PROCESSING, None, queue="bulk")]
    insert_jobs(db, rows)

    result = prune(db, Retention(), now=now, batch_seconds=1e-9, pause=0)

    assert result.jobs_total == 120 and result.batches > 3 * 4
    counts, _ = derived.read_counts(db)
    assert counts == _real_counts(db) and sum(counts.values()) == 122

    everything = prune(db, Retention(), now=now, all_jobs=True, batch_seconds=1e-9, pause=0)
    assert everything.jobs_total == 122 and Job.select().count() == 0
    assert derived.read_counts(db)[0] == {}


def test_a_cancelled_prune_leaves_whole_rows_and_a_consistent_table(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _batches_of(monkeypatch, 500)
    db = store.connect(sqlite_url)
    now = now_ms()
    insert_jobs(db, [job_row(JobStatus.COMPLETED, now - 10 * DAY_MS + i) for i in range(5_000)])
    cancel = threading.Event()
    deleted: list[int] = []

    def progress(count: int) -> None:
        deleted.append(count)
        if len(deleted) == 3:
            cancel.set()

    result = prune(db, Retention(), now=now, progress=progress, cancel=cancel, batch_seconds=1e-9)

    assert not result.complete and "stopped before the end" in result.summary()
    assert result.jobs_total == sum(deleted) == 1_500
    assert Job.select().count() == 3_500
    # The oldest went first: what is left is exactly the newest 3,500.
    oldest_left = Job.select(Job.completed_at).order_by(Job.completed_at).first().completed_at
    assert oldest_left.timestamp() * 1000 == pytest.approx(now - 10 * DAY_MS + 1_500, abs=1)
    assert db.execute_sql("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_prune_killed_midway_leaves_an_intact_database(sqlite_url: str) -> None:
    db = store.connect(sqlite_url)
    now = now_ms()
    total, kept = 150_000, 1_000
    insert_jobs(db, [job_row(JobStatus.COMPLETED, now - 20 * DAY_MS + i) for i in range(total)]
                + [job_row(JobStatus.PENDING, None) for _ in range(kept)])
    child = subprocess.Popen(
        [sys.executable, "-m", "watchtower", "--database-url", sqlite_url, "prune"],
        env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        # Kill it -9 once some batches are committed, before it is done.
        wait_until(lambda: Job.select().count() < total + kept - 2_000 or child.poll() is not None, timeout=60)
        child.kill()
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    db.close()
    db = store.connect(sqlite_url)
    assert db.execute_sql("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert Job.select().where(Job.status == JobStatus.PENDING).count() == kept
    left = Job.select().where(Job.status == JobStatus.COMPLETED).count()
    assert 0 < left < total, "the prune was not caught midway"
    # Whole batches went, oldest first: the survivors are exactly the newest ones.
    if left:
        oldest = (Job.select(Job.completed_at).where(Job.status == JobStatus.COMPLETED)
                  .order_by(Job.completed_at).first())
        assert oldest.completed_at.timestamp() * 1000 == pytest.approx(now - 20 * DAY_MS + total - left, abs=1)
    # A second prune finishes the job.
    prune(db, Retention())
    assert _statuses()[JobStatus.COMPLETED] == 0 and _statuses()[JobStatus.PENDING] == kept


def test_sqlite_gives_the_space_of_a_big_prune_back_to_the_file_system(sqlite_url: str) -> None:
    db = store.connect(sqlite_url)
    assert db.execute_sql("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental, set at creation
    now = now_ms()
    insert_jobs(db, [job_row(JobStatus.COMPLETED, now - 10 * DAY_MS + i) for i in range(30_000)])
    pages_before = db.execute_sql("PRAGMA page_count").fetchone()[0]

    result = prune(db, Retention(), now=now)

    pages_after = db.execute_sql("PRAGMA page_count").fetchone()[0]
    assert result.jobs_total == 30_000
    assert result.vacuum == "whole"  # nothing is left to copy: one VACUUM
    assert db.execute_sql("PRAGMA freelist_count").fetchone()[0] == 0
    assert pages_after < pages_before / 4, (pages_before, pages_after)
    assert db.execute_sql("PRAGMA auto_vacuum").fetchone()[0] == 2  # VACUUM kept the mode
    assert db.execute_sql("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_sqlite_gives_space_back_in_steps_when_much_is_left(sqlite_url: str) -> None:
    # Half the rows stay: copying them (about as long as deleting the other
    # half took) would hold the write lock far longer than two of these
    # 1 ms batches, so the free pages go back in incremental steps.
    db = store.connect(sqlite_url)
    now = now_ms()
    insert_jobs(db, [job_row(JobStatus.COMPLETED, now - 10 * DAY_MS + i) for i in range(20_000)])
    insert_jobs(db, [job_row(JobStatus.COMPLETED, now - DAY_MS + i) for i in range(20_000)])
    pages_before = db.execute_sql("PRAGMA page_count").fetchone()[0]

    result = prune(db, Retention(), now=now, batch_seconds=0.001, pause=0)

    assert result.jobs_total == 20_000
    assert result.vacuum == "incremental"
    assert db.execute_sql("PRAGMA freelist_count").fetchone()[0] == 0
    assert db.execute_sql("PRAGMA page_count").fetchone()[0] < pages_before * 0.6
    assert Job.select().count() == 20_000


def test_a_ledger_made_without_auto_vacuum_shrinks_and_switches_to_incremental(sqlite_url: str) -> None:
    import sqlite3

    path = sqlite_url.removeprefix("sqlite:///")
    made = sqlite3.connect(path)  # as an earlier release left it: auto_vacuum off
    made.execute("CREATE TABLE made_before (x INTEGER)")
    made.close()
    db = store.connect(sqlite_url)
    assert db.execute_sql("PRAGMA auto_vacuum").fetchone()[0] == 0
    now = now_ms()
    insert_jobs(db, [job_row(JobStatus.COMPLETED, now - 10 * DAY_MS + i) for i in range(20_000)])
    pages_before = db.execute_sql("PRAGMA page_count").fetchone()[0]

    result = prune(db, Retention(), now=now)

    assert result.jobs_total == 20_000 and result.vacuum == "whole"
    assert db.execute_sql("PRAGMA page_count").fetchone()[0] < pages_before / 4
    assert db.execute_sql("PRAGMA auto_vacuum").fetchone()[0] == 2


def test_a_prune_that_frees_little_leaves_the_free_pages_for_new_rows(sqlite_url: str) -> None:
    db = store.connect(sqlite_url)
    now = now_ms()
    insert_jobs(db, [job_row(JobStatus.COMPLETED, now - (10 if i < 1_000 else 1) * DAY_MS + i) for i in range(20_000)])

    result = prune(db, Retention(), now=now)

    assert result.jobs_total == 1_000 and result.vacuum == ""
    assert db.execute_sql("PRAGMA freelist_count").fetchone()[0] > 0


# Live recording while a big table is pruned -------------------------------


def test_a_live_recorder_keeps_recording_while_a_large_table_is_pruned(sqlite_url: str) -> None:
    db = store.connect(sqlite_url)
    now = now_ms()
    expired, kept = 190_000, 10_000
    insert_jobs(
        db,
        (job_row(JobStatus.COMPLETED if i % 10 else JobStatus.FAILED, now - 60 * DAY_MS + i) for i in range(expired)),
        chunk=expired,  # one transaction
    )
    insert_jobs(db, [job_row(JobStatus.COMPLETED, now - DAY_MS + i) for i in range(kept)])
    writes: list[tuple[float, float]] = []
    recorder = Recorder(sqlite_url, flush_interval=0.1, on_write=lambda batch, seconds: writes.append(
        (time.perf_counter(), seconds)))
    stop = threading.Event()
    recorded: list[str] = []

    def record_jobs() -> None:
        while not stop.is_set():
            message_id = uuid.uuid4().hex
            for event in completed_job_events(message_id):
                recorder.record(event)
            recorded.append(message_id)
            time.sleep(0.004)

    producer = threading.Thread(target=record_jobs)
    producer.start()
    try:
        wait_until(lambda: len(writes) >= 3, timeout=30, message="the recorder writing")
        started = time.perf_counter()
        result = prune(db, Retention())
        finished = time.perf_counter()
        wait_until(lambda: any(end > finished for end, _ in writes), timeout=30)
    finally:
        stop.set()
        producer.join()
        assert recorder.flush(60)
        recorder.close()

    assert result.jobs_total == expired
    assert Job.select().where(Job.queue == "default").count() == kept
    landed = {job.message_id for job in Job.select(Job.message_id).where(Job.queue == "live")}
    assert landed == set(recorded)
    assert Job.select().where((Job.queue == "live") & (Job.status != JobStatus.COMPLETED)).count() == 0
    stats = recorder.stats()
    assert stats.dropped == 0 and stats.failures == 0
    during = [seconds for end, seconds in writes if end >= started and end - seconds <= finished]
    assert during, "the recorder wrote nothing while the prune ran"
    print(
        f"\nprune of {expired} rows: {result.seconds:.2f} s in {result.batches} batches "
        f"(longest {result.longest_batch:.3f} s); {len(during)} recorder writes meanwhile, "
        f"longest {max(during):.3f} s (budget 0.5 s); {len(recorded)} jobs recorded"
    )


# The command ---------------------------------------------------------------


def _runner() -> CliRunner:
    """A runner whose result has stderr apart (click 8.2 always keeps it apart; 8.1 only when asked)."""
    if "mix_stderr" in inspect.signature(CliRunner).parameters:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    return CliRunner()


def _invoke(url: str, *args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return _runner().invoke(cli, ["--database-url", url, "prune", *args], env=env, catch_exceptions=False)


def _ages(db, now: int, spec: dict[str, list[float]]) -> None:  # type: ignore[no-untyped-def]
    """Jobs named ``<status>-<days>`` that finished that many days before ``now``."""
    insert_jobs(db, [
        job_row(status, now - round(days * DAY_MS), message_id=f"{status}-{days}")
        for status, ages in spec.items() for days in ages
    ])


AGES = {
    JobStatus.COMPLETED: [0.9, 1.1, 2.9, 3.1, 6.9, 7.1],
    JobStatus.FAILED: [1.9, 2.1, 9.9, 10.1, 29.9, 30.1],
    JobStatus.SKIPPED: [4.9, 5.1, 29.9, 30.1],
    JobStatus.PENDING: [100],
    JobStatus.PROCESSING: [100],
}


def _younger_than(status: str, days: float) -> set[str]:
    return {f"{status}-{age}" for age in AGES[status] if age < days}


def test_the_command_takes_its_retention_from_the_settings_file_and_the_environment(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = store.connect(database_url)
    _ages(db, now_ms(), AGES)
    (tmp_path / "watchtower.toml").write_text("[retention]\ncompleted_days = 3\nskipped_days = 5\n")
    monkeypatch.chdir(tmp_path)

    result = _invoke(database_url, env={"WATCHTOWER_RETENTION_FAILED_DAYS": "10"})

    assert result.exit_code == 0, result.output
    assert _remaining(JobStatus.COMPLETED) == _younger_than(JobStatus.COMPLETED, 3)
    assert _remaining(JobStatus.FAILED) == _younger_than(JobStatus.FAILED, 10)
    assert _remaining(JobStatus.SKIPPED) == _younger_than(JobStatus.SKIPPED, 5)
    assert _statuses()[JobStatus.PENDING] == 1 and _statuses()[JobStatus.PROCESSING] == 1
    assert result.stdout.startswith("pruned 9 jobs (completed 3, failed 3, skipped 3)")
    assert " in " in result.stdout and result.stdout.strip().endswith("s")


def test_the_command_uses_the_default_retention_without_settings(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = store.connect(database_url)
    _ages(db, now_ms(), AGES)
    monkeypatch.chdir(tmp_path)  # no watchtower.toml here

    result = _invoke(database_url)

    assert result.exit_code == 0, result.output
    assert _remaining(JobStatus.COMPLETED) == _younger_than(JobStatus.COMPLETED, 7)
    assert _remaining(JobStatus.FAILED) == _younger_than(JobStatus.FAILED, 30)
    assert _remaining(JobStatus.SKIPPED) == _younger_than(JobStatus.SKIPPED, 30)


def test_command_line_days_override_the_settings(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = store.connect(database_url)
    _ages(db, now_ms(), AGES)
    (tmp_path / "watchtower.toml").write_text("[retention]\ncompleted_days = 3\nfailed_days = 10\n")
    monkeypatch.chdir(tmp_path)

    dry = _invoke(database_url, "--completed", "1", "--failed", "2", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert dry.stdout.startswith("would prune 11 jobs (completed 5, failed 5, skipped 1)")
    assert _statuses()[JobStatus.COMPLETED] == 6  # a dry run deletes nothing

    result = _invoke(database_url, "--completed", "1", "--failed", "2")

    assert result.exit_code == 0, result.output
    assert _remaining(JobStatus.COMPLETED) == _younger_than(JobStatus.COMPLETED, 1)
    assert _remaining(JobStatus.FAILED) == _younger_than(JobStatus.FAILED, 2)
    assert _remaining(JobStatus.SKIPPED) == _younger_than(JobStatus.SKIPPED, 30)


def test_a_negative_number_of_days_is_refused_naming_the_setting(sqlite_url: str) -> None:
    store.connect(sqlite_url)
    from watchtower.errors import ConfigError

    with pytest.raises(ConfigError, match=r"retention\.completed_days.*must not be negative"):
        _invoke(sqlite_url, "--completed", "-1")


def test_all_without_yes_and_without_a_terminal_refuses_and_deletes_nothing(database_url: str) -> None:
    db = store.connect(database_url)
    _ages(db, now_ms(), AGES)
    before = _statuses()

    result = _invoke(database_url, "--all")

    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1  # one line
    assert "--all would delete all 18 job records" in result.stderr and "--yes" in result.stderr
    assert _statuses() == before


def test_all_with_yes_deletes_every_job_record(database_url: str) -> None:
    db = store.connect(database_url)
    _ages(db, now_ms(), AGES)

    result = _invoke(database_url, "--all", "--yes")

    assert result.exit_code == 0, result.output
    assert Job.select().count() == 0
    assert result.stdout.startswith(
        "pruned 18 jobs (pending 1, processing 1, completed 6, failed 6, skipped 4)"
    )


def test_all_cannot_be_combined_with_days(sqlite_url: str) -> None:
    result = _runner().invoke(cli, ["--database-url", sqlite_url, "prune", "--all", "--completed", "3"])
    assert result.exit_code == 2 and "cannot be combined" in result.stderr


def _read_terminal(master: int, screen: bytearray) -> bool:
    """Append what the terminal shows to ``screen``; False once the other side closed it."""
    ready, _, _ = select.select([master], [], [], 0.1)
    if ready:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: every process on the other side is gone
            return False
        if not data:
            return False
        screen.extend(data)
    return True


@pytest.mark.parametrize("answer", ["n", "y"])
def test_all_on_a_terminal_asks_first_showing_the_count(database_url: str, answer: str) -> None:
    db = store.connect(database_url)
    _ages(db, now_ms(), AGES)
    db.close()
    master, slave = pty.openpty()
    child = subprocess.Popen(
        [sys.executable, "-m", "watchtower", "--database-url", database_url, "prune", "--all"],
        stdin=slave, stdout=slave, stderr=slave, env=subprocess_env(), close_fds=True,
    )
    os.close(slave)
    screen = bytearray()
    try:
        wait_until(lambda: _read_terminal(master, screen) and b"[y/N]" in screen, timeout=30,
                   message="the confirmation prompt")
        assert b"Delete all 18 job records" in screen
        os.write(master, answer.encode() + b"\n")
        # Read until the child closes the terminal (it exits).
        wait_until(lambda: not _read_terminal(master, screen), timeout=60, message="the command to finish")
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        os.close(master)
    db = store.connect(database_url)
    if answer == "n":
        assert child.returncode == 1
        assert b"Nothing deleted" in screen
        assert Job.select().count() == 18
    else:
        assert child.returncode == 0, screen
        assert b"pruned 18 jobs" in screen
        assert Job.select().count() == 0
