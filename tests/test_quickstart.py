"""The quickstart, run as a new user runs it: ``python3 examples/quickstart.py`` in a fresh clone.

The clone is of this checkout's HEAD (commit your changes before running
this test); the command runs with this test's Python (which has the
dependencies) and an environment without PYTHONPATH or WATCHTOWER_*
variables.  ``--port 0`` is the only addition to the README's command: a
test never takes a fixed port on a shared machine (the quickstart itself
falls back to a free port when 9192 is taken).  Its Redis key prefix comes
from its demo directory, so each run has its own; the test deletes it
afterwards.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.support.polling import wait_until
from tests.support.servers import REDIS_URL
from watchtower import store
from watchtower.models import Job
from watchtower.statuses import JobStatus

pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parent.parent
#: The README's quickstart command.
COMMAND = ["python3", "examples/quickstart.py"]
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


def fresh_clone(tmp_path: Path) -> Path:
    """A clone of this checkout's HEAD, as a new user gets it."""
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    checkout = tmp_path / "dramatiq-watchtower"
    subprocess.run(["git", "clone", "--quiet", "--no-checkout", str(ROOT), str(checkout)], check=True)
    subprocess.run(["git", "-C", str(checkout), "checkout", "--quiet", head.stdout.strip()], check=True)
    return checkout


def user_env(**changes: str) -> dict[str, str]:
    """A new user's environment: nothing of this test run's PYTHONPATH or WATCHTOWER_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHTOWER_") and k != "PYTHONPATH"}
    env.update(changes)
    return env


@contextmanager
def quickstart(checkout: Path, output: Path, *args: str, port: int = 0, env: dict[str, str] | None = None
               ) -> Iterator[subprocess.Popen[bytes]]:
    """The quickstart running in ``checkout``; everything it started is gone when the block ends."""
    command = [sys.executable, *COMMAND[1:], "--port", str(port), *args]
    if REDIS_URL != DEFAULT_REDIS and "--redis-url" not in args:
        command += ["--redis-url", REDIS_URL]
    with output.open("wb") as out:
        process = subprocess.Popen(command, cwd=checkout, env=env or user_env(), stdout=out, stderr=subprocess.STDOUT)
    descendants: set[int] = set()
    try:
        yield process
    except BaseException:
        sys.stderr.write(f"---- quickstart output\n{output.read_text(errors='replace')}\n")
        for log in sorted((checkout / ".watchtower-demo").glob("*.log")):
            sys.stderr.write(f"---- {log.name}\n{log.read_text(errors='replace')[-6000:]}\n")
        raise
    finally:
        descendants = {child.pid for child in _descendants(process.pid)}
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(150)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(30)
        for pid in descendants:  # only if the quickstart failed to stop them
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        forget_demo_keys(output.read_text(errors="replace"))


def forget_demo_keys(output: str) -> None:
    """Delete the Redis keys under the key prefix the quickstart printed (its own)."""
    namespace = re.search(r"under the key prefix (\S+)", output)
    if namespace:
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{namespace.group(1)}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def urls(output: Path, process: subprocess.Popen[bytes]) -> dict[str, str]:
    """The URLs of the quickstart's summary, once it is printed."""

    def summary() -> dict[str, str] | None:
        text = output.read_text(errors="replace")
        assert process.poll() is None, f"the quickstart exited with {process.returncode}:\n{text}"
        if "Watchtower demo is running" not in text:
            return None
        api = re.search(r"API\s+(http://\S+)/api/poll", text)
        metrics = re.findall(r"(http://\S+/metrics)", text)
        assert api and len(metrics) == 2, text
        return {"api": api.group(1), "metrics": metrics[0], "stream_metrics": metrics[1]}

    return wait_until(summary, 180, interval=0.5, message="the quickstart's summary")


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def json_get(url: str) -> Any:
    return json.loads(get(url))


def counters(url: str, name: str) -> float:
    """The sum of a counter's samples on a /metrics page."""
    total = 0.0
    for family in text_string_to_metric_families(get(url).decode()):
        total += sum(sample.value for sample in family.samples if sample.name == name)
    return total


def test_the_readme_command_brings_the_demo_up_on_a_fresh_clone(tmp_path: Path) -> None:
    checkout = fresh_clone(tmp_path)
    output = tmp_path / "quickstart.out"
    begun = time.monotonic()
    with quickstart(checkout, output) as process:
        found = urls(output, process)
        print(f"\nquickstart: summary printed {time.monotonic() - begun:.1f} s after the command started")
        assert found["api"].startswith("http://127.0.0.1:") and found["api"].endswith("/watchtower")
        ledger = checkout / ".watchtower-demo" / "watchtower.db"
        assert ledger.exists()
        store.connect(f"sqlite:///{ledger}")

        def ledger_shows_every_outcome() -> bool:
            done = Job.select().where(Job.status == JobStatus.COMPLETED)
            return (done.count() > 0
                    and done.where((Job.actor == "flaky") & (Job.attempts >= 2)).count() > 0  # retried, then done
                    and Job.select().where((Job.status == JobStatus.FAILED) & (Job.actor == "failing")).count() > 0
                    and Job.select().where(Job.status == JobStatus.SKIPPED).count() > 0)

        wait_until(ledger_shows_every_outcome, 120, interval=1, message="completed, retried, failed and skipped jobs")
        failed = Job.get((Job.status == JobStatus.FAILED) & (Job.actor == "failing"))
        assert failed.attempts == 3 and "can never be processed" in failed.exception

        poll: dict[str, Any] = json_get(f"{found['api']}/api/poll")
        assert poll["stats"]["completed"] > 0 and poll["stats"]["failed"] > 0
        assert poll["recentJobs"] and {job["queue"] for job in poll["recentJobs"]} <= {"demo", "demo-slow"}
        assert len(poll["workers"]) == 2

        assert counters(found["metrics"], "watchtower_jobs_completed_total") > 0
        assert counters(found["metrics"], "watchtower_jobs_retried_total") > 0
        assert counters(found["metrics"], "watchtower_jobs_failed_total") > 0
        assert counters(found["stream_metrics"], "watchtower_jobs_enqueued_total") > 0

        children = _descendants(process.pid)
        assert len(children) >= 4  # the supervisor, its two workers, the stream
        process.send_signal(signal.SIGINT)  # Ctrl-C
        assert process.wait(150) == 0
        text = output.read_text()
        assert "Stopped. The ledger stays in" in text and re.search(r"jobs: \d+ completed", text)
        assert wait_until(lambda: not any(alive(child) for child in children), 30, message="every child gone")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens once the socket is closed


def test_without_redis_it_says_so_in_one_line(tmp_path: Path) -> None:
    checkout = fresh_clone(tmp_path)
    nowhere = f"redis://127.0.0.1:{closed_port()}/0"
    # No redis-server on this PATH: the quickstart cannot start one either.
    empty = tmp_path / "bin"
    empty.mkdir()
    result = subprocess.run([sys.executable, *COMMAND[1:], "--redis-url", nowhere], cwd=checkout,
                            env=user_env(PATH=str(empty)), capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: No Redis answers at {nowhere}: start one"), result.stderr
    assert "redis-server" in lines[0] and "--redis-url" in lines[0]


def test_without_redis_but_with_redis_server_it_runs_a_private_one_and_a_taken_port_is_no_obstacle(
    tmp_path: Path
) -> None:
    checkout = fresh_clone(tmp_path)
    nowhere = f"redis://127.0.0.1:{closed_port()}/0"
    output = tmp_path / "quickstart.out"
    with socket.socket() as taken:  # what 9192 is when another program has it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with quickstart(checkout, output, "--redis-url", nowhere, port=port) as process:
            found = urls(output, process)
            text = output.read_text()
            assert f"Port {port} is taken: the API and /metrics go to a free port instead." in text
            assert f":{port}/" not in found["api"]
            assert f"No Redis answers at {nowhere}: starting a private redis-server" in text
            private = re.search(r"broker\s+(redis://127\.0\.0\.1:\d+/0)", text)
            assert private and private.group(1) != nowhere
            [server] = [child for child in _descendants(process.pid) if child.name().startswith("redis-server")]
            wait_until(lambda: json_get(f"{found['api']}/api/poll")["stats"]["completed"] > 0, 120, interval=1,
                       message="jobs completed through the private Redis")
            process.send_signal(signal.SIGINT)
            assert process.wait(150) == 0
            assert wait_until(lambda: not alive(server), 30, message="the private redis-server stopped")


def test_on_a_python_without_the_dependencies_it_installs_them_into_a_venv_first(tmp_path: Path) -> None:
    """A bare Python (a fresh venv): the quickstart installs pyproject's requirements into .venv and runs."""
    checkout = fresh_clone(tmp_path)
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", str(bare)], check=True)
    python = bare / "bin" / "python"
    assert subprocess.run([str(python), "-c", "import dramatiq"], capture_output=True).returncode != 0
    output = tmp_path / "quickstart.out"
    env = user_env()
    with output.open("wb") as out:
        result = subprocess.run([str(python), *COMMAND[1:], "--port", "0", "--duration", "5",
                                 *(["--redis-url", REDIS_URL] if REDIS_URL != DEFAULT_REDIS else [])],
                                cwd=checkout, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=540)
    text = output.read_text(errors="replace")
    try:
        assert result.returncode == 0, text
        assert "installing the requirements into" in text and f"Running again with {checkout / '.venv'}" in text
        assert "Watchtower demo is running" in text and "Stopped. The ledger stays in" in text
        venv_python = checkout / ".venv" / "bin" / "python"
        assert subprocess.run([str(venv_python), "-c", "import dramatiq, peewee, falcon"]).returncode == 0
    finally:
        forget_demo_keys(text)
