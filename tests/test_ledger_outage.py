"""The ledger's database goes away while jobs run, and comes back.

The recorder reaches the (shared, real) database server through a small TCP
proxy of this test's own on a port of its own; cutting the proxy makes the
database unreachable for this test only: open connections are reset and new
ones are closed at once.  Jobs must run untouched meanwhile, and afterwards
the ledger must be complete, or the drop counter must say exactly how many
events are missing.
"""

from __future__ import annotations

import collections
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.redis import RedisBroker

from tests.support.polling import wait_until
from tests.support.servers import REDIS_URL, make_database_url, unique
from watchtower import WatchtowerMiddleware, load_settings, models, store
from watchtower.models import Job, JobStatus, Rollup
from watchtower.recorder import Recorder

#: How long the database stays away (at least), while jobs keep running.
OUTAGE_SECONDS = 4.0


class TcpProxy:
    """Forwards a loopback port of its own to ``target``; ``cut()`` makes the target unreachable."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.down = threading.Event()
        self.closed = False
        self.lock = threading.Lock()
        self.sockets: set[socket.socket] = set()
        self.accepted = 0
        self.refused = 0
        self.thread = threading.Thread(target=self._accept, name="test-proxy", daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            if self.down.is_set():
                self.refused += 1
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            self.accepted += 1
            with self.lock:
                self.sockets.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._drop(source, sink)

    def _drop(self, *sockets: socket.socket) -> None:
        with self.lock:
            for sock in sockets:
                self.sockets.discard(sock)
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def cut(self) -> None:
        """Reset every open connection and close new ones at once."""
        self.down.set()
        with self.lock:
            open_sockets = list(self.sockets)
        self._drop(*open_sockets)

    def restore(self) -> None:
        self.down.clear()

    def close(self) -> None:
        self.cut()
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept(); close() alone would not
        self.listener.close()
        self.thread.join(timeout=5)
        assert not self.thread.is_alive()


@pytest.fixture(params=["postgresql", "mysql"])
def proxied_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str, TcpProxy]]:
    """(direct URL, URL through the proxy, proxy) of a fresh database with its schema."""
    url, drop = make_database_url(request.param, tmp_path)
    spec = store.check_database_url(url)
    proxy = TcpProxy((spec.params["host"], spec.params.get("port", 5432 if request.param == "postgresql" else 3306)))
    host_port = f"{spec.params['host']}:{spec.params.get('port', '')}".rstrip(":")
    proxied = url.replace(host_port, f"127.0.0.1:{proxy.port}", 1) + "?connect_timeout=2"
    assert f":{proxy.port}/" in proxied
    direct = store.connect(url)  # the schema, before the outage
    try:
        yield url, proxied, proxy
    finally:
        proxy.close()
        direct.close()
        if models.database.obj is not None:
            models.database.obj.close()
        drop()


class Jobs:
    """A Redis broker, one actor that counts its runs, a worker, and the recording middleware."""

    def __init__(self, namespace: str, recorder: Recorder, tmp_path: Path) -> None:
        self.queue = unique("q")
        self.broker = RedisBroker(url=REDIS_URL, namespace=namespace)
        settings = load_settings(env={}, cwd=tmp_path, overrides={"heartbeat_interval": 0.2})
        self.middleware = WatchtowerMiddleware(settings=settings, recorder=recorder, worker_id=unique("w"))
        self.broker.add_middleware(self.middleware)
        self.runs: collections.Counter[str] = collections.Counter()
        lock = threading.Lock()

        def work(n: int) -> None:
            time.sleep(0.002)  # a little work, so jobs overlap
            with lock:
                self.runs[f"{n}"] += 1

        self.actor = dramatiq.actor(work, broker=self.broker, queue_name=self.queue, actor_name="work")
        self.broker.emit_after("process_boot")
        self.worker = dramatiq.Worker(self.broker, worker_timeout=100, worker_threads=4)
        self.sent: list[str] = []

    def __enter__(self) -> Jobs:
        self.worker.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.worker.stop()
        self.broker.close()

    def send(self, count: int) -> None:
        for _ in range(count):
            self.sent.append(self.actor.send(len(self.sent)).message_id)

    def all_ran(self) -> bool:
        return len(self.runs) == len(self.sent)


def job_events_written(db: Any, queue: str) -> int:
    """Job events in the ledger: every one adds one to a rollup (enqueued, started, completed)."""
    return sum(r.count for r in Rollup.select().where(Rollup.queue == queue).execute(db))


def completed(db: Any, ids: list[str]) -> int:
    return Job.select().where(Job.message_id.in_(ids) & (Job.status == JobStatus.COMPLETED)).count(db)


def ride_out_an_outage(jobs: Jobs, recorder: Recorder, proxy: TcpProxy, before: int, during: int) -> float:
    """Run ``before`` jobs, cut the database, run ``during`` jobs, hold the outage, restore it.

    The cut comes when no job event is on its way (everything before it was
    flushed), so that no batch is cut between its commit and the answer
    (which the recorder would write again).  Returns the outage's length.
    """
    jobs.send(before)
    wait_until(jobs.all_ran, timeout=30, message="the jobs sent before the outage to run")
    assert recorder.flush(timeout=30)
    failures = recorder.stats().failures
    proxy.cut()
    cut_at = time.monotonic()
    jobs.send(during)
    wait_until(jobs.all_ran, timeout=60, message="every job to run while the database is away")
    assert all(count == 1 for count in jobs.runs.values())
    # Hold the outage for a few seconds, and until the recorder has hit it.
    wait_until(lambda: time.monotonic() - cut_at >= OUTAGE_SECONDS and recorder.stats().failures >= failures + 3,
               timeout=60, message="the recorder to fail against the unreachable database")
    assert not recorder.flush(timeout=0.1)
    assert proxy.refused > 0
    proxy.restore()
    return time.monotonic() - cut_at


def test_jobs_run_through_an_outage_and_the_ledger_catches_up(
    proxied_database: tuple[str, str, TcpProxy], redis_namespace: str, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, proxied, proxy = proxied_database
    caplog.set_level(logging.WARNING, logger="watchtower.recorder")
    recorder = Recorder(proxied, flush_interval=0.05)
    direct = store.open_database(url)
    try:
        with Jobs(redis_namespace, recorder, tmp_path) as jobs:
            outage = ride_out_an_outage(jobs, recorder, proxy, before=40, during=200)
            ids = jobs.sent
            wait_until(lambda: completed(direct, ids) == len(ids), timeout=60,
                       message="the ledger to catch up after the outage")
            print(f"outage of {outage:.1f}s; {recorder.stats()}")
        assert recorder.stats().dropped == 0
        assert job_events_written(direct, jobs.queue) == 3 * len(ids)  # enqueued, started, completed: once each
        assert Job.select().where(Job.queue == jobs.queue).count(direct) == len(ids)
        assert Job.select().where((Job.queue == jobs.queue) & (Job.attempts != 1)).count(direct) == 0
        assert any("cannot write" in r.getMessage() for r in caplog.records)
    finally:
        recorder.close()
        direct.close()


def test_a_tiny_buffer_drops_and_counts_exactly_what_is_missing(
    proxied_database: tuple[str, str, TcpProxy], redis_namespace: str, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, proxied, proxy = proxied_database
    caplog.set_level(logging.ERROR, logger="watchtower.recorder")
    interval = 1.0
    recorder = Recorder(proxied, flush_interval=0.05, buffer_size=25, drop_log_interval=interval)
    direct = store.open_database(url)
    try:
        with Jobs(redis_namespace, recorder, tmp_path) as jobs:
            outage = ride_out_an_outage(jobs, recorder, proxy, before=20, during=150)
            ids = jobs.sent
            assert recorder.flush(timeout=60)  # what the buffer kept is written once the database is back
        expected = 3 * len(ids)  # enqueued, started, completed of every job
        stats = recorder.stats()
        assert stats.dropped > 0
        missing = expected - job_events_written(direct, jobs.queue)
        assert stats.dropped == missing
        assert stats.written + stats.dropped == expected
        recorder.close()
        reports = [int(m.group(1)) for r in caplog.records
                   if (m := re.search(r"recorder dropped (\d+) events", r.getMessage()))]
        assert sum(reports) == stats.dropped  # each drop reported once, in a sum
        assert 1 <= len(reports) <= outage / interval + 2  # once per interval, not once per event
        print(f"outage of {outage:.1f}s: {stats.dropped} events dropped, reported in {len(reports)} lines")
        # Every job ran; rows exist for the jobs whose events got through.
        assert len(jobs.runs) == len(ids)
    finally:
        recorder.close()
        direct.close()
