"""The recorder's spool: its file format, its locks, its bound, and a recorder that spools and replays.

The database "away" here is a PostgreSQL URL whose port nobody listens on
(refused at once); outages of a real server that stops and starts are in
test_ledger_spool_outage.py.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.checkout import subprocess_env
from tests.support.polling import wait_until
from tests.support.recording import enqueued, refused_url
from watchtower import store
from watchtower.errors import SpoolError
from watchtower.events import JobEvent, Kind, WorkerEvent
from watchtower.models import Job, Rollup, Worker
from watchtower.recorder import Recorder
from watchtower.spool import HEADER_SIZE, SpoolFile, encode_batch, ensure_directory, orphans, spool_directory


def events(prefix: str, count: int) -> list[JobEvent]:
    return [enqueued(f"{prefix}-{n}") for n in range(count)]


def spool_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.spool")) if directory.exists() else []


def new_spool(tmp_path: Path, max_bytes: int = 10_000_000) -> tuple[Path, SpoolFile]:
    directory = tmp_path / "spool"
    ensure_directory(directory)
    return directory, SpoolFile.create(directory, max_bytes=max_bytes, hostname="host")


# The file ------------------------------------------------------------------


def test_batches_come_back_in_order_with_their_worker_values_and_a_written_file_starts_again(tmp_path: Path) -> None:
    directory, spool = new_spool(tmp_path)
    first, second, third = events("a", 3), events("b", 2), events("c", 1)
    first[0].exception = "Traceback ... ünïcode"
    first[1].kind, first[1].started_at, first[1].duration = Kind.COMPLETED, 123, 0.5
    assert spool.append([(first, [WorkerEvent("w1", {"status": "stopped", "queues": ["q"], "exit_code": 0})])]) == 1
    assert spool.append([(second, []), (third, [])]) == 2  # two batches, one write
    assert spool.backlog_bytes() == spool.size - HEADER_SIZE > 0

    batch = spool.next_batch(max_events=4)  # the first batch, and not the second too (5 events)
    assert batch is not None
    assert batch.jobs == first
    assert batch.workers == [WorkerEvent("w1", {"status": "stopped", "queues": ["q"], "exit_code": 0})]
    assert spool.next_batch(max_events=4) == batch  # not written yet: the same batch again
    spool.mark_written(batch.end)
    batch = spool.next_batch(max_events=4)  # small batches come back together
    assert batch is not None and batch.jobs == second + third and batch.workers == []
    spool.mark_written(batch.end)
    assert spool.next_batch() is None
    assert spool.size == HEADER_SIZE == os.path.getsize(spool.path)  # emptied, not grown for ever
    spool.close(delete=True)
    assert spool_files(directory) == []


def test_the_header_remembers_what_was_written_for_whoever_replays_next(tmp_path: Path) -> None:
    _, spool = new_spool(tmp_path)
    assert spool.append([(events("a", 2), []), (events("b", 2), [])]) == 2
    batch = spool.next_batch(max_events=2)
    assert batch is not None
    spool.mark_written(batch.end)
    spool.close()  # its process "died": the file stays, unlocked

    adopted = SpoolFile.adopt(spool.path)
    assert adopted is not None
    batch = adopted.next_batch()
    assert batch is not None and [e.message_id for e in batch.jobs] == ["b-0", "b-1"]


@pytest.mark.parametrize("damage", ["cut in the middle", "cut in the frame header", "a flipped byte"])
def test_a_torn_last_batch_ends_the_file_and_the_batches_before_it_are_read(tmp_path: Path, damage: str) -> None:
    _, spool = new_spool(tmp_path)
    assert spool.append([(events("a", 5), [])])
    whole = spool.size
    assert spool.append([(events("b", 5), [])])
    spool.close()
    size = os.path.getsize(spool.path)
    with open(spool.path, "r+b") as handle:
        if damage == "cut in the middle":
            handle.truncate(whole + (size - whole) // 2)
        elif damage == "cut in the frame header":
            handle.truncate(whole + 3)
        else:
            handle.seek(size - 10)
            byte = handle.read(1)
            handle.seek(size - 10)
            handle.write(bytes([byte[0] ^ 0xFF]))

    adopted = SpoolFile.adopt(spool.path)
    assert adopted is not None
    batch = adopted.next_batch()  # what is whole, and not the torn rest
    assert batch is not None and [e.message_id for e in batch.jobs] == [f"a-{n}" for n in range(5)]
    adopted.mark_written(batch.end)
    assert adopted.next_batch() is None
    assert adopted.torn == os.path.getsize(spool.path) - whole > 0


def test_a_batch_past_the_bound_is_refused_and_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    one = len(encode_batch(events("a", 10)))
    _, spool = new_spool(tmp_path, max_bytes=HEADER_SIZE + 3 * one + one // 2)
    assert spool.append([(events("a", 10), [])]) == 1
    assert spool.append([(events("b", 10), []), (events("c", 10), []), (events("d", 10), [])]) == 2  # what fits
    before = spool.path.read_bytes()
    assert spool.append([(events("e", 10), [])]) == 0
    assert spool.path.read_bytes() == before
    assert spool.size == HEADER_SIZE + 3 * one


def test_a_file_that_is_not_a_spool_is_renamed_and_left_alone(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    ensure_directory(directory)
    stray = directory / "stray.spool"
    stray.write_bytes(b"something else entirely, long enough for a header")
    with pytest.raises(SpoolError, match="not a watchtower spool file"):
        SpoolFile.adopt(stray)
    assert not stray.exists()
    assert (directory / "stray.unreadable").exists()
    assert list(orphans(directory)) == []


# Directories ---------------------------------------------------------------


def test_spool_directories_are_per_ledger_and_made_for_this_user_only(tmp_path: Path) -> None:
    root = tmp_path / "root"
    a = spool_directory(root, "postgresql://u:secret@db.example:5432/ledger")
    assert a == spool_directory(root, "postgresql://other@db.example:5432/ledger?connect_timeout=3")
    assert a != spool_directory(root, "postgresql://u@db.example:5432/other")
    assert a != spool_directory(root, "postgresql://u@db.example:5433/ledger")
    assert spool_directory(root, f"sqlite:///{tmp_path}/a.db") != spool_directory(root, f"sqlite:///{tmp_path}/b.db")
    ensure_directory(a, "about it")
    assert (a.stat().st_mode & 0o777) == 0o700 and (root.stat().st_mode & 0o777) == 0o700
    assert not list(a.parent.glob("*secret*"))


def test_a_spool_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "open"
    directory.mkdir()
    directory.chmod(0o777)
    with pytest.raises(SpoolError, match="writable by others"):
        ensure_directory(directory)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the directory away")  # CI runs as root
def test_a_spool_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "theirs"
    directory.mkdir(mode=0o700)
    shutil.chown(directory, "nobody")
    with pytest.raises(SpoolError, match="belongs to uid"):
        ensure_directory(directory)


# Locks ---------------------------------------------------------------------


HOLDER = """
import sys, time
from pathlib import Path
from watchtower.spool import SpoolFile
from tests.support.recording import enqueued
spool = SpoolFile.create(Path(sys.argv[1]), max_bytes=10**7)
spool.append([([enqueued("held-0")], [])])
print(spool.path, flush=True)
time.sleep(600)
"""


def test_a_live_process_keeps_its_spool_and_its_death_by_sigkill_frees_it_for_one_replayer(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    ensure_directory(directory)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory)], stdout=subprocess.PIPE, text=True,
                              env=subprocess_env())
    try:
        assert holder.stdout is not None
        path = Path(holder.stdout.readline().strip())
        assert list(orphans(directory)) == [path]
        assert SpoolFile.adopt(path) is None  # its process is alive
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        first = SpoolFile.adopt(path)
        assert first is not None
        assert SpoolFile.adopt(path) is None  # never two replayers of one file
        batch = first.next_batch()
        assert batch is not None and [e.message_id for e in batch.jobs] == ["held-0"]
        first.mark_written(batch.end)
        first.close(delete=True)
        assert SpoolFile.adopt(path) is None and list(orphans(directory)) == []
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


# A recorder ----------------------------------------------------------------


def test_while_the_database_keeps_up_the_spool_is_never_touched(sqlite_url: str, tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    recorder = Recorder(sqlite_url, flush_interval=0.05, buffer_size=10_000, spool_dir=directory)
    try:
        for n in range(3_000):
            recorder.record(enqueued(f"m-{n}"))
        assert recorder.flush(timeout=60)
        assert recorder.stats().written == 3_000
    finally:
        recorder.close()
    assert not directory.exists()


def test_an_outage_spools_what_memory_cannot_hold_and_the_next_process_writes_all_of_it(
    sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="watchtower.recorder")
    directory = tmp_path / "spool"
    away = Recorder(refused_url(), flush_interval=0.05, buffer_size=400, batch_size=100, spool_dir=directory)
    total = 5_000
    for n in range(total):
        away.record(enqueued(f"m-{n}"))
        if n % 100 == 99:  # about as fast as busy workers record
            wait_until(lambda: away.stats().buffered < 300, timeout=30, interval=0.005,
                       message="the spooling thread to keep memory below the buffer")
    away.record_worker(WorkerEvent("w-gone", {"status": "stopped", "exit_code": 0}))
    stats = away.stats()
    assert stats.dropped == 0
    assert stats.buffered <= 400  # memory flat: the rest is on disk
    assert stats.spooled >= total - 400
    assert not away.flush(timeout=0.5)
    away.close()
    assert away.stats().dropped == 0
    assert away.stats().spooled == total  # what memory held at close went to the spool too
    assert any("wait in the spool" in r.getMessage() for r in caplog.records)
    assert len(spool_files(directory)) == 1

    db = store.connect(sqlite_url)
    nxt = Recorder(sqlite_url, flush_interval=0.05, spool_dir=directory)
    try:
        nxt.record(enqueued("one-of-its-own"))
        wait_until(lambda: not spool_files(directory), timeout=60, message="the next recorder to write the spool")
        assert Job.select().count(db) == total + 1
        assert sum(r.count for r in Rollup.select().execute(db)) == total + 1  # each event once
        assert Worker.get_by_id("w-gone").status == "stopped"
        assert nxt.stats().written == total + 1
        assert any("of a process that is gone" in r.getMessage() for r in caplog.records)
    finally:
        nxt.close()
        db.close()


def test_past_the_spool_bound_drops_are_counted_exactly_at_close_too(
    sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="watchtower.recorder")
    directory = tmp_path / "spool"
    frame = len(encode_batch(events("x-00000", 50)))
    bound = HEADER_SIZE + 5 * frame
    away = Recorder(refused_url(), flush_interval=0.05, buffer_size=200, batch_size=50, spool_dir=directory,
                    spool_bytes=bound, drop_log_interval=3600)
    sampled: list[int] = []
    away.close_listeners.append(lambda: sampled.append(away.stats().dropped))
    total = 2_000

    def spool_is_full() -> bool:
        path = away.stats().spool_path
        return path is not None and os.path.getsize(path) + frame > bound

    for n in range(total):
        away.record(enqueued(f"m-{n:05}"))
        if n % 50 == 49:  # let the spooling thread fill the spool, then memory fills
            wait_until(lambda: away.stats().buffered < 150 or spool_is_full(), timeout=30, interval=0.005)
    wait_until(lambda: away.stats().buffered == 200, timeout=30, message="memory to fill once the spool is full")
    dropped_before_close = away.stats().dropped
    away.close()
    stats = away.stats()
    at_close = stats.dropped - dropped_before_close
    assert at_close > 0  # memory's events that the full spool had no room for
    assert sampled == [stats.dropped]  # the listeners (the metrics) saw the final count
    assert stats.spooled + stats.dropped == total
    assert any(f"closing with {at_close} unwritten events: they are lost (the spool is full)" in r.getMessage()
               for r in caplog.records)

    db = store.connect(sqlite_url)
    nxt = Recorder(sqlite_url, flush_interval=0.05, spool_dir=directory)
    try:
        nxt.record(enqueued("own"))
        wait_until(lambda: not spool_files(directory), timeout=60, message="the spool to be written")
        written = Job.select().where(Job.message_id != "own").count(db)
        assert written == stats.spooled
        assert written + stats.dropped == total
    finally:
        nxt.close()
        db.close()


def test_a_stop_while_the_database_is_away_does_not_wait_for_it(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    away = Recorder(refused_url(), flush_interval=0.05, spool_dir=directory, shutdown_timeout=600)
    for n in range(50):
        away.record(enqueued(f"m-{n}"))
    wait_until(lambda: away.stats().failures >= 1, timeout=30, message="the recorder to find the database away")
    away.begin_shutdown()
    assert not away.flush(timeout=None)  # returns at once: a 600 s budget is not waited out
    assert away.shutdown_remaining() > 500
    away.close()
    assert away.stats().spooled == 50 and away.stats().dropped == 0
    assert len(spool_files(directory)) == 1


def leave_a_spool(directory: Path, count: int) -> None:
    """A process recording ``count`` events while its database is away, that then stops."""
    away = Recorder(refused_url(), flush_interval=0.05, spool_dir=directory)
    for n in range(count):
        away.record(enqueued(f"m-{n}"))
    wait_until(lambda: away.stats().failures >= 1, timeout=30, message="the recorder to find the database away")
    away.close()


def test_the_spool_command_lists_what_waits_and_writes_the_spools_of_processes_that_are_gone(
    sqlite_url: str, tmp_path: Path,
) -> None:
    root = tmp_path / "spools"
    env = subprocess_env(WATCHTOWER_RECORDER_SPOOL_DIR=str(root))

    def command(url: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "watchtower", "--database-url", url, "spool", *args],
                              env=env, capture_output=True, text=True, timeout=120)

    away_url = refused_url()
    leave_a_spool(spool_directory(root, away_url), 10)
    still_away = command(away_url, "--replay")
    assert still_away.returncode == 1
    assert still_away.stderr.startswith("Error: cannot write the spool into the ledger postgresql://")
    assert len(spool_files(spool_directory(root, away_url))) == 1  # kept for later

    directory = spool_directory(root, sqlite_url)
    leave_a_spool(directory, 30)
    listed = command(sqlite_url)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count("bytes waiting (its process is gone)") == 1
    replayed = command(sqlite_url, "--replay", "--json")
    assert replayed.returncode == 0, replayed.stderr
    result = json.loads(replayed.stdout)
    assert result["written"] == 30 and result["files"] == []
    db = store.connect(sqlite_url)
    try:
        assert Job.select().count(db) == 30
    finally:
        db.close()
    assert spool_files(directory) == []
