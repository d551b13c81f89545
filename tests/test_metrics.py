"""Metrics: the multiprocess directory, live gauges, the exposition, the /metrics server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.checkout import subprocess_env
from tests.support.exposition import parse, promtool_check, value
from tests.support.polling import wait_until
from watchtower import exposition, metric_listeners, metrics_server, multiproc
from watchtower.config import load_settings, replace
from watchtower.errors import MetricsDirInUse, MetricsServerError
from watchtower.events import JobEvent, Kind


@pytest.fixture
def settings(sqlite_url: str):
    from watchtower.store import connect

    connect(sqlite_url).close()
    return load_settings(overrides={"database_url": sqlite_url}, env={})


# A child process that counts events as a worker would, then waits for stdin
# to close (so that the test decides when it exits, or kills it).
CHILD = textwrap.dedent("""
    import sys
    from watchtower.events import JobEvent, Kind
    from watchtower.metric_listeners import JobMetrics
    from watchtower.metrics import process_metrics
    process_metrics(sys.argv[3])  # the values in files there, as a middleware with metrics_dir does
    listen = JobMetrics()
    def event(kind, **fields):
        return JobEvent("m", kind, 1, 0, "q1", "work", "redis", 0, **fields)
    for _ in range(int(sys.argv[1])):
        listen(event(Kind.ENQUEUED))
        listen(event(Kind.STARTED, started_at=2_000, ready_at=1_500))
    for _ in range(int(sys.argv[2])):
        listen(event(Kind.COMPLETED, started_at=2_000, duration=0.02))
    assert process_metrics().directory is not None, "not in multiprocess mode"
    print("ready", flush=True)
    sys.stdin.read()
""")


def start_child(directory: str, started: int, finished: int) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(started), str(finished), directory],
        env=subprocess_env(),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    return child


def test_importing_watchtower_imports_no_prometheus_client():
    code = (
        "import sys, watchtower, watchtower.cli, watchtower.metrics, watchtower.metric_listeners,"
        " watchtower.exposition, watchtower.metrics_server, watchtower.scrape;"
        "assert 'prometheus_client' not in sys.modules, 'imported'"
    )
    subprocess.run([sys.executable, "-c", code], env=subprocess_env(), check=True, timeout=60)


def test_prepare_wipes_only_metric_files_and_locks_the_directory(tmp_path: Path):
    directory = tmp_path / "metrics"
    directory.mkdir()
    # Files of exited processes (pids above any this machine hands out), an archive, and a live producer's.
    live = f"counter_watchtower-{os.getpid()}.db"
    for name in ("counter_4190012.db", "gauge_livesum_watchtower-4190012.db", "histogram_4190099.db",
                 "counter_dead.db", "notes.txt", live):
        (directory / name).write_bytes(b"x")
    held = multiproc.prepare_multiprocess_dir(directory)
    try:
        assert sorted(p.name for p in directory.iterdir() if not p.name.startswith(".")) == [live, "notes.txt"]
        assert held.env() == {"WATCHTOWER_METRICS_DIR": str(directory), "PROMETHEUS_MULTIPROC_DIR": str(directory)}
        with pytest.raises(MetricsDirInUse, match=f"pid {os.getpid()}.*metrics_dir"):
            multiproc.prepare_multiprocess_dir(directory)
    finally:
        held.release()
    again = multiproc.prepare_multiprocess_dir(directory)  # free once released
    again.release()


def test_prepare_creates_a_missing_directory(tmp_path: Path):
    held = multiproc.prepare_multiprocess_dir(tmp_path / "a" / "b")
    held.release()
    assert (tmp_path / "a" / "b").is_dir()


def test_processes_add_up_and_a_dead_process_leaves_the_live_gauge(tmp_path: Path, settings):
    held = multiproc.prepare_multiprocess_dir(tmp_path / "mp")
    settings = replace(settings, metrics_dir=str(held.path))
    first = start_child(str(held.path), started=3, finished=1)
    second = start_child(str(held.path), started=2, finished=2)
    try:
        samples = parse(exposition.exposition(settings)[0])
        job = {"queue": "q1", "actor": "work"}
        assert value(samples, "watchtower_jobs_enqueued_total", **job) == 5
        assert value(samples, "watchtower_jobs_started_total", **job) == 5
        assert value(samples, "watchtower_jobs_completed_total", **job) == 3
        assert value(samples, "watchtower_jobs_in_progress", **job) == 2  # (3-1) + (2-2)
        assert value(samples, "watchtower_job_queue_wait_seconds_count", **job) == 5
        assert value(samples, "watchtower_job_queue_wait_seconds_sum", **job) == pytest.approx(2.5)
        assert value(samples, "watchtower_job_duration_seconds_count", **job) == 3

        first.kill()
        first.wait(timeout=30)
        multiproc.mark_process_dead(first.pid, held.path)
        samples = parse(exposition.exposition(settings)[0])
        assert value(samples, "watchtower_jobs_in_progress", **job) == 0  # the dead one's 2 are gone
        assert value(samples, "watchtower_jobs_started_total", **job) == 5  # its counters stay
        assert value(samples, "watchtower_jobs_completed_total", **job) == 3
        assert value(samples, "watchtower_job_queue_wait_seconds_count", **job) == 5
        # ... folded into one archive file per type, so files do not pile up.
        names = {p.name for p in held.path.glob("*.db")}
        assert not any(str(first.pid) in name for name in names), names
        assert {"counter_dead.db", "histogram_dead.db", f"counter_watchtower-{second.pid}.db"} <= names

        second.kill()
        second.wait(timeout=30)
        multiproc.mark_process_dead(second.pid, held.path)
        samples = parse(exposition.exposition(settings)[0])
        assert value(samples, "watchtower_jobs_started_total", **job) == 5
        assert value(samples, "watchtower_job_duration_seconds_sum", **job) == pytest.approx(0.06)
        assert not {f"counter_watchtower-{first.pid}.db", f"counter_watchtower-{second.pid}.db"} & \
            {p.name for p in held.path.glob("*")}
    finally:
        for child in (first, second):
            if child.poll() is None:
                child.kill()
            child.wait(timeout=30)
        held.release()


def test_exposition_passes_promtool(tmp_path: Path, settings):
    held = multiproc.prepare_multiprocess_dir(tmp_path / "mp")
    child = start_child(str(held.path), started=2, finished=1)
    try:
        metric_listeners.record_restart("default", "exit")
        body, content_type = exposition.exposition(replace(settings, metrics_dir=str(held.path)))
        assert content_type.startswith("text/plain; version=0.0.4")
        samples = parse(body)
        assert value(samples, "watchtower_worker_restarts_total", supervisor="default", reason="exit") >= 1
        assert any(name == "watchtower_build_info" for name, _ in samples)
        promtool_check(body)
    finally:
        child.kill()
        child.wait(timeout=30)
        held.release()


def test_the_listener_counts_a_retried_job_once_and_never_goes_negative(settings):
    listen = metric_listeners.JobMetrics()
    queue = "q_listener"

    def event(kind: Kind, attempt: int, **fields) -> JobEvent:
        return JobEvent("m1", kind, attempt, 0, queue, "flaky", "redis", 0, **fields)

    listen(event(Kind.ENQUEUED, 1))
    listen(event(Kind.STARTED, 1, started_at=10, ready_at=0))
    listen(event(Kind.RETRIED, 1, started_at=10, duration=0.5))
    listen(event(Kind.REQUEUED, 2))  # to the delay queue
    listen(event(Kind.MOVED, 2))  # back to the queue at its eta
    listen(event(Kind.STARTED, 2, started_at=20, ready_at=15))
    listen(event(Kind.COMPLETED, 2, started_at=20, duration=0.25))
    listen(event(Kind.SKIPPED, 1))  # skipped before it started here: no in-progress change
    samples = parse(exposition.exposition(settings)[0])
    job = {"queue": queue, "actor": "flaky"}
    assert value(samples, "watchtower_jobs_enqueued_total", **job) == 1
    assert value(samples, "watchtower_jobs_started_total", **job) == 2
    assert value(samples, "watchtower_jobs_retried_total", **job) == 1
    assert value(samples, "watchtower_jobs_completed_total", **job) == 1
    assert value(samples, "watchtower_jobs_skipped_total", **job) == 1
    assert value(samples, "watchtower_jobs_in_progress", **job) == 0
    assert value(samples, "watchtower_job_duration_seconds_sum", **job) == pytest.approx(0.75)
    assert value(samples, "watchtower_job_queue_wait_seconds_sum", **job) == pytest.approx(0.015)


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_two_servers_on_one_host_each_serve_their_own(tmp_path: Path, settings):
    first_dir = multiproc.prepare_multiprocess_dir(tmp_path / "one")
    second_dir = multiproc.prepare_multiprocess_dir(tmp_path / "two")
    one = start_child(str(first_dir.path), started=4, finished=0)
    two = start_child(str(second_dir.path), started=1, finished=0)
    servers = []
    try:
        for held in (first_dir, second_dir):
            servers.append(metrics_server.start_metrics_server(replace(settings, metrics_dir=str(held.path)), port=0))
        assert servers[0].port != servers[1].port
        assert servers[0].host == "127.0.0.1"
        job = {"queue": "q1", "actor": "work"}
        for server, expected in zip(servers, (4, 1), strict=True):
            status, body = fetch(server.url)
            assert status == 200
            assert value(parse(body), "watchtower_jobs_started_total", **job) == expected
        status, _ = fetch(servers[0].url.replace("/metrics", "/other"))
        assert status == 404
    finally:
        for server in servers:
            server.stop()
        for child in (one, two):
            child.kill()
            child.wait(timeout=30)
        first_dir.release()
        second_dir.release()


def test_a_busy_port_is_a_clear_error(settings):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(MetricsServerError, match=f"127.0.0.1:{port}: the port is in use.*http.port"):
            metrics_server.start_metrics_server(settings, port=port)


def test_a_stopped_server_frees_its_port(settings):
    server = metrics_server.start_metrics_server(settings, port=0)
    port = server.port
    assert fetch(server.url)[0] == 200
    server.stop()
    again = metrics_server.start_metrics_server(settings, port=port)
    again.stop()


def test_without_metrics_dir_each_supervisor_gets_a_temporary_directory(settings):
    first = multiproc.open_multiprocess_dir(settings)
    second = multiproc.open_multiprocess_dir(settings)
    try:
        assert first.path != second.path
        assert first.path.is_dir() and second.path.is_dir()
    finally:
        first.release()
        second.release()
    assert not first.path.exists() and not second.path.exists()


def test_a_configured_metrics_dir_is_kept_after_release(tmp_path: Path, settings):
    held = multiproc.open_multiprocess_dir(replace(settings, metrics_dir=str(tmp_path / "mine")))
    held.release()
    assert (tmp_path / "mine").is_dir()


def test_a_live_process_files_are_not_folded(tmp_path: Path):
    held = multiproc.prepare_multiprocess_dir(tmp_path / "mp")
    child = start_child(str(held.path), started=1, finished=0)
    try:
        multiproc.mark_process_dead(child.pid, held.path)  # a mistake: it still runs
        assert (held.path / f"counter_watchtower-{child.pid}.db").exists()
    finally:
        child.kill()
        child.wait(timeout=30)
        held.release()


def test_a_scrape_never_sees_a_dead_process_twice_or_not_at_all(tmp_path: Path, settings):
    """Folding dead processes' files while scrapes read the directory: every scrape sees the exact total."""
    import threading

    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    held = multiproc.prepare_multiprocess_dir(tmp_path / "mp")
    settings = replace(settings, metrics_dir=str(held.path))
    key = mmap_key("watchtower_jobs_enqueued", "watchtower_jobs_enqueued_total", ["queue", "actor"],
                   ["q_fold", "a"], "Messages sent to a queue (a retry is not counted again).")
    dead_pids = range(4_190_000, 4_190_120)  # above any pid this machine hands out
    for pid in dead_pids:
        file = MmapedDict(str(held.path / f"counter_{pid}.db"))
        file.write_value(key, 1.0, 0.0)
        file.close()
    seen: list[float | None] = []
    done = threading.Event()

    def scrape() -> None:
        while not done.is_set():
            seen.append(value(parse(exposition.exposition(settings)[0]), "watchtower_jobs_enqueued_total",
                              queue="q_fold", actor="a"))

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        for pid in dead_pids:
            multiproc.mark_process_dead(pid, held.path)
    finally:
        done.set()
        scraper.join(timeout=60)
        held.release()
    print(f"{len(seen)} scrapes while folding")
    assert seen and set(seen) == {float(len(dead_pids))}, sorted(set(seen), key=str)
    assert [p.name for p in held.path.glob("counter_*.db")] == ["counter_dead.db"]


OTHER_CHILD = textwrap.dedent("""
    import sys
    from prometheus_client import Counter, Gauge, Histogram
    # An app's own metrics in a worker process, in modes Watchtower does not use.
    Gauge("app_temperature", "t", ["room"], multiprocess_mode="max", registry=None).labels("a").set(float(sys.argv[1]))
    Gauge("app_last", "l", multiprocess_mode="all", registry=None).set(float(sys.argv[1]))
    Counter("app_things", "n", ["kind"], registry=None).labels("x").inc(float(sys.argv[1]))
    Histogram("app_seconds", "s", buckets=(1, 5), registry=None).observe(float(sys.argv[1]))
    print("ready", flush=True)
    sys.stdin.read()
""")


def test_the_fast_reader_gives_what_prometheus_client_gives(tmp_path: Path):
    from prometheus_client.multiprocess import MultiProcessCollector

    from watchtower.multiproc import read_metrics

    held = multiproc.prepare_multiprocess_dir(tmp_path / "mp")
    children = [start_child(str(held.path), started=3, finished=2), start_child(str(held.path), started=1, finished=1)]
    for number in ("2", "7"):
        child = subprocess.Popen([sys.executable, "-c", OTHER_CHILD, number], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True, env=subprocess_env(**held.env()))
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        children.append(child)
    try:
        gone = children.pop(0)
        gone.kill()
        gone.wait(timeout=30)
        multiproc.mark_process_dead(gone.pid, held.path)  # some values in the archive files

        def samples(families) -> dict:
            return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}

        ours = samples(read_metrics(str(held.path)))
        theirs = samples(MultiProcessCollector(None, path=str(held.path)).collect())
        assert ours == theirs
        assert ours[("app_temperature", (("room", "a"),))] == 7.0  # the max mode, through the library
        assert ours[("watchtower_jobs_started_total", (("actor", "work"), ("queue", "q1")))] == 4.0
    finally:
        for child in children:
            child.kill()
            child.wait(timeout=30)
        held.release()


def test_recorder_metrics_count_writes_flushes_drops_and_the_buffer(sqlite_url: str, settings):
    from watchtower.recorder import Recorder

    def current() -> dict:
        samples = parse(exposition.exposition(settings)[0])
        return {name: value(samples, f"watchtower_recorder_{name}") or 0.0 for name in
                ("events_written_total", "events_dropped_total", "events_buffered",
                 "flush_duration_seconds_count")}

    def events(count: int) -> list[JobEvent]:
        return [JobEvent(f"r{n}", Kind.ENQUEUED, 1, n, "q_rec", "a", "redis", 0) for n in range(count)]

    before = current()
    recorder = Recorder(sqlite_url, flush_interval=0.05)
    counting = metric_listeners.RecorderMetrics(recorder)
    recorder.write_listeners.append(counting.on_write)
    for event in events(50):
        recorder.record(event)
    assert recorder.flush(timeout=30)
    counting.sample()
    after = current()
    assert after["events_written_total"] - before["events_written_total"] == 50
    assert after["flush_duration_seconds_count"] > before["flush_duration_seconds_count"]
    recorder.close()

    # A database that does not answer: the buffer fills, the rest is dropped.
    away = Recorder("postgresql://postgres@127.0.0.1:1/nowhere", flush_interval=0.05, buffer_size=10)
    counting = metric_listeners.RecorderMetrics(away)
    try:
        for event in events(25):
            away.record(event)
        counting.sample()
        now = current()
        assert now["events_dropped_total"] - after["events_dropped_total"] == 15 == away.stats().dropped
        assert now["events_buffered"] == 10
    finally:
        away.close(timeout=0.5)


@pytest.mark.parametrize("kind", ["redis", "rabbitmq"])
def test_queue_depths_as_the_broker_counts_them(kind: str, redis_namespace: str, queue_name: str, settings):
    """Two ready, one delayed, one dead-lettered; RabbitMQ gives ready and dead only."""
    import dramatiq

    from tests.support.brokers import open_broker
    from watchtower.scrape import ScrapeSources, queue_depths_for

    with open_broker(kind, redis_namespace, queue_name) as broker:
        broker.declare_queue(queue_name)

        def send(**options) -> None:
            broker.enqueue(dramatiq.Message(queue_name=queue_name, actor_name="a", args=(), kwargs={}, options={}),
                           **options)

        for _ in range(3):
            send()
        send(delay=600_000)
        consumer = broker.consume(queue_name, prefetch=1, timeout=100)
        message = None
        for message in consumer:
            if message is not None:
                break
        consumer.nack(message)  # dead-lettered
        consumer.close()

        expected = {"ready": 2, "delayed": 1, "dead": 1} if kind == "redis" else {"ready": 2, "dead": 1}
        reader = queue_depths_for(broker)
        assert reader is not None
        # RabbitMQ's counts settle a moment after the nack.
        wait_until(lambda: reader.depths().get(queue_name) == expected, timeout=30, message=f"depths {expected}")

        sources = ScrapeSources(database_url=settings.database_url, broker=broker, ttl=0)
        try:
            scraped = {
                sample.labels["state"]: sample.value
                for family in sources.collect() if family.name == "watchtower_queue_messages"
                for sample in family.samples if sample.labels["queue"] == queue_name
            }
        finally:
            sources.close()
        assert scraped == expected  # no "delayed" series at all on RabbitMQ


def test_worker_gauges_count_live_rows_and_only_recent_exits(database_url: str):
    """Old stopped and lost records (deploys ago) are not counted; those of the last hour are, and live rows always.

    A supervisor whose rows are all old still has its zeros; scoped to a
    supervisor and host, only those rows count.
    """
    import time

    from watchtower import store
    from watchtower.models import Worker
    from watchtower.scrape import RECENT_EXITS_SECONDS, ScrapeSources
    from watchtower.statuses import WorkerStatus

    store.connect(database_url)
    now = int(time.time() * 1000)
    old = now - int(RECENT_EXITS_SECONDS * 1000) - 60_000
    recent = now - 600_000
    rows = [
        ("a-run-1", "a", "h1", WorkerStatus.RUNNING, recent, None, 100),
        ("a-run-2", "a", "h1", WorkerStatus.RUNNING, old, None, 50),  # running since long ago: counted
        ("a-paused", "a", "h1", WorkerStatus.PAUSED, recent, None, 25),
        ("a-loop", "a", "h1", WorkerStatus.CRASHLOOPING, old, None, 0),
        ("a-stop-new", "a", "h1", WorkerStatus.STOPPED, old, recent, 7),
        ("a-stop-old-1", "a", "h1", WorkerStatus.STOPPED, old, old, 7),
        ("a-stop-old-2", "a", "h1", WorkerStatus.STOPPED, old, old, 7),
        ("a-lost-new", "a", "h1", WorkerStatus.LOST, old, recent, 7),
        ("a-lost-old", "a", "h1", WorkerStatus.LOST, old, old, 7),
        ("a-stop-null", "a", "h1", WorkerStatus.STOPPED, old, None, 7),  # no stop time: its last sign counts
        ("a-elsewhere", "a", "h2", WorkerStatus.STOPPED, recent, recent, 7),
        ("b-stop-old", "b", "h1", WorkerStatus.STOPPED, old, old, 7),
    ]
    for worker_id, supervisor, hostname, status, started, stopped, rss in rows:
        Worker.insert(worker_id=worker_id, supervisor=supervisor, hostname=hostname, status=status,
                      started_at=started, last_heartbeat=stopped or started, stopped_at=stopped,
                      memory_rss=rss).execute()

    def gauges(**scope) -> dict[tuple[str, str], float]:
        sources = ScrapeSources(database_url=database_url, ttl=0, **scope)
        try:
            return {
                (sample.labels["supervisor"], sample.labels["status"]): sample.value
                for family in sources.collect() if family.name == "watchtower_workers"
                for sample in family.samples
            }
        finally:
            sources.close()

    everything = gauges()
    assert {status: everything[("a", status)] for status in WorkerStatus.ALL} == {
        "starting": 0, "running": 2, "paused": 1, "stopping": 0, "stopped": 2, "lost": 1, "crashlooping": 1,
    }
    assert {status: everything[("b", status)] for status in WorkerStatus.ALL} == dict.fromkeys(WorkerStatus.ALL, 0)

    scoped = gauges(supervisor="a", hostname="h1")
    assert {key[0] for key in scoped} == {"a"}
    assert scoped[("a", "stopped")] == 1 and scoped[("a", "lost")] == 1 and scoped[("a", "running")] == 2
