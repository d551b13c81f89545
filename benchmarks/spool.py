#!/usr/bin/env python3
"""The recorder's spool: how fast events go to disk and come back into the ledger.

    python3 benchmarks/spool.py [--events 300000] [--databases sqlite,postgresql]

Events are a worker's and a producer's: for every message an "enqueued"
(with its payload), a "started" and a "completed".  Measured, in events/s:

1. the spool file alone: appending batches of 1,000 (16 batches per write
   and fsync, as the recorder's spooling thread does), and reading them back;
2. a recorder whose database refuses connections: events recorded as fast as
   one thread can (far faster than jobs make them), and until all are in the
   spool (the spooling thread, beside that thread);
3. replay: a new recorder finds that spool (its process is gone) and writes
   it into the database, against the same events written from memory by a
   recorder without a spool.

Servers: PostgreSQL at WT_BENCH_POSTGRES (default the local one; a database
of its own is created and dropped).
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from harness import postgres_database

from watchtower import store
from watchtower.events import JobEvent, Kind, WorkerEvent
from watchtower.models import Job
from watchtower.recorder import Recorder
from watchtower.spool import SpoolFile, ensure_directory


def make_events(count: int) -> list[JobEvent]:
    """``count`` events: enqueued (with a payload of a typical size), started, completed, per message."""
    events = []
    now_ms = time.time_ns() // 1_000_000
    for n in range(count // 3):
        message_id = str(uuid.uuid4())
        payload = json.dumps({
            "queue_name": "default", "actor_name": "send_email", "args": [n, f"user{n}@example.com"],
            "kwargs": {"template": "welcome"}, "options": {"redis_message_id": str(uuid.uuid4())},
            "message_id": message_id, "message_timestamp": now_ms,
        }, separators=(",", ":"))
        at = now_ms * 1000 + n
        common = dict(queue="default", actor="send_email", connection="redis", queued_at=now_ms)
        events.append(JobEvent(message_id, Kind.ENQUEUED, 1, at, payload=payload, **common))
        events.append(JobEvent(message_id, Kind.STARTED, 1, at + 1, worker_id="host-1-default-1",
                               started_at=now_ms, ready_at=now_ms, **common))
        events.append(JobEvent(message_id, Kind.COMPLETED, 1, at + 2, worker_id="host-1-default-1",
                               started_at=now_ms, finished_at=now_ms + 3, duration=0.003, **common))
    return events


def refused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"postgresql://postgres@127.0.0.1:{port}/nowhere?connect_timeout=1"


def file_rates(events: list[JobEvent], directory: Path) -> dict[str, float]:
    ensure_directory(directory)
    spool = SpoolFile.create(directory, max_bytes=1 << 40)
    batches = [(events[i:i + 1000], ()) for i in range(0, len(events), 1000)]
    started = time.perf_counter()
    for i in range(0, len(batches), 16):
        spool.append(batches[i:i + 16])
    append_s = time.perf_counter() - started
    size = spool.size
    started = time.perf_counter()
    read = 0
    while (batch := spool.next_batch()) is not None:
        read += len(batch.jobs)
        spool.mark_written(batch.end)
    read_s = time.perf_counter() - started
    assert read == len(events)
    spool.close(delete=True)
    return {"append": len(events) / append_s, "read": len(events) / read_s, "bytes_per_event": size / len(events),
            "mb_per_s": size / append_s / 1e6}


def spill_rate(events: list[JobEvent], directory: Path) -> dict[str, float]:
    """Record into a recorder whose database refuses: until every event is in the spool (left for part 3).

    Memory may hold them all, so that nothing is dropped whichever is faster:
    one thread recording in a tight loop, or the spooling thread beside it.
    """
    recorder = Recorder(refused_url(), buffer_size=len(events) + 1, spool_dir=directory)
    recorder.record(events[0])  # the threads start, the database is found away
    deadline = time.monotonic() + 30
    while recorder.stats().failures == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.perf_counter()
    for event in events[1:]:
        recorder.record(event)
    recorded_s = time.perf_counter() - started
    while recorder.stats().buffered > 0 and time.perf_counter() - started < 600:
        time.sleep(0.005)
    spooled_s = time.perf_counter() - started
    stats = recorder.stats()
    recorder.close()  # as a process that stops during the outage: the rest to the spool too
    return {"record": (len(events) - 1) / recorded_s, "spooled": stats.spooled / spooled_s,
            "dropped": float(stats.dropped), "in_spool": float(recorder.stats().spooled)}


def replay_rate(database_url: str, directory: Path, count: int) -> float:
    db = store.connect(database_url)
    replayer = Recorder(database_url, flush_interval=0.05, spool_dir=directory)
    started = time.perf_counter()
    replayer.record_worker(WorkerEvent("bench", {}))  # starts its flusher, which finds the spool
    while list(directory.glob("*.spool")) and time.perf_counter() - started < 900:
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    replayer.close()
    rows = Job.select().count(db)
    db.close()
    assert rows == count // 3, (rows, count)
    return count / elapsed


def memory_rate(database_url: str, events: list[JobEvent]) -> float:
    db = store.connect(database_url)
    recorder = Recorder(database_url, flush_interval=0.05, buffer_size=len(events) + 1)
    recorder.record(events[0])
    assert recorder.flush(timeout=60)
    started = time.perf_counter()
    for event in events[1:]:
        recorder.record(event)
    assert recorder.flush(timeout=900)
    elapsed = time.perf_counter() - started
    recorder.close()
    db.close()
    return (len(events) - 1) / elapsed


def hot_path(workdir: Path, events: list[JobEvent], rounds: int = 5) -> tuple[float, float, bool]:
    """record() while the database keeps up, with a spool and without: microseconds a call (medians of rounds).

    Also whether the spool directory stayed untouched.
    """
    directory = workdir / "hot-spool"
    timings: dict[bool, list[float]] = {True: [], False: []}
    for round_ in range(rounds):
        for spooled in (False, True) if round_ % 2 else (True, False):
            url = f"sqlite:///{workdir / f'hot-{round_}-{spooled}.db'}"
            # Memory room for three times the events: a tight loop outruns any
            # database, and past half the buffer the spool would rightly start.
            recorder = Recorder(url, buffer_size=3 * len(events), spool_dir=directory if spooled else None)
            recorder.record(events[0])
            assert recorder.flush(timeout=60)
            started = time.perf_counter()
            for event in events[1:]:
                recorder.record(event)
            timings[spooled].append((time.perf_counter() - started) / (len(events) - 1) * 1e6)
            assert recorder.flush(timeout=600)
            recorder.close()
    return statistics.median(timings[False]), statistics.median(timings[True]), not directory.exists()


def database(kind: str, workdir: Path, tag: str) -> tuple[str, object]:
    if kind == "sqlite":
        return f"sqlite:///{workdir / f'{tag}.db'}", lambda: None
    return postgres_database()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--databases", default="sqlite,postgresql")
    args = parser.parse_args()
    events = make_events(args.events)
    workdir = Path(tempfile.mkdtemp(prefix="wt-spool-bench-"))
    try:
        files = file_rates(events, workdir / "file")
        print(f"{len(events):,} events ({files['bytes_per_event']:.0f} bytes each in the spool)\n")
        print("| step | events/s |")
        print("|---|---|")
        print(f"| spool file: append (16 batches of 1,000 per fsync) | {files['append']:,.0f} "
              f"({files['mb_per_s']:.0f} MB/s) |")
        print(f"| spool file: read back | {files['read']:,.0f} |")
        bare, spooled, untouched = hot_path(workdir, events[:30_000])
        print(f"\nrecord() while the database keeps up (SQLite): {bare:.2f} µs a call without a spool, "
              f"{spooled:.2f} µs with one (ratio {spooled / bare:.2f}); the spool directory "
              + ("never made" if untouched else "**made**") + "\n")
        print("| step | events/s |")
        print("|---|---|")
        for kind in [k.strip() for k in args.databases.split(",") if k.strip()]:
            directory = workdir / f"spool-{kind}"
            spill = spill_rate(events, directory)
            url, drop = database(kind, workdir, "replay")
            try:
                replay = replay_rate(url, directory, len(events))
            finally:
                drop()  # type: ignore[operator]
            url, drop = database(kind, workdir, "memory")
            try:
                memory = memory_rate(url, events)
            finally:
                drop()  # type: ignore[operator]
            print(f"| recorder, database away: record() from one thread | {spill['record']:,.0f} |")
            print(f"| recorder, database away: until all are in the spool | {spill['spooled']:,.0f} |")
            print(f"| {kind}: replay of a dead process's spool | {replay:,.0f} |")
            print(f"| {kind}: the same events written from memory | {memory:,.0f} |")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
