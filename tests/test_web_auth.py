"""Who gets in: the bearer token, the host's authorize hook, loopback-only without either,
and ``watchtower serve`` refusing to listen beyond loopback without a token."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import falcon
import falcon.testing
import httpx
import pytest

from tests.support.checkout import subprocess_env
from tests.support.servers import REDIS_URL
from tests.support.web_api import AUTH, TOKEN, serve_api, web_settings
from watchtower import store
from watchtower.web import create_app
from watchtower.web.system import openapi_document


@pytest.fixture
def settings(sqlite_url: str, redis_namespace: str) -> Iterator[Any]:
    db = store.connect(sqlite_url)
    yield web_settings(sqlite_url, redis_namespace)
    db.close()


def guarded_requests() -> list[tuple[str, str]]:
    """(method, path) of every guarded operation in the OpenAPI document, ids filled in."""
    requests = []
    for path, operations in openapi_document()["paths"].items():
        for method, operation in operations.items():
            if operation.get("security") == []:
                continue
            concrete = path.replace("{job_id}", "0b1c5f4e-8c5a-4d6e-9f0a-1b2c3d4e5f60").replace("{worker_id}", "host-1")
            requests.append((method.upper(), "/watchtower" + concrete))
    return requests


def test_every_guarded_route_answers_401_without_the_token(settings: Any) -> None:
    bare = falcon.testing.TestClient(create_app(settings))
    requests = guarded_requests()
    assert len(requests) == 13  # every operation but /health and /metrics
    for method, path in requests:
        answer = bare.simulate_request(method, path)
        assert answer.status_code == 401, (method, path, answer.status_code)
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert "Bearer" in answer.json["description"]


@pytest.mark.parametrize(
    "header",
    [
        "Bearer wrong-token",
        f"Basic {TOKEN}",
        f"Bearer {TOKEN}x",
        "Bearer ",
        "Bearer s3cret-t\u00f6ken-for-tests",  # non-ASCII must be refused, not crash compare_digest
        TOKEN,
    ],
)
def test_a_wrong_token_is_refused(settings: Any, header: str) -> None:
    bare = falcon.testing.TestClient(create_app(settings))
    assert bare.simulate_get("/watchtower/jobs", headers={"Authorization": header}).status_code == 401


def test_the_right_token_gets_200(settings: Any) -> None:
    app = falcon.testing.TestClient(create_app(settings))
    for path in ("/watchtower/jobs", "/watchtower/failed", "/watchtower/workers", "/watchtower/api/poll",
                 "/watchtower/openapi.json"):
        assert app.simulate_get(path, headers=AUTH).status_code == 200, path
    lowercase = {"Authorization": f"bearer {TOKEN}"}
    assert app.simulate_get("/watchtower/jobs", headers=lowercase).status_code == 200


def test_health_needs_no_token(settings: Any) -> None:
    bare = falcon.testing.TestClient(create_app(settings))
    answer = bare.simulate_get("/watchtower/health")
    assert answer.status_code == 200
    assert answer.json == {"status": "ok", "database": {"ok": True}, "bus": {"ok": True}, "recorder": {"ok": True}}


def test_the_authorize_hook_lets_the_host_decide(settings: Any) -> None:
    seen: list[str] = []

    def authorize(req: falcon.Request) -> bool:
        seen.append(req.path)
        return req.get_header("X-Host-Session") == "valid"

    app = falcon.testing.TestClient(create_app(settings, authorize=authorize))
    assert app.simulate_get("/watchtower/jobs", headers={"X-Host-Session": "valid"}).status_code == 200
    assert app.simulate_get("/watchtower/jobs", headers={"X-Host-Session": "forged"}).status_code == 401
    assert app.simulate_get("/watchtower/jobs", headers=AUTH).status_code == 200  # the token still works
    assert seen == ["/jobs", "/jobs"]


def test_a_state_change_that_only_the_hook_let_in_is_refused_from_another_site(settings: Any) -> None:
    # The hook's yes is usually a session cookie, which the browser sends
    # with requests that another site's page makes too.
    app = falcon.testing.TestClient(create_app(settings, authorize=lambda req: req.cookies.get("host") == "ok"))
    session = {"Cookie": "host=ok", "Host": "app.example"}
    path = "/watchtower/workers/start"
    for elsewhere in ({"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
                      {"Origin": "https://evil.example"}, {"Origin": "null"}):
        answer = app.simulate_post(path, headers={**session, **elsewhere}, json={"queue": "default"})
        assert answer.status_code == 403, elsewhere
        assert answer.json["description"].startswith("a POST from another site is refused")
    for here in ({"Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"}, {"Origin": "https://app.example"},
                 {}):
        answer = app.simulate_post(path, headers={**session, **here}, json={"queue": "default", "threads": 0})
        assert answer.status_code == 422, here  # past the check: the API refuses 0 threads itself
    # Looking is harmless, and the token is no cookie.
    assert app.simulate_get("/watchtower/jobs", headers={**session, "Sec-Fetch-Site": "cross-site"}).status_code == 200
    token = {**AUTH, "Host": "app.example", "Origin": "https://evil.example"}
    assert app.simulate_post(path, headers=token, json={"queue": "default", "threads": 0}).status_code == 422


def test_a_hook_without_a_token_answers_403_when_it_refuses(sqlite_url: str, redis_namespace: str) -> None:
    store.connect(sqlite_url)
    settings = web_settings(sqlite_url, redis_namespace, **{"http.token": None})
    app = falcon.testing.TestClient(create_app(settings, authorize=lambda req: False))
    answer = app.simulate_get("/watchtower/jobs")
    assert answer.status_code == 403
    assert "authorize hook" in answer.json["description"]


def test_without_token_or_hook_only_loopback_clients_get_in(sqlite_url: str, redis_namespace: str) -> None:
    store.connect(sqlite_url)
    settings = web_settings(sqlite_url, redis_namespace, **{"http.token": None})
    app = falcon.testing.TestClient(create_app(settings))
    assert app.simulate_get("/watchtower/jobs", remote_addr="127.0.0.1").status_code == 200
    assert app.simulate_get("/watchtower/jobs", remote_addr="::1").status_code == 200
    refused = app.simulate_get("/watchtower/jobs", remote_addr="203.0.113.9")
    assert refused.status_code == 403
    assert "WATCHTOWER_API_TOKEN" in refused.json["description"]
    assert app.simulate_get("/watchtower/health", remote_addr="203.0.113.9").status_code == 200


def serve_env(sqlite_url: str, redis_namespace: str, **extra: str) -> dict[str, str]:
    return subprocess_env(
        WATCHTOWER_DATABASE_URL=sqlite_url,
        WATCHTOWER_COMMAND_BUS="redis",
        WATCHTOWER_REDIS_URL=REDIS_URL,
        WATCHTOWER_REDIS_PREFIX=redis_namespace,
        **extra,
    )


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "203.0.113.9"])
def test_serve_refuses_a_non_loopback_bind_without_a_token(
    sqlite_url: str, redis_namespace: str, tmp_path: Path, host: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "watchtower", "serve", "--host", host, "--port", "0"],
        env=serve_env(sqlite_url, redis_namespace), cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"Error: refusing to serve the API on {host!r} (from --host) without a token: "
        "set http.token (WATCHTOWER_API_TOKEN) or bind to 127.0.0.1"
    )
    assert "Traceback" not in done.stderr


def test_served_over_http_the_token_is_required(sqlite_url: str, redis_namespace: str, tmp_path: Path) -> None:
    server = serve_api(serve_env(sqlite_url, redis_namespace, WATCHTOWER_API_TOKEN=TOKEN))
    try:
        assert server.base_url.startswith("http://127.0.0.1:")
        with httpx.Client(base_url=server.base_url, timeout=30) as http:
            refused = http.get("/watchtower/jobs")
            assert refused.status_code == 401
            assert refused.json()["title"] == "Unauthorized"
            allowed = http.get("/watchtower/jobs", headers=AUTH)
            assert allowed.status_code == 200
            assert allowed.json()["data"] == []
            assert http.get("/watchtower/health").status_code == 200
            assert http.get("/jobs", headers=AUTH).status_code == 404  # routes live under the prefix
    finally:
        assert server.stop() == 0


def test_a_bug_is_a_logged_500_in_json(settings: Any, caplog: pytest.LogCaptureFixture) -> None:
    # A host's authorize hook that raises is a bug (the host's): the
    # catch-all answers 500 in JSON and logs the traceback.
    def broken(req: falcon.Request) -> bool:
        raise RuntimeError("the host's session store exploded")

    app = falcon.testing.TestClient(create_app(settings, authorize=broken))
    answer = app.simulate_get("/watchtower/jobs")
    assert answer.status_code == 500
    assert answer.json == {"title": "Internal Server Error", "description": "an unexpected error; see the server's log"}
    errors = [record for record in caplog.records if record.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].getMessage() == "GET /watchtower/jobs failed"
    assert "the host's session store exploded" in str(errors[0].exc_info[1])
