"""Helpers for the supervisor and WorkerManager tests: settings files, processes, polling.

Every process a test starts is killed by its PID in ``finally`` (never by name).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dramatiq
import psutil
from dramatiq.brokers.redis import RedisBroker

from tests.support.checkout import subprocess_env
from tests.support.polling import wait_until
from tests.support.servers import REDIS_URL
from watchtower.config import Settings, load_settings
from watchtower.models import Worker


def write_config(path: Path, *, supervisors: Mapping[str, Mapping[str, Any]], **keys: Any) -> Path:
    """A watchtower.toml with top-level ``keys`` (dotted names allowed) and [supervisors.NAME] tables."""
    lines = []
    for key, value in keys.items():
        lines.append(f"{_key(key)} = {_toml(value)}")
    for name, table in supervisors.items():
        lines.append(f"\n[supervisors.{name}]")
        lines.extend(f"{field} = {_toml(value)}" for field, value in table.items())
    path.write_text("\n".join(lines) + "\n")
    return path


def _key(key: str) -> str:
    return ".".join(f'"{part}"' if "-" in part else part for part in key.split("."))


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def settings_for(config: Path, **env: str) -> Settings:
    """The settings a process started with ``config`` and ``env`` would load."""
    return load_settings(config, env=env)


def start_supervisor(config: Path, name: str, log: Path, **env: str) -> subprocess.Popen[bytes]:
    """``python -m watchtower supervise --supervisor NAME`` with its output in ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "watchtower", "--config", str(config), "supervise", "--supervisor", name],
            env=subprocess_env(**env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def children(proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
    """The live (non-zombie) child processes of ``proc``."""
    try:
        return [c for c in psutil.Process(proc.pid).children() if _alive(c)]
    except psutil.NoSuchProcess:
        return []


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def pid_gone(pid: int) -> bool:
    """The process has exited (a zombie left for its new parent counts as exited)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@contextmanager
def running(proc: subprocess.Popen[bytes], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Kill ``proc`` and its children (by PID) when the block ends; show its log on failure."""
    pids = set()
    try:
        yield proc
    except BaseException:
        sys.stderr.write(f"---- {log}\n{log.read_text(errors='replace')[-20000:]}\n")
        raise
    finally:
        pids = {c.pid for c in children(proc)}
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int:
    wait_until(lambda: proc.poll() is not None, timeout, message=f"pid {proc.pid} to exit")
    return proc.returncode


def measure(predicate: Any, timeout: float, message: str) -> float:
    """Seconds until ``predicate`` holds (fails after ``timeout``)."""
    start = time.monotonic()
    wait_until(predicate, timeout, interval=0.05, message=message)
    return time.monotonic() - start


__all__ = [
    "app_env", "children", "config", "enqueue", "enqueue_grow", "measure", "metrics_url", "pid_gone", "rows", "running",
    "settings_for", "start_supervisor", "wait_exit", "write_config",
]


def app_env(namespace: str, queue: str, **more: str) -> dict[str, str]:
    return {
        "WT_TEST_NAMESPACE": namespace,
        "WT_TEST_QUEUE": queue,
        "WT_TEST_REDIS": REDIS_URL,
        "WT_TEST_HEARTBEAT_MS": "2000",  # a dead worker's messages come back after 2 s
        "WT_TEST_MAINTENANCE": "1000000",  # ... looked for on every broker command
        **more,
    }


def config(tmp_path: Path, database_url: str, namespace: str, *, bus: str = "redis", app: str = "apps.sup_app",
           hostname: str = "host-a", name: str = "default", file: str = "watchtower.toml", **pool: Any) -> Path:
    table = {"queues": ["default"], "min_processes": 1, "max_processes": 4, "threads": 2, "timeout": 30,
             "memory": 1024, "sleep": 0.2}
    table.update(pool)
    return write_config(
        tmp_path / file,
        app=app,
        database_url=database_url,
        command_bus=bus,
        redis_url=REDIS_URL,
        redis_prefix=namespace,
        hostname=hostname,
        heartbeat_timeout=10.0,
        **{"http.port": 0},
        supervisors={name: table},
    )


def enqueue(namespace: str, queue: str, token: str, seconds: float) -> str:
    """Send ``nap(token, seconds)``; returns the message id."""
    return _send(namespace, queue, "nap", token, seconds)


def enqueue_grow(namespace: str, queue: str, token: str, megabytes: int) -> str:
    """Send ``grow(token, megabytes)``: the worker keeps that much more memory; returns the message id."""
    return _send(namespace, queue, "grow", token, megabytes)


def _send(namespace: str, queue: str, actor: str, *args: Any) -> str:
    broker = RedisBroker(url=REDIS_URL, namespace=namespace)
    try:
        broker.declare_queue(queue)
        message = dramatiq.Message(queue_name=queue, actor_name=actor, args=args, kwargs={}, options={})
        return broker.enqueue(message).message_id
    finally:
        broker.close()


def rows(supervisor: str | None = None, *statuses: str) -> list[Worker]:
    query = Worker.select()
    if supervisor is not None:
        query = query.where(Worker.supervisor == supervisor)
    if statuses:
        query = query.where(Worker.status.in_(statuses))
    return list(query.order_by(Worker.started_at))


def metrics_url(log: Path) -> str:
    """The /metrics URL a supervisor's log says it serves, or "" before it says so."""
    found = re.search(r"serving Prometheus metrics at (http://\S+/metrics)", log.read_text(errors="replace"))
    return found.group(1) if found else ""
