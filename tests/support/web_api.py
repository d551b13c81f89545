"""Helpers of the control API's tests: settings, seeded jobs, an authorised test client, a served API."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import dramatiq
import falcon.testing

from tests.support.polling import DEADLINE
from tests.support.servers import REDIS_URL
from watchtower.clock import day_of, now_ms
from watchtower.config import Settings, load_settings
from watchtower.models import Job
from watchtower.payload import encode_message
from watchtower.statuses import JobStatus

TOKEN = "s3cret-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

_clock = itertools.count()


def web_settings(database_url: str, namespace: str, **more: Any) -> Settings:
    """Settings of an API on ``database_url`` with a Redis bus under ``namespace`` and a token."""
    overrides = {
        "database_url": database_url,
        "command_bus": "redis",
        "redis_url": REDIS_URL,
        "redis_prefix": namespace,
        "http.token": TOKEN,
        **more,
    }
    return load_settings(env={}, overrides=overrides)


def client(app: Any, **headers: str) -> falcon.testing.TestClient:
    """A test client that sends the token unless told otherwise."""
    return falcon.testing.TestClient(app, headers={**AUTH, **headers})


def seed_job(
    *,
    actor: str = "send_email",
    queue: str = "default",
    status: str = JobStatus.COMPLETED,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
    exception: str | None = None,
    payload: str | None = "message",
    **fields: Any,
) -> Job:
    """Insert one job row as the ledger would hold it (payload = the encoded message)."""
    message = dramatiq.Message(
        queue_name=queue, actor_name=actor, args=args, kwargs=kwargs or {}, options=options or {},
        **({"message_id": fields.pop("message_id")} if "message_id" in fields else {}),
    )
    now = now_ms() + next(_clock)
    row = {
        "message_id": message.message_id,
        "queue": queue,
        "actor": actor,
        "connection": "redis",
        "payload": encode_message(message) if payload == "message" else payload,
        "status": status,
        "attempts": 1 if status != JobStatus.PENDING else 0,
        "exception": exception,
        "queued_at": now,
        "started_at": now if status != JobStatus.PENDING else None,
        "completed_at": now + 5 if status in JobStatus.FINISHED else None,
        "progress": 12,
        "progress_at": now * 1000,
        **fields,
    }
    row.setdefault("queued_day", day_of(row["queued_at"]))
    Job.insert(**row).execute()
    return Job.get(Job.message_id == message.message_id)


def seed_many(count: int, **fields: Any) -> list[Job]:
    return [seed_job(**fields) for _ in range(count)]


def table_fingerprint() -> tuple[int, list[tuple[Any, ...]]]:
    """The job table's row count and contents, to show that nothing changed it."""
    rows = list(Job.select(Job.message_id, Job.status, Job.payload, Job.retried_by).order_by(Job.id).tuples())
    return len(rows), rows


def deadline(seconds: float) -> float:
    return time.monotonic() + seconds


class ServedAPI:
    """A ``watchtower serve`` child process on a free loopback port."""

    def __init__(self, process: Any, base_url: str, lines: list[str]) -> None:
        self.process = process
        self.base_url = base_url  # http://127.0.0.1:PORT
        self.lines = lines  # what it wrote to stderr so far

    def stop(self) -> int:
        """SIGTERM, then wait; returns the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except Exception:
                self.process.kill()
                self.process.wait(timeout=20)
        return int(self.process.returncode)


def serve_api(env: dict[str, str], *args: str, timeout: float = DEADLINE,
              preexec_fn: Callable[[], None] | None = None) -> ServedAPI:
    """Start ``python -m watchtower serve --port 0 ARGS`` and wait for its "listening on" line.

    ``preexec_fn`` runs in the child before it starts (to lower a limit).
    """
    import re
    import subprocess
    import sys
    import threading

    process = subprocess.Popen(
        [sys.executable, "-m", "watchtower", "serve", "--port", "0", *args],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn,
    )
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if "listening on" in line:
                found.set()

    threading.Thread(target=read, daemon=True).start()
    end = deadline(timeout)
    while not found.wait(0.05):
        if process.poll() is not None or time.monotonic() > end:
            process.kill()
            process.wait()
            raise AssertionError("watchtower serve did not start:\n" + "".join(lines))
    match = re.search(r"http://(\S+?):(\d+)/", "".join(lines))
    assert match, lines
    return ServedAPI(process, f"http://{match.group(1)}:{match.group(2)}", lines)
