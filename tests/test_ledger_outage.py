"""The ledger's database goes away while jobs run, and comes back.

The recorder reaches the (shared, real) database server through a small TCP
proxy of this test's own on a port of its own; cutting the proxy makes the
database unreachable for this test only: open connections are reset and new
ones are closed at once.  Jobs must run untouched meanwhile, and afterwards
the ledger must be complete, or the drop counter must say exactly how many
events are missing.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.polling import wait_until
from tests.support.recording import Jobs, completed, job_events_written
from tests.support.servers import make_database_url
from tests.support.tcp_proxy import TcpProxy
from watchtower import models, store
from watchtower.models import Job
from watchtower.recorder import Recorder

#: How long the database stays away (at least), while jobs keep running.
OUTAGE_SECONDS = 4.0


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
