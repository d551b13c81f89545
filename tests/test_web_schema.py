"""schemathesis drives every operation of openapi.json against the real WSGI app.

The ledger holds real rows (one failed job under the id the document uses as
its example, so that retry and delete reach their success paths), retries go
to a real Redis broker, and worker commands to the Redis bus.  Every
response must be documented (status, content type, body schema) and none may
be a 5xx; invalid requests schemathesis makes up must be refused with a 4xx.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import redis
import schemathesis
from dramatiq.brokers.redis import RedisBroker

from tests.support.servers import REDIS_URL, unique
from tests.support.web_api import AUTH, seed_job, web_settings
from watchtower import store
from watchtower.clock import now_ms
from watchtower.models import Worker
from watchtower.statuses import JobStatus, WorkerStatus
from watchtower.web import create_app
from watchtower.web.system import openapi_document


def example(path: str, method: str, name: str) -> str:
    """The example value openapi.json gives for parameter ``name`` of an operation."""
    for parameter in openapi_document()["paths"][path][method]["parameters"]:
        if "$ref" in parameter:
            parameter = openapi_document()["components"]["parameters"][parameter["$ref"].rsplit("/", 1)[1]]
        if parameter["name"] == name:
            return str(parameter["example"])
    raise KeyError(name)


class _CurrentApp:
    """A WSGI app that hands every request to ``self.app``, which the ``api_app`` fixture sets."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        return self.app(environ, start_response)


#: The document as the API serves it (its supervisors listed), loaded when the
#: module is collected, before any fixture: from an API on the same settings
#: whose ledger is never opened (building one does no I/O, and only GET
#: /openapi.json reaches it).  The cases then go to the fixture's API.
#: (schemathesis's fixture-loaded schemas, ``schemathesis.pytest.from_fixture``,
#: rename pytest's node through a private attribute that pytest 9.2 removed.)
CURRENT = _CurrentApp(create_app(web_settings("sqlite:///:memory:", "wt-unused")))
schema = schemathesis.openapi.from_wsgi("/watchtower/openapi.json", CURRENT, headers=AUTH)
schema.config.update(headers=AUTH)  # every generated request carries the token

#: Status codes seen per operation, filled by the test, checked by the fixture.
SEEN: dict[str, set[int]] = {}


class _Errors(logging.Handler):
    """Keeps what watchtower logged at ERROR or above while the cases ran."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def api_app(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Any]:
    """The API on a seeded SQLite ledger, a real Redis broker and the Redis bus, for every case."""
    namespace = unique("wt")
    database_url = f"sqlite:///{tmp_path_factory.mktemp('schema') / 'ledger.db'}"
    db = store.connect(database_url)
    # The rows the document's examples name: schemathesis tries them first.
    for path, method in (("/jobs/{job_id}", "get"), ("/failed/{job_id}", "delete"), ("/failed/{job_id}/retry", "post")):
        seed_job(status=JobStatus.FAILED, actor="charge", args=(1,), kwargs={"token": "t"},
                 message_id=example(path, method, "job_id"), exception="Traceback...\nValueError: declined")
    worker_id = example("/workers/{worker_id}/pause", "post", "worker_id")
    Worker.insert(worker_id=worker_id, supervisor="default", status=WorkerStatus.RUNNING, started_at=now_ms(),
                  last_heartbeat=now_ms()).execute()
    for status in JobStatus.ALL:
        seed_job(status=status, actor=f"actor_{status}", queue="emails")
    broker = RedisBroker(url=REDIS_URL, namespace=namespace, middleware=[])
    errors = _Errors()
    logger = logging.getLogger("watchtower")
    logger.addHandler(errors)
    CURRENT.app = create_app(web_settings(database_url, namespace), broker=broker)
    try:
        yield CURRENT.app
    finally:
        CURRENT.app = None  # a case that outlives the module finds no API
        logger.removeHandler(errors)
        broker.close()
        db.close()
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
    # No request may have been a bug on the server's side.
    assert errors.messages == []
    # Every operation ran, and the success paths were reached, not only refusals:
    # judged when every operation's test was selected (``-k`` may pick a few).
    operations = {f"{method.upper()} {path}" for path, item in openapi_document()["paths"].items() for method in item}
    # schemathesis leaves out the operation it loaded the document from
    # (GET /openapi.json answered it, through the app, with the token).
    operations -= {"GET /openapi.json"}
    selected = [item for item in request.session.items
                if getattr(item, "originalname", None) == "test_every_operation_keeps_to_the_document"]
    if len(selected) < len(operations):
        return
    assert set(SEEN) == operations
    print("status codes per operation:", {label: sorted(codes) for label, codes in sorted(SEEN.items())})
    assert 202 in SEEN["POST /failed/{job_id}/retry"] and 200 in SEEN["DELETE /failed/{job_id}"]
    assert 200 in SEEN["GET /jobs/{job_id}"] and 202 in SEEN["POST /workers/start"]
    assert all(202 in SEEN[f"POST /workers/{{worker_id}}/{command}"]
               for command in ("stop", "restart", "pause", "resume"))


@schema.parametrize()
@hypothesis.settings(max_examples=60, deadline=None, suppress_health_check=list(hypothesis.HealthCheck))
@pytest.mark.usefixtures("api_app")
def test_every_operation_keeps_to_the_document(case: Any) -> None:
    response = case.call_and_validate()
    SEEN.setdefault(case.operation.label, set()).add(response.status_code)


def test_the_document_names_every_route_of_the_app() -> None:
    paths = set(openapi_document()["paths"])
    assert paths == {
        "/api/poll", "/jobs", "/jobs/{job_id}", "/failed", "/failed/{job_id}", "/failed/{job_id}/retry",
        "/workers", "/workers/start", "/workers/{worker_id}/stop", "/workers/{worker_id}/restart",
        "/workers/{worker_id}/pause",
        "/workers/{worker_id}/resume", "/metrics", "/health", "/openapi.json",
    }
