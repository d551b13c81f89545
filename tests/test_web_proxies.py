"""Without a token, the API answers direct loopback clients only: never through a proxy or a socket.

A reverse proxy on the same host connects from 127.0.0.1 for clients
anywhere, and an ASGI server on a Unix socket reports no client address at
all (which Falcon would call 127.0.0.1).  Both are refused unless the proxy
is trusted (``http.trusted_proxies``) and says the client is local.  Tried
in process for every header, then through a real nginx and a real uvicorn
on a Unix socket.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import falcon.testing
import httpx
import pytest

from tests.support.checkout import subprocess_env
from tests.support.polling import wait_until
from tests.support.servers import REDIS_URL
from tests.support.web_api import serve_api
from watchtower import load_settings, store
from watchtower.errors import ConfigError
from watchtower.web import create_app


class LoopbackClient(falcon.testing.TestClient):
    """Requests from 127.0.0.1 (Falcon's test environ has no REMOTE_ADDR unless told)."""

    def simulate_request(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("remote_addr", "127.0.0.1")
        return super().simulate_request(*args, **kwargs)


def api(sqlite_url: str, namespace: str, **more: Any) -> falcon.testing.TestClient:
    store.connect(sqlite_url)
    settings = load_settings(env={}, overrides={"database_url": sqlite_url, "command_bus": "redis",
                                                "redis_url": REDIS_URL, "redis_prefix": namespace, **more})
    return LoopbackClient(create_app(settings))


@pytest.mark.parametrize(("headers", "why"), [
    ({"X-Forwarded-For": "203.0.113.9"}, "X-Forwarded-For from 127.0.0.1"),
    ({"X-Forwarded-For": "127.0.0.1"}, "X-Forwarded-For from 127.0.0.1"),  # said by an untrusted proxy
    ({"Forwarded": "for=203.0.113.9;proto=https"}, "Forwarded from 127.0.0.1"),
    ({"X-Real-IP": "203.0.113.9"}, "X-Real-IP from 127.0.0.1"),
])
def test_a_forwarded_request_is_not_local(sqlite_url: str, redis_namespace: str, headers: dict[str, str],
                                          why: str) -> None:
    client = api(sqlite_url, redis_namespace)
    assert client.simulate_get("/watchtower/jobs").status_code == 200  # direct, on loopback
    for method, path in (("GET", "/watchtower/jobs"), ("POST", "/watchtower/workers/start"),
                         ("POST", "/watchtower/failed/abc/retry"), ("DELETE", "/watchtower/failed/abc")):
        answer = client.simulate_request(method, path, headers=headers, json={"queue": "default"})
        assert answer.status_code == 403, (method, path)
        assert why in answer.json["description"] and "set http.token" in answer.json["description"]
    assert client.simulate_get("/watchtower/health", headers=headers).status_code == 200  # always open


def test_a_request_without_a_client_address_is_not_local(sqlite_url: str, redis_namespace: str) -> None:
    client = falcon.testing.TestClient(api(sqlite_url, redis_namespace).app)  # an environ without REMOTE_ADDR
    answer = client.simulate_get("/watchtower/jobs")
    assert answer.status_code == 403 and "no client address" in answer.json["description"]


@pytest.mark.parametrize(("headers", "status"), [
    ({"X-Forwarded-For": "127.0.0.1"}, 200),
    ({"X-Forwarded-For": "::1"}, 200),
    ({"X-Forwarded-For": "203.0.113.9"}, 403),
    ({"X-Forwarded-For": "203.0.113.9, 127.0.0.1"}, 403),  # the client, then a trusted proxy
    ({"X-Forwarded-For": "127.0.0.1, 198.51.100.7"}, 403),  # a hop that is not trusted: the nearest counts
    ({"Forwarded": 'for="[::1]:4711"'}, 200),
    ({"Forwarded": "for=203.0.113.9, for=127.0.0.1"}, 403),
    ({"Forwarded": "proto=https"}, 403),  # names no client
    ({"X-Real-IP": "127.0.0.1"}, 200),
])
def test_a_trusted_proxy_is_believed_about_its_client(sqlite_url: str, redis_namespace: str,
                                                      headers: dict[str, str], status: int) -> None:
    client = api(sqlite_url, redis_namespace, **{"http.trusted_proxies": ["127.0.0.1/32", "::1"]})
    assert client.simulate_get("/watchtower/jobs", headers=headers).status_code == status


def test_trusted_proxies_must_be_addresses_or_networks(sqlite_url: str) -> None:
    with pytest.raises(ConfigError, match=r"'http.trusted_proxies' .* must list IP addresses or networks .*'nginx'"):
        load_settings(env={"WATCHTOWER_HTTP_TRUSTED_PROXIES": "127.0.0.1,nginx"},
                      overrides={"database_url": sqlite_url})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Any]:
    """Start a private nginx proxying to ``upstream`` as an nginx site usually
    does (X-Forwarded-For); yields a starter.
    """
    started: list[subprocess.Popen[bytes]] = []

    def start(upstream: str) -> str:
        port = free_port()
        conf = tmp_path / "nginx.conf"
        conf.write_text(f"""
daemon off;
master_process off;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/nginx-error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp_path}/body; proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fastcgi; uwsgi_temp_path {tmp_path}/uwsgi; scgi_temp_path {tmp_path}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass {upstream};
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
}}
""")
        process = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(tmp_path)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.STDOUT)
        started.append(process)
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert process.poll() is None, (tmp_path / "nginx-error.log").read_text()
            try:
                return httpx.get(base + "/watchtower/health", timeout=1).status_code in (200, 503)
            except httpx.TransportError:
                return False

        wait_until(up, 30, message="nginx")
        return base

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=20)


@pytest.mark.parametrize("trusted", [False, True], ids=["no-trusted-proxy", "nginx-trusted"])
def test_behind_a_real_nginx_a_token_less_api_refuses_every_request(
    sqlite_url: str, redis_namespace: str, nginx: Any, trusted: bool
) -> None:
    env = subprocess_env(WATCHTOWER_DATABASE_URL=sqlite_url, WATCHTOWER_COMMAND_BUS="redis",
                         WATCHTOWER_REDIS_URL=REDIS_URL, WATCHTOWER_REDIS_PREFIX=redis_namespace)
    if trusted:
        env["WATCHTOWER_HTTP_TRUSTED_PROXIES"] = "127.0.0.1"
    served = serve_api(env)
    try:
        proxied = nginx(served.base_url)
        assert httpx.get(served.base_url + "/watchtower/jobs").status_code == 200  # direct, on loopback
        assert httpx.get(proxied + "/watchtower/health").status_code == 200
        for method, path in (("GET", "/watchtower/jobs"), ("GET", "/watchtower/workers"),
                             ("POST", "/watchtower/workers/start"), ("POST", "/watchtower/failed/abc/retry")):
            answer = httpx.request(method, proxied + path, json={"queue": "default"})
            if trusted:
                # nginx says the client is 127.0.0.1 (this test); a client elsewhere is refused.
                assert answer.status_code != 403, (method, path, answer.text)
                elsewhere = httpx.request(method, proxied + path, json={"queue": "default"},
                                          headers={"X-Forwarded-For": "203.0.113.9"})
                assert elsewhere.status_code == 403, (method, path)
                assert "forwarded for 203.0.113.9" in elsewhere.json()["description"]
            else:
                assert answer.status_code == 403, (method, path)
                assert "forwarded by a proxy" in answer.json()["description"]
    finally:
        assert served.stop() == 0


def test_behind_uvicorn_on_a_unix_socket_a_token_less_mount_refuses_every_request(
    tmp_path: Path, sqlite_url: str, redis_namespace: str
) -> None:
    store.connect(sqlite_url).close()
    path = tmp_path / "api.sock"
    env = subprocess_env(WATCHTOWER_DATABASE_URL=sqlite_url, WATCHTOWER_COMMAND_BUS="redis",
                         WATCHTOWER_REDIS_URL=REDIS_URL, WATCHTOWER_REDIS_PREFIX=redis_namespace)
    log = tmp_path / "uvicorn.log"
    with log.open("wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "uvicorn", "--uds", str(path), "apps.asgi_mount:app"],
                                  cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        client = httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://localhost")

        def up() -> bool:
            assert server.poll() is None, log.read_text()
            try:
                return client.get("/").text == "the host app"
            except httpx.TransportError:
                return False

        wait_until(up, 30, message="uvicorn on its socket")
        assert client.get("/watchtower/health").status_code == 200
        for method, route in (("GET", "/watchtower/jobs"), ("GET", "/watchtower/workers"),
                              ("POST", "/watchtower/workers/start"), ("DELETE", "/watchtower/failed/abc")):
            answer = client.request(method, route, json={"queue": "default"})
            assert answer.status_code == 403, (method, route, answer.text)
            assert "no client address" in answer.json()["description"]
        client.close()
    finally:
        server.terminate()
        server.wait(timeout=20)
