"""The recorder: a bounded buffer with exact drop accounting, fork safety,
flushing at exit, and a database that refuses some values."""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.support.checkout import subprocess_env
from tests.support.polling import wait_until
from tests.support.recording import enqueued, refused_url
from tests.support.servers import make_database_url, unique
from watchtower import models, store
from watchtower.events import WorkerEvent
from watchtower.models import Job, Rollup, Worker
from watchtower.recorder import Recorder


def drop_reports(caplog: pytest.LogCaptureFixture) -> list[int]:
    """The counts in the recorder's "dropped N events" lines."""
    return [int(m.group(1)) for r in caplog.records
            if (m := re.search(r"recorder dropped (\d+) events", r.getMessage()))]


def test_a_full_buffer_drops_and_counts_exactly_from_many_threads(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="watchtower.recorder")
    recorder = Recorder(refused_url(), flush_interval=0.05, buffer_size=100, drop_log_interval=3600)
    threads, per_thread = 8, 2_000

    def produce(n: int) -> None:
        for i in range(per_thread):
            recorder.record(enqueued(f"{n}-{i}"))

    workers = [threading.Thread(target=produce, args=(n,)) for n in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    stats = recorder.stats()
    assert stats.buffered == 100  # the bound, not one more
    assert stats.dropped == threads * per_thread - 100
    assert recorder.flush(timeout=0.3) is False  # the database is down: not written
    wait_until(lambda: recorder.stats().failures >= 1, timeout=15)

    recorder.close(timeout=0.5)
    assert recorder.stats().dropped == threads * per_thread  # the buffered ones are lost at close
    reports = drop_reports(caplog)
    assert sum(reports) == threads * per_thread - 100  # every drop reported, none twice
    assert len(reports) <= 2  # once per interval (and once at close), not once per event
    assert any("closing with 100 unwritten events" in r.getMessage() for r in caplog.records)


def test_flush_waits_for_every_event_and_worker_row(sqlite_url: str) -> None:
    recorder = Recorder(sqlite_url, flush_interval=30, batch_size=10_000)  # only flush() wakes it
    try:
        ids = [unique("m") for _ in range(50)]
        for message_id in ids:
            recorder.record(enqueued(message_id))
        for beat in range(5):
            recorder.record_worker(WorkerEvent("w-1", {"jobs_processed": beat, "status": "running"}))
        recorder.record_worker(WorkerEvent("w-1", {"jobs_failed": 2}))
        assert recorder.flush(timeout=15)
        store.connect(sqlite_url)
        assert Job.select().where(Job.message_id.in_(ids)).count() == 50
        worker = Worker.get(Worker.worker_id == "w-1")
        assert (worker.jobs_processed, worker.jobs_failed, worker.status) == (4, 2, "running")
        assert recorder.stats().written == 50 and recorder.stats().dropped == 0
    finally:
        recorder.close()


def test_periodic_tasks_run_on_the_flusher_thread(sqlite_url: str) -> None:
    recorder = Recorder(sqlite_url, flush_interval=0.02)
    seen: list[str] = []
    recorder.every(0.05, lambda: seen.append(threading.current_thread().name))
    try:
        recorder.record_worker(WorkerEvent("w-2", {}))  # starts the thread
        wait_until(lambda: len(seen) >= 3, timeout=15)
        assert set(seen) == {"watchtower-recorder"}
    finally:
        recorder.close()


@pytest.mark.parametrize("kind", ["postgresql", "mysql"])
def test_values_the_database_refuses_are_dropped_and_the_rest_written(kind: str, tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A queue name longer than its column fails the batch (SQLite would take it); the other events still land."""
    url, drop = make_database_url(kind, tmp_path)
    recorder = Recorder(url, flush_interval=30, batch_size=10_000)
    try:
        good = [unique("m") for _ in range(5)]
        for message_id in good[:3]:
            recorder.record(enqueued(message_id))
        recorder.record(enqueued("too-long", queue="q" * 300))
        for message_id in good[3:]:
            recorder.record(enqueued(message_id))
        assert recorder.flush(timeout=30)
        store.connect(url)
        assert {job.message_id for job in Job.select()} == set(good)
        assert recorder.stats().dropped == 1 and recorder.stats().written == 5
        assert sum(r.count for r in Rollup.select().where(Rollup.kind == "enqueued")) == 5  # no double counts
        assert any("too-long" in r.getMessage() for r in caplog.records)
        # And the recorder goes on recording.
        recorder.record(enqueued("after"))
        assert recorder.flush(timeout=30)
        assert Job.select().where(Job.message_id == "after").count() == 1
    finally:
        recorder.close()
        models.database.obj.close()
        drop()


def _child(recorder: Recorder, ids: list[str], marker: str) -> None:
    """In a forked child: record events of its own and return (multiprocessing then calls os._exit)."""
    for message_id in ids:
        recorder.record(enqueued(message_id))
    Path(marker).write_text(str(recorder.stats().buffered))


def test_a_forked_child_writes_its_own_events_not_its_parents(sqlite_url: str, tmp_path: Path) -> None:
    store.connect(sqlite_url)  # the schema exists before both processes write
    recorder = Recorder(sqlite_url, flush_interval=3600, batch_size=100_000)  # nothing written until flush
    pid_file = tmp_path / "beats"
    recorder.every(0.01, lambda: pid_file.open("a").write(f"{os.getpid()}\n"))
    parent_ids = [unique("parent") for _ in range(20)]
    child_ids = [unique("child") for _ in range(30)]
    try:
        for message_id in parent_ids:
            recorder.record(enqueued(message_id))
        assert recorder.stats().buffered == 20  # still in the parent's buffer at the fork
        child = multiprocessing.get_context("fork").Process(
            target=_child, args=(recorder, child_ids, str(tmp_path / "child-buffered")))
        child.start()
        child.join(timeout=60)
        assert child.exitcode == 0
        # The child buffered only its own 30 and wrote them as it exited (os._exit skips atexit).
        assert (tmp_path / "child-buffered").read_text() == "30"
        rows = {job.message_id for job in Job.select()}
        assert rows == set(child_ids)
        assert recorder.flush(timeout=15)
        rows = {job.message_id for job in Job.select()}
        assert rows == set(parent_ids) | set(child_ids)
        # Each event counted once: the parent's buffer was not written twice.
        assert sum(r.count for r in Rollup.select().where(Rollup.kind == "enqueued")) == 50
        # The parent's periodic tasks stayed with the parent.
        assert {int(line) for line in pid_file.read_text().split()} == {os.getpid()}
    finally:
        recorder.close()


EXIT_WITHOUT_FLUSH = """
import sys
from watchtower.events import JobEvent, Kind
from watchtower.recorder import Recorder
recorder = Recorder(sys.argv[1], flush_interval=3600, batch_size=100_000)
for i in range(int(sys.argv[2])):
    recorder.record(JobEvent(message_id=f"exit-{i}", kind=Kind.ENQUEUED, attempt=1, at=i, queue="q",
                             actor="a", connection="redis", queued_at=0))
print(recorder.stats().written)
"""


def test_what_is_buffered_is_written_at_interpreter_exit(sqlite_url: str, tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", EXIT_WITHOUT_FLUSH, sqlite_url, "500"], env=subprocess_env(),
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0"  # nothing had been written when the script ended
    store.connect(sqlite_url)
    assert Job.select().where(Job.message_id.startswith("exit-")).count() == 500


def thread_nice(native_id: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, native_id)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="niceness per thread is Linux's")
@pytest.mark.parametrize("nice", [0, 7])
def test_the_flusher_thread_runs_nice_steps_below_the_threads_that_record(sqlite_url: str, nice: int) -> None:
    recorder = Recorder(sqlite_url, flush_interval=0.05, nice=nice)
    mine = thread_nice(threading.get_native_id())
    try:
        recorder.record(enqueued(unique("nice")))
        assert recorder.flush(10)
        assert recorder._thread is not None and recorder._thread.native_id is not None
        assert thread_nice(recorder._thread.native_id) == min(19, mine + nice)
        assert thread_nice(threading.get_native_id()) == mine  # the recording thread keeps its own
    finally:
        recorder.close()
    db = store.connect(sqlite_url)
    assert Job.select().count() == 1
    db.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="niceness per thread is Linux's")
def test_the_middleware_lowers_its_flusher_by_the_recorder_nice_setting(sqlite_url: str) -> None:
    from watchtower import WatchtowerMiddleware
    from watchtower.config import load_settings

    for env, expected in (({}, 10), ({"WATCHTOWER_RECORDER_NICE": "3"}, 3)):
        settings = load_settings(env=env, overrides={"database_url": sqlite_url})
        middleware = WatchtowerMiddleware(settings=settings)
        mine = thread_nice(threading.get_native_id())
        try:
            middleware.recorder.record(enqueued(unique("nice")))
            assert middleware.recorder.flush(10)
            assert middleware.recorder._thread is not None and middleware.recorder._thread.native_id is not None
            assert thread_nice(middleware.recorder._thread.native_id) == min(19, mine + expected)
        finally:
            middleware.recorder.close()


def test_a_niceness_out_of_range_is_refused(sqlite_url: str) -> None:
    with pytest.raises(ValueError, match="nice must be from 0 to 19"):
        Recorder(sqlite_url, nice=20)
