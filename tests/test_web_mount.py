"""The API mounted under /watchtower inside a Flask app (werkzeug's DispatcherMiddleware)
and inside a Starlette app (a2wsgi), answering as the standalone app does."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import falcon.testing
import pytest

from tests.support.web_api import AUTH, seed_job, web_settings
from watchtower import store
from watchtower.statuses import JobStatus
from watchtower.web import create_app

# Starlette 1.x asks for httpx2 in its TestClient; httpx still works.
pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")


@pytest.fixture
def settings(sqlite_url: str, redis_namespace: str) -> Iterator[Any]:
    db = store.connect(sqlite_url)
    yield web_settings(sqlite_url, redis_namespace)
    db.close()


Get = Callable[[str, dict[str, str]], tuple[int, Any]]


def standalone(app: Any) -> Get:
    client = falcon.testing.TestClient(app)

    def get(path: str, headers: dict[str, str]) -> tuple[int, Any]:
        answer = client.simulate_get(path, headers=headers)
        return answer.status_code, answer.json

    return get


def in_flask(app: Any) -> Get:
    import flask
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    host = flask.Flask("host")

    @host.get("/")
    def home() -> str:
        return "the host's own page"

    host.wsgi_app = DispatcherMiddleware(host.wsgi_app, {"/watchtower": app})  # type: ignore[method-assign]
    client = host.test_client()
    assert client.get("/").text == "the host's own page"

    def get(path: str, headers: dict[str, str]) -> tuple[int, Any]:
        answer = client.get(path, headers=headers)
        return answer.status_code, answer.get_json()

    return get


def in_starlette(app: Any) -> Get:
    from a2wsgi import WSGIMiddleware
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route
    from starlette.testclient import TestClient

    async def home(request: Any) -> PlainTextResponse:
        return PlainTextResponse("the host's own page")

    host = Starlette(routes=[Route("/", home), Mount("/watchtower", app=WSGIMiddleware(app))])
    client = TestClient(host)
    assert client.get("/").text == "the host's own page"

    def get(path: str, headers: dict[str, str]) -> tuple[int, Any]:
        answer = client.get(path, headers=headers)
        return answer.status_code, answer.json()

    return get


@pytest.mark.parametrize("host", [in_flask, in_starlette], ids=["flask", "starlette"])
@pytest.mark.parametrize("prefix", ["/watchtower", ""], ids=["default-prefix", "empty-prefix"])
def test_mounted_under_watchtower_it_answers_the_same(settings: Any, host: Callable[[Any], Get], prefix: str) -> None:
    failed = seed_job(status=JobStatus.FAILED, actor="mounted_actor", kwargs={"secret_key": "k"})
    reference = standalone(create_app(settings))
    mounted = host(create_app(dataclasses.replace(settings, http_prefix=prefix)))

    requests = [
        ("/watchtower/jobs", AUTH),
        ("/watchtower/jobs?status=failed&search=mounted", AUTH),
        (f"/watchtower/jobs/{failed.message_id}", AUTH),
        ("/watchtower/failed", AUTH),
        ("/watchtower/workers", AUTH),
        ("/watchtower/health", {}),
        ("/watchtower/jobs", {}),  # 401
        ("/watchtower/jobs/nope", AUTH),  # 404
        ("/watchtower/jobs?status=bad", AUTH),  # 400
    ]
    for path, headers in requests:
        assert mounted(path, headers) == reference(path, headers), path

    status, detail = mounted(f"/watchtower/jobs/{failed.message_id}", AUTH)
    assert status == 200 and detail["payload"]["kwargs"] == {"secret_key": "[redacted]"}
    # The OpenAPI document names where the API answers, in each setting.
    assert mounted("/watchtower/openapi.json", AUTH)[1]["servers"] == [{"url": "/watchtower"}]
    assert reference("/watchtower/openapi.json", AUTH)[1]["servers"] == [{"url": "/watchtower"}]


def test_an_app_with_the_default_prefix_mounted_elsewhere_keeps_its_prefix(settings: Any) -> None:
    get = in_flask_at("/admin", create_app(settings))
    assert get("/admin/watchtower/jobs", AUTH)[0] == 200
    assert get("/admin/jobs", AUTH)[0] == 404


def in_flask_at(mount: str, app: Any) -> Get:
    import flask
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    host = flask.Flask("host")
    host.wsgi_app = DispatcherMiddleware(host.wsgi_app, {mount: app})  # type: ignore[method-assign]
    client = host.test_client()

    def get(path: str, headers: dict[str, str]) -> tuple[int, Any]:
        answer = client.get(path, headers=headers)
        return answer.status_code, answer.get_json()

    return get
