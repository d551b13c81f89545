"""The pack against the real thing: a Prometheus scraping a supervisor whose workers run demo jobs.

One stack per module: ``watchtower supervise`` with the demo app
(examples/demo_app.py: fast, slow, flaky and failing actors) on a SQLite
ledger and its own Redis namespace, the demo job stream
(examples/demo_stream.py, which serves its enqueue counters), and Debian's
``prometheus`` on a free loopback port, scraping both every second and
evaluating the pack's rule files (prometheus/rules, prometheus/alerts) every
second.

On a fresh system whose jobs all succeed (a stack of its own, first), and
then with every kind of job: as Grafana would, every panel of every dashboard has its variables
expanded (tests/support/grafana.py), is parsed, names only series that the real
scrapes or the recording rules hold, and returns data from Prometheus's HTTP
API; and killing the workers over and over makes the crash-loop alert go
pending (see the last test for why that alert and how).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import promql_parser
import psutil
import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.checkout import subprocess_env
from tests.support.grafana import (
    ALL,
    TimeRange,
    dashboards,
    expand,
    interpolate,
    panels,
    parse_label_values,
    variable_query,
    variables,
)
from tests.support.polling import wait_until
from tests.support.servers import REDIS_URL, unique
from tests.support.supervisors import write_config
from watchtower import store
from watchtower.models import Job, Worker
from watchtower.statuses import JobStatus

pytestmark = pytest.mark.timeout(900)

ROOT = Path(__file__).resolve().parent.parent
PACK = ROOT / "prometheus"
RULE_FILES = sorted((PACK / "rules").glob("*.yml")) + sorted((PACK / "alerts").glob("*.yml"))
SCRAPE_INTERVAL = 1.0
#: Series Prometheus makes itself.
PROMETHEUS_SERIES = {"up"}


# The stack -----------------------------------------------------------------------------


@dataclass
class Stack:
    tmp: Path
    namespace: str
    database_url: str
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    supervisor_metrics: str = ""
    stream_metrics: str = ""
    prometheus: str = ""
    started: float = 0.0

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def start(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with (self.tmp / f"{name}.log").open("ab") as out:
            process = subprocess.Popen(command, cwd=self.tmp, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.processes[name] = process
        return process

    def line(self, name: str, pattern: str, timeout: float = 90) -> str:
        def found() -> str:
            assert self.processes[name].poll() is None, f"{name} exited:\n{self.log(name)[-5000:]}"
            match = re.search(pattern, self.log(name))
            return match.group(1) if match else ""

        return wait_until(found, timeout, interval=0.2, message=f"{name}: {pattern}")

    def workers(self) -> list[psutil.Process]:
        """The supervisor's live worker processes (its children)."""
        try:
            found = psutil.Process(self.processes["supervisor"].pid).children()
        except psutil.NoSuchProcess:
            return []
        return [child for child in found if _alive(child)]


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def host_port(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc


def api(stack: Stack, path: str, **params: Any) -> Any:
    """GET Prometheus's HTTP API; the ``data`` of a successful answer."""
    query = urllib.parse.urlencode(params, doseq=True)
    with urllib.request.urlopen(f"{stack.prometheus}{path}?{query}", timeout=60) as response:
        answer = json.load(response)
    assert answer["status"] == "success", answer
    return answer["data"]


def short_window_copies() -> dict[str, Any]:
    """WatchtowerNoWorkersForQueue with 20-second windows instead of 10 (and 5) minutes.

    A test-only copy, loaded beside the real rule files and marked with a
    ``copy`` label: the real alert needs 10 minutes without a started job
    before it can even go pending, too long for a test.
    """
    [rule] = [dict(rule) for group in yaml.safe_load((PACK / "alerts" / "watchtower.yml").read_text())["groups"]
              for rule in group["rules"] if rule.get("alert") == "WatchtowerNoWorkersForQueue"]
    assert "[10m]" in rule["expr"]
    rule["expr"] = rule["expr"].replace("[10m]", "[20s]")
    rule["for"] = "5s"
    rule["labels"] = {**rule["labels"], "copy": "short-windows"}
    return {"groups": [{"name": "watchtower-test-copies", "rules": [rule]}]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Every kind of demo job, failures included."""
    yield from run_stack(tmp_path_factory.mktemp("pack-live"), kinds=None)


@pytest.fixture
def calm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A fresh system whose jobs all succeed: no failure, loss or restart."""
    yield from run_stack(tmp_path_factory.mktemp("pack-calm"), kinds="fast,slow,delayed")


def run_stack(tmp: Path, kinds: str | None) -> Iterator[Stack]:
    prometheus = shutil.which("prometheus")
    assert prometheus, "prometheus is not installed: apt-get install prometheus (2.42 on Debian 12)"
    stack = Stack(tmp=tmp, namespace=unique("wt"), database_url=f"sqlite:///{tmp / 'ledger.db'}")
    config = write_config(
        tmp / "watchtower.toml",
        app="demo_app",
        database_url=stack.database_url,
        command_bus="database",
        hostname="pack-live",
        heartbeat_timeout=10.0,
        **{"http.port": 0},
        supervisors={"default": {"queues": ["demo", "demo-slow"], "min_processes": 2, "max_processes": 4,
                                 "threads": 2, "timeout": 30, "memory": 1024, "sleep": 0.2}},
    )
    env = subprocess_env(WATCHTOWER_CONFIG=str(config), DEMO_REDIS_URL=REDIS_URL,
                         DEMO_REDIS_NAMESPACE=stack.namespace)
    env["PYTHONPATH"] += os.pathsep + str(ROOT / "examples")
    try:
        stack.start("supervisor", [sys.executable, "-m", "watchtower", "supervise"], env)
        stack.supervisor_metrics = stack.line("supervisor", r"serving Prometheus metrics at (http://\S+/metrics)")
        stack.start("stream", [sys.executable, str(ROOT / "examples" / "demo_stream.py"), "--rate", "6",
                               "--metrics-port", "0", *(["--kinds", kinds] if kinds else [])], env)
        stack.stream_metrics = stack.line("stream", r"demo stream metrics at (http://\S+/metrics)")

        (tmp / "test-alerts.yml").write_text(yaml.safe_dump(short_window_copies()))
        scrape = {"scrape_interval": f"{SCRAPE_INTERVAL:g}s", "scrape_timeout": f"{SCRAPE_INTERVAL:g}s"}
        (tmp / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {**scrape, "evaluation_interval": "1s"},
            "rule_files": [str(path) for path in RULE_FILES] + [str(tmp / "test-alerts.yml")],
            "scrape_configs": [
                {"job_name": "watchtower", "static_configs": [{"targets": [host_port(stack.supervisor_metrics)]}]},
                {"job_name": "watchtower-producers",
                 "static_configs": [{"targets": [host_port(stack.stream_metrics)]}]},
            ],
        }))
        port = free_port()
        stack.started = time.time()
        stack.start("prometheus", [prometheus, f"--config.file={tmp / 'prometheus.yml'}",
                                   f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                    dict(os.environ))
        stack.prometheus = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            assert stack.processes["prometheus"].poll() is None, stack.log("prometheus")[-5000:]
            try:
                with urllib.request.urlopen(f"{stack.prometheus}/-/ready", timeout=5) as response:
                    return response.status == 200
            except OSError:
                return False

        wait_until(ready, 60, interval=0.2, message="prometheus ready")
        store.connect(stack.database_url)
        yield stack
    except BaseException:
        for name in stack.processes:
            sys.stderr.write(f"---- {name}.log\n{stack.log(name)[-8000:]}\n")
        raise
    finally:
        _stop(stack)
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{stack.namespace}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def _stop(stack: Stack) -> None:
    """Stop what the fixture started (by PID): the stream, Prometheus, the supervisor and its workers."""
    workers = [child.pid for child in stack.workers()]
    for name in ("stream", "prometheus", "supervisor"):
        process = stack.processes.get(name)
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in stack.processes.values():
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(30)
    for pid in workers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# What Grafana would send ------------------------------------------------------------------


def resolve_options(stack: Stack, board: dict[str, Any], values: dict[str, str]) -> dict[str, list[str]]:
    """Each query variable's options, as Grafana gets them: label values of the matching series."""
    options: dict[str, list[str]] = {}
    for name, variable in variables(board).items():
        if variable["type"] != "query":
            continue
        selector, label = parse_label_values(variable_query(variable))
        params = {"match[]": [expand(selector, values)]} if selector else {}
        options[name] = api(stack, f"/api/v1/label/{label}/values", **params)
        # Later variables may refer to this one: "All" as Grafana would put it.
        values[name] = interpolate(variable, [ALL], options[name])
    return options


def expansions(stack: Stack, board: dict[str, Any], window: TimeRange,
               selection: dict[str, list[str]]) -> dict[str, str]:
    values = window.builtins()
    values["datasource"] = "test-prometheus"
    options = resolve_options(stack, board, dict(values))
    for name, variable in variables(board).items():
        if variable["type"] == "query":
            values[name] = interpolate(variable, selection.get(name, [ALL]), options[name])
    return values


def series_names(stack: Stack) -> set[str]:
    """Every sample name of the two real scrapes, the recording rules, and Prometheus's own series."""
    names = set(PROMETHEUS_SERIES)
    for url in (stack.supervisor_metrics, stack.stream_metrics):
        with urllib.request.urlopen(url, timeout=30) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            names.update(sample.name for sample in family.samples)
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            names.update(rule["record"] for rule in group["rules"] if "record" in rule)
    return names


def selector_names(expr: str) -> list[str]:
    found: list[str] = []
    promql_parser.walk(promql_parser.parse(expr),
                       lambda node: found.append(node.name) if isinstance(node, promql_parser.VectorSelector) else None)
    return found


def has_data(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(value)) for series in result for _at, value in series["values"])


def queries(stack: Stack, window: TimeRange, selection: dict[str, list[str]]) -> list[tuple[str, str, str]]:
    """(dashboard, panel, expanded query) of every target of every dashboard."""
    found = []
    for uid, board in dashboards().items():
        values = expansions(stack, board, window, selection)
        for item in panels(board):
            for target in item["targets"]:
                found.append((uid, f"{item['title']} [{target['refId']}]", expand(target["expr"], values)))
    return found


def wait_for_a_lost_attempt(stack: Stack) -> None:
    """Kill the worker that runs a slow job (it is lost, the worker restarted): the lost and restart series."""
    job = wait_until(lambda: Job.get_or_none((Job.actor == "slow") & (Job.status == JobStatus.PROCESSING)), 90,
                     interval=0.2, message="a slow job running")
    worker = Worker.get(Worker.worker_id == job.worker_id)
    assert worker.pid in {child.pid for child in stack.workers()}
    os.kill(worker.pid, signal.SIGKILL)

    def lost_counted() -> bool:
        with urllib.request.urlopen(stack.supervisor_metrics, timeout=30) as response:
            return b"watchtower_jobs_lost_total{" in response.read()

    wait_until(lost_counted, 60, interval=0.5, message="the lost attempt on /metrics")


# The tests ---------------------------------------------------------------------------------


def test_on_a_fresh_system_every_panel_has_data_before_any_failure_loss_or_restart(calm: Stack) -> None:
    """Zeros are data: "Lost attempts", "Restarts by reason", the failure panels read 0, not "No data"."""
    every_panel_has_data(calm)
    with urllib.request.urlopen(calm.supervisor_metrics, timeout=30) as response:
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(response.read().decode()) for s in family.samples}
    # ... and nothing has failed, been lost or restarted: the panels had data from zeros alone.
    for (name, _labels), value in samples.items():
        if name in ("watchtower_jobs_failed_total", "watchtower_jobs_lost_total", "watchtower_jobs_retried_total",
                    "watchtower_worker_restarts_total"):
            assert value == 0, (name, _labels, value)
    assert any(name == "watchtower_worker_restarts_total" for name, _ in samples)
    assert any(name == "watchtower_jobs_lost_total" for name, _ in samples)
    assert Job.select().where(Job.status == JobStatus.FAILED).count() == 0
    assert Job.select().where(Job.lost_attempts > 0).count() == 0


def test_the_rule_files_load_and_every_rule_evaluates(stack: Stack) -> None:
    def evaluated() -> list[dict[str, Any]]:
        groups = api(stack, "/api/v1/rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        # A rule never evaluated says 0001-01-01T00:00:00Z.
        return rules if rules and not any(rule["lastEvaluation"].startswith("0001") for rule in rules) else []

    rules = wait_until(evaluated, 60, interval=0.5, message="every rule evaluated once")
    bad = [(rule["name"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"]
    assert not bad, bad
    expected = sum(len(group["rules"]) for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"])
    assert len(rules) == expected + 1  # and the test-only copy


def test_every_panel_of_every_dashboard_gets_data_from_the_real_stack(stack: Stack) -> None:
    wait_for_a_lost_attempt(stack)
    every_panel_has_data(stack)


def every_panel_has_data(stack: Stack) -> None:
    known = series_names(stack)
    # The stream serves only what it counts: gauges read from the ledger and
    # the broker come from the supervisor alone, or sums would count them twice.
    with urllib.request.urlopen(stack.stream_metrics, timeout=30) as response:
        stream = {family.name for family in text_string_to_metric_families(response.read().decode())}
    assert "watchtower_jobs_enqueued" in stream
    assert not stream & {"watchtower_workers", "watchtower_queue_messages", "watchtower_worker_resident_memory_bytes"}
    assert {"watchtower_jobs_failed_total", "watchtower_jobs_retried_total", "watchtower_jobs_lost_total",
            "watchtower_jobs_enqueued_total", "watchtower_worker_restarts_total"} <= known

    def window() -> TimeRange:
        # The dashboards' default range (the last hour) on a data source whose
        # scrape interval is the test Prometheus's.
        now = time.time()
        return TimeRange(start=now - 3600, end=now, scrape_interval=SCRAPE_INTERVAL)

    # The variables' options, as Grafana lists them from the real series.
    boards = dashboards()
    expected = {"job": ["watchtower", "watchtower-producers"], "queue": ["demo", "demo-slow"],
                "supervisor": ["default"]}
    # (Right after Prometheus starts, the first scrapes may not be in yet.)
    wait_until(lambda: resolve_options(stack, boards["watchtower-workers"], window().builtins()) == expected, 60,
               interval=1, message="the variables' options")
    first = queries(stack, window(), {})
    assert len(first) >= 40
    for uid, title, expr in first:
        unknown = [name for name in selector_names(expr) if name not in known]
        assert not unknown, f"{uid} / {title}: {unknown} in neither the scrapes nor the recording rules"

    begun = time.monotonic()
    missing = {(uid, title): expr for uid, title, expr in first}

    def everything_has_data() -> bool:
        current = window()
        for key, expr in list(missing.items()):
            result = api(stack, "/api/v1/query_range", query=expr, start=current.start, end=current.end,
                         step=current.interval)["result"]
            if has_data(result):
                del missing[key]
        return not missing

    try:
        wait_until(everything_has_data, 240, interval=2, message="data for every panel")
    except AssertionError:
        raise AssertionError(f"panels without data: {json.dumps(missing, indent=1)}") from None
    print(f"\nevery panel had data {time.monotonic() - begun:.1f} s after the first query, "
          f"{time.time() - stack.started:.0f} s after Prometheus started")

    # A chosen queue, and two, go through Prometheus as well (regex-escaped values, "(a|b)").
    for selection in ({"queue": ["demo-slow"]}, {"queue": ["demo", "demo-slow"], "job": ["watchtower"]}):
        for uid, title, expr in queries(stack, window(), selection):
            if "queue" in selection and 'queue=~"' in expr:
                assert 'queue=~".*"' not in expr, (uid, title, expr)
            api(stack, "/api/v1/query", query=expr)


def test_killing_the_workers_makes_the_crash_loop_alert_go_pending(stack: Stack) -> None:
    """Kill every worker the moment it appears, until Prometheus shows the alerts pending.

    WatchtowerWorkersCrashLooping uses the real rules: an alert is pending
    from the first evaluation where its expression holds, whatever its
    ``for:`` (1 minute here: that only delays firing), and the supervisor
    marks a slot crash-looping after 3 deaths within 10 s of a start.  As no
    worker lives long enough to take a job, the queues fill and nothing
    starts: the test-only copy of WatchtowerNoWorkersForQueue (20-second
    windows instead of 10 minutes) goes pending too.
    """
    begun = time.monotonic()
    seen: dict[str, float] = {}
    states: dict[str, set[str]] = {}
    killed = 0

    def alerts_pending() -> bool:
        nonlocal killed
        for child in stack.workers():
            try:
                child.kill()  # a worker of the supervisor this fixture started, by its PID
                killed += 1
            except psutil.NoSuchProcess:
                pass
        for alert in api(stack, "/api/v1/alerts")["alerts"]:
            name = alert["labels"]["alertname"]
            if name == "WatchtowerWorkersCrashLooping":
                assert alert["labels"]["supervisor"] == "default"
                assert alert["annotations"]["dashboard"] == "/d/watchtower-workers?var-supervisor=default"
                # The rules' Grafana address (watchtower:grafana:info) joined to it.
                assert alert["annotations"]["dashboard_url"] == \
                    "http://localhost:3000/d/watchtower-workers?var-supervisor=default"
            elif name == "WatchtowerNoWorkersForQueue" and alert["labels"].get("copy") == "short-windows":
                assert alert["labels"]["queue"] in ("demo", "demo-slow")
            else:
                continue
            states.setdefault(name, set()).add(alert["state"])
            seen.setdefault(name, time.monotonic() - begun)
        return len(seen) == 2

    wait_until(alerts_pending, 180, interval=0.1, message="both alerts pending")
    assert seen.keys() == {"WatchtowerWorkersCrashLooping", "WatchtowerNoWorkersForQueue"}
    # for: 1m: what the kills produced within seconds is a pending alert, not yet a page.
    assert "pending" in states["WatchtowerWorkersCrashLooping"]
    print(f"\nafter killing workers ({killed} kills): crash-loop alert pending after "
          f"{seen['WatchtowerWorkersCrashLooping']:.1f} s, no-workers (20 s windows) after "
          f"{seen['WatchtowerNoWorkersForQueue']:.1f} s")
