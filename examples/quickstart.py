#!/usr/bin/env python3
"""Watchtower's demo in one command: ``python3 examples/quickstart.py`` (from a checkout).

What it does, on a machine with Python 3.11+ and a Redis server:

1. makes sure the dependencies import; if not, installs those listed in
   ``pyproject.toml`` into ``.venv`` in the checkout and runs again from there;
2. finds Redis at ``--redis-url`` (default ``redis://127.0.0.1:6379/0``); if
   none answers and ``redis-server`` is on the PATH, starts a private one on
   a free port (gone when the demo stops); otherwise says how to get one;
3. runs ``watchtower supervise`` on the embedded defaults (a SQLite ledger
   and the database command bus, in ``./.watchtower-demo/``) with the demo
   app (``examples/demo_app.py``, pools in ``examples/watchtower.toml``): the
   control API and ``/metrics`` on 127.0.0.1:9192 (a free port if that one is
   taken);
4. runs a stream of demo jobs (``examples/demo_stream.py``): fast, slow,
   flaky (retried), failing, delayed and expired ones;
5. prints the URLs, then a line of job counts every 10 seconds, until Ctrl-C
   (or ``--duration`` seconds), and stops everything gracefully.

The demo's queues live under a Redis key prefix of their own
(``watchtower-demo-<hash of the demo directory>``), so it never touches
other queues on the same Redis.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
VENV = ROOT / ".venv"
DEFAULT_PORT = 9192
STATUS_EVERY = 10.0
#: Seconds the supervisor and its workers get to come up on a slow machine.
START_TIMEOUT = 90.0


class DemoError(Exception):
    """Something the user must fix, said in one line."""


class Interrupted(Exception):
    """Ctrl-C (or SIGTERM) before the demo was up."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run Watchtower's demo: a supervised pool, a job stream, the API.")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0",
                        help="the Redis server of the demo's broker (default redis://127.0.0.1:6379/0)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="port of the API and /metrics (default 9192; 0, or 9192 taken: a free one)")
    parser.add_argument("--dir", default=".watchtower-demo",
                        help="where the ledger and the logs go (default ./.watchtower-demo)")
    parser.add_argument("--rate", type=float, default=4.0, help="demo jobs a second (default 4)")
    parser.add_argument("--duration", type=float, default=None,
                        help="stop after this many seconds (default: run until Ctrl-C)")
    return parser.parse_args(argv)


# 1. Dependencies -----------------------------------------------------------------


def requirements() -> list[str]:
    """The runtime requirements of pyproject.toml."""
    import tomllib

    return list(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])


def missing_modules(python: str = sys.executable) -> list[str]:
    """The requirements that ``python`` cannot import."""
    names = [re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0] for requirement in requirements()]
    script = (
        "import importlib.util, sys\n"
        f"print(' '.join(n for n in {names!r} if importlib.util.find_spec(n.replace('-', '_')) is None))"
    )
    result = subprocess.run([python, "-c", script], capture_output=True, text=True)
    return result.stdout.split() if result.returncode == 0 else names


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def run_from_venv(missing: list[str], argv: list[str]) -> int:
    """Install the requirements into .venv (once) and run this script again with its Python."""
    if Path(sys.prefix).resolve() == VENV.resolve():
        raise DemoError(f"{', '.join(missing)} still missing in {VENV}: remove that directory and run again")
    python = venv_python()
    if not python.exists() or missing_modules(str(python)):
        say(f"Missing {', '.join(missing)}: installing the requirements into {VENV} (once)...")
        if not python.exists() and subprocess.run([sys.executable, "-m", "venv", str(VENV)]).returncode != 0:
            raise DemoError(f"cannot create a virtual environment in {VENV} (on Debian or Ubuntu: apt-get install "
                            f"python3-venv), or install the requirements yourself: pip install -e {ROOT}")
        result = subprocess.run([str(python), "-m", "pip", "install", "--quiet", *requirements()])
        if result.returncode != 0:
            raise DemoError(f"pip could not install the requirements into {VENV} (see above)")
    say(f"Running again with {python}")
    command = [str(python), str(Path(__file__).resolve()), *argv]
    if os.name == "nt":
        return subprocess.call(command)
    # Replace this process: a Ctrl-C then reaches only the demo's own handler.
    os.execv(command[0], command)


# 2. Redis ----------------------------------------------------------------------------


def redis_answers(url: str) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# The processes ---------------------------------------------------------------------------


class Demo:
    """The demo's processes, their logs, and how to stop them."""

    def __init__(self, *, directory: Path, redis_url: str, port: int, rate: float) -> None:
        self.directory = directory
        self.redis_url = redis_url
        self.port = port
        self.rate = rate
        # A key prefix per demo directory: the demo's queues never mix with
        # other queues on the same Redis, nor with another checkout's demo.
        digest = hashlib.sha1(str(directory).encode()).hexdigest()[:8]
        self.namespace = f"watchtower-demo-{digest}"
        self.ledger = directory / "watchtower.db"
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.api_base = ""
        self.metrics_url = ""
        self.stream_metrics_url = ""
        self.signals: list[int] = []  # recorded by the signal handler, acted on by the loops

    def check_signals(self) -> None:
        if self.signals:
            raise Interrupted()

    def env(self) -> dict[str, str]:
        """The children's environment: this checkout's watchtower and the demo app, the embedded defaults."""
        # The user's own WATCHTOWER_* variables (a production ledger...) stay out of the demo.
        env = {key: value for key, value in os.environ.items() if not key.startswith("WATCHTOWER_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), str(EXAMPLES), env.get("PYTHONPATH")]))
        env.update({
            "WATCHTOWER_CONFIG": str(EXAMPLES / "watchtower.toml"),
            "WATCHTOWER_DATABASE_URL": f"sqlite:///{self.ledger}",
            "WATCHTOWER_COMMAND_BUS": "database",
            "WATCHTOWER_HTTP_HOST": "127.0.0.1",
            "WATCHTOWER_HTTP_PORT": str(self.port),
            "DEMO_REDIS_URL": self.redis_url,
            "DEMO_REDIS_NAMESPACE": self.namespace,
            "PYTHONUNBUFFERED": "1",
        })
        return env

    def start(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        """Start a child with its output in ``<dir>/<name>.log``, in a session of its own.

        Its own session: a Ctrl-C at the terminal reaches this script only,
        which then stops each child once (a second SIGINT would make the
        supervisor kill its workers at once).
        """
        with (self.directory / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(command, cwd=self.directory, env=self.env(), stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append((name, process))
        return process

    def log(self, name: str) -> str:
        path = self.directory / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_for_line(self, name: str, process: subprocess.Popen[bytes], pattern: str, since: int) -> str:
        """The first match of ``pattern`` in the child's log after offset ``since``."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            self.check_signals()
            found = re.search(pattern, self.log(name)[since:])
            if found:
                return found.group(1)
            if process.poll() is not None:
                raise DemoError(f"{name} exited with code {process.returncode}:\n{self.tail(name)}")
            time.sleep(0.2)
        raise DemoError(f"{name} did not start within {START_TIMEOUT:g} s:\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 15) -> str:
        return "\n".join("    " + line for line in self.log(name).splitlines()[-lines:])

    def private_redis(self) -> None:
        """A redis-server of the demo's own, on a free port, keeping nothing on disk."""
        port = free_port()
        process = self.start("redis", [shutil.which("redis-server") or "redis-server", "--port", str(port),
                                       "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 20
        while not redis_answers(self.redis_url):
            self.check_signals()
            if process.poll() is not None or time.monotonic() > deadline:
                raise DemoError(f"the private redis-server did not start:\n{self.tail('redis')}")
            time.sleep(0.1)

    def start_supervisor(self) -> None:
        since = len(self.log("supervisor"))
        process = self.start("supervisor", [sys.executable, "-m", "watchtower", "supervise"])
        self.metrics_url = self.wait_for_line(
            "supervisor", process, r"serving Prometheus metrics at (http://\S+/metrics)", since)
        self.api_base = self.metrics_url.removesuffix("/metrics") + "/watchtower"
        deadline = time.monotonic() + START_TIMEOUT
        while not (self.poll() or {}).get("stats", {}).get("active_workers"):
            self.check_signals()
            if process.poll() is not None:
                raise DemoError(f"the supervisor exited with code {process.returncode}:\n{self.tail('supervisor')}")
            if time.monotonic() > deadline:
                raise DemoError(f"no worker was running after {START_TIMEOUT:g} s:\n{self.tail('supervisor')}")
            time.sleep(0.5)

    def start_stream(self) -> None:
        since = len(self.log("stream"))
        process = self.start("stream", [sys.executable, str(EXAMPLES / "demo_stream.py"), "--rate", str(self.rate),
                                        "--metrics-port", "0"])
        self.stream_metrics_url = self.wait_for_line(
            "stream", process, r"demo stream metrics at (http://\S+/metrics)", since)

    def poll(self) -> dict[str, Any] | None:
        """The API's poll, or None while it does not answer."""
        try:
            with urllib.request.urlopen(f"{self.api_base}/api/poll", timeout=10) as response:
                return json.load(response)  # type: ignore[no-any-return]
        except (OSError, ValueError, urllib.error.URLError):
            return None

    def stop(self) -> None:
        """SIGTERM to each child, newest first (the stream, the supervisor, Redis), and wait."""
        for name, process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    # The supervisor waits for the jobs in hand (up to the pool's timeout).
                    process.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    say(f"{name} did not stop within 120 s: killing it")
                    process.kill()
                    process.wait()


def say(line: str) -> None:
    print(line, flush=True)


def summary(demo: Demo) -> str:
    return "\n".join([
        "",
        "Watchtower demo is running (Ctrl-C stops it):",
        f"  API      {demo.api_base}/api/poll   (also /jobs, /failed, /workers, /openapi.json)",
        f"  metrics  {demo.metrics_url}   (the supervisor: jobs run, workers, queue depths)",
        f"           {demo.stream_metrics_url}   (the job stream: jobs enqueued)",
        f"  ledger   {demo.ledger}   (SQLite; the database command bus is in it too)",
        f"  broker   {demo.redis_url}, queues demo and demo-slow under the key prefix {demo.namespace}",
        f"  logs     {demo.directory}/supervisor.log, {demo.directory}/stream.log",
        "",
    ])


def status_line(poll: dict[str, Any] | None) -> str:
    if poll is None:
        return "the API does not answer (see supervisor.log)"
    stats = poll["stats"]
    return (f"jobs: {stats['completed']} completed, {stats['failed']} failed, {stats['skipped']} skipped, "
            f"{stats['pending']} pending, {stats['processing']} processing; "
            f"workers: {stats['active_workers']} running")


def run(args: argparse.Namespace) -> int:
    directory = Path(args.dir).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    port = args.port
    if port and not port_is_free(port):
        say(f"Port {port} is taken: the API and /metrics go to a free port instead.")
        port = 0
    demo = Demo(directory=directory, redis_url=args.redis_url, port=port, rate=args.rate)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        demo.signals.append(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        if not redis_answers(demo.redis_url):
            if not shutil.which("redis-server"):
                raise DemoError(
                    f"No Redis answers at {demo.redis_url}: start one (docker run -d -p 6379:6379 redis:7, "
                    "or apt-get install redis-server, or brew install redis), or pass --redis-url."
                )
            say(f"No Redis answers at {demo.redis_url}: starting a private redis-server for the demo.")
            demo.private_redis()
        say(f"Starting a supervisor with the demo app (ledger {demo.ledger})...")
        demo.start_supervisor()
        demo.start_stream()
        say(summary(demo))
        started = time.monotonic()
        next_status = started + STATUS_EVERY
        while not demo.signals:
            if args.duration is not None and time.monotonic() - started >= args.duration:
                break
            for name, process in demo.processes:
                if process.poll() is not None:
                    raise DemoError(f"{name} exited with code {process.returncode}:\n{demo.tail(name)}")
            if time.monotonic() >= next_status:
                say(time.strftime("[%H:%M:%S] ") + status_line(demo.poll()))
                next_status += STATUS_EVERY
            time.sleep(0.2)
        say(time.strftime("[%H:%M:%S] ") + status_line(demo.poll()))
        say("Stopping the demo (the workers finish their jobs first)...")
        return 0
    except Interrupted:
        say("Interrupted: stopping what was started...")
        return 130
    finally:
        demo.stop()
        if demo.processes:
            say(f"Stopped. The ledger stays in {demo.ledger}.")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        if sys.version_info < (3, 11):  # noqa: UP036 (run by hand with whatever python3 a user has)
            raise DemoError(f"Watchtower needs Python 3.11 or newer; this is {sys.version.split()[0]}.")
        missing = missing_modules()
        if missing:
            return run_from_venv(missing, argv)
        return run(args)
    except DemoError as error:
        print(f"Error: {error}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
