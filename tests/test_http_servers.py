"""Both HTTP servers, ``watchtower serve`` and a supervisor's, are bounded: idle and slow clients starve nothing.

The crowd tests hold 500 connections open against a real process: 400 that
connect and send nothing, 100 that trickle half a request (a header line
every second, never the blank line that ends it).  Beside them ``/health``
and ``/metrics`` answer, the server holds no thread per connection, and it
closes every silent connection once it has been idle for
``http_server.IDLE_TIMEOUT`` seconds (the tricklers once they fall silent).
The process under test starts with a soft open-file limit of 512, below what
500 connections and the process's own files need: the server raises its own
limit (and a supervisor's workers inherit it).

A port in use, or an address the host lacks, is one line naming the setting
and a non-zero exit, for ``watchtower serve`` as for a supervisor.
"""

from __future__ import annotations

import json
import resource
import selectors
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.support.checkout import subprocess_env
from tests.support.polling import wait_until
from tests.support.servers import REDIS_URL
from tests.support.supervisors import app_env, config, metrics_url, rows, running, start_supervisor, wait_exit
from tests.support.web_api import serve_api
from watchtower import http_server, metrics_server, store
from watchtower.config import Settings, load_settings
from watchtower.statuses import WorkerStatus

pytestmark = pytest.mark.timeout(240)

SILENT = 400
TRICKLING = 100
#: What a child process starts with: below the descriptors 500 connections need.
LOW_SOFT_LIMIT = 512
#: Seconds to wait for the server to accept, answer, or close: far above
#: IDLE_TIMEOUT + CLEANUP_INTERVAL.
DEADLINE = 60.0


@pytest.fixture(autouse=True)
def enough_files() -> Iterator[None]:
    """This test process opens the crowd's 500 sockets beside pytest's own files."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)
    if wanted < 2 * (SILENT + TRICKLING):
        pytest.fail(f"the hard open-file limit ({hard}) is too low for {SILENT + TRICKLING} connections")
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def settings_sqlite(sqlite_url: str) -> Settings:
    store.connect(sqlite_url).close()
    return load_settings(overrides={"database_url": sqlite_url}, env={})


def low_file_limit() -> None:
    """In the child, before it starts: the soft open-file limit of a stingy host."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (LOW_SOFT_LIMIT, hard))


def fetch(url: str) -> tuple[int, str, bytes]:
    """Status, content type and body of a GET (an HTTP error status too)."""
    try:
        with urllib.request.urlopen(url, timeout=DEADLINE) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read()


class Crowd:
    """Connections to one server that never complete a request."""

    def __init__(self, host: str, port: int, *, silent: int, trickling: int) -> None:
        self.silent = [socket.create_connection((host, port), timeout=DEADLINE) for _ in range(silent)]
        self.trickling = [socket.create_connection((host, port), timeout=DEADLINE) for _ in range(trickling)]
        for sock in self.trickling:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")
        self._quiet = threading.Event()
        self._trickler = threading.Thread(target=self._trickle, daemon=True)
        self._trickler.start()

    def _trickle(self) -> None:
        # Bytes well within the idle timeout keep a connection active.
        while not self._quiet.wait(1.0):
            for sock in self.trickling:
                try:
                    sock.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    pass

    def fall_silent(self) -> None:
        self._quiet.set()
        self._trickler.join(DEADLINE)

    @staticmethod
    def closed(socks: list[socket.socket]) -> int:
        """How many of ``socks`` the server has closed (without a byte of answer)."""
        count = 0
        with selectors.DefaultSelector() as selector:
            for sock in socks:
                selector.register(sock, selectors.EVENT_READ, sock)
            for key, _ in selector.select(timeout=0):
                try:
                    data = key.data.recv(4096)
                except ConnectionResetError:
                    data = b""
                assert data == b"", f"a connection that sent no whole request was answered: {data[:200]!r}"
                count += 1
        return count

    def close(self) -> None:
        self.fall_silent()
        for sock in self.silent + self.trickling:
            sock.close()


def assert_serves_beside_a_crowd(pid: int, base_url: str, health: str) -> None:
    """The crowd scenario against the server of process ``pid`` at ``base_url``."""
    server = psutil.Process(pid)
    soft = server.rlimit(psutil.RLIMIT_NOFILE)[0]
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]  # the child inherited it
    assert soft >= min(hard, http_server.CONNECTION_LIMIT + http_server.FD_RESERVE), soft
    assert fetch(base_url + health)[0] == 200
    threads = server.num_threads()
    host, _, port = base_url.removeprefix("http://").rpartition(":")

    def held() -> int:
        """Client connections the server holds open."""
        return sum(1 for c in server.net_connections("tcp")
                   if c.laddr and c.laddr.port == int(port) and c.status == psutil.CONN_ESTABLISHED)

    crowd = Crowd(host.strip("[]"), int(port), silent=SILENT, trickling=TRICKLING)
    try:
        wait_until(lambda: held() == SILENT + TRICKLING, DEADLINE, message="the server to accept the 500 connections")
        assert server.num_threads() < threads + 10  # no thread per connection

        status, kind, body = fetch(base_url + health)
        assert status == 200 and kind.startswith("application/json")
        assert json.loads(body)["status"] == "ok"
        status, kind, body = fetch(base_url + "/metrics")
        assert status == 200 and kind.startswith("text/plain")
        assert b"\nwatchtower_build_info{" in body
        assert crowd.closed(crowd.trickling) == 0  # answered while they were all held

        wait_until(lambda: crowd.closed(crowd.silent) == SILENT, DEADLINE,
                   message="the server to close the silent connections")
        crowd.fall_silent()
        wait_until(lambda: crowd.closed(crowd.trickling) == TRICKLING, DEADLINE,
                   message="the server to close the half requests once they fell silent")
        wait_until(lambda: held() == 0, DEADLINE, message="the server to release their sockets")
        assert fetch(base_url + health)[0] == 200
    finally:
        crowd.close()


def test_watchtower_serve_answers_health_and_metrics_beside_500_idle_connections_and_closes_them(
    tmp_path: Path, redis_namespace: str
) -> None:
    env = subprocess_env(
        WATCHTOWER_DATABASE_URL=f"sqlite:///{tmp_path / 'ledger.db'}",
        WATCHTOWER_COMMAND_BUS="redis",
        WATCHTOWER_REDIS_URL=REDIS_URL,
        WATCHTOWER_REDIS_PREFIX=redis_namespace,
    )
    served = serve_api(env, preexec_fn=low_file_limit)
    try:
        assert_serves_beside_a_crowd(served.process.pid, served.base_url, "/watchtower/health")
    finally:
        code = served.stop()
    assert code == 0, "".join(served.lines)


def test_a_supervisor_answers_health_and_metrics_beside_500_idle_connections_and_closes_them(
    tmp_path: Path, sqlite_url: str, redis_namespace: str, queue_name: str
) -> None:
    path = config(tmp_path, sqlite_url, redis_namespace, queues=[queue_name], min_processes=1)
    store.connect(sqlite_url)
    log = tmp_path / "supervisor.log"
    with log.open("ab") as out:  # start_supervisor's command, with the low limit
        started = subprocess.Popen(
            [sys.executable, "-m", "watchtower", "--config", str(path), "supervise", "--supervisor", "default"],
            env=subprocess_env(**app_env(redis_namespace, queue_name)), stdout=out, stderr=subprocess.STDOUT,
            preexec_fn=low_file_limit,
        )
    with running(started, log) as supervisor:
        url = wait_until(lambda: metrics_url(log), DEADLINE, message="the supervisor's /metrics")
        (worker,) = wait_until(lambda: rows("default", WorkerStatus.RUNNING), DEADLINE, message="a running worker")
        assert_serves_beside_a_crowd(supervisor.pid, url.removesuffix("/metrics"), "/watchtower/health")
        # Its worker inherited the raised limit.
        assert psutil.Process(worker.pid).rlimit(psutil.RLIMIT_NOFILE)[0] > LOW_SOFT_LIMIT
        supervisor.send_signal(signal.SIGTERM)
        assert wait_exit(supervisor, 90) == 0


def test_past_its_connection_limit_a_server_queues_new_connections_until_idle_ones_are_closed() -> None:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"still here\n"]

    server = http_server.start_http_server(app, host="127.0.0.1", port=0, connection_limit=20, idle_timeout=1)
    crowd = Crowd(server.host, server.port, silent=40, trickling=0)
    try:
        # Not refused: it waits in the listen queue, and is answered once the
        # server has closed enough idle connections to take it.
        status, _, body = fetch(server.base_url + "/")
        assert (status, body) == (200, b"still here\n")
        wait_until(lambda: crowd.closed(crowd.silent) == 40, DEADLINE,
                   message="the server to close all 40, the queued ones too")
    finally:
        crowd.close()
        server.stop()


def test_the_metrics_server_listens_on_ipv6_loopback_on_a_free_port(settings_sqlite: Settings) -> None:
    server = metrics_server.start_metrics_server(settings_sqlite, host="::1", port=0)
    try:
        assert server.host == "::1" and server.port > 0
        assert server.url == f"http://[::1]:{server.port}/metrics"
        status, _, body = fetch(server.url)
        assert status == 200 and b"\nwatchtower_build_info{" in body
    finally:
        server.stop()
    again = metrics_server.start_metrics_server(settings_sqlite, host="::1", port=server.port)  # stop() freed the port
    again.stop()


def run_serve(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "watchtower", "serve", *args], env=subprocess_env(**env),
                          capture_output=True, text=True, timeout=DEADLINE)


@pytest.mark.parametrize("family, address", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_watchtower_serve_on_a_busy_port_says_so_in_one_line_and_exits_1(
    tmp_path: Path, family: socket.AddressFamily, address: str
) -> None:
    with socket.socket(family) as busy:
        busy.bind((address, 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run_serve("--host", address, "--port", str(port),
                         WATCHTOWER_DATABASE_URL=f"sqlite:///{tmp_path / 'ledger.db'}")
    assert done.returncode == 1
    shown = f"[{address}]" if ":" in address else address
    assert done.stderr.splitlines() == [
        f"Error: cannot serve the API on {shown}:{port}: the port is in use (another supervisor or program listens "
        "there); set --port (or http.port, WATCHTOWER_HTTP_PORT) to a free port, or 0 for any free port"
    ]


def test_watchtower_serve_on_an_address_this_host_lacks_names_the_host_setting(tmp_path: Path) -> None:
    # 192.0.2.0/24 is reserved for documentation: no host has it (only bound, never sent to).
    done = run_serve("--host", "192.0.2.1", "--port", "0", WATCHTOWER_API_TOKEN="t0ken",
                     WATCHTOWER_DATABASE_URL=f"sqlite:///{tmp_path / 'ledger.db'}")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "Error: cannot serve the API on 192.0.2.1:0: this host has no such address; set --host (or http.host, "
        "WATCHTOWER_HTTP_HOST) to an address of this host (127.0.0.1 or ::1 for loopback)"
    ]


def test_a_supervisor_on_a_busy_port_stops_with_one_line_before_any_worker(
    tmp_path: Path, sqlite_url: str, redis_namespace: str, queue_name: str
) -> None:
    path = config(tmp_path, sqlite_url, redis_namespace, queues=[queue_name], min_processes=1)
    log = tmp_path / "supervisor.log"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = start_supervisor(path, "default", log, WATCHTOWER_HTTP_PORT=str(port),
                                   **app_env(redis_namespace, queue_name))
        with running(started, log) as supervisor:
            assert wait_exit(supervisor, DEADLINE) == 1
    text = log.read_text()
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if line.startswith("Error:")]
    assert errors == [
        f"Error: cannot serve /metrics on 127.0.0.1:{port}: the port is in use (another supervisor or program "
        "listens there); set http.port (WATCHTOWER_HTTP_PORT) to a free port, or 0 for any free port"
    ]
    store.connect(sqlite_url)
    assert rows("default") == []
