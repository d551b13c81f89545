"""Servers of a test's own, to stop and start: a PostgreSQL cluster and a Redis server.

The machine's shared servers are never stopped; an outage test (or the
outage benchmark) starts its own on a free loopback port, takes it down and
brings it back on the same port with the same data (``start()``), so that
URLs keep working.  PostgreSQL goes down cleanly (``stop()``: every session
ended at once) or as a crash would take it (``crash()``); Redis's ``stop()``
is a crash.  Everything runs as child processes of the test, stopped by
their PIDs when the block ends.  Trust authentication, no fsync (a test's
data need not survive a power cut).

PostgreSQL refuses to run as root: when the tests run as root, the cluster
belongs to the ``postgres`` user and lives in a directory of its own under
the system's temporary directory (pytest's ``tmp_path`` is closed to other
users).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.polling import wait_until

__all__ = ["PrivatePostgres", "PrivateRedis", "private_postgres", "private_redis", "free_port"]


def free_port() -> int:
    """A loopback port no one listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _kill(process: subprocess.Popen[bytes] | None, sig: int) -> None:
    if process is not None and process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(30)


class PrivateRedis:
    """``redis-server`` on a port of its own, no persistence."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--daemonize", "no"],
                stdout=out, stderr=subprocess.STDOUT,
            )
        wait_until(lambda: _answers(self.port) or self.process.poll() is not None, 30,  # type: ignore[union-attr]
                   message=f"redis-server on port {self.port}")
        assert self.process.poll() is None, self.log.read_text(errors="replace")

    def stop(self) -> None:
        """Down at once, as a crash would take it (clients see their connections reset)."""
        _kill(self.process, signal.SIGKILL)
        self.process = None


class PrivatePostgres:
    """A PostgreSQL cluster of its own (``initdb`` into a new temporary directory), served on a free port.

    ``log`` is where the server writes (by default ``server.log`` in its directory);
    ``close()`` takes it down and deletes the directory.  As a context manager it is
    started on entry and closed on exit.
    """

    def __init__(self, log: Path | None = None) -> None:
        self.port = free_port()
        self.bin = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=_major)[-1]).parent
        self.user: Any = None if os.geteuid() != 0 else pwd.getpwnam("postgres")
        self.root = Path(tempfile.mkdtemp(prefix="wt-private-pg-"))
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        self.log = log or self.root / "server.log"
        self.data = self.root / "data"
        self.process: subprocess.Popen[bytes] | None = None
        self._run([str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                   "--no-sync", "-E", "UTF8"])

    def url(self, database: str = "ledger") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new database on this server; its URL."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def _as_owner(self) -> dict[str, Any]:
        return {} if self.user is None else {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}

    def _run(self, command: list[str]) -> None:
        with self.log.open("ab") as out:
            subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=True, cwd=self.root,
                           **self._as_owner())

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.root),
                 "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off", "-c", "shared_buffers=16MB", "-c", "max_connections=200"],
                stdout=out, stderr=subprocess.STDOUT, cwd=self.root, **self._as_owner(),
            )
        wait_until(lambda: self._ready() or self.process.poll() is not None, 60,  # type: ignore[union-attr]
                   message=f"postgres on port {self.port}")
        assert self.process.poll() is None, self.log.read_text(errors="replace")

    def _ready(self) -> bool:
        command = [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-q"]
        result = subprocess.run(command)
        return result.returncode == 0

    def stop(self) -> None:
        """Down cleanly and at once (SIGINT: fast shutdown, every session ended)."""
        _kill(self.process, signal.SIGINT)
        self.process = None

    def crash(self) -> None:
        """Down as a crash would take it (SIGQUIT: immediate shutdown, crash recovery on the next start)."""
        _kill(self.process, signal.SIGQUIT)
        self.process = None

    def close(self) -> None:
        self.crash()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PrivatePostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _major(path: str) -> int:
    """The major version in /usr/lib/postgresql/<major>/bin/postgres."""
    return int(Path(path).parts[4])


@contextmanager
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis-server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def private_postgres(tmp_path: Path) -> Iterator[PrivatePostgres]:
    """A started private PostgreSQL that logs to ``tmp_path``; closed afterwards."""
    with PrivatePostgres(tmp_path / "postgres.log") as server:
        yield server

