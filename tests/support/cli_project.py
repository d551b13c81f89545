"""The command line as a user meets it: a directory with a ``tasks.py``, no configuration file, no PYTHONPATH.

:class:`Project` is such a directory.  Its ``tasks.py`` sets a real Redis
broker under the test's own namespace and declares a few actors on two
queues of the test's own; the ledger is a database of the test's own
(a SQLite file in the directory by default), named by
``WATCHTOWER_DATABASE_URL`` as a user would export it.  Commands run as the
installed ``watchtower`` console script (``python -m watchtower`` would put
the directory on ``sys.path`` by itself and hide what the command does).

Every process started here is killed by its PID when its block ends.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from tests.support.servers import REDIS_URL, unique
from tests.support.supervisors import running

#: The console script installed beside this test's Python.
WATCHTOWER = shutil.which("watchtower", path=os.path.dirname(sys.executable)) or shutil.which("watchtower")

TASKS = '''
"""A user's app: a Redis broker and actors on two queues."""

import os

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

VERSION = 1
NAMESPACE = {namespace!r}
traces = redis.Redis.from_url({redis!r})
broker = RedisBroker(url={redis!r}, namespace=NAMESPACE)
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name={first!r}, max_retries=0)
def greet(token):
    traces.rpush(f"{{NAMESPACE}}:t:{{token}}", os.getpid())


@dramatiq.actor(queue_name={second!r}, max_retries=0)
def tally(token):
    traces.rpush(f"{{NAMESPACE}}:t:{{token}}", os.getpid())


@dramatiq.actor(queue_name={first!r}, max_retries=0)
def explode(token):
    raise ValueError("boom on purpose " + token)


@dramatiq.actor(queue_name={first!r}, max_retries=0)
def version(token):
    traces.rpush(f"{{NAMESPACE}}:t:{{token}}", f"{{os.getpid()}}:{{VERSION}}")
'''


@dataclass
class Project:
    """A user's directory: ``tasks.py``, a ledger, a Redis namespace and two queues of its own."""

    root: Path
    database_url: str
    namespace: str
    queues: tuple[str, str] = field(default_factory=lambda: (unique("qa"), unique("qb")))

    def __post_init__(self) -> None:
        assert WATCHTOWER, "the watchtower console script is not installed beside this Python"
        (self.root / "tasks.py").write_text(textwrap.dedent(TASKS.format(
            namespace=self.namespace, redis=REDIS_URL, first=self.queues[0], second=self.queues[1],
        )))

    def env(self, **changes: str) -> dict[str, str]:
        """A user's environment: the ledger and a free port exported, nothing of this test run's paths."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHTOWER_") and k != "PYTHONPATH"}
        env.update(WATCHTOWER_DATABASE_URL=self.database_url, WATCHTOWER_HTTP_PORT="0")
        env.update(changes)
        return env

    def run(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 90
    ) -> subprocess.CompletedProcess[str]:
        """``watchtower ARGS`` in the directory, to its end."""
        return subprocess.run([str(WATCHTOWER), *args], cwd=self.root, env=env or self.env(), capture_output=True,
                              text=True, timeout=timeout)

    def ok(self, *args: str) -> str:
        """``watchtower ARGS``'s standard output; it must exit 0 without a traceback."""
        result = self.run(*args)
        assert result.returncode == 0 and "Traceback" not in result.stderr, (args, result.stdout, result.stderr)
        return result.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))

    @contextmanager
    def supervise(self, *args: str, log: str = "supervise.log", env: dict[str, str] | None = None
                  ) -> Iterator[subprocess.Popen[bytes]]:
        """``watchtower supervise ARGS`` running in the directory; killed with its workers at the end."""
        path = self.root / log
        with path.open("ab") as out:
            proc = subprocess.Popen([str(WATCHTOWER), "supervise", *args], cwd=self.root, env=env or self.env(),
                                    stdout=out, stderr=subprocess.STDOUT)
        with running(proc, path) as started:
            yield started

    def send(self, actor: str, token: str) -> str:
        """Enqueue ``actor(token)`` as a producer would; returns the message id."""
        queue = self.queues[1] if actor == "tally" else self.queues[0]
        broker = RedisBroker(url=REDIS_URL, namespace=self.namespace)
        try:
            broker.declare_queue(queue)
            message = dramatiq.Message(queue_name=queue, actor_name=actor, args=(token,), kwargs={}, options={})
            return broker.enqueue(message).message_id
        finally:
            broker.close()

    def traces(self, token: str) -> list[str]:
        """What the actors recorded for ``token`` (pids, or pid:version)."""
        client = redis.Redis.from_url(REDIS_URL)
        try:
            return [value.decode() for value in client.lrange(f"{self.namespace}:t:{token}", 0, -1)]
        finally:
            client.close()


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single ``Error: ...`` line a failed command must print, and nothing else."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.stderr and not result.stdout.strip(), (result.stdout, result.stderr)
    return lines[0]
